#!/usr/bin/env bash
# Measure intake throughput: manifests and tasks per second that a release
# `spillway serve` makes durable from a cloud queue (SQS on a moto server), against
# the ledger's own ceiling in the same run, with Redis round trips per task.
#
# Builds the release daemon and tests/examples/intake_bench.rs, then runs the
# benchmark, which starts its own redis-server and moto processes on loopback ports
# and stops them by pid. Nothing leaves the machine. Results go to stdout and to
# target/bench/intake_results.json; docs/benchmarks.md explains the method.
#
# Usage: bench/intake_throughput.sh [--manifests 300] [--tasks 1,50]
#            [--concurrency 16] [--queues sqs]
# Needs redis-server and the moto install of scripts/install-deps.sh.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
cd "$ROOT"

cargo build --release --quiet -p spillway
cargo build --release --quiet -p spillway-tests --example intake_bench

{
    echo "intake_throughput: $(rustc --version), $(uname -sr), $(nproc) CPUs"
    echo "intake_throughput: $(redis-server --version)"
} >&2
exec "$ROOT/target/release/examples/intake_bench" --daemon "$ROOT/target/release/spillway" "$@"
