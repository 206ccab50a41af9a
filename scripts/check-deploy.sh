#!/usr/bin/env bash
# Check Spillway's deployment files: the systemd unit, sysusers and tmpfiles
# entries, `make install`, the example configuration, the Prometheus rules, the
# metrics exposition and the Grafana dashboard.
#
# Usage: scripts/check-deploy.sh
#
# Needs Debian's systemd tools (systemd-analyze, systemd-sysusers and
# systemd-tmpfiles, but no running systemd), prometheus (promtool and the server),
# redis-server, curl and python3 with PyYAML. The binaries come from
# $SPILLWAY_BIN_DIR, default target/debug, which `cargo build --workspace --bins`
# fills. The script starts its own redis-server, `spillway serve` and Prometheus
# on free loopback ports and stops them by pid. Every check runs even when an earlier one failed; the last
# line counts them, and the exit status is 1 when any failed. Logs stay in the
# work folder when a check fails, or always with KEEP_WORK=1.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
BIN_DIR=$(cd "${SPILLWAY_BIN_DIR:-$REPO/target/debug}" 2>/dev/null && pwd) || BIN_DIR=${SPILLWAY_BIN_DIR:-$REPO/target/debug}
readonly BIN_DIR
# The unit's exposure score must stay at or below 2.0, and systemd-analyze takes
# the threshold in tenths.
readonly MAX_EXPOSURE_TENTHS=20
readonly READY_TIMEOUT_SECONDS=30

WORK=$(mktemp -d /tmp/spillway-check-deploy.XXXXXX)
readonly WORK
passed=0
failed=0
daemon_pid=
prometheus_pid=

log() {
    printf 'check-deploy.sh: %s\n' "$*" >&2
}

cleanup() {
    local pid
    for pid in "$daemon_pid" "$prometheus_pid"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ -f $WORK/redis/redis.pid ]]; then
        bash "$REPO/scripts/redis-server.sh" stop "$WORK/redis" 2>/dev/null || true
    fi
    if ((failed > 0)) || [[ ${KEEP_WORK:-} == 1 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Run one named check. Its output goes to $WORK/NAME.log and is shown when it fails.
check() {
    local name=$1
    shift
    if "$@" >"$WORK/$name.log" 2>&1; then
        passed=$((passed + 1))
        printf 'ok      %s\n' "$name"
    else
        failed=$((failed + 1))
        printf 'FAILED  %s (log: %s)\n' "$name" "$WORK/$name.log"
        sed 's/^/        /' "$WORK/$name.log" | tail -n 40
    fi
}

require_tools() {
    local tool missing=()
    for tool in systemd-analyze systemd-sysusers systemd-tmpfiles promtool prometheus redis-server curl python3 make; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} > 0)); then
        log "error: missing ${missing[*]}; install Debian's systemd, prometheus, redis-server and curl packages"
        exit 1
    fi
    local binary
    for binary in spillway spillway-worker; do
        if [[ ! -x $BIN_DIR/$binary ]]; then
            log "error: $BIN_DIR/$binary not found; run 'cargo build --workspace --bins' or set SPILLWAY_BIN_DIR"
            exit 1
        fi
    done
}

free_port() {
    python3 -c 'import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])'
}

# Wait until URL responds with HTTP 200, or fail after READY_TIMEOUT_SECONDS.
wait_for_http() {
    local url=$1 deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# --- install ---------------------------------------------------------------

STAGE=$WORK/root

check_make_install() {
    make -C "$REPO" install DESTDIR="$STAGE" BUILD_DIR="$BIN_DIR"
    local expected actual
    expected=$(
        cat <<'EOF'
/etc/spillway/spillway.toml
/usr/bin/spillway
/usr/bin/spillway-worker
/usr/lib/spillway/spillway
/usr/lib/spillway/spillway-worker
/usr/lib/systemd/system/spillway.service
/usr/lib/sysusers.d/spillway.conf
/usr/lib/tmpfiles.d/spillway.conf
/usr/share/doc/spillway/configuration.md
/usr/share/doc/spillway/operations.md
/usr/share/doc/spillway/spillway.toml.example
/usr/share/spillway/grafana/spillway.json
/usr/share/spillway/prometheus/spillway.rules.yml
EOF
    )
    actual=$(cd "$STAGE" && find . \( -type f -o -type l \) | sed 's/^\.//' | sort)
    echo "installed files:"
    echo "$actual"
    diff <(echo "$expected") <(echo "$actual")
    [[ $(readlink "$STAGE/usr/bin/spillway") == /usr/lib/spillway/spillway ]]

    # A second install keeps an edited configuration.
    echo '# edited by the admin' >>"$STAGE/etc/spillway/spillway.toml"
    make -C "$REPO" install DESTDIR="$STAGE" BUILD_DIR="$BIN_DIR"
    grep -q '^# edited by the admin$' "$STAGE/etc/spillway/spillway.toml"
}

check_make_install_prefix() {
    local stage=$WORK/root-local
    make -C "$REPO" install DESTDIR="$stage" PREFIX=/usr/local BUILD_DIR="$BIN_DIR"
    grep -q '^ExecStart=/usr/local/bin/spillway ' "$stage/usr/local/lib/systemd/system/spillway.service"
    grep -q '^worker_binary = "/usr/local/lib/spillway/spillway-worker"$' "$stage/etc/spillway/spillway.toml"
}

# sysusers.d and tmpfiles.d entries applied to the staged tree: the user exists
# and owns its folders.
check_sysusers_tmpfiles() {
    mkdir -p "$STAGE/etc"
    systemd-sysusers --root="$STAGE"
    grep '^spillway:' "$STAGE/etc/passwd"
    systemd-tmpfiles --root="$STAGE" --create
    local uid folder
    uid=$(awk -F: '$1 == "spillway" { print $3 }' "$STAGE/etc/passwd")
    for folder in var/lib/spillway var/cache/spillway var/log/spillway var/log/spillway/workers; do
        [[ $(stat -c '%u %a' "$STAGE/$folder") == "$uid 750" ]] || {
            echo "$folder: expected owner $uid and mode 750, got $(stat -c '%u %a' "$STAGE/$folder")"
            return 1
        }
    done
}

# --- systemd ---------------------------------------------------------------

# systemd-analyze verify exits 0 on most warnings, so any output counts as a
# failure. ExecStart must name an existing file: point it at the staged binary.
check_unit_verify() {
    local dir=$WORK/verify output
    mkdir -p "$dir"
    sed "s|^ExecStart=/usr/bin/spillway |ExecStart=$STAGE/usr/lib/spillway/spillway |" \
        "$STAGE/usr/lib/systemd/system/spillway.service" >"$dir/spillway.service"
    output=$(systemd-analyze verify "$dir/spillway.service" 2>&1) || {
        echo "$output"
        return 1
    }
    if [[ -n $output ]]; then
        echo "$output"
        return 1
    fi
}

check_unit_security() {
    systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE_TENTHS" \
        "$REPO/systemd/spillway.service" | tail -n 1
}

# --- Prometheus rules and Grafana dashboard ----------------------------------

check_rules() {
    promtool check rules "$REPO/deploy/prometheus/spillway.rules.yml"
    (cd "$REPO/deploy/prometheus" && promtool test rules spillway.rules.test.yml)
}

check_dashboard() {
    local scrape_args=()
    if [[ -s $WORK/metrics.txt ]]; then
        scrape_args=(--scrape "$WORK/metrics.txt")
    fi
    python3 "$REPO/deploy/tests/check_dashboard.py" "$REPO/deploy/grafana/spillway.json" \
        "$REPO/deploy/prometheus/spillway.rules.yml" "$REPO/docs/design.md" "${scrape_args[@]}"
}

# --- a running daemon --------------------------------------------------------

REDIS_URL=
METRICS_PORT=

start_redis() {
    REDIS_URL=$(bash "$REPO/scripts/redis-server.sh" start "$WORK/redis" | tail -n 1)
}

# Run a command with the example file's paths replaced by this machine's, set
# through the environment overrides the way a systemd drop-in would. `env` execs
# the command, so a background run's $! is the command's pid.
example_env() {
    exec env SPILLWAY__LEDGER__URL="$REDIS_URL" \
        SPILLWAY__DAEMON__METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
        SPILLWAY__BACKEND__LOCAL__WORKER_BINARY="$BIN_DIR/spillway-worker" \
        SPILLWAY__BACKEND__LOCAL__CACHE_DIR="$WORK/cache" \
        SPILLWAY__BACKEND__LOCAL__LOG_DIR="$WORK/workers" \
        "$@"
}

# Load the example configuration with the real binary. check-config validates and
# probes. A binary built before check-config existed runs status instead, which
# validates the file and then connects to the ledger.
check_example_config() {
    local example=$REPO/docs/examples/spillway.toml
    if "$BIN_DIR/spillway" check-config --help >/dev/null 2>&1; then
        (example_env "$BIN_DIR/spillway" --config "$example" check-config)
    else
        echo "this spillway has no check-config command; using status"
        (example_env "$BIN_DIR/spillway" --config "$example" status)
    fi

    # The commented-out password_file key parses, and a missing file is named.
    local with_password=$WORK/with-password.toml output
    sed 's|^# password_file = .*|password_file = "/nonexistent/redis-password"|' "$example" >"$with_password"
    grep -q '^password_file = ' "$with_password"
    if output=$(example_env "$BIN_DIR/spillway" --config "$with_password" status 2>&1); then
        echo "expected an error for the missing password file, got: $output"
        return 1
    fi
    echo "$output"
    grep -q 'ledger.password_file /nonexistent/redis-password' <<<"$output"
}

start_daemon() {
    example_env "$BIN_DIR/spillway" --config "$REPO/docs/examples/spillway.toml" serve \
        >"$WORK/daemon.log" 2>&1 &
    daemon_pid=$!
    # The background subshell execs env, which execs spillway: the pid is the daemon's.
    sleep 0.2
    [[ $(readlink "/proc/$daemon_pid/exe") == "$BIN_DIR/spillway" ]] || {
        log "pid $daemon_pid is not $BIN_DIR/spillway"
        return 1
    }
    wait_for_http "http://127.0.0.1:$METRICS_PORT/healthz" || {
        log "spillway serve did not answer on 127.0.0.1:$METRICS_PORT; see $WORK/daemon.log"
        return 1
    }
}

# promtool check metrics reads the Prometheus text format 0.0.4. The body goes in
# as served, so OpenMetrics-only syntax shows up as complaints.
check_metrics() {
    curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt"
    promtool check metrics <"$WORK/metrics.txt"
}

# A real Prometheus scrapes the daemon with the alerting rules loaded. Every
# dashboard query must run, every rule must evaluate without error, and the
# backlog read through the HTTP API must match /metrics.
check_prometheus() {
    local port api
    port=$(free_port)
    api=http://127.0.0.1:$port/api/v1
    cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $REPO/deploy/prometheus/spillway.rules.yml
scrape_configs:
  - job_name: spillway
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus-data" \
        --web.listen-address="127.0.0.1:$port" >"$WORK/prometheus-server.log" 2>&1 &
    prometheus_pid=$!
    wait_for_http "http://127.0.0.1:$port/-/ready"

    python3 - "$api" "$REPO/deploy/grafana/spillway.json" "$METRICS_PORT" <<'EOF'
import json, sys, time, urllib.parse, urllib.request

api, dashboard_path, metrics_port = sys.argv[1], sys.argv[2], sys.argv[3]

def get(path, **params):
    url = f"{api}/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)

def query(expr):
    return get("query", query=expr)

# Wait for three scrapes so that rate() has samples.
deadline = time.time() + 30
while time.time() < deadline:
    result = query('count_over_time(up{job="spillway"}[1m])')["data"]["result"]
    if result and float(result[0]["value"][1]) >= 3:
        break
    time.sleep(0.5)
else:
    sys.exit("Prometheus did not scrape the daemon three times within 30 s")

problems = []
up = query('up{job="spillway"}')["data"]["result"]
if not up or up[0]["value"][1] != "1":
    problems.append(f"up is {up}, expected 1")

with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
    scraped = [line for line in response.read().decode().splitlines()
               if line.startswith("spillway_intake_backlog_messages{")]
backlog = query("spillway_intake_backlog_messages")["data"]["result"]
print("backlog through Prometheus:", backlog, "scraped:", scraped)
if not backlog or not scraped or float(backlog[0]["value"][1]) != float(scraped[0].rsplit(" ", 1)[1]):
    problems.append(f"backlog through Prometheus {backlog} does not match /metrics {scraped}")

dashboard = json.load(open(dashboard_path))
substitutions = {"$instance": ".*", "$__rate_interval": "1m", "$__range": "5m"}
count = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"]
        for name, value in substitutions.items():
            expr = expr.replace(name, value)
        try:
            query(expr)
            count += 1
        except urllib.error.HTTPError as error:
            problems.append(f"panel {panel['title']!r}: {expr}: {error.read().decode()}")
print(f"ran {count} dashboard queries")

time.sleep(2)
for group in get("rules")["data"]["groups"]:
    for rule in group["rules"]:
        if rule.get("health") != "ok":
            problems.append(f"rule {rule['name']}: health {rule.get('health')}: {rule.get('lastError')}")
        print(f"rule {rule['name']}: {rule.get('health')}, {rule.get('state')}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
EOF
}

main() {
    require_tools
    log "work folder $WORK, binaries from $BIN_DIR"

    check make-install check_make_install
    check make-install-prefix check_make_install_prefix
    check sysusers-tmpfiles check_sysusers_tmpfiles
    check systemd-analyze-verify check_unit_verify
    check systemd-analyze-security check_unit_security
    check promtool-rules check_rules

    METRICS_PORT=$(free_port)
    check redis-start start_redis
    if [[ -n $REDIS_URL ]]; then
        check example-config check_example_config
        check daemon-start start_daemon
        if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
            check promtool-metrics check_metrics
            check prometheus-scrape check_prometheus
        fi
    fi
    check dashboard check_dashboard

    echo "$passed passed, $failed failed"
    ((failed == 0))
}

main "$@"
