"""Starting the servers a Python benchmark measures: a redis-server and a statecar of this
repository on free loopback ports (what benches/support/processes.sh does for the shell
benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free loopback port, never 6379 or 6380 (a developer's own Redis, `.ci/dev`)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in (6379, 6380):
            return p


def wait_ping(port: int, proc: subprocess.Popen, what: str) -> None:
    """Waits until `port` answers PING; stops the benchmark if `proc` exits or 20 s pass."""
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start on port {port}")
        time.sleep(0.05)


def statecar_bin() -> str:
    """$STATECAR_BIN, else the newer of target/release and target/debug."""
    if os.environ.get("STATECAR_BIN"):
        return os.environ["STATECAR_BIN"]
    built = [p for p in (REPO / "target" / d / "statecar" for d in ("release", "debug")) if p.exists()]
    if not built:
        raise SystemExit("no statecar binary: cargo build --release")
    return str(max(built, key=lambda p: p.stat().st_mtime))


def start_redis(port: int, workdir: str | Path) -> subprocess.Popen:
    """A redis-server on `port` that persists nothing, answering PING when this returns."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_ping(port, proc, "redis-server")
    except SystemExit:
        proc.terminate()
        raise
    return proc


def start_statecar(port: int, redis_port: int, workdir: str | Path, binary: str | None = None,
                   rules: str = "") -> subprocess.Popen:
    """A statecar of `binary` (default `statecar_bin()`) on `port` in front of the redis-server
    on `redis_port`, with `rules` (TOML `[[state]]` tables) as its only configuration besides
    the addresses, answering PING when this returns. It sees no STATECAR_* variable of ours."""
    conf = Path(workdir) / "statecar.toml"
    conf.write_text(f'listen = "127.0.0.1:{port}"\n[upstream]\nurl = "redis://127.0.0.1:{redis_port}"\n'
                    f'[log]\nlevel = "warn"\n{rules}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATECAR_")}
    proc = subprocess.Popen([binary or statecar_bin(), "--config", str(conf)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ping(port, proc, "statecar")
    except SystemExit:
        proc.terminate()
        raise
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    """Stops what a benchmark started, last first."""
    for proc in reversed(procs):
        proc.terminate()
        proc.wait()
