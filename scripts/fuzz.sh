#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for FUZZ_SECONDS (default 60) each, installing cargo-fuzz when
# it is missing. cargo-fuzz needs nightly compiler flags: the rustup nightly toolchain when the
# machine has one, else the stable compiler with RUSTC_BOOTSTRAP=1. A crash, a leak, a hang
# (an input running over 10 s) or an RSS over 4 GiB fails the run; the input that did it is in
# fuzz/artifacts/. The corpus grows in fuzz/corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi

seconds="${FUZZ_SECONDS:-60}"
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  cargo "${toolchain[@]}" fuzz run "$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
