#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS (first argument, else FUZZ_SECONDS, else 60)
# each, starting from its committed seeds (fuzz/seeds/TARGET) and the corpus grown by earlier
# runs (fuzz/corpus/TARGET, not committed). Installs cargo-fuzz when missing. cargo-fuzz needs
# nightly compiler flags: the rustup nightly toolchain when the machine has one, else the
# stable compiler with RUSTC_BOOTSTRAP=1. A crash, a failed invariant, a leak, a hang (an input
# running over 10 s) or an RSS over 4 GiB fails the run; the input is left in
# fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-${FUZZ_SECONDS:-60}}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi

# One build for all targets, then one run each.
cargo "${toolchain[@]}" fuzz build
for target in $(cargo fuzz list); do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target" "seeds/$target"
  cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
