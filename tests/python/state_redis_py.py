#!/usr/bin/env python3
"""redis-py against statecar: JSON session state through plain SET/GET and the STATE.* commands,
in RESP2 and in RESP3 (protocol=3), with exact assertions.

Usage: state_redis_py.py PROXY_PORT [REDIS_PORT]

The proxy must have a rule for `py:*` with versioning, lz4 compression and max_versions >= 10.
With REDIS_PORT, the Redis side is checked as well (values stored smaller, with the signature).

Exit codes: 0 all checks passed, 1 a check failed, 3 redis-py is not installed.
"""

import json
import random
import sys
import zlib

try:
    import redis
except ImportError as e:  # pragma: no cover - depends on the machine
    print(f"redis-py is not installed: {e}", file=sys.stderr)
    sys.exit(3)

SIGNATURE = b"\xe5SCK\x01"


def session(seed, turns):
    """A realistic agent session: messages, tool calls, numbers, vectors of floats, unicode."""
    rng = random.Random(seed)
    messages = []
    for i in range(turns):
        messages.append(
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"turn {i}: please look at order #{rng.randint(1000, 9999)} "
                "and summarise the état of the shipment — ✓ ünïcödé",
                "tokens": rng.randint(10, 500),
            }
        )
        if i % 3 == 1:
            messages[-1]["tool_calls"] = [
                {
                    "id": f"call_{seed}_{i}",
                    "type": "function",
                    "function": {
                        "name": "lookup_order",
                        "arguments": json.dumps({"order": i, "verbose": True}),
                    },
                }
            ]
        if i % 4 == 0:
            messages[-1]["embedding"] = [round(rng.uniform(-1, 1), 6) for _ in range(32)]
    return {
        "session_id": f"sess_{seed:08x}",
        "agent": "support-bot",
        "model": "some-model-2025",
        "user": {"id": f"user_{seed}", "locale": "fr-FR"},
        "messages": messages,
        "scratchpad": {"step": turns, "score": 0.875, "done": False, "notes": None},
    }


def encode(doc):
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def as_map(reply):
    """STATE.LOAD / STATE.VERSIONS entry: a dict in RESP3, a flat list in RESP2."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        assert isinstance(reply, list), f"expected a flat list, got {reply!r}"
        assert len(reply) % 2 == 0, reply
        items = list(zip(reply[0::2], reply[1::2]))
    out = {}
    for k, v in items:
        out[k.decode() if isinstance(k, bytes) else k] = v
    return out


def expect_error(fn, needle):
    try:
        fn()
    except redis.exceptions.ResponseError as e:
        assert needle in str(e), f"error {e!s} does not contain {needle!r}"
        return str(e)
    raise AssertionError(f"expected an error containing {needle!r}")


def check(port, direct, protocol):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=20)
    p = f"py:{protocol}:"
    key = p + "sess"
    docs = [session(protocol * 100 + i, 30 + 10 * i) for i in range(4)]
    data = [encode(d) for d in docs]

    # Plain SET/GET on a state key: exactly the bytes written.
    assert r.set(key, data[0]) is True
    got = r.get(key)
    assert got == data[0], "GET returned different bytes"
    assert json.loads(got) == docs[0]
    assert r.strlen(key) == len(data[0])
    if direct is not None:
        stored = direct.get(key)
        assert stored[:5] == SIGNATURE, stored[:8]
        assert len(stored) < len(data[0]), (len(stored), len(data[0]))

    # STATE.SAVE with tags and optimistic concurrency.
    v = r.execute_command("STATE.SAVE", key, data[1], "TAGS", "checkpoint", "π")
    assert v == 2, v
    v = r.execute_command("STATE.SAVE", key, data[2], "VERSION", 3)
    assert v == 3, v
    expect_error(
        lambda: r.execute_command("STATE.SAVE", key, data[3], "VERSION", 3), "STATEVERSION"
    )
    assert r.get(key) == data[2]

    # STATE.LOAD current and a given version.
    load = r.execute_command("STATE.LOAD", key)
    if protocol == 3:
        assert isinstance(load, dict), f"RESP3 STATE.LOAD should be a map: {type(load)}"
    else:
        assert isinstance(load, list), f"RESP2 STATE.LOAD should be a flat list: {type(load)}"
    m = as_map(load)
    assert list(m) == [
        "value",
        "version",
        "created",
        "size",
        "stored_size",
        "codec",
        "checksum",
        "tags",
        "ttl",
    ], list(m)
    assert m["value"] == data[2]
    assert json.loads(m["value"]) == docs[2]
    assert m["version"] == 3, m["version"]
    assert m["size"] == len(data[2])
    assert 0 < m["stored_size"] < len(data[2]), m["stored_size"]
    assert m["codec"] == b"lz4", m["codec"]
    assert m["checksum"] == f"{zlib.crc32(data[2]):08x}".encode(), m["checksum"]
    assert m["tags"] == [], m["tags"]
    assert m["ttl"] == -1, m["ttl"]
    assert isinstance(m["created"], int) and m["created"] > 1_600_000_000_000
    m2 = as_map(r.execute_command("STATE.LOAD", key, "VERSION", 2))
    assert m2["value"] == data[1]
    assert m2["version"] == 2
    assert m2["tags"] == [b"checkpoint", "π".encode()], m2["tags"]
    assert r.execute_command("STATE.LOAD", key, "VERSION", 42) is None
    assert r.execute_command("STATE.LOAD", p + "missing") is None

    # STATE.VERSIONS
    versions = [as_map(e) for e in r.execute_command("STATE.VERSIONS", key)]
    assert [e["version"] for e in versions] == [1, 2, 3], versions
    assert [e["current"] for e in versions] == [0, 0, 1]
    assert [e["intact"] for e in versions] == [1, 1, 1]
    assert [e["size"] for e in versions] == [len(d) for d in data[:3]]
    assert versions[1]["tags"] == [b"checkpoint", "π".encode()]

    # STATE.ROLLBACK: version 1's content becomes version 4.
    assert r.execute_command("STATE.ROLLBACK", key, 1) == 4
    assert r.get(key) == data[0]
    assert json.loads(r.get(key)) == docs[0]
    m = as_map(r.execute_command("STATE.LOAD", key))
    assert m["version"] == 4 and m["value"] == data[0]
    versions = [as_map(e) for e in r.execute_command("STATE.VERSIONS", key)]
    assert [e["version"] for e in versions] == [1, 2, 3, 4]
    assert [e["current"] for e in versions] == [0, 0, 0, 1]

    # A transaction through redis-py's pipeline, mixing state and plain keys.
    k2 = p + "tx"
    plain = f"plain:{protocol}"
    pipe = r.pipeline(transaction=True)
    pipe.set(k2, data[3])
    pipe.get(k2)
    pipe.incr(plain)
    pipe.execute_command("STATE.LOAD", k2)
    res = pipe.execute()
    assert res[0] is True, res[0]
    assert res[1] == data[3]
    assert res[2] == 1
    assert as_map(res[3])["value"] == data[3]
    assert as_map(res[3])["version"] == 1

    # MGET mixing state, plain and missing keys.
    assert r.mget([key, plain, k2, p + "missing"]) == [data[0], b"1", data[3], None]

    # Errors name the problem.
    expect_error(lambda: r.execute_command("STATE.LOAD", "notstate:x"), "not a state key")
    expect_error(lambda: r.append(key, b"x"), "not supported on state key")
    expect_error(lambda: r.execute_command("STATE.ROLLBACK", key, 99), "no version 99")

    # Delete removes the history too.
    assert r.delete(key, k2) == 2
    assert r.get(key) is None
    assert r.execute_command("STATE.VERSIONS", key) == []
    if direct is not None:
        assert direct.exists("__statecar:h:{" + key + "}") == 0
    r.close()


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[1])
    direct = None
    if len(sys.argv) == 3:
        direct = redis.Redis(host="127.0.0.1", port=int(sys.argv[2]), socket_timeout=20)
    for protocol in (2, 3):
        check(port, direct, protocol)
        print(f"state_redis_py: RESP{protocol} ok")
    print(f"state_redis_py: all checks passed (redis-py {redis.__version__})")


if __name__ == "__main__":
    main()
