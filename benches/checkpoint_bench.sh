#!/usr/bin/env bash
# Agent checkpoints end to end (issue 13): Redis memory of a version history against plain
# copies and the seed library's way, small JSON documents with and without a trained
# dictionary, the versioned write rate against plain SET, 8 MB checkpoints, and reading the
# oldest of 1,000 versions. Drives benches/checkpoints.rs (`cargo bench --bench checkpoints`).
#
# Usage: benches/checkpoint_bench.sh [--write [DOC]] [--no-build] [--help]
#
#   --write [DOC]   also put the results into the "## Agent checkpoints" section of DOC
#                   (default docs/BENCHMARKS.md): the generated block between the
#                   checkpoint_bench:begin/end markers is replaced, or the section is appended
#                   when the file has none. The rest of the file is kept as it is at that moment.
#   --no-build      use target/release/statecar as it is (default: `cargo build --release` first)
#
# Environment (defaults in brackets), passed through to the benchmark:
#   BENCH_PARTS=memory,docs,writes,big,oldest
#   ROUNDS=3            rounds of the timed parts (targets interleaved in each round)
#   BENCH_SECONDS=3     seconds per write-rate run
#   SESSIONS=20         sessions in the memory part
#   DOCS=5000           small documents
#   CONNS=8             connections in the write-rate part
#   BIG_WRITES=6        8 MB checkpoints written per target and round
#   OLD_VERSIONS=1000   versions saved for the read-the-oldest part
#   BENCH_WORKERS=1     statecar [server] worker_threads
#   BENCH_KEEP=0        1 keeps the run directory (config, logs, report) under /tmp
#
# Requires redis-server, redis-cli, python3 and cargo. redis-server and statecar listen on free
# 127.0.0.1 ports (never 6379) and are stopped on exit, including on Ctrl-C. The report is also
# saved under target/checkpoint-bench/.
#
# Quick check: ROUNDS=1 BENCH_SECONDS=1 SESSIONS=3 DOCS=1000 BIG_WRITES=2 OLD_VERSIONS=200 benches/checkpoint_bench.sh
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
        *) echo "checkpoint_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

BENCH_WORKERS=${BENCH_WORKERS:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
STOP_WAIT=50 # tenths of a second

log() { printf '[checkpoint_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in redis-server redis-cli python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools python3)"
done

# The exact command, with the knobs that were set, for the report.
CMD="benches/checkpoint_bench.sh"
for v in BENCH_PARTS ROUNDS BENCH_SECONDS SESSIONS DOCS CONNS BIG_WRITES OLD_VERSIONS \
    BENCH_WORKERS; do
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
log "cargo bench --no-run --bench checkpoints"
(cd "$ROOT" && cargo bench --no-run --bench checkpoints) || die "benchmark build failed"

if git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    REV=$(git -C "$ROOT" describe --always --dirty)
else
    REV="(no git commit yet)"
fi
REV="$REV, binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC') sha256:$(sha256sum "$BIN" | cut -c1-12)"

# ---------------------------------------------------------------------------------------------
# processes and cleanup
RUN=$(mktemp -d "${TMPDIR:-/tmp}/statecar-checkpoint-bench.XXXXXX")
PIDS=()

alive() { [[ -e /proc/$1 ]] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

stop_pid() { # stop one process group we started: TERM, wait, then KILL
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_WAIT; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        log "pid $pid did not stop on SIGTERM; SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i
    local todo=("${PIDS[@]}")
    for ((i = ${#todo[@]} - 1; i >= 0; i--)); do stop_pid "${todo[i]}"; done # newest first
    if [[ $BENCH_KEEP == 1 || $rc -ne 0 ]]; then
        log "run directory kept: $RUN"
    else
        rm -rf "$RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # start NAME CMD...: own process group, logs to $RUN/NAME.log; sets PID_NAME
    local name=$1; shift
    setsid "$@" >"$RUN/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    eval "PID_$name=$pid"
}

wait_port() { # wait_port NAME PORT PID
    local i
    for ((i = 0; i < 300; i++)); do
        [[ $(redis-cli -h 127.0.0.1 -p "$2" ping 2>/dev/null) == PONG ]] && return 0
        alive "$3" || { tail -20 "$RUN/$1.log" >&2; die "$1 exited; see $RUN/$1.log"; }
        sleep 0.1
    done
    tail -20 "$RUN/$1.log" >&2
    die "$1 did not come up on 127.0.0.1:$2"
}

read -r P_REDIS P_SC < <(python3 - <<'EOF'
import socket
socks, ports = [], []
while len(ports) < 2:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)  # keep bound so the ports are distinct
    p = s.getsockname()[1]
    if p != 6379 and p not in ports:
        ports.append(p)
print(*ports)
EOF
)

start redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
    --protected-mode yes --daemonize no --dir "$RUN"
wait_port redis "$P_REDIS" "$PID_redis"

{
    echo "# generated by benches/checkpoint_bench.sh"
    echo "listen = \"127.0.0.1:$P_SC\""
    echo "[upstream]"
    echo "url = \"redis://127.0.0.1:$P_REDIS\""
    echo "[server]"
    echo "worker_threads = $BENCH_WORKERS"
    echo "drain_timeout_s = 1"
    echo "[log]"
    echo "level = \"warn\""
    echo "[limits]"
    echo "max_decoded_size = 1073741824"
} >"$RUN/statecar.toml"
rule() { # rule PATTERN KEY=VALUE...: one [[state]] table
    printf '\n[[state]]\npattern = "%s"\n' "$1" >>"$RUN/statecar.toml"
    shift
    local kv
    for kv in "$@"; do printf '%s\n' "$kv" >>"$RUN/statecar.toml"; done
}
for n in 10 40; do
    rule "m$n:*" 'compression = "zstd"' "max_versions = $n"
    rule "mz$n:*" 'compression = "zstd"' 'delta = false' "max_versions = $n"
    rule "ml$n:*" 'compression = "lz4"' "max_versions = $n"
    rule "mld$n:*" 'compression = "lz4"' 'delta = true' "max_versions = $n"
done
rule "doc:*" 'compression = "zstd"'
rule "ddoc:*" 'compression = "zstd"' 'dictionary = "auto"'
rule "w:*" 'compression = "zstd"' 'max_versions = 10'
rule "big:*" 'compression = "zstd"' 'max_versions = 10'
rule "long:*" 'compression = "zstd"' 'max_versions = 1000'

# statecar reads STATECAR_* from the environment; it must only see its config file.
SC_ENV=(env)
while IFS= read -r v; do SC_ENV+=(-u "$v"); done < <(compgen -e | grep '^STATECAR_' || true)
start statecar "${SC_ENV[@]}" "$BIN" --config "$RUN/statecar.toml"
wait_port statecar "$P_SC" "$PID_statecar"
SC_PID=$PID_statecar
log "redis 127.0.0.1:$P_REDIS (pid $PID_redis), statecar 127.0.0.1:$P_SC (pid $SC_PID); run dir $RUN"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
T0=$(date +%s)
(
    cd "$ROOT"
    exec setsid env STATECAR_PORT="$P_SC" REDIS_PORT="$P_REDIS" STATECAR_PID="$SC_PID" \
        REDIS_PID="$PID_redis" CHECKPOINT_BENCH_OUT="$RUN/report.md" \
        cargo bench --bench checkpoints
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
    echo "- statecar: one rule per layout (written by benches/checkpoint_bench.sh), upstream defaults, server.worker_threads = $WORKERS_DESC, log level warn"
    echo "- Load generator: benches/checkpoints.rs, a RESP2 client on one tokio thread; redis-server \`--save \"\" --appendonly no\`"
    echo
    cat "$RUN/report.md"
} >"$RUN/section.md"

mkdir -p "$ROOT/target/checkpoint-bench"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RUN/section.md" "$ROOT/target/checkpoint-bench/report-$STAMP.md"
echo
cat "$RUN/section.md"
log "report saved as target/checkpoint-bench/report-$STAMP.md"

if [[ -n $WRITE ]]; then
    python3 - "$WRITE" "$RUN/section.md" <<'EOF'
import os, sys, tempfile
doc, block_file = sys.argv[1], sys.argv[2]
block = open(block_file).read().rstrip("\n")
BEGIN = "<!-- checkpoint_bench:begin (generated by benches/checkpoint_bench.sh --write; edits here are overwritten) -->"
END = "<!-- checkpoint_bench:end -->"
HEADING = "## Agent checkpoints"
INTRO = """What a version history of agent checkpoints costs, measured by `benches/checkpoint_bench.sh`
(it starts its own redis-server and statecar on free ports and drives `benches/checkpoints.rs`).

```sh
benches/checkpoint_bench.sh            # full run
benches/checkpoint_bench.sh --write    # also refresh the results block below
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
fd, tmp = tempfile.mkstemp(dir=d, prefix=".checkpoint_bench.")
with os.fdopen(fd, "w") as f:
    f.write(text)
os.chmod(tmp, 0o644)
os.replace(tmp, doc)
EOF
    log "results written to $WRITE"
fi
exit
}
