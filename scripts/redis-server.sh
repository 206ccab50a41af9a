#!/usr/bin/env bash
# Start or stop a private redis-server whose files all live in one folder.
#
# Usage:
#   scripts/redis-server.sh start DIR
#   scripts/redis-server.sh stop DIR
#
# start runs Debian's redis-server as a daemon on 127.0.0.1 and a free port, with the
# append-only file on and fsynced after every write (appendfsync always), so that an
# acknowledged write survives a crash of the daemon. It waits until the server
# replies to PING, then prints redis://127.0.0.1:PORT/0 and writes the same URL to
# DIR/url. When the server of DIR is already running, start prints its URL again.
#
# stop sends SIGTERM to the pid in DIR/redis.pid, and SIGKILL if the process is still
# there after STOP_TIMEOUT_SECONDS (default 30). It signals no other process.
#
# Files in DIR: redis.conf, redis.pid, redis.log, url, and data/ with the
# append-only files and dump.rdb.

set -euo pipefail

readonly START_ATTEMPTS=5
readonly READY_TIMEOUT_SECONDS=${READY_TIMEOUT_SECONDS:-10}
readonly STOP_TIMEOUT_SECONDS=${STOP_TIMEOUT_SECONDS:-30}

usage() {
    cat <<'EOF'
Usage: scripts/redis-server.sh start DIR
       scripts/redis-server.sh stop DIR

start  run redis-server on 127.0.0.1 and a free port with its files in DIR,
       wait until it replies to PING, then print its URL (also written to DIR/url)
stop   stop the redis-server whose pid is in DIR/redis.pid
EOF
}

log() {
    printf 'redis-server.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# The file that a redis-server process runs. Debian installs redis-server as a
# symbolic link to redis-check-rdb, so /proc/PID/exe names the link's target.
REDIS_EXECUTABLE=$(readlink -f "$(command -v redis-server)") ||
    die "redis-server not found; install the redis-server package (scripts/install-deps.sh)"
readonly REDIS_EXECUTABLE

# Succeed when PID is a live redis-server process. A zombie counts as exited.
is_redis_process() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$REDIS_EXECUTABLE" ]]
}

# Print the pid recorded in the pidfile, or fail when there is none.
read_pid() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || die "$pidfile does not contain a pid: $pid"
    echo "$pid"
}

pick_free_port() {
    python3 -c 'import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])'
}

# Quote a value for redis.conf, which accepts double-quoted strings.
conf_quote() {
    [[ $1 != *[\"\\$'\n']* ]] || die "path contains a double quote, backslash or newline: $1"
    printf '"%s"' "$1"
}

write_config() {
    local dir=$1 port=$2
    cat >"$dir/redis.conf" <<EOF
# scripts/redis-server.sh writes this file at every start.
bind 127.0.0.1
port $port
# Only loopback clients can connect, so protected mode adds nothing.
protected-mode no
daemonize yes
pidfile $(conf_quote "$dir/redis.pid")
logfile $(conf_quote "$dir/redis.log")
dir $(conf_quote "$dir/data")
appendonly yes
appendfsync always
EOF
}

# Wait until the server started with this pidfile replies on PORT.
# Returns 0 when ready, 2 when the port was taken, 1 on any other failure.
wait_until_ready() {
    local dir=$1 port=$2 log_offset=$3
    local deadline=$((SECONDS + READY_TIMEOUT_SECONDS)) pid served_pid

    while ((SECONDS < deadline)); do
        # redis-server writes its log from the start, but it writes the pidfile only
        # after it has bound the port.
        if tail -c +"$((log_offset + 1))" "$dir/redis.log" 2>/dev/null | grep -q 'Address already in use'; then
            return 2
        fi
        if pid=$(read_pid "$dir/redis.pid"); then
            if ! is_redis_process "$pid"; then
                log "redis-server (pid $pid) exited during start"
                return 1
            fi
            if [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]]; then
                # Another server that took the port between pick_free_port and the
                # bind would also reply to PING, so compare its pid with ours.
                served_pid=$(redis-cli -h 127.0.0.1 -p "$port" INFO server 2>/dev/null |
                    tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
                [[ $served_pid == "$pid" ]] && return 0
                log "port $port answers from pid ${served_pid:-unknown}, not from our redis-server (pid $pid)"
                return 1
            fi
        fi
        sleep 0.1
    done
    log "redis-server did not answer PING on port $port within $READY_TIMEOUT_SECONDS s"
    return 1
}

start() {
    local dir=$1
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)

    local pid
    if pid=$(read_pid "$dir/redis.pid") && is_redis_process "$pid"; then
        [[ -s $dir/url ]] || die "redis-server (pid $pid) is running but $dir/url is missing; run stop first"
        log "redis-server for $dir is already running (pid $pid)"
        cat "$dir/url"
        return
    fi
    rm -f "$dir/redis.pid" "$dir/url"

    local attempt port log_offset status
    for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
        port=$(pick_free_port)
        write_config "$dir" "$port"
        log_offset=$(stat -c %s "$dir/redis.log" 2>/dev/null || echo 0)

        # With daemonize yes this returns once the daemon has forked.
        redis-server "$dir/redis.conf" || die "redis-server failed to start; see $dir/redis.log"

        status=0
        wait_until_ready "$dir" "$port" "$log_offset" || status=$?
        if ((status == 0)); then
            local url="redis://127.0.0.1:$port/0"
            printf '%s\n' "$url" >"$dir/url.tmp"
            mv -f "$dir/url.tmp" "$dir/url"
            log "started redis-server (pid $(<"$dir/redis.pid")) on 127.0.0.1:$port with data in $dir/data"
            echo "$url"
            return
        fi
        if ((status == 2)); then
            log "port $port was taken before redis-server could bind it; retrying with another port (attempt $attempt of $START_ATTEMPTS)"
            continue
        fi
        # Do not leave a half-started server behind.
        if pid=$(read_pid "$dir/redis.pid") && is_redis_process "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        tail -n 20 "$dir/redis.log" >&2 || true
        die "redis-server failed to start; the log above is from $dir/redis.log"
    done
    die "no free port found after $START_ATTEMPTS attempts"
}

stop() {
    local dir=$1 pidfile=$1/redis.pid pid
    if ! pid=$(read_pid "$pidfile"); then
        log "not running: $pidfile not found"
        rm -f "$dir/url"
        return
    fi
    if ! is_redis_process "$pid"; then
        # The server has exited, and its pid may since belong to another program.
        log "not running: removing stale $pidfile (pid $pid is not a redis-server process)"
        rm -f "$pidfile" "$dir/url"
        return
    fi

    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
    while is_redis_process "$pid" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if is_redis_process "$pid"; then
        log "redis-server (pid $pid) did not exit within $STOP_TIMEOUT_SECONDS s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while is_redis_process "$pid"; do
            sleep 0.1
        done
    fi
    rm -f "$pidfile" "$dir/url"
    log "stopped redis-server (pid $pid)"
}

main() {
    if (($# != 2)); then
        usage >&2
        exit 2
    fi
    case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
