"""A real redis-server and a real statecar for the tests, each on a free port.

statecar runs with the repository's own config/statecar.toml (the file README's first command
uses), so these tests also check that it has the rules the package needs. The binary is
$STATECAR_BIN, or target/debug/statecar (built by `cargo build` / `cargo test`), or
target/release/statecar.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config" / "statecar.toml"
WAIT = 20.0


def statecar_bin() -> str:
    env = os.environ.get("STATECAR_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "statecar"
        if p.exists():
            return str(p)
    pytest.fail("no statecar binary: run `cargo build` (or set STATECAR_BIN)")


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (6379, 6380):
            return port


def _ping(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


class Process:
    """A child process, stopped at the end of the session; its log printed if it failed."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while not _ping(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start on {port}: {log.read_text(errors='replace')}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(tmp: Path) -> Process:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    return Process(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        port,
        tmp / f"redis-{port}.log",
    )


def start_statecar(tmp: Path, upstream_port: int, config: Path = CONFIG) -> Process:
    port = free_port()
    env_args = [
        statecar_bin(),
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"redis://127.0.0.1:{upstream_port}",
        "--metrics-listen",
        f"127.0.0.1:{free_port()}",
    ]
    return Process(env_args, port, tmp / f"statecar-{port}.log")


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("servers")
    redis_proc = start_redis(tmp)
    statecar = start_statecar(tmp, redis_proc.port)
    yield redis_proc, statecar
    statecar.stop()
    redis_proc.stop()
    for p in (statecar, redis_proc):
        if p.proc.returncode not in (0, None, -15):
            sys.stderr.write(p.log.read_text(errors="replace"))


@pytest.fixture(scope="session")
def statecar_url(servers) -> str:
    return f"redis://127.0.0.1:{servers[1].port}/0"


@pytest.fixture(scope="session")
def redis_direct(servers) -> redis.Redis:
    """A client straight to the redis-server behind statecar, to see what is stored."""
    return redis.Redis(port=servers[0].port)


@pytest.fixture
def statecar_with(tmp_path, servers):
    """Starts another statecar in front of the same Redis with a config of the test's own."""
    started: list[Process] = []

    def start(config_text: str) -> str:
        path = tmp_path / f"statecar-{len(started)}.toml"
        path.write_text(config_text)
        p = start_statecar(tmp_path, servers[0].port, path)
        started.append(p)
        return f"redis://127.0.0.1:{p.port}/0"

    yield start
    for p in started:
        p.stop()
