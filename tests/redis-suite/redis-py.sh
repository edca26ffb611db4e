#!/usr/bin/env bash
# redis-py's own test suite run directly against a fresh redis-server and through a statecar in
# front of one, in RESP2 and RESP3, then compared (the same comparison as run.sh's).
#
#   tests/redis-suite/redis-py.sh REDIS_PY_SRC
#
# REDIS_PY_SRC is a redis-py source tree holding `redis/` and `tests/` (the version is yours to
# pick; docs/RELIABILITY.md names the one measured). This script fetches no source; get one with
#   pip download --no-binary :all: --no-deps redis==6.4.0 && tar xzf redis-6.4.0.tar.gz
# (the sdist holds tests/), or `git archive v6.4.0` of a clone of the redis/redis-py repository.
# The tree is copied to a temporary directory and its own `redis` package is the one tested.
#
# Only what a standalone Redis without modules can answer is run: `-m "not onlycluster and not
# redismod and not ssl and not replica and not cp_integration"`, and the cluster, sentinel, SSL
# and Entra ID files are left out (PYTEST_IGNORE). Everything else of the suite runs, with
# pytest-timeout's 30 s per test that redis-py configures.
#
# Environment:
#   MODES         direct, statecar, statecar-plain (see run.sh); default "direct statecar"
#   PROTOCOLS     RESP versions, redis-py's --protocol (default "2 3")
#   OUT           results directory (default: a new directory under ${TMPDIR:-/tmp}); per
#                 protocol and mode resp<P>-<mode>.xml (JUnit) and .log, and the comparison
#   STATECAR_BIN  statecar binary (default: `cargo build --release`, then target/release/statecar)
#   PYTHON        a Python with redis-py's test requirements: pytest, pytest-asyncio,
#                 pytest-timeout, mock, numpy, ujson, packaging, redis-entraid (default: the
#                 venv VENV, ${TMPDIR:-/tmp}/statecar-redis-py-venv, created and filled with
#                 those from PyPI once, if it does not exist yet)
#   PYTEST_ARGS   more pytest arguments (e.g. "-k pubsub" or "-x")
set -euo pipefail

# shellcheck source=tests/redis-suite/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_PY_SRC=$(dir_arg "$@") || exit 2
if [ ! -f "$REDIS_PY_SRC/redis/__init__.py" ] || [ ! -f "$REDIS_PY_SRC/tests/conftest.py" ]; then
  die "$REDIS_PY_SRC does not hold redis-py's redis/ and tests/ (see the header of $0)"
fi

MODES=${MODES:-direct statecar}
PROTOCOLS=${PROTOCOLS:-2 3}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/redis-py-results.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MARKERS="not onlycluster and not redismod and not ssl and not replica and not cp_integration"
PYTEST_IGNORE=(
  tests/test_cluster.py tests/test_cluster_transaction.py
  tests/test_asyncio/test_cluster.py tests/test_asyncio/test_cluster_transaction.py
  tests/test_sentinel.py tests/test_asyncio/test_sentinel.py
  tests/test_ssl.py tests/test_asyncio/test_ssl.py
  tests/test_auth
)

need redis-server redis-cli python3
for mode in $MODES; do
  if mode_needs_statecar "$mode"; then
    resolve_statecar_bin
    break
  fi
done

if [ -z "${PYTHON:-}" ]; then
  VENV=${VENV:-${TMPDIR:-/tmp}/statecar-redis-py-venv}
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with redis-py's test requirements (once)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet pytest pytest-asyncio pytest-timeout mock numpy ujson \
      packaging redis-entraid
    # redis-entraid brings a redis package along; the one under test is REDIS_PY_SRC's.
    "$VENV/bin/pip" uninstall --quiet -y redis
  fi
  PYTHON=$VENV/bin/python
fi
"$PYTHON" -c 'import pytest, pytest_asyncio, pytest_timeout, mock' ||
  die "$PYTHON lacks redis-py's test requirements (see the header of $0)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-py-work.XXXXXX")
trap 'suite_cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/src"
cp -R "$REDIS_PY_SRC/redis" "$REDIS_PY_SRC/tests" "$WORK/src/"
for f in pyproject.toml pytest.ini setup.cfg tox.ini; do
  if [ -f "$REDIS_PY_SRC/$f" ]; then
    cp "$REDIS_PY_SRC/$f" "$WORK/src/"
  fi
done
version=$(cd "$WORK/src" && "$PYTHON" -c 'import redis; print(redis.__version__)')
log "redis-py $version from $REDIS_PY_SRC"

ignore_args=()
for p in "${PYTEST_IGNORE[@]}"; do
  ignore_args+=("--ignore=$p")
done

for proto in $PROTOCOLS; do
  for mode in $MODES; do
    name="resp$proto-$mode"
    start_target "$mode" "$WORK/srv-$name"
    # Modules' tests are deselected; point their URL at a port where nothing listens.
    log "$name: pytest against 127.0.0.1:$TARGET_PORT"
    rc=0
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose.
    (cd "$WORK/src" && PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m pytest tests \
      -p no:cacheprovider -q -rfE --color=no \
      --redis-url="redis://127.0.0.1:$TARGET_PORT/0" --redis-mod-url="redis://127.0.0.1:1" \
      --protocol="$proto" -m "$MARKERS" "${ignore_args[@]}" \
      --junitxml="$OUT/$name.xml" ${PYTEST_ARGS:-}) >"$OUT/$name.log" 2>&1 || rc=$?
    stop_target
    for f in redis.log statecar.log statecar.toml; do
      if [ -f "$WORK/srv-$name/$f" ]; then
        cp "$WORK/srv-$name/$f" "$OUT/$name.$f"
      fi
    done
    log "$name: pytest exited $rc; $(tail -n 1 "$OUT/$name.log")"
  done
done

status=0
for proto in $PROTOCOLS; do
  for mode in $MODES; do
    [ "$mode" = direct ] && continue
    if [ -f "$OUT/resp$proto-direct.xml" ] && [ -f "$OUT/resp$proto-$mode.xml" ]; then
      echo
      echo "== redis-py $version, RESP$proto: direct vs $mode"
      python3 "$SUITE_DIR/compare.py" --label "$mode" \
        --exclusions "$SUITE_DIR/redis-py-exclusions.txt" \
        "$OUT/resp$proto-direct.xml" "$OUT/resp$proto-$mode.xml" |
        tee "$OUT/compare-resp$proto-$mode.txt" || status=$?
    fi
  done
done
echo "results: $OUT"
exit "$status"
