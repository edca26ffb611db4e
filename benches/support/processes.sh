# Process handling shared by benches/state_bench.sh, checkpoint_bench.sh and proxy_bench.sh: every
# server a benchmark starts runs in its own process group, logs to $RUN/NAME.log, and is stopped
# on exit (also on Ctrl-C or SIGTERM), newest first; the run directory is removed unless
# BENCH_KEEP=1 or the run failed. Sourced after RUN, BENCH_KEEP, log and die are defined;
# STOP_WAIT (tenths of a second before SIGKILL) defaults to 50.
# shellcheck shell=bash disable=SC2317 # stop_pid and cleanup run from the EXIT trap
PIDS=()
STOP_WAIT=${STOP_WAIT:-50}

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

free_ports() { # free_ports N: N distinct free loopback ports (never 6379), on one line
    python3 - "$1" <<'PY'
import socket, sys
socks, ports = [], []
while len(ports) < int(sys.argv[1]):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)  # keep bound so the ports are distinct
    p = s.getsockname()[1]
    if p != 6379 and p not in ports:
        ports.append(p)
print(*ports)
PY
}
