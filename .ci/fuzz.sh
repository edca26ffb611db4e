#!/usr/bin/env bash
# Short fuzzing pass over every cargo-fuzz target in fuzz/ (client command parser, upstream reply
# parser, stored-format decoder, config loader): builds them, then runs each for FUZZ_SECONDS
# (default 30) starting from the committed seed corpus. A crash, a leak or an input slower than
# 10 s fails the script; libFuzzer prints the input and cargo-fuzz saves it under
# fuzz/artifacts/TARGET/ (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-30}"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, so CI needs no second toolchain.
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

targets=$(cargo fuzz list)
echo "fuzz targets: $(echo $targets)"
cargo fuzz build 2>&1 | tail -n 3

for t in $targets; do
  # New inputs go to a scratch directory; the committed corpus is only read.
  scratch=$(mktemp -d)
  echo "== fuzz $t for ${SECONDS_EACH}s"
  log="$scratch.log"
  set +e
  cargo fuzz run "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1
  status=$?
  set -e
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)" "$log" || true
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz target $t failed (exit $status); the input is under fuzz/artifacts/$t/" >&2
    exit "$status"
  fi
  rm -f "$log"
done
echo "fuzzing: no crash in $(echo $targets | wc -w) targets x ${SECONDS_EACH}s"
