#!/usr/bin/env bash
# Run Spillway's whole test suite: install what is missing, check formatting and
# lints, build the binaries and run every test. Tests start their own redis-server
# processes and daemons on loopback ports and stop them by pid.
#
# Usage: scripts/test.sh

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
cd "$REPO"

echo "==> Installing dependencies (skipped when present)"
libtorch_line=$(bash scripts/install-deps.sh | tail -n 1)
export "${libtorch_line?}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> Building binaries for the integration tests"
cargo build --workspace --bins

echo "==> Script tests"
python3 -m unittest discover -s scripts/tests

echo "==> cargo test"
cargo test --workspace --no-fail-fast

echo "==> Deployment checks (unit, rules, dashboard, a real scrape)"
bash scripts/check-deploy.sh
