#!/usr/bin/env bash
# Proxy throughput/latency/memory benchmark: direct Redis vs statecar vs twemproxy (nutcracker).
#
# Usage: benches/proxy_bench.sh [--write [DOC]] [--no-build] [--help]
#
#   --write [DOC]   also replace the generated block of the "## Proxy throughput and latency"
#                   section in DOC (default docs/BENCHMARKS.md); the rest of the file is kept
#   --no-build      use target/release/statecar as it is (default: `cargo build --release` first,
#                   which is a no-op when it is up to date)
#
# Environment (defaults in brackets):
#   ROUNDS=3               measurements per case and target; the report shows medians
#   BENCH_SECONDS=3        target duration of each redis-benchmark test (SET or GET)
#   BENCH_KEYS=100000      keyspace (-r), prefilled so every GET hits a value of the case's size
#   BENCH_CASES=all        or SIZE:PIPELINE:CLIENTS,... e.g. "100:1:50,4096:16:50"
#   IDLE_CLIENTS=2000      idle connections for the memory measurement (0 skips it)
#   PROBE_REQUESTS=20000   one client's GETs (100 B) timed one by one, per target and round, for
#                          the added latency to the microsecond (redis-benchmark's p50 moves in
#                          steps of 8 us); 0 skips it
#   BENCH_WORKERS=         statecar [server] worker_threads (unset: statecar's default)
#   BENCH_UPSTREAM_CONNS=  statecar [upstream] max_connections (unset: statecar's default)
#   BENCH_METRICS=0        1 turns statecar's Prometheus listener on (as a sidecar usually runs)
#   BENCH_STATECAR_BIN=    benchmark this binary instead of building target/release/statecar
#   BENCH_KEEP=0           1 keeps the run directory (configs, logs, raw JSON) under /tmp
#
# Requires redis-server, redis-benchmark (redis-tools), nutcracker, python3, cargo. Everything it
# starts listens on 127.0.0.1 ports picked free at start (never 6379) and is stopped on exit,
# including on Ctrl-C or SIGTERM. Raw results are also copied to target/proxy-bench/.
#
# Quick check: ROUNDS=1 BENCH_SECONDS=2 benches/proxy_bench.sh
# The whole script is one compound command, parsed before it runs: editing the file while a run is
# in progress cannot change what that run does.
{
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPER="$ROOT/benches/proxy_bench.py"
ARGS_ORIG=("$@")
WRITE=""
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write)
            if [[ $# -gt 1 && "$2" != --* ]]; then WRITE="$2"; shift; else WRITE="$ROOT/docs/BENCHMARKS.md"; fi ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^# The whole script/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "proxy_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROUNDS=${ROUNDS:-3}
BENCH_SECONDS=${BENCH_SECONDS:-3}
BENCH_KEYS=${BENCH_KEYS:-100000}
BENCH_CASES=${BENCH_CASES:-all}
IDLE_CLIENTS=${IDLE_CLIENTS:-2000}
PROBE_REQUESTS=${PROBE_REQUESTS:-20000}
BENCH_WORKERS=${BENCH_WORKERS:-}
BENCH_UPSTREAM_CONNS=${BENCH_UPSTREAM_CONNS:-}
BENCH_METRICS=${BENCH_METRICS:-0}
BENCH_KEEP=${BENCH_KEEP:-0}

log() { printf '[proxy_bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in redis-server redis-cli redis-benchmark nutcracker python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server redis-tools nutcracker python3)"
done

# The exact command, with the knobs that were set, for the report.
CMD="benches/proxy_bench.sh"
for v in ROUNDS BENCH_SECONDS BENCH_KEYS BENCH_CASES IDLE_CLIENTS PROBE_REQUESTS BENCH_WORKERS BENCH_UPSTREAM_CONNS BENCH_METRICS BENCH_STATECAR_BIN; do
    if printenv "$v" >/dev/null; then CMD="$v=${!v} $CMD"; fi
done
[[ ${#ARGS_ORIG[@]} -gt 0 ]] && CMD="$CMD ${ARGS_ORIG[*]}"

# ---------------------------------------------------------------------------------------------
# statecar binary
if [[ -n "${BENCH_STATECAR_BIN:-}" ]]; then
    BIN=$BENCH_STATECAR_BIN
else
    BIN="$ROOT/target/release/statecar"
    if [[ $BUILD -eq 1 ]]; then
        log "cargo build --release (no-op when up to date)"
        (cd "$ROOT" && cargo build --release --bin statecar) || die "release build failed"
    fi
fi
[[ -x "$BIN" ]] || die "no statecar binary at $BIN (build it, or set BENCH_STATECAR_BIN)"

if [[ -n "${BENCH_STATECAR_BIN:-}" ]]; then
    REV="external binary $BIN"
elif git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    REV=$(git -C "$ROOT" describe --always --dirty) # the tree the build above saw
else
    REV="(no git commit yet)"
fi
REV="$REV, binary built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC') sha256:$(sha256sum "$BIN" | cut -c1-12)"

# ---------------------------------------------------------------------------------------------
# processes and cleanup
RUN=$(mktemp -d "${TMPDIR:-/tmp}/statecar-bench.XXXXXX")
# alive, stop_pid, start (sets PID_<name>), wait_port and the EXIT trap that stops everything
# started, newest first (the driver before the servers).
# shellcheck source=benches/support/processes.sh
source "$ROOT/benches/support/processes.sh"

# Enough descriptors for 2000 idle clients (plus upstream sockets) in the proxies we start.
NOFILE_WANT=$((IDLE_CLIENTS + 1024))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $NOFILE_WANT ]]; then
    ulimit -n "$NOFILE_WANT" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
fi

read -r P_REDIS P_SC P_TW P_TW_STATS P_SC2 P_TW2 P_TW2_STATS P_METRICS < <(free_ports 8)

start redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
    --protected-mode yes --daemonize no --dir "$RUN" --maxclients 10000
wait_port redis "$P_REDIS" "$PID_redis"

# statecar's own defaults, except what the BENCH_* knobs set.
{
    echo "# generated by benches/proxy_bench.sh: a plain transparent proxy (no state rules)"
    echo "listen = \"127.0.0.1:$P_SC\""
    echo "[upstream]"
    echo "url = \"redis://127.0.0.1:$P_REDIS/0\""
    [[ -n $BENCH_UPSTREAM_CONNS ]] && echo "max_connections = $BENCH_UPSTREAM_CONNS"
    echo "[server]"
    [[ -n $BENCH_WORKERS ]] && echo "worker_threads = $BENCH_WORKERS"
    echo "drain_timeout_s = 1"
    echo "[log]"
    echo "level = \"warn\""
} >"$RUN/statecar.toml"
METRICS_DESC="metrics listener off"
if [[ $BENCH_METRICS == 1 ]]; then # the memory run reuses this file after the bench statecar stopped
    printf '\n[metrics]\nlisten = "127.0.0.1:%s"\n' "$P_METRICS" >>"$RUN/statecar.toml"
    METRICS_DESC="metrics listener on"
fi

nutcracker_yml() { # nutcracker_yml LISTEN_PORT
    cat <<EOF
bench:
  listen: 127.0.0.1:$1
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  preconnect: true
  server_connections: 1
  servers:
   - 127.0.0.1:$P_REDIS:1
EOF
}
nutcracker_yml "$P_TW" >"$RUN/twemproxy.yml"
nutcracker_yml "$P_TW2" >"$RUN/twemproxy2.yml"
nutcracker -t -c "$RUN/twemproxy.yml" >/dev/null 2>&1 || die "nutcracker rejects $RUN/twemproxy.yml"

# statecar reads STATECAR_* from the environment; the benchmark must only see its config file.
SC_ENV=(env)
while IFS= read -r v; do SC_ENV+=(-u "$v"); done < <(compgen -e | grep '^STATECAR_' || true)

start statecar "${SC_ENV[@]}" "$BIN" --config "$RUN/statecar.toml"
wait_port statecar "$P_SC" "$PID_statecar"
# Default mbuf (16 KB) and one pipelined server connection: twemproxy's fast configuration.
start twemproxy nutcracker -c "$RUN/twemproxy.yml" -s "$P_TW_STATS" -a 127.0.0.1 -o "$RUN/twemproxy.nc.log" -p "$RUN/twemproxy.pid"
wait_port twemproxy "$P_TW" "$PID_twemproxy"

log "redis 127.0.0.1:$P_REDIS, statecar 127.0.0.1:$P_SC (pid $PID_statecar), twemproxy 127.0.0.1:$P_TW (pid $PID_twemproxy)"
log "ROUNDS=$ROUNDS BENCH_SECONDS=$BENCH_SECONDS cases=$BENCH_CASES; run dir $RUN"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
setsid python3 "$HELPER" bench --targets "direct=$P_REDIS,statecar=$P_SC,twemproxy=$P_TW" \
    --pids "redis=$PID_redis,statecar=$PID_statecar,twemproxy=$PID_twemproxy" \
    --rounds "$ROUNDS" --seconds "$BENCH_SECONDS" --keys "$BENCH_KEYS" --cases "$BENCH_CASES" \
    --timeout "$(python3 -c "print(max(60, 12 * $BENCH_SECONDS + 30))")" --out "$RUN/results.json" &
BENCH_PID=$!
PIDS+=("$BENCH_PID")
wait "$BENCH_PID" || die "benchmark matrix failed"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# One client, round trip by round trip, while the matrix's proxies are still up.
if [[ $PROBE_REQUESTS -gt 0 ]]; then
    python3 "$HELPER" probe --targets "direct=$P_REDIS,statecar=$P_SC,twemproxy=$P_TW" \
        --requests "$PROBE_REQUESTS" --rounds "$ROUNDS" --out "$RUN/probe.md" >/dev/null \
        || log "latency probe failed"
fi

SC_SHAPE=$(python3 "$HELPER" shape --pid "$PID_statecar" --upstream-port "$P_REDIS" 2>/dev/null) || SC_SHAPE="(unknown shape)"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
HWM="statecar=$(hwm "$PID_statecar"),twemproxy=$(hwm "$PID_twemproxy")"
alive "$PID_statecar" || die "statecar died during the benchmark; see $RUN/statecar.log"

# ---------------------------------------------------------------------------------------------
# memory: fresh proxies, empty and with IDLE_CLIENTS idle connections
MEM_ARGS=()
if [[ $IDLE_CLIENTS -gt 0 ]]; then
    stop_pid "$PID_statecar"
    stop_pid "$PID_twemproxy"
    start statecar_mem "${SC_ENV[@]}" "$BIN" --config "$RUN/statecar.toml" --listen "127.0.0.1:$P_SC2"
    wait_port statecar_mem "$P_SC2" "$PID_statecar_mem"
    python3 "$HELPER" memory --name statecar --pid "$PID_statecar_mem" --port "$P_SC2" \
        --clients "$IDLE_CLIENTS" --out "$RUN/memory-statecar.json" || log "statecar memory measurement failed"
    stop_pid "$PID_statecar_mem"
    start twemproxy_mem nutcracker -c "$RUN/twemproxy2.yml" -s "$P_TW2_STATS" -a 127.0.0.1 -o "$RUN/twemproxy2.nc.log" -p "$RUN/twemproxy2.pid"
    wait_port twemproxy_mem "$P_TW2" "$PID_twemproxy_mem"
    python3 "$HELPER" memory --name twemproxy --pid "$PID_twemproxy_mem" --port "$P_TW2" \
        --clients "$IDLE_CLIENTS" --out "$RUN/memory-twemproxy.json" || log "twemproxy memory measurement failed"
    stop_pid "$PID_twemproxy_mem"
    MEM_ARGS=(--memory "$RUN/memory-statecar.json" --memory "$RUN/memory-twemproxy.json")
fi

# ---------------------------------------------------------------------------------------------
# report
mkdir -p "$ROOT/target/proxy-bench"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RUN/results.json" "$ROOT/target/proxy-bench/results-$STAMP.json"
for f in "$RUN"/memory-*.json; do [[ -e $f ]] && cp "$f" "$ROOT/target/proxy-bench/$(basename "$f" .json)-$STAMP.json"; done

CONNS_DESC=${BENCH_UPSTREAM_CONNS:-default}
WORKERS_DESC=${BENCH_WORKERS:-default}
[[ $BENCH_WORKERS == 0 ]] && WORKERS_DESC="0 (one per core)"
REPORT_ARGS=(report --results "$RUN/results.json" "${MEM_ARGS[@]}" --hwm "$HWM"
    --command "$CMD" --statecar-rev "$REV"
    --statecar-conf "no state rules, upstream.max_connections=$CONNS_DESC, server.worker_threads=$WORKERS_DESC, log level warn, $METRICS_DESC; during the matrix the process had $SC_SHAPE"
    --twemproxy-conf "one pool, redis: true, hash fnv1a_64, ketama, auto_eject_hosts false, preconnect true, server_connections 1, default 16 KB mbuf"
    --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER")
[[ -n $WRITE ]] && REPORT_ARGS+=(--write "$WRITE")
python3 "$HELPER" "${REPORT_ARGS[@]}"
if [[ -s $RUN/probe.md ]]; then
    cp "$RUN/probe.md" "$ROOT/target/proxy-bench/probe-$STAMP.md"
    printf '\n#### Added latency, one client, each round trip timed (`proxy_bench.py probe`)\n\n'
    cat "$RUN/probe.md"
fi
log "raw results: target/proxy-bench/results-$STAMP.json"
exit
}
