#!/usr/bin/env bash
# Profile statecar's plain-proxy path under redis-benchmark load.
#
# Usage: benches/proxy_profile.sh [callgrind|perf] [--no-build]
#
#   callgrind (default)  valgrind --tool=callgrind on the release binary (it has debug=1 symbols).
#                        Counters are zeroed after a warm-up and dumped right after the measured
#                        run, so the profile holds only the steady state. Instruction counts are
#                        repeatable (unlike times on a shared 2-core machine); valgrind runs the
#                        threads one at a time and ~50x slower, so use it to compare code paths,
#                        not to predict rps. User space only: syscalls show up as call counts.
#   perf                 perf record -e cpu-clock --call-graph dwarf on the running proxy at full
#                        speed: includes kernel time (syscalls, wake-ups), but samples are noisy.
#
# Environment (defaults in brackets):
#   PROFILE_TEST=get        redis-benchmark test (get, set, ping_mbulk, ...)
#   PROFILE_SIZE=100        value size (-d); the keyspace is prefilled with values of this size
#   PROFILE_PIPELINE=1      -P
#   PROFILE_CLIENTS=50      -c
#   PROFILE_REQUESTS=20000  -n of the measured run (callgrind); perf records PROFILE_SECONDS instead
#   PROFILE_SECONDS=5       perf only
#   PROFILE_TOP=15          functions listed
#   BENCH_WORKERS=, BENCH_UPSTREAM_CONNS=, BENCH_STATECAR_BIN=   as for proxy_bench.sh (unset: defaults)
#
# Output: a summary on stdout; the raw profile (callgrind.out / perf.data) and the full annotation
# under target/proxy-profile/<timestamp>/. Processes it starts are stopped on exit.

# Parsed whole before it runs (see proxy_bench.sh).
{
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/benches/proxy_bench.py"
TOOL=callgrind
BUILD=1
for arg in "$@"; do
    case "$arg" in
        callgrind|perf) TOOL=$arg ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^# Parsed whole/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "proxy_profile: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
PROFILE_TEST=${PROFILE_TEST:-get}
PROFILE_SIZE=${PROFILE_SIZE:-100}
PROFILE_PIPELINE=${PROFILE_PIPELINE:-1}
PROFILE_CLIENTS=${PROFILE_CLIENTS:-50}
PROFILE_REQUESTS=${PROFILE_REQUESTS:-20000}
PROFILE_SECONDS=${PROFILE_SECONDS:-5}
PROFILE_TOP=${PROFILE_TOP:-15}
BENCH_WORKERS=${BENCH_WORKERS:-}
BENCH_UPSTREAM_CONNS=${BENCH_UPSTREAM_CONNS:-}

log() { printf '[proxy_profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ $TOOL == callgrind ]]; then
    command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
else
    command -v perf >/dev/null || die "perf not found"
fi

if [[ -n "${BENCH_STATECAR_BIN:-}" ]]; then
    BIN=$BENCH_STATECAR_BIN
else
    BIN="$ROOT/target/release/statecar"
    if [[ $BUILD -eq 1 ]]; then
        (cd "$ROOT" && cargo build --release --bin statecar) || die "release build failed"
    fi
fi
[[ -x "$BIN" ]] || die "no statecar binary at $BIN"

OUT="$ROOT/target/proxy-profile/$(date -u +%Y%m%dT%H%M%SZ)-$TOOL"
mkdir -p "$OUT"
PIDS=()
alive() { [[ -e /proc/$1 ]] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
stop_pid() {
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done # valgrind needs time to write
    alive "$pid" && { kill -KILL -- "-$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local rc=$? i todo=("${PIDS[@]}")
    trap - EXIT INT TERM
    for ((i = ${#todo[@]} - 1; i >= 0; i--)); do stop_pid "${todo[i]}"; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r P_REDIS P_SC < <(python3 "$HELPER" freeport 2)
setsid redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no --daemonize no \
    --dir "$OUT" >"$OUT/redis.log" 2>&1 &
PID_REDIS=$!
PIDS+=("$PID_REDIS")
python3 "$HELPER" wait "$P_REDIS" --timeout 15 || die "redis did not start"
python3 "$HELPER" prefill "$P_REDIS" --size "$PROFILE_SIZE" --keys 100000

{
    echo "listen = \"127.0.0.1:$P_SC\""
    echo "[upstream]"
    echo "url = \"redis://127.0.0.1:$P_REDIS/0\""
    [[ -n $BENCH_UPSTREAM_CONNS ]] && echo "max_connections = $BENCH_UPSTREAM_CONNS"
    echo "[server]"
    [[ -n $BENCH_WORKERS ]] && echo "worker_threads = $BENCH_WORKERS"
    echo "drain_timeout_s = 1"
    echo "[log]"
    echo "level = \"warn\""
} >"$OUT/statecar.toml"
SC_ENV=(env)
while IFS= read -r v; do SC_ENV+=(-u "$v"); done < <(compgen -e | grep '^STATECAR_' || true)

RB=(redis-benchmark -h 127.0.0.1 -p "$P_SC" -t "$PROFILE_TEST" -d "$PROFILE_SIZE" -P "$PROFILE_PIPELINE"
    -c "$PROFILE_CLIENTS" -r 100000 --csv)
CASE="$PROFILE_TEST -d $PROFILE_SIZE -P $PROFILE_PIPELINE -c $PROFILE_CLIENTS"

if [[ $TOOL == callgrind ]]; then
    setsid "${SC_ENV[@]}" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
        "$BIN" --config "$OUT/statecar.toml" >"$OUT/statecar.log" 2>&1 &
    PID_SC=$!
    PIDS+=("$PID_SC")
    python3 "$HELPER" wait "$P_SC" --timeout 120 || die "statecar under valgrind did not start; see $OUT/statecar.log"
    log "warm-up"
    "${RB[@]}" -n 2000 >/dev/null 2>&1 || die "warm-up run failed"
    callgrind_control -z "$PID_SC" >/dev/null || die "callgrind_control -z failed"
    log "measured run: $CASE -n $PROFILE_REQUESTS"
    "${RB[@]}" -n "$PROFILE_REQUESTS" | tee "$OUT/redis-benchmark.csv"
    callgrind_control -d "$PID_SC" >/dev/null || die "callgrind_control -d failed"
    sleep 1
    DUMP=""
    for f in "$OUT"/callgrind.out.*; do [[ -e $f && ( -z $DUMP || $f -nt $DUMP ) ]] && DUMP=$f; done
    [[ -n $DUMP ]] || die "no callgrind dump in $OUT"
    stop_pid "$PID_SC"
    callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" >"$OUT/inclusive.txt" 2>/dev/null || true
    callgrind_annotate --threshold=100 "$DUMP" >"$OUT/self.txt" 2>/dev/null || true
    echo
    echo "statecar (worker_threads=${BENCH_WORKERS:-default}, max_connections=${BENCH_UPSTREAM_CONNS:-default}), redis-benchmark $CASE -n $PROFILE_REQUESTS:"
    python3 "$HELPER" callgrind-top "$DUMP" --requests "$PROFILE_REQUESTS" --top "$PROFILE_TOP" | tee "$OUT/summary.md"
    echo
    echo "Summary: $OUT/summary.md; callgrind_annotate output: $OUT/inclusive.txt, $OUT/self.txt; raw: $DUMP"
else
    setsid "${SC_ENV[@]}" "$BIN" --config "$OUT/statecar.toml" >"$OUT/statecar.log" 2>&1 &
    PID_SC=$!
    PIDS+=("$PID_SC")
    python3 "$HELPER" wait "$P_SC" --timeout 15 || die "statecar did not start"
    "${RB[@]}" -n 2000 >/dev/null 2>&1 || die "warm-up run failed"
    setsid "${RB[@]}" -n 100000000 >"$OUT/redis-benchmark.csv" 2>&1 &
    PID_RB=$!
    PIDS+=("$PID_RB")
    sleep 1
    log "perf record for ${PROFILE_SECONDS}s: $CASE"
    perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$PID_SC" -o "$OUT/perf.data" \
        -- sleep "$PROFILE_SECONDS" >/dev/null 2>&1 || die "perf record failed"
    # Commands Redis processed during the perf stat window = requests through the proxy.
    cmds() { redis-cli -h 127.0.0.1 -p "$P_REDIS" info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
    C0=$(cmds)
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "$PID_SC" -- sleep 2 2>"$OUT/perf-stat.csv" || true
    C1=$(cmds)
    stop_pid "$PID_RB"
    perf report -i "$OUT/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -E '^ +[0-9]' | head -8 >"$OUT/dso.txt"
    perf report -i "$OUT/perf.data" --stdio --no-children --sort sym -g none 2>/dev/null >"$OUT/self.txt"
    perf report -i "$OUT/perf.data" --stdio --children --sort sym -g none 2>/dev/null >"$OUT/inclusive.txt"
    echo "statecar (worker_threads=${BENCH_WORKERS:-default}, max_connections=${BENCH_UPSTREAM_CONNS:-default}), redis-benchmark $CASE, ${PROFILE_SECONDS}s of cpu-clock samples"
    echo; echo "By binary:"; cat "$OUT/dso.txt"
    echo; echo "Over 2 s ($((C1 - C0)) requests):"
    awk -F, -v n="$((C1 - C0))" 'n > 0 && $3 != "" {
        if ($3 == "task-clock") printf "  %8.2f us of CPU per request\n", $1 * 1000 / n;
        else printf "  %8.2f %s per request\n", $1 / n, $3 }' "$OUT/perf-stat.csv"
    echo; echo "Top $PROFILE_TOP self:"; grep -E '^ +[0-9]' "$OUT/self.txt" | head -n "$PROFILE_TOP" | cut -c1-200
    echo; echo "Full reports: $OUT/self.txt, $OUT/inclusive.txt; raw: $OUT/perf.data"
fi
exit
}
