#!/usr/bin/env bash
# Start or stop a private single-node Slurm cluster whose files all live in one folder.
#
# Usage:
#   scripts/slurm-cluster.sh start DIR
#   scripts/slurm-cluster.sh stop DIR
#   scripts/slurm-cluster.sh env DIR
#
# start installs Debian's Slurm 22.05 packages when they are missing. Then it runs
# munged with its own key and socket in DIR, and slurmctld and slurmd for one node
# `node1` on 127.0.0.1 with fake GPUs (symbolic links to /dev/null). Last comes
# slurmrestd with JWT authentication on 127.0.0.1 and a free port. It runs as the
# system user SLURM_CLUSTER_USER, created when missing, because slurmrestd does not
# run as root. start waits until the node is idle and slurmrestd replies to ping,
# then writes DIR/env and prints it.
# When the cluster of DIR is already running, start prints DIR/env again.
#
# stop cancels the cluster's jobs, then sends SIGTERM to each daemon by the pid in its
# pid file, and SIGKILL to one that is still there after STOP_TIMEOUT_SECONDS. It
# signals no other process.
#
# env prints DIR/env of a running cluster: shell `export` lines with SLURM_CONF,
# SLURMRESTD_URL, SLURM_JWT_KEY, SLURMRESTD_USER and SLURM_TOKEN_COMMAND. The token
# command, DIR/mint-token [LIFESPAN_SECONDS], prints a fresh JWT for SLURMRESTD_USER.
#
# Settings (environment variables, read by start):
#   SLURM_CLUSTER_USER     user that runs slurmrestd and owns the tokens (spillway)
#   SLURM_MAX_ARRAY_SIZE   slurm.conf MaxArraySize, so indices 0..N-1 (1001)
#   SLURM_GPU_COUNT        fake GPUs on node1 (4)
#   SLURM_NODE_CPUS        CPUs that node1 advertises (32)
#   SLURM_MIN_JOB_AGE      seconds a finished job stays visible, slurm.conf MinJobAge (300)
#   SLURM_CTLD_PORT        slurmctld port (6817)
#   SLURMD_PORT            slurmd port (6818)
#   READY_TIMEOUT_SECONDS  how long start waits for the node and slurmrestd (60)
#   STOP_TIMEOUT_SECONDS   how long stop waits for each daemon after SIGTERM (30)
#
# Slurm 22.05's slurmctld and slurmd listen on 0.0.0.0 with no option to bind one
# address, so only one cluster per pair of ports can run on a machine. start fails
# when another process already listens on either port.
#
# Exit status: 0 on success, 1 on failure, 2 on wrong usage, 3 when the Slurm packages
# are missing and cannot be installed.

set -euo pipefail

readonly PACKAGES=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin)
readonly CLUSTER_USER=${SLURM_CLUSTER_USER:-spillway}
readonly MAX_ARRAY_SIZE=${SLURM_MAX_ARRAY_SIZE:-1001}
readonly GPU_COUNT=${SLURM_GPU_COUNT:-4}
readonly NODE_CPUS=${SLURM_NODE_CPUS:-32}
readonly MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-300}
readonly CTLD_PORT=${SLURM_CTLD_PORT:-6817}
readonly SLURMD_PORT=${SLURMD_PORT:-6818}
readonly READY_TIMEOUT_SECONDS=${READY_TIMEOUT_SECONDS:-60}
readonly STOP_TIMEOUT_SECONDS=${STOP_TIMEOUT_SECONDS:-30}
readonly REST_START_ATTEMPTS=5
readonly REST_API=slurm/v0.0.38
# Lock file that serialises the starts of this script on one machine, so that two
# of them cannot race for the same ports or run apt-get at the same time.
readonly LOCK_FILE=/run/lock/spillway-slurm-cluster.lock

usage() {
    cat <<'EOF'
Usage: scripts/slurm-cluster.sh start DIR
       scripts/slurm-cluster.sh stop DIR
       scripts/slurm-cluster.sh env DIR

start  install Slurm when missing, run munged, slurmctld, slurmd and slurmrestd with
       their files in DIR, wait until the node is idle and slurmrestd replies, then
       print the cluster's environment (also written to DIR/env)
stop   cancel the cluster's jobs and stop the daemons whose pids are in DIR/run
env    print DIR/env of the running cluster
EOF
}

log() {
    printf 'slurm-cluster.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

check_settings() {
    local name value
    for name in MAX_ARRAY_SIZE GPU_COUNT NODE_CPUS MIN_JOB_AGE CTLD_PORT SLURMD_PORT; do
        value=${!name}
        [[ $value =~ ^[0-9]+$ ]] || die "$name must be a non-negative integer, got '$value'"
    done
    ((MAX_ARRAY_SIZE >= 1)) || die "SLURM_MAX_ARRAY_SIZE must be at least 1, got $MAX_ARRAY_SIZE"
    ((GPU_COUNT >= 1)) || die "SLURM_GPU_COUNT must be at least 1, got $GPU_COUNT"
    ((NODE_CPUS >= 1)) || die "SLURM_NODE_CPUS must be at least 1, got $NODE_CPUS"
    [[ $CLUSTER_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SLURM_CLUSTER_USER is not a valid user name: '$CLUSTER_USER'"
    [[ $CLUSTER_USER != root ]] || die "SLURM_CLUSTER_USER must not be root, because slurmrestd exits when it runs as root; pick another user name"
}

# --- installation -----------------------------------------------------------------

missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            echo "$package"
        fi
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [[ -z $missing ]] && return
    # shellcheck disable=SC2086 # one package name per word
    log "installing Debian packages: "$missing
    if ((EUID != 0)); then
        log "error: installing packages needs root"
        exit 3
    fi
    # Output goes to stderr so that stdout carries only the environment.
    # shellcheck disable=SC2086
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; } >&2; then
        log "error: apt-get could not install the Slurm packages"
        exit 3
    fi
}

ensure_user() {
    id -u "$CLUSTER_USER" >/dev/null 2>&1 && return
    log "creating system user $CLUSTER_USER for slurmrestd"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$CLUSTER_USER" ||
        die "could not create system user $CLUSTER_USER"
}

# --- processes --------------------------------------------------------------------

# Succeed when PID is a live process. A zombie counts as exited.
is_alive() {
    local pid=$1 state
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]]
}

# Succeed when PID is a live process running EXECUTABLE.
is_process_of() {
    local pid=$1 executable=$2
    is_alive "$pid" || return 1
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$executable" ]]
}

# Print the pid recorded in PIDFILE, or fail when there is none.
read_pid() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    pid=${pid//[[:space:]]/}
    [[ $pid =~ ^[0-9]+$ ]] || die "$pidfile does not contain a pid: $pid"
    echo "$pid"
}

# Print the file that DAEMON's processes run. Debian installs slurmctld and slurmd as
# alternatives (symbolic links to slurmctld-wlm and slurmd-wlm), and /proc/PID/exe
# names the link's target.
executable_of() {
    case $1 in
    munged | slurmctld | slurmd | slurmrestd) readlink -f "/usr/sbin/$1" ;;
    *) die "unknown daemon $1" ;;
    esac
}

# Print the pid of DAEMON of the cluster in DIR when it is running, else fail.
running_pid() {
    local dir=$1 daemon=$2 pid
    pid=$(read_pid "$dir/run/$daemon.pid") || return 1
    is_process_of "$pid" "$(executable_of "$daemon")" || return 1
    echo "$pid"
}

# Print which process listens on TCP PORT, or nothing when the port is free.
port_holder() {
    ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1
}

pick_free_port() {
    python3 -c 'import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])'
}

# --- configuration ----------------------------------------------------------------

write_munge_key() {
    local dir=$1
    [[ -s $dir/munge/munge.key ]] && return
    mungekey --create --keyfile="$dir/munge/munge.key" >&2 ||
        die "mungekey could not create $dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
}

write_jwt_key() {
    local dir=$1
    [[ -s $dir/jwt.key ]] && return
    # auth/jwt signs tokens with HS256 and this key; 32 random bytes is the size
    # Slurm's documentation suggests.
    (umask 077 && head -c 32 /dev/urandom >"$dir/jwt.key")
}

write_fake_gpus() {
    local dir=$1 index
    mkdir -p "$dir/gpus"
    # gres.conf File= entries must be device files: Slurm rejects regular files, and
    # /dev/null behind a symbolic link is accepted.
    for ((index = 0; index < GPU_COUNT; index++)); do
        ln -sfn /dev/null "$dir/gpus/nvidia$index"
    done
}

write_gres_conf() {
    local dir=$1
    cat >"$dir/etc/gres.conf" <<EOF
# scripts/slurm-cluster.sh writes this file at every start.
AutoDetect=off
NodeName=node1 Name=gpu File=$dir/gpus/nvidia[0-$((GPU_COUNT - 1))]
EOF
}

write_slurm_conf() {
    local dir=$1 max_job_count=10000
    # MaxArraySize may not exceed MaxJobCount.
    ((MAX_ARRAY_SIZE * 2 > max_job_count)) && max_job_count=$((MAX_ARRAY_SIZE * 2))
    cat >"$dir/etc/slurm.conf" <<EOF
# scripts/slurm-cluster.sh writes this file at every start.
ClusterName=spillway
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root

AuthType=auth/munge
AuthInfo=socket=$dir/munge/munged.sock
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/jwt.key
CredType=cred/munge

StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log

# No cgroups, no accounting database: plugins that need neither.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
MpiDefault=none

# Cores only, so that a job without a memory request does not take the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Lets node1 advertise more CPUs than the machine has, so GPUs bound concurrency.
SlurmdParameters=config_overrides
# Start array tasks as soon as resources free up. With Slurm's defaults a 100-task
# array takes about 54 s on 2 cores; with these and the Epilog, about 4 s.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
Epilog=/bin/true
ReturnToService=2

MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=$max_job_count
MinJobAge=$MIN_JOB_AGE

GresTypes=gpu
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$NODE_CPUS Gres=gpu:$GPU_COUNT State=UNKNOWN
PartitionName=gpu Nodes=node1 Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=node1 MaxTime=10 State=UP
EOF
}

# Print DIR/mint-token, which prints a fresh token for CLUSTER_USER.
write_token_command() {
    local dir=$1
    cat >"$dir/mint-token" <<EOF
#!/bin/sh
# Print a JWT for $CLUSTER_USER, valid for \${1:-600} seconds. Run as root.
set -e
token=\$(SLURM_CONF=$dir/etc/slurm.conf scontrol token username=$CLUSTER_USER lifespan="\${1:-600}")
printf '%s\n' "\${token#SLURM_JWT=}"
EOF
    chmod 700 "$dir/mint-token"
}

write_env() {
    local dir=$1 port=$2
    cat >"$dir/env.tmp" <<EOF
export SLURM_CONF=$dir/etc/slurm.conf
export SLURMRESTD_URL=http://127.0.0.1:$port
export SLURM_JWT_KEY=$dir/jwt.key
export SLURMRESTD_USER=$CLUSTER_USER
export SLURM_TOKEN_COMMAND=$dir/mint-token
EOF
    mv -f "$dir/env.tmp" "$dir/env"
}

# --- start ------------------------------------------------------------------------

start_munged() {
    local dir=$1
    rm -f "$dir/munge/munged.sock" "$dir/munge/munged.sock.lock"
    munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munged.sock" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" 9>&- || return 1
    wait_for "the munged socket" 10 test -S "$dir/munge/munged.sock"
}

start_slurm_daemons() {
    local dir=$1
    slurmctld -f "$dir/etc/slurm.conf" 9>&- || return 1
    slurmd -f "$dir/etc/slurm.conf" -N node1 9>&- || return 1
    wait_for "node1 to be idle" "$READY_TIMEOUT_SECONDS" node_is_idle "$dir"
}

# Succeed when node1 is idle. Returns 2 when a daemon has exited, which waiting
# cannot fix. The daemons write their pid files only after they have forked into
# the background, so a missing pid file means "not yet".
node_is_idle() {
    local dir=$1 daemon pid state
    for daemon in slurmctld slurmd; do
        pid=$(read_pid "$dir/run/$daemon.pid") || return 1
        if ! is_process_of "$pid" "$(executable_of "$daemon")"; then
            log "$daemon exited during start; see $dir/log/$daemon.log"
            return 2
        fi
    done
    state=$(SLURM_CONF=$dir/etc/slurm.conf sinfo --noheader --nodes=node1 --format=%T 2>/dev/null) || return 1
    [[ $state == idle ]]
}

# Run COMMAND until it succeeds, returns 2, or TIMEOUT seconds pass.
wait_for() {
    local what=$1 timeout=$2 status
    shift 2
    local deadline=$((SECONDS + timeout))
    while true; do
        status=0
        "$@" || status=$?
        ((status == 0)) && return 0
        ((status == 2)) && return 1
        if ((SECONDS >= deadline)); then
            log "timed out after $timeout s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

rest_ping() {
    local dir=$1 port=$2 token
    token=$("$dir/mint-token" 60) || return 1
    curl --silent --fail --max-time 5 --output /dev/null \
        --header "X-SLURM-USER-NAME: $CLUSTER_USER" --header "X-SLURM-USER-TOKEN: $token" \
        "http://127.0.0.1:$port/$REST_API/ping"
}

# Start slurmrestd on a free loopback port. Returns 0 when it replies to ping, 2 when
# it could not bind the port, 1 on any other failure.
start_slurmrestd_on() {
    local dir=$1 port=$2 pid deadline
    # slurmrestd stays in the foreground, so it runs in its own session with its pid
    # recorded here. SLURM_JWT=daemon makes it authenticate to slurmctld with JWT.
    SLURM_CONF=$dir/etc/slurm.conf SLURM_JWT=daemon setsid \
        /usr/sbin/slurmrestd -u "$CLUSTER_USER" -s openapi/v0.0.38 -a rest_auth/jwt \
        "127.0.0.1:$port" </dev/null >>"$dir/log/slurmrestd.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$dir/run/slurmrestd.pid"

    deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    while ((SECONDS < deadline)); do
        # Right after the fork the child still runs bash, so this checks only that
        # it lives; `wait` would block on a live child.
        if ! is_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$dir/run/slurmrestd.pid"
            tail -n 5 "$dir/log/slurmrestd.log" | grep -qi 'address already in use' && return 2
            log "slurmrestd (pid $pid) exited during start"
            return 1
        fi
        rest_ping "$dir" "$port" && return 0
        sleep 0.2
    done
    log "slurmrestd did not reply to ping on 127.0.0.1:$port within $READY_TIMEOUT_SECONDS s"
    return 1
}

start_slurmrestd() {
    local dir=$1 attempt port status
    for ((attempt = 1; attempt <= REST_START_ATTEMPTS; attempt++)); do
        port=$(pick_free_port)
        status=0
        start_slurmrestd_on "$dir" "$port" || status=$?
        if ((status == 0)); then
            echo "$port"
            return
        fi
        ((status == 2)) || return 1
        log "port $port was taken before slurmrestd could bind it; retrying (attempt $attempt of $REST_START_ATTEMPTS)"
    done
    log "no free port found for slurmrestd after $REST_START_ATTEMPTS attempts"
    return 1
}

check_ports_free() {
    local port holder
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        holder=$(port_holder "$port")
        [[ -z $holder ]] && continue
        die "port $port is already in use, probably by another Slurm cluster: $holder. Stop that cluster first (scripts/slurm-cluster.sh stop ITS_DIR), or set SLURM_CTLD_PORT and SLURMD_PORT to free ports"
    done
}

# Print the environment when every daemon of DIR runs, fail when none does, and stop
# with an error when only some do.
report_running() {
    local dir=$1 daemon running=() stopped=()
    for daemon in munged slurmctld slurmd slurmrestd; do
        if running_pid "$dir" "$daemon" >/dev/null; then
            running+=("$daemon")
        else
            stopped+=("$daemon")
        fi
    done
    ((${#running[@]} == 0)) && return 1
    if ((${#stopped[@]} > 0)) || [[ ! -s $dir/env ]]; then
        die "the cluster in $dir is partly running (${running[*]} up, ${stopped[*]:-env file} missing); run: scripts/slurm-cluster.sh stop $dir"
    fi
    log "the cluster in $dir is already running"
    cat "$dir/env"
}

start() {
    local dir=$1
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # slurm.conf has no quoting, so paths with spaces or special characters break it.
    [[ $dir =~ ^[A-Za-z0-9_./-]+$ ]] || die "DIR may contain only letters, digits and . _ / -: $dir"

    # The daemons started below must not inherit descriptor 9, or they would hold the
    # lock for as long as they run.
    exec 9>"$LOCK_FILE"
    flock 9

    report_running "$dir" && return
    check_settings
    install_packages
    ensure_user
    check_ports_free

    mkdir -p "$dir"/{etc,munge,run,log,state,spool}
    rm -f "$dir/env" "$dir"/run/*.pid
    # slurmrestd runs as CLUSTER_USER and reads etc/slurm.conf; the keys stay private.
    chmod 755 "$dir" "$dir/etc" "$dir/munge"
    runuser -u "$CLUSTER_USER" -- test -r "$dir/etc" ||
        die "user $CLUSTER_USER cannot read $dir/etc; every parent folder of DIR must be searchable by all users (chmod o+x)"

    write_munge_key "$dir"
    write_jwt_key "$dir"
    write_fake_gpus "$dir"
    write_gres_conf "$dir"
    write_slurm_conf "$dir"
    write_token_command "$dir"

    local started=$SECONDS port
    if ! start_munged "$dir" || ! start_slurm_daemons "$dir" || ! port=$(start_slurmrestd "$dir"); then
        tail -n 20 "$dir"/log/*.log >&2 2>/dev/null || true
        stop "$dir" 2>/dev/null
        die "the cluster failed to start; the logs above are from $dir/log"
    fi
    write_env "$dir" "$port"
    log "started Slurm in $dir in $((SECONDS - started)) s; slurmrestd on 127.0.0.1:$port"
    cat "$dir/env"
}

# --- stop -------------------------------------------------------------------------

# Cancel every job, so that no job step outlives slurmd, and wait until none runs.
cancel_jobs() {
    local dir=$1 job_ids
    export SLURM_CONF=$dir/etc/slurm.conf
    job_ids=$(squeue --noheader --format=%A 2>/dev/null) || return 0
    [[ -z $job_ids ]] && return 0
    # shellcheck disable=SC2086 # one job id per word
    scancel $job_ids 2>/dev/null || true
    wait_for "cancelled jobs to end" 15 no_active_jobs || true
}

no_active_jobs() {
    [[ -z $(squeue --noheader --states=RUNNING,COMPLETING --format=%A 2>/dev/null) ]]
}

stop_daemon() {
    local dir=$1 daemon=$2 pidfile=$1/run/$2.pid pid executable
    pid=$(read_pid "$pidfile") || return 0
    executable=$(executable_of "$daemon")
    if ! is_process_of "$pid" "$executable"; then
        log "$daemon is not running; removing stale $pidfile"
        rm -f "$pidfile"
        return
    fi

    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
    while is_process_of "$pid" "$executable" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if is_process_of "$pid" "$executable"; then
        log "$daemon (pid $pid) did not exit within $STOP_TIMEOUT_SECONDS s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while is_process_of "$pid" "$executable"; do
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
    log "stopped $daemon (pid $pid)"
}

stop() {
    local dir=$1
    [[ -d $dir ]] || die "$dir does not exist"
    dir=$(cd "$dir" && pwd)
    rm -f "$dir/env"
    if running_pid "$dir" slurmctld >/dev/null; then
        cancel_jobs "$dir"
    fi
    local daemon
    for daemon in slurmrestd slurmd slurmctld munged; do
        stop_daemon "$dir" "$daemon"
    done
}

print_env() {
    local dir=$1
    [[ -s $dir/env ]] || die "no cluster is running in $dir ($dir/env not found); run: scripts/slurm-cluster.sh start $dir"
    running_pid "$dir" slurmctld >/dev/null || die "slurmctld of $dir is not running; run: scripts/slurm-cluster.sh start $dir"
    cat "$dir/env"
}

main() {
    if (($# != 2)); then
        usage >&2
        exit 2
    fi
    case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    env) print_env "$2" ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
