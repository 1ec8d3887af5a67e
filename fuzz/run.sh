#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) with the nightly toolchain, starting
# from the committed corpus (fuzz/corpus/TARGET, read only) and writing what it finds
# to target/fuzz-corpus/TARGET. A crash fails the run; its input is left in
# fuzz/artifacts/TARGET for a regression test.
#   fuzz/run.sh          # 20 s each (what .ci/run does)
#   fuzz/run.sh 600      # longer, by hand
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
cargo +nightly fuzz build -O 2>&1 | tail -1
for target in $(cargo +nightly fuzz list); do
    scratch=../target/fuzz-corpus/$target
    mkdir -p "$scratch" "corpus/$target"
    printf '%-20s ' "$target"
    out=$(cargo +nightly fuzz run -O "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 2>&1) || {
        echo "FAILED"; echo "$out" | tail -40; exit 1; }
    echo "$out" | grep -o 'Done [0-9]* runs in [0-9]* second(s)' | tail -1
done
