#!/usr/bin/env bash
# Measure intake throughput: manifests and tasks per second that a release
# `spillway serve` makes durable from a cloud queue (SQS on a moto server, Pub/Sub on
# Google's emulator), against the ledger's own ceiling in the same run, with Redis
# round trips per task.
#
# Builds the release daemon and tests/examples/intake_bench/, then runs the
# benchmark, which starts its own redis-server, moto and Pub/Sub emulator processes
# on loopback ports and stops them by pid. Without --queues it measures both sqs and
# pubsub. Nothing leaves the machine. Results go to stdout and to
# target/bench/intake_results.json; docs/benchmarks.md explains the method.
#
# Usage: bench/intake_throughput.sh [--manifests 300] [--tasks 1,50]
#            [--concurrency 16] [--queues sqs,pubsub]
# Needs redis-server, the moto install of scripts/install-deps.sh and the Pub/Sub
# emulator jar (Debian package google-cloud-cli-pubsub-emulator, or
# SPILLWAY_PUBSUB_EMULATOR_JAR).

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
