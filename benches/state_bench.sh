#!/usr/bin/env bash
# State keys end to end: throughput of state GET / versioned SET against plain keys through
# statecar (and direct Redis), and Redis memory of 10,000 versioned 16 KB states against plain.
# Drives benches/state_e2e.rs (`cargo bench --bench state_e2e`).
#
# Usage: benches/state_bench.sh [--write [DOC]] [--no-build] [--help]
#
#   --write [DOC]   also put the results into the "## State keys end to end" section of DOC
#                   (default docs/BENCHMARKS.md): the generated block between the
#                   state_bench:begin/end markers is replaced, or the section is appended when the
#                   file has none. The rest of the file is kept as it is at that moment.
#   --no-build      use target/release/statecar as it is (default: `cargo build --release` first)
#
# Environment (defaults in brackets), passed through to the benchmark:
#   ROUNDS=3            rounds; each runs state via statecar, plain via statecar, plain direct
#   BENCH_SECONDS=3     seconds measured per run (after BENCH_WARMUP_MS=500 of warm-up)
#   BENCH_CONNS=32      concurrent connections
#   BENCH_DEPTHS=1,16   pipeline depths
#   BENCH_SIZES=1024,16384   value sizes (agent-session JSON from tests/common/agent_data.rs)
#   BENCH_KEYS=1000     keys per kind, prefilled
#   BENCH_PARTS=throughput,memory
#   MEM_STATES=10000    states in the memory measurement (16 KB each, MAX_VERSIONS versions)
#   MAX_VERSIONS=10     max_versions of the session:* rule
#   BENCH_WORKERS=1     statecar [server] worker_threads (1 = one thread, the default; 0 = one per core)
#   BENCH_STATECAR_WRAPPER=  run statecar under this, e.g. for a profile:
#                       BENCH_STATECAR_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=/tmp/sc.cg"
#   BENCH_KEEP=0        1 keeps the run directory (config, logs, report) under /tmp
#
# Requires redis-server, redis-cli, python3 and cargo. redis-server and statecar listen on free
# 127.0.0.1 ports (never 6379) and are stopped on exit, including on Ctrl-C. The report is also
# saved under target/state-bench/.
#
# Quick check: ROUNDS=1 BENCH_SECONDS=1 MEM_STATES=1000 benches/state_bench.sh
# The whole script is one compound command, parsed before it runs.
# SC2317: stop_pid and cleanup run from the EXIT trap; SC2154: start() sets PID_<name> with eval.
# shellcheck disable=SC2317,SC2154
{
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS_ORIG=("$@")
WRITE=""
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write)
            if [[ $# -gt 1 && "$2" != --* ]]; then WRITE="$2"; shift; else WRITE="$ROOT/docs/BENCHMARKS.md"; fi ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^# The whole script/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "state_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

MAX_VERSIONS=${MAX_VERSIONS:-10}
BENCH_WORKERS=${BENCH_WORKERS:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
WRAPPER=${BENCH_STATECAR_WRAPPER:-}

log() { printf '[state_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in redis-server redis-cli python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools python3)"
done

# The exact command, with the knobs that were set, for the report.
CMD="benches/state_bench.sh"
for v in ROUNDS BENCH_SECONDS BENCH_WARMUP_MS BENCH_CONNS BENCH_DEPTHS BENCH_SIZES BENCH_KEYS \
    BENCH_PARTS MEM_STATES MAX_VERSIONS BENCH_WORKERS BENCH_STATECAR_WRAPPER; do
    if printenv "$v" >/dev/null; then CMD="$v=${!v} $CMD"; fi
done
[[ ${#ARGS_ORIG[@]} -gt 0 ]] && CMD="$CMD ${ARGS_ORIG[*]}"

# ---------------------------------------------------------------------------------------------
# build first, so no compiler runs while we measure
BIN="$ROOT/target/release/statecar"
if [[ $BUILD -eq 1 ]]; then
    log "cargo build --release (no-op when up to date)"
    (cd "$ROOT" && cargo build --release --bin statecar) || die "release build failed"
fi
[[ -x "$BIN" ]] || die "no statecar binary at $BIN"
log "cargo bench --no-run --bench state_e2e"
(cd "$ROOT" && cargo bench --no-run --bench state_e2e) || die "benchmark build failed"

if git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    REV=$(git -C "$ROOT" describe --always --dirty)
else
    REV="(no git commit yet)"
fi
REV="$REV, binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC') sha256:$(sha256sum "$BIN" | cut -c1-12)"

# ---------------------------------------------------------------------------------------------
# processes and cleanup
RUN=$(mktemp -d "${TMPDIR:-/tmp}/statecar-state-bench.XXXXXX")
STOP_WAIT=50 # tenths of a second
[[ -n $WRAPPER ]] && STOP_WAIT=600 # valgrind writes its profile on exit

# shellcheck source=benches/support/processes.sh
source "$ROOT/benches/support/processes.sh"
read -r P_REDIS P_SC < <(free_ports 2)

start redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
    --protected-mode yes --daemonize no --dir "$RUN"
wait_port redis "$P_REDIS" "$PID_redis"

cat >"$RUN/statecar.toml" <<EOF
# generated by benches/state_bench.sh
listen = "127.0.0.1:$P_SC"

[upstream]
url = "redis://127.0.0.1:$P_REDIS"

[server]
worker_threads = $BENCH_WORKERS
drain_timeout_s = 1

[log]
level = "warn"

[[state]]
pattern = "session:*"
compression = "lz4"
versioning = true
max_versions = $MAX_VERSIONS
EOF

# statecar reads STATECAR_* from the environment; it must only see its config file.
SC_ENV=(env)
while IFS= read -r v; do SC_ENV+=(-u "$v"); done < <(compgen -e | grep '^STATECAR_' || true)
# shellcheck disable=SC2086 # the wrapper is a command line on purpose
start statecar "${SC_ENV[@]}" $WRAPPER "$BIN" --config "$RUN/statecar.toml"
wait_port statecar "$P_SC" "$PID_statecar"
# The pid whose CPU time counts: statecar itself (under a wrapper, the wrapper is statecar).
SC_PID=$PID_statecar
log "redis 127.0.0.1:$P_REDIS (pid $PID_redis), statecar 127.0.0.1:$P_SC (pid $SC_PID); run dir $RUN"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
T0=$(date +%s)
CLK_TCK=$(getconf CLK_TCK)
(
    cd "$ROOT"
    exec setsid env STATECAR_PORT="$P_SC" REDIS_PORT="$P_REDIS" STATECAR_PID="$SC_PID" \
        REDIS_PID="$PID_redis" CLK_TCK="$CLK_TCK" STATE_BENCH_OUT="$RUN/report.md" \
        MAX_VERSIONS="$MAX_VERSIONS" cargo bench --bench state_e2e
) &
BENCH_PID=$!
PIDS+=("$BENCH_PID")
wait "$BENCH_PID" || die "benchmark failed"
KEEP_PIDS=()
for p in "${PIDS[@]}"; do [[ $p == "$BENCH_PID" ]] || KEEP_PIDS+=("$p"); done
PIDS=("${KEEP_PIDS[@]}")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - T0))
alive "$PID_statecar" || die "statecar died during the benchmark; see $RUN/statecar.log"
[[ -s "$RUN/report.md" ]] || die "the benchmark wrote no report"

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
MEM_GIB=$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
REDIS_VER=$(redis-server --version | sed 's/^Redis server //')
WORKERS_DESC=$BENCH_WORKERS
[[ $BENCH_WORKERS == 0 ]] && WORKERS_DESC="0 (one per core)"

{
    echo "### Results"
    echo
    echo "> Noisy: redis-server, statecar and the load generator share the machine's $(nproc) cores, and other jobs (compilers, test suites) may have been running; compare ratios within one run, not ops/s across runs."
    echo
    echo "- Command: \`$CMD\`"
    echo "- Date: $STARTED, $ELAPSED s; load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
    echo "- Machine: $(nproc) CPUs (\`nproc\`), $CPU_MODEL, $MEM_GIB GiB RAM, Linux $(uname -r)"
    echo "- Versions: Redis server $REDIS_VER; statecar $REV"
    echo "- statecar: one rule \`session:*\` (lz4, versioning, max_versions = $MAX_VERSIONS, default min_size), upstream defaults (up to 8 shared connections, filled one at a time), server.worker_threads = $WORKERS_DESC, log level warn${WRAPPER:+, run under \`$WRAPPER\`}"
    echo "- Load generator: benches/state_e2e.rs, a RESP2 client on one tokio thread; redis-server \`--save \"\" --appendonly no\`"
    echo
    cat "$RUN/report.md"
} >"$RUN/section.md"

mkdir -p "$ROOT/target/state-bench"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RUN/section.md" "$ROOT/target/state-bench/report-$STAMP.md"
echo
cat "$RUN/section.md"
log "report saved as target/state-bench/report-$STAMP.md"

if [[ -n $WRITE ]]; then
    python3 - "$WRITE" "$RUN/section.md" <<'EOF'
import os, sys, tempfile
doc, block_file = sys.argv[1], sys.argv[2]
block = open(block_file).read().rstrip("\n")
BEGIN = "<!-- state_bench:begin (generated by benches/state_bench.sh --write; edits here are overwritten) -->"
END = "<!-- state_bench:end -->"
HEADING = "## State keys end to end"
INTRO = """What state keys cost end to end: GET and versioned SET of `session:*` keys (lz4, a CRC32 on every
read, every write also appended to the key's history by a Lua script) against the same values
under plain keys through the same statecar, and Redis memory of 10,000 versioned 16 KB states
against the same data stored plain. Measured by `benches/state_bench.sh`, which starts its own
redis-server and statecar on free ports and drives `benches/state_e2e.rs`.

```sh
benches/state_bench.sh                 # full run, ~8 min
ROUNDS=1 BENCH_SECONDS=1 MEM_STATES=1000 benches/state_bench.sh   # quick look
benches/state_bench.sh --write         # also refresh the results block below
```
"""
# Read the file as it is now (others edit other sections), change only our block.
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
generated = f"{BEGIN}\n{block}\n\n{END}"
if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    text = head + generated + tail
else:
    text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{INTRO}\n{generated}\n"
d = os.path.dirname(os.path.abspath(doc))
fd, tmp = tempfile.mkstemp(dir=d, prefix=".state_bench.")
with os.fdopen(fd, "w") as f:
    f.write(text)
os.chmod(tmp, 0o644)
os.replace(tmp, doc)
EOF
    log "results written to $WRITE"
fi
exit
}
