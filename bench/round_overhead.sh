#!/usr/bin/env bash
# Measure the share of a training round spent outside the kernels' passes: a release
# `spillway serve` with local workers runs `contrastive` jobs on Debian pairs, and
# tests/examples/round_bench.rs reads the rounds' and tasks' times from the job's
# envelopes. docs/benchmarks.md explains the method.
#
# Builds the release daemon, worker and benchmark, writes the pairs with
# scripts/debian_pairs.py (once), then runs the benchmark, which starts its own
# redis-server on a loopback port and stops it by pid. Nothing leaves the machine.
# Results go to stdout and to target/bench/round_results.json.
#
# Usage: bench/round_overhead.sh [--rounds 6] [--tasks-per-round 4,8]
#            [--records-per-task 32] [--workers 2] [--keep DIR]

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
cd "$ROOT"

cargo build --release --quiet -p spillway -p spillway-worker
cargo build --release --quiet -p spillway-tests --example round_bench

PAIRS="$ROOT/target/bench/round_pairs"
if [[ ! -f "$PAIRS/train/inputs.json" ]]; then
    python3 scripts/debian_pairs.py --out "$PAIRS" >/dev/null
fi

{
    echo "round_overhead: $(rustc --version), $(uname -sr), $(nproc) CPUs"
    echo "round_overhead: $(redis-server --version)"
} >&2
SPILLWAY_BIN_DIR="$ROOT/target/release" \
    exec "$ROOT/target/release/examples/round_bench" --inputs "$PAIRS/train/inputs.json" "$@"
