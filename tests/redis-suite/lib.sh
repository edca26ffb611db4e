# shellcheck shell=bash
# Shared shell functions for tests/redis-suite/run.sh and redis-py.sh. Sourced, not run.
# Every server started here is recorded in SUITE_PIDS and stopped by suite_cleanup (an EXIT
# trap set by the caller): a run never leaves a redis-server or a statecar behind.

SUITE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SUITE_DIR/../.." && pwd)
SUITE_PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# The script's one argument, a directory, as an absolute path; without exactly one argument,
# the script's header comment as its usage. Use as DIR=$(dir_arg "$@") || exit 2.
dir_arg() {
  if [ $# -ne 1 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
  fi
  (cd "$1" && pwd) || die "no directory $1"
}

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found (PATH=$PATH)"
  done
}

# A TCP port nobody listens on now (the kernel's pick for port 0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_ping PORT SECONDS: until PING through PORT answers PONG.
wait_ping() {
  local port=$1 secs=${2:-10} i
  for ((i = 0; i < secs * 20; i++)); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# stop_pid PID: TERM, wait up to 5 s, then KILL. Only processes this script started.
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

suite_cleanup() {
  local pid
  for pid in "${SUITE_PIDS[@]}"; do
    stop_pid "$pid"
  done
  SUITE_PIDS=()
}

forget_pid() {
  local pid=$1 p keep=()
  for p in "${SUITE_PIDS[@]}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  SUITE_PIDS=("${keep[@]}")
}

# start_redis DIR: a fresh redis-server on a free port, data and log in DIR, no persistence,
# with the settings Redis's own external-server CI gives it (protected configs, DEBUG and
# MODULE enabled; the tags that need them are excluded anyway, but a test that merely logs
# through DEBUG LOG then behaves as upstream intends). Sets REDIS_PORT and REDIS_PID.
start_redis() {
  local dir=$1
  mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" \
    --save "" --appendonly no --daemonize no --pidfile "" \
    --logfile "$dir/redis.log" \
    --enable-protected-configs yes --enable-debug-command yes --enable-module-command yes \
    >/dev/null 2>&1 &
  REDIS_PID=$!
  SUITE_PIDS+=("$REDIS_PID")
  wait_ping "$REDIS_PORT" 10 || die "redis-server did not start on $REDIS_PORT (see $dir/redis.log)"
}

# write_statecar_config FILE LISTEN_PORT UPSTREAM_PORT [RULES]: statecar's configuration for
# measuring pass-through. RULES=rules (default) keeps one state rule on a prefix that no test
# of Redis's suite or redis-py's uses, so statecar runs as deployed (its function library, its
# state engine on every command that could touch a state key) while every key the tests touch
# passes through; RULES=none gives a plain proxy. Limits are Redis's own where Redis has one
# (no output-buffer limit for normal clients, no client-memory budget, no deny-list) and
# generous where Redis has none (pending requests per client).
write_statecar_config() {
  local file=$1 listen=$2 upstream=$3 rules=${4:-rules}
  cat >"$file" <<EOF
listen = "127.0.0.1:$listen"

[upstream]
url = "redis://127.0.0.1:$upstream/0"
max_connections = 8
max_leased_connections = 1024
timeout_ms = 5000
connect_timeout_ms = 2000

[limits]
max_pending_requests = 1048576
max_output_buffer = 0
output_buffer_soft_limit = 0
max_client_memory = 0

[log]
level = "warn"

[security]
deny_commands = []
EOF
  if [ "$rules" = rules ]; then
    cat >>"$file" <<'EOF'

[[state]]
pattern = "__statecar_suite_state__:*"
compression = "zstd"
versioning = true
max_versions = 10
EOF
  fi
}

# start_statecar DIR UPSTREAM_PORT [RULES]: statecar in front of 127.0.0.1:UPSTREAM_PORT, its
# config and log in DIR. Sets STATECAR_PORT and STATECAR_PID.
start_statecar() {
  local dir=$1 upstream=$2 rules=${3:-rules}
  mkdir -p "$dir"
  STATECAR_PORT=$(free_port)
  write_statecar_config "$dir/statecar.toml" "$STATECAR_PORT" "$upstream" "$rules"
  "$STATECAR_BIN" --config "$dir/statecar.toml" >"$dir/statecar.log" 2>&1 &
  STATECAR_PID=$!
  SUITE_PIDS+=("$STATECAR_PID")
  wait_ping "$STATECAR_PORT" 20 || die "statecar did not start on $STATECAR_PORT (see $dir/statecar.log)"
}

# Sets STATECAR_BIN: the given one, or a release build of this checkout.
resolve_statecar_bin() {
  if [ -n "${STATECAR_BIN:-}" ]; then
    [ -x "$STATECAR_BIN" ] || die "STATECAR_BIN=$STATECAR_BIN is not an executable"
    return 0
  fi
  need cargo
  log "building statecar (cargo build --release)"
  (cd "$REPO_ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  STATECAR_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/statecar"
  [ -x "$STATECAR_BIN" ] || die "no binary at $STATECAR_BIN"
}

# mode_needs_statecar MODE: true for every mode that puts statecar in front.
mode_needs_statecar() {
  case $1 in
    direct) return 1 ;;
    statecar | statecar-plain) return 0 ;;
    *) die "unknown mode $1 (direct, statecar, statecar-plain)" ;;
  esac
}

# start_target MODE DIR: a fresh redis-server and, unless MODE is direct, a statecar in front;
# sets TARGET_PORT (where the tests connect) and TARGET_PIDS.
# shellcheck disable=SC2034 # TARGET_PORT is read by the scripts that source this file.
start_target() {
  local mode=$1 dir=$2
  start_redis "$dir"
  TARGET_PIDS=("$REDIS_PID")
  TARGET_PORT=$REDIS_PORT
  case $mode in
    statecar) start_statecar "$dir" "$REDIS_PORT" rules ;;
    statecar-plain) start_statecar "$dir" "$REDIS_PORT" none ;;
  esac
  if mode_needs_statecar "$mode"; then
    TARGET_PIDS=("$STATECAR_PID" "${TARGET_PIDS[@]}")
    TARGET_PORT=$STATECAR_PORT
  fi
}

# stop_target: statecar first (so it does not log the upstream going away), then Redis.
stop_target() {
  local pid
  for pid in "${TARGET_PIDS[@]}"; do
    stop_pid "$pid"
    forget_pid "$pid"
  done
  TARGET_PIDS=()
}
