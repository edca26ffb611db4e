#!/usr/bin/env bash
# Redis's own test suite (the Tcl suite of Redis 7.0, external-server mode) run directly against
# a fresh redis-server and through a statecar in front of one, then compared.
#
#   tests/redis-suite/run.sh REDIS_SRC
#
# REDIS_SRC is a directory holding Redis 7.0.x's `tests/` and `runtest` (nothing else is used).
# This script fetches nothing; obtain it once, from a git clone of the redis/redis repository:
#   mkdir REDIS_SRC && git -C redis archive 7.0.15 tests runtest | tar x -C REDIS_SRC
# or from Redis's 7.0.15 release tarball (redis-7.0.15.tar.gz holds both).
# It is copied per mode into a temporary directory, so the suite never writes into REDIS_SRC.
#
# Needs: bash, tclsh (8.5+), redis-server and redis-cli (7.0.x, the version of the suite),
# python3, coreutils' timeout; cargo only when STATECAR_BIN is not given.
#
# Environment:
#   MODES         modes to run, in order (default "direct statecar"):
#                   direct          the suite against redis-server itself
#                   statecar        through statecar with one state rule on a prefix the suite
#                                   never uses (what is measured: pass-through as deployed)
#                   statecar-plain  through statecar with no state rule at all
#   OUT           results directory (default: a new directory under ${TMPDIR:-/tmp});
#                 per mode MODE.log (every unit's output, in order) and MODE/ (each unit's
#                 log, redis-server's and statecar's logs)
#   STATECAR_BIN  statecar binary (default: `cargo build --release`, then target/release/statecar)
#   UNITS         units to run (default: every unit of the suite, `./runtest --list-tests`)
#   TAGS          the suite's --tags (default below: what needs the server's own process,
#                 replication, DEBUG or SAVE is left out; external:skip is left out by the
#                 suite itself in external mode)
#   TEST_TIMEOUT  seconds without a test finishing before the suite gives up on a unit (300)
#   UNIT_TIMEOUT  wall-clock seconds per unit (1800)
#   RUNTEST_ARGS  more arguments for every ./runtest (e.g. "--only /TRACKING" to look closer;
#                 words split on spaces)
#
# Each unit runs with its own fresh redis-server (and statecar), `--singledb --durable
# --clients 1`, so that one unit's aborted test or stuck script cannot fail the next unit, and
# a random --baseport (the suite's own listener), so that two runs can share a machine.
# The exit status is compare.py's: 0 when every test that passes directly also passes through
# statecar or is listed in tests/redis-suite/exclusions.txt.
set -euo pipefail

# shellcheck source=tests/redis-suite/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_SRC=$(dir_arg "$@") || exit 2
if [ ! -x "$REDIS_SRC/runtest" ] || [ ! -f "$REDIS_SRC/tests/test_helper.tcl" ]; then
  die "$REDIS_SRC does not hold Redis's runtest and tests/ (see the header of $0)"
fi

MODES=${MODES:-direct statecar}
TAGS=${TAGS:--needs:repl -needs:debug -needs:pfdebug -needs:save -needs:local-process}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-1800}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/redis-suite-results.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

need tclsh redis-server redis-cli python3 timeout
version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
case $version in
  7.0.*) ;;
  *) log "warning: redis-server is $version; the suite is Redis 7.0's, so some tests will not fit" ;;
esac
for mode in $MODES; do
  if mode_needs_statecar "$mode"; then
    resolve_statecar_bin
    break
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-suite-work.XXXXXX")
trap 'suite_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# prepare_src DIR: a private copy of the suite, with src/ pointing at the installed binaries
# (a few tests run src/redis-cli or src/redis-server themselves).
prepare_src() {
  local dir=$1 b
  mkdir -p "$dir/src"
  cp -R "$REDIS_SRC/tests" "$REDIS_SRC/runtest" "$dir/"
  rm -rf "$dir/tests/tmp"
  mkdir -p "$dir/tests/tmp"
  for b in redis-server redis-cli redis-benchmark redis-check-aof redis-check-rdb; do
    if command -v "$b" >/dev/null 2>&1; then
      ln -sf "$(command -v "$b")" "$dir/src/$b"
    fi
  done
}

if [ -z "${UNITS:-}" ]; then
  prepare_src "$WORK/list"
  UNITS=$(cd "$WORK/list" && ./runtest --list-tests)
fi

# run_unit MODE UNIT: one unit against a fresh target; its output is appended to OUT/MODE.log
# between markers that compare.py reads.
run_unit() {
  local mode=$1 unit=$2 name rc start extra=()
  # shellcheck disable=SC2206 # RUNTEST_ARGS is a list of words on purpose.
  [ -n "${RUNTEST_ARGS:-}" ] && extra=($RUNTEST_ARGS)
  name=${unit//\//_}
  start_target "$mode" "$WORK/$mode/srv-$name"
  start=$(date +%s)
  rc=0
  (cd "$WORK/$mode/src" &&
    TERM=dumb timeout -k 10 "$UNIT_TIMEOUT" ./runtest --host 127.0.0.1 --port "$TARGET_PORT" \
      --singledb --durable --clients 1 --timeout "$TEST_TIMEOUT" \
      --baseport "$((20000 + RANDOM % 9000))" \
      --tags "$TAGS" --single "$unit" "${extra[@]}") >"$OUT/$mode/$name.log" 2>&1 || rc=$?
  stop_target
  for f in redis.log statecar.log statecar.toml; do
    if [ -f "$WORK/$mode/srv-$name/$f" ]; then
      cp "$WORK/$mode/srv-$name/$f" "$OUT/$mode/$name.$f"
    fi
  done
  rm -rf "$WORK/$mode/srv-$name"
  {
    printf '### unit: %s\n' "$unit"
    cat "$OUT/$mode/$name.log"
    printf '### unit-end: %s rc=%s seconds=%s\n' "$unit" "$rc" "$(($(date +%s) - start))"
  } >>"$OUT/$mode.log"
  log "$mode $unit: rc=$rc, $(grep -c '^\[ok\]' "$OUT/$mode/$name.log" || true) ok," \
    "$(grep -c '^\[err\]' "$OUT/$mode/$name.log" || true) err," \
    "$(grep -c '^\[exception\]\|TIMEOUT' "$OUT/$mode/$name.log" || true) exception/timeout"
}

for mode in $MODES; do
  mkdir -p "$OUT/$mode"
  : >"$OUT/$mode.log"
  {
    printf '### mode: %s\n' "$mode"
    printf '### redis-server: %s\n' "$(redis-server --version)"
    if mode_needs_statecar "$mode"; then
      printf '### statecar: %s\n' "$STATECAR_BIN"
    fi
    printf '### tags: %s\n' "$TAGS"
    printf '### started: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >>"$OUT/$mode.log"
  prepare_src "$WORK/$mode/src"
  log "mode $mode: $(echo "$UNITS" | wc -w) units, results in $OUT/$mode.log"
  for unit in $UNITS; do
    run_unit "$mode" "$unit"
  done
  printf '### finished: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OUT/$mode.log"
done

status=0
for mode in $MODES; do
  [ "$mode" = direct ] && continue
  if [ -f "$OUT/direct.log" ]; then
    echo
    echo "== direct vs $mode"
    python3 "$SUITE_DIR/compare.py" --exclusions "$SUITE_DIR/exclusions.txt" \
      "$OUT/direct.log" "$OUT/$mode.log" | tee "$OUT/compare-$mode.txt" || status=$?
  fi
done
echo "results: $OUT"
exit "$status"
