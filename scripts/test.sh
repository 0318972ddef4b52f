#!/usr/bin/env bash
# The whole test suite, set-up included: system packages, lints, unit tests, the tests
# against real peers (QEMU guests, tap devices in namespaces), then the fuzz targets for a
# fixed time each. Needs root for the peers.
# CI runs exactly this script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
# Everything is checked and tested with the af-xdp netdev built in (its build tools are above).
FEATURES=(--features vhost-user-netd/af-xdp,vhost-user-netd-backends/af-xdp,vhost-user-netd/sandbox-probe)
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
# ... and without it, as README's first command builds the daemon.
cargo clippy --workspace --locked -- -D warnings
cargo clippy -p vhost-user-netd --features fuzzing --lib --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet "${FEATURES[@]}"

# Tests that need root/QEMU fail instead of skipping when something is missing.
export VUNETD_FULL_SUITE=1
cargo test --workspace --locked "${FEATURES[@]}"

# Every fuzz target gets a short budget: a target that no longer builds or crashes at once
# fails the run (long runs: `bash scripts/fuzz.sh 3600`, see docs/fuzzing.md).
bash scripts/fuzz.sh 20
