#!/usr/bin/env python3
"""What a versioned write of a big value costs Redis, by stored size: the value inside the
write function's call, or uploaded first to a staging key that the function renames into place
(src/session/stage.rs; values stored in 64 KiB or more).

    python3 benches/staged_writes.py [--statecar BIN] [--writes 40]

It starts its own redis-server and statecar (BIN, else $STATECAR_BIN, else the newer of
target/release and target/debug) on free loopback ports (benches/support/servers.py). Each
size writes one key `--writes` times, the values differing in 100 bytes (as consecutive checkpoints do, so the older versions are small
deltas) and made of random bytes (so the stored size is the written size). Per write: Redis's
time (INFO commandstats, every command counted, CONFIG excluded), the FCALL's share of it, and
the client's wall time (one client, one write at a time). Needs redis-server and redis-py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import redis  # noqa: E402
from servers import free_port, start_redis, start_statecar, stop  # noqa: E402

SIZES = [16_000, 60_000, 70_000, 256_000, 1_500_000]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--statecar", default=None, help="statecar binary (default: $STATECAR_BIN, else the newer build)")
    ap.add_argument("--writes", type=int, default=40)
    a = ap.parse_args()
    run = tempfile.mkdtemp(prefix="staged-writes-")
    pr, ps = free_port(), free_port()
    procs = [start_redis(pr, run)]
    try:
        rules = '[[state]]\npattern = "big:*"\ncompression = "zstd"\nmax_versions = 10\n'
        procs.append(start_statecar(ps, pr, run, a.statecar, rules))
        p, d = redis.Redis(port=ps), redis.Redis(port=pr)
        print("| stored bytes | Redis us per write | of which FCALL | client us per write | staged |")
        print("|--:|--:|--:|--:|--:|")
        for size in SIZES:
            base = os.urandom(size)
            vals = [base[: size // 2] + os.urandom(100) + base[size // 2 + 100:] for _ in range(4)]
            key = f"big:{size}"
            p.set(key, vals[0])
            staged0 = p.execute_command("STATE.STATS")
            d.config_resetstat()
            t = time.perf_counter()
            for i in range(a.writes):
                p.set(key, vals[(i + 1) % 4])
            wall = (time.perf_counter() - t) / a.writes * 1e6
            st = d.info("commandstats")
            total = sum(v["usec"] for k, v in st.items() if not k.startswith("cmdstat_config"))
            fcall = st.get("cmdstat_fcall", {}).get("usec", 0)
            stats = p.execute_command("STATE.STATS")

            def staged(s):
                m = s if isinstance(s, dict) else dict(zip(s[::2], s[1::2]))
                return int(m.get(b"values_staged", 0))

            print(f"| {size:,} | {total / a.writes:.1f} | {fcall / a.writes:.1f} | {wall:.0f} | "
                  f"{staged(stats) - staged(staged0)} of {a.writes} |")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
