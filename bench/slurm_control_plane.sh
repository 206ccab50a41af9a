#!/usr/bin/env bash
# Benchmark of the Slurm backend's control plane on the single-node test cluster.
#
# Usage: bash bench/slurm_control_plane.sh
#
# Builds the release daemon (`spillway`) and the example
# tests/examples/slurm_control_plane.rs, then runs the example. The example starts
# the cluster with scripts/slurm-cluster.sh under the lock that the Slurm tests
# share, so it waits while a test's cluster runs. It also starts a Redis server and
# a daemon per measurement, prints two Markdown tables, and stops each process it
# started by pid:
#   1. one 10,000-task job with a capped fleet: arrays submitted against
#      ⌈workers / MaxArraySize⌉, and the time from admission to the last array;
#   2. 100 jobs in flight: slurmrestd requests per reconcile pass.
# No worker computes anything: the example sets the `gpu` partition DOWN, so every
# array element stays pending, and the worker binary is a stand-in that exits at once.
#
# Needs root (the cluster script installs Slurm when missing and runs its daemons),
# redis-server, and Slurm's fixed ports 6817 and 6818 free.
#
# Settings (environment variables):
#   SPILLWAY_BENCH_TASKS           tasks of the big job (10000)
#   SPILLWAY_BENCH_WORKERS         backend.slurm.max_workers for the big job (1000)
#   SPILLWAY_BENCH_MAX_ARRAY_SIZE  the cluster's MaxArraySize (100)
#   SPILLWAY_BENCH_GPUS            fake GPUs on the node, at most 1024 (1000)
#   SPILLWAY_BENCH_JOBS            jobs in flight for the polling measurement (100)
#   SPILLWAY_BENCH_WINDOW_SECS     length of the polling window in seconds (20)
#   CARGO                          cargo binary (cargo)

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo=${CARGO:-cargo}
release=$root/target/release

log() {
    printf 'slurm_control_plane.sh: %s\n' "$*" >&2
}

bin_dir=
bench_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    # The example stops the cluster, daemons and Redis servers it started when it
    # receives SIGINT; wait for it to finish that.
    if [[ -n $bench_pid ]] && kill -0 "$bench_pid" 2>/dev/null; then
        log "stopping the benchmark (pid $bench_pid)"
        kill -INT "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    [[ -z $bin_dir ]] || rm -rf "$bin_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$root"
log "building the release daemon and the benchmark (cargo skips this when up to date)"
"$cargo" build --release --quiet -p spillway --bin spillway
"$cargo" build --release --quiet -p spillway-tests --example slurm_control_plane

# The test harness looks up `spillway` and `spillway-worker` in SPILLWAY_BIN_DIR.
# The daemon's local backend, which the Slurm backend replaces, only needs the
# worker path to exist, so a stand-in saves building the worker and libtorch.
bin_dir=$(mktemp -d /tmp/spillway-bench-bin.XXXXXX)
chmod 755 "$bin_dir"
ln -s "$release/spillway" "$bin_dir/spillway"
printf '#!/bin/sh\n# Benchmark stand-in for spillway-worker: computes nothing.\nexit 0\n' >"$bin_dir/spillway-worker"
chmod 755 "$bin_dir/spillway-worker"

log "running on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
started=$SECONDS
SPILLWAY_BIN_DIR=$bin_dir "$release/examples/slurm_control_plane" &
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=
log "the benchmark ran for $((SECONDS - started)) s, including the cluster's start and stop"
exit "$status"
