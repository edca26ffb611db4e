#!/usr/bin/env python3
"""How fast can any proxy pass an 8 MB SET on this machine? statecar against the least a
forwarder can do: a process that only copies the client's bytes to Redis (256 KiB
`recv_into`/`sendall`), and one that moves them with `splice(2)` through a pipe, never into its
own memory. The issue's goal for an 8 MB plain SET through statecar is 0.8x of direct Redis;
these two say what the machine allows (docs/BENCHMARKS.md, "8 MB plain SET: the forwarding
floor").

    python3 benches/forward_floor.py [--statecar BIN] [--rounds 5] [--sets 30] [--mb 8.5]

It starts its own redis-server, statecar (BIN, else $STATECAR_BIN, else the newer of
target/release and target/debug; no state rules) and the two forwarders on free loopback ports
(benches/support/servers.py). Each round sends `--sets` SETs of one key with a value of random
bytes through each target in turn, one at a time on one connection, and takes the median time
of a SET; the report gives each target's median over the rounds and its ratio to direct Redis
(medians of per-round ratios, range in brackets). Needs redis-server and redis-py.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from servers import free_port, start_redis, start_statecar, stop, wait_ping  # noqa: E402

F_SETPIPE_SZ = 1031


def forward(mode: str, listen: int, upstream: int) -> None:
    """The forwarder's process: each client on threads of its own, its bytes to Redis as
    `mode` says, Redis's replies back with recv/sendall."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen))
    ls.listen(8)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(mode, c, upstream), daemon=True).start()


def serve(mode: str, c: socket.socket, upstream: int) -> None:
    u = socket.create_connection(("127.0.0.1", upstream))

    def back() -> None:
        while d := u.recv(65536):
            c.sendall(d)
        c.close()

    threading.Thread(target=back, daemon=True).start()
    if mode == "splice":
        r, w = os.pipe()
        fcntl.fcntl(r, F_SETPIPE_SZ, 1 << 20)
        while n := os.splice(c.fileno(), w, 1 << 20):
            while n > 0:
                n -= os.splice(r, u.fileno(), n)
        os.close(r)
        os.close(w)
    else:
        buf = bytearray(256 << 10)
        view = memoryview(buf)
        while n := c.recv_into(buf):
            u.sendall(view[:n])
    u.shutdown(socket.SHUT_WR)


def set_command(key: bytes, value: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value)) + value + b"\r\n"


def median_set_ms(port: int, command: bytes, sets: int) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    times = []
    for _ in range(sets):
        t = time.perf_counter()
        s.sendall(command)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"port {port} closed the connection")
            reply += chunk
        if reply != b"+OK\r\n":
            raise SystemExit(f"port {port} answered {reply[:80]!r}")
        times.append((time.perf_counter() - t) * 1000)
    s.close()
    return statistics.median(times)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--forward":
        forward(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--statecar", default=None, help="statecar binary (default: $STATECAR_BIN, else the newer build)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--mb", type=float, default=8.5)
    a = ap.parse_args()
    run = tempfile.mkdtemp(prefix="forward-floor-")
    pr, ps, pc, pp = free_port(), free_port(), free_port(), free_port()
    procs = [start_redis(pr, run)]
    try:
        procs.append(start_statecar(ps, pr, run, a.statecar))
        for mode, port in (("copy", pc), ("splice", pp)):
            fw = subprocess.Popen([sys.executable, __file__, "--forward", mode, str(port), str(pr)])
            procs.append(fw)
            wait_ping(port, fw, f"the {mode} forwarder")
        command = set_command(b"floor:value", os.urandom(int(a.mb * 1e6)))
        targets = [("Redis directly", pr), ("statecar", ps), ("copying forwarder (Python, 256 KiB recv/send)", pc),
                   ("splice forwarder (Python, socket -> pipe -> socket)", pp)]
        ms: dict[str, list[float]] = {name: [] for name, _ in targets}
        for _ in range(a.rounds):
            for name, port in targets:
                ms[name].append(median_set_ms(port, command, a.sets))
        direct = ms["Redis directly"]
        print(f"| {a.mb} MB SET, one at a time | ms (median of {a.rounds} rounds) | vs direct |")
        print("|---|--:|--:|")
        for name, _ in targets:
            ratios = [d / t for d, t in zip(direct, ms[name])]
            print(f"| {name} | {statistics.median(ms[name]):.2f} | **{statistics.median(ratios):.2f}x** "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
