#!/usr/bin/env bash
# The whole test suite, set-up included: system packages, lints, unit tests, and the tests
# against real peers (QEMU guests, tap devices in namespaces). Needs root for the latter.
# CI runs exactly this script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Tests that need root/QEMU fail instead of skipping when something is missing.
export VUNETD_FULL_SUITE=1
cargo test --workspace --locked
