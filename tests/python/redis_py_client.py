#!/usr/bin/env python3
"""redis-py through statecar: run by tests/clients.rs as `python3 redis_py_client.py PORT`.

Exercises the operations an application does with redis-py and checks every result. Exits 0
and prints "redis-py suite passed" when everything matches, non-zero with a message otherwise.
"""

import sys
import threading
import time
import traceback

try:
    import redis
except ImportError:
    print("redis-py is not installed: pip install redis", file=sys.stderr)
    sys.exit(3)

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 6380
TIMEOUT = 20


def conn(protocol=2, **kw):
    return redis.Redis(
        host="127.0.0.1",
        port=PORT,
        protocol=protocol,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        **kw,
    )


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def strings(r):
    expect(r.set("py:s", "hello"), True, "SET")
    expect(r.get("py:s"), b"hello", "GET")
    expect(r.append("py:s", " world"), 11, "APPEND")
    expect(r.strlen("py:s"), 11, "STRLEN")
    expect(r.incr("py:n"), 1, "INCR")
    expect(r.incrby("py:n", 41), 42, "INCRBY")
    expect(r.incrbyfloat("py:f", 1.5), 1.5, "INCRBYFLOAT")
    expect(r.set("py:nx", "1", nx=True), True, "SET NX new")
    expect(r.set("py:nx", "2", nx=True), None, "SET NX existing")
    expect(r.set("py:ex", "v", ex=100), True, "SET EX")
    ttl = r.ttl("py:ex")
    if not 0 < ttl <= 100:
        raise AssertionError(f"TTL after SET EX 100: {ttl}")
    expect(r.mset({"py:m1": "a", "py:m2": "b"}), True, "MSET")
    expect(r.mget(["py:m1", "py:m2", "py:missing"]), [b"a", b"b", None], "MGET")
    binary = bytes(range(256)) * 4 + b"\r\n\x00"
    r.set("py:bin", binary)
    expect(r.get("py:bin"), binary, "binary GET")
    expect(r.get("py:missing"), None, "GET missing")
    expect(r.delete("py:m1", "py:m2", "py:missing"), 2, "DEL")
    try:
        r.lpush("py:s", "x")
        raise AssertionError("LPUSH on a string did not fail")
    except redis.ResponseError as e:
        if "WRONGTYPE" not in str(e):
            raise AssertionError(f"unexpected error {e}")
    expect(r.ping(), True, "PING after an error")


def hashes(r):
    expect(r.hset("py:h", mapping={"f1": "v1", "f2": "v2"}), 2, "HSET mapping")
    expect(r.hget("py:h", "f1"), b"v1", "HGET")
    expect(r.hgetall("py:h"), {b"f1": b"v1", b"f2": b"v2"}, "HGETALL")
    expect(r.hincrby("py:h", "n", 5), 5, "HINCRBY")
    expect(sorted(r.hkeys("py:h")), [b"f1", b"f2", b"n"], "HKEYS")
    expect(r.hdel("py:h", "f2"), 1, "HDEL")
    expect(r.hlen("py:h"), 2, "HLEN")


def lists(r):
    expect(r.rpush("py:l", "a", "b", "c"), 3, "RPUSH")
    expect(r.lpush("py:l", "z"), 4, "LPUSH")
    expect(r.lrange("py:l", 0, -1), [b"z", b"a", b"b", b"c"], "LRANGE")
    expect(r.lpop("py:l"), b"z", "LPOP")
    expect(r.rpop("py:l"), b"c", "RPOP")
    expect(r.llen("py:l"), 2, "LLEN")
    expect(r.lindex("py:l", 1), b"b", "LINDEX")


def sets(r):
    expect(r.sadd("py:set1", "a", "b", "c"), 3, "SADD")
    expect(r.sadd("py:set2", "b", "c", "d"), 3, "SADD")
    expect(r.smembers("py:set1"), {b"a", b"b", b"c"}, "SMEMBERS")
    expect(r.sinter("py:set1", "py:set2"), {b"b", b"c"}, "SINTER")
    expect(r.sismember("py:set1", "a"), True, "SISMEMBER")
    expect(r.scard("py:set2"), 3, "SCARD")


def sorted_sets(r):
    expect(r.zadd("py:z", {"a": 1, "b": 2.5, "c": 3}), 3, "ZADD")
    expect(r.zrange("py:z", 0, -1, withscores=True), [(b"a", 1.0), (b"b", 2.5), (b"c", 3.0)], "ZRANGE")
    expect(r.zincrby("py:z", 10, "a"), 11.0, "ZINCRBY")
    expect(r.zrangebyscore("py:z", 2, 4), [b"b", b"c"], "ZRANGEBYSCORE")
    expect(r.zscore("py:z", "b"), 2.5, "ZSCORE")
    expect(r.zrank("py:z", "a"), 2, "ZRANK")


def pipelines(r):
    p = r.pipeline(transaction=True)
    p.set("py:p", "1").incr("py:p").get("py:p").lpush("py:pl", "x")
    expect(p.execute(), [True, 2, b"2", 1], "MULTI/EXEC pipeline")
    p = r.pipeline(transaction=False)
    for i in range(500):
        p.set(f"py:pp{i}", i)
        p.get(f"py:pp{i}")
    res = p.execute()
    expect(len(res), 1000, "plain pipeline length")
    for i in range(500):
        expect(res[2 * i], True, f"pipeline SET {i}")
        expect(res[2 * i + 1], str(i).encode(), f"pipeline GET {i}")

    # WATCH-based optimistic transaction, retried on conflict, from several threads.
    r.set("py:cas", 0)

    def bump(pipe):
        cur = int(pipe.get("py:cas"))
        pipe.multi()
        pipe.set("py:cas", cur + 1)

    errors = []

    def worker():
        try:
            c = conn()
            for _ in range(20):
                c.transaction(bump, "py:cas")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    if errors:
        raise AssertionError(f"transaction workers failed: {errors}")
    expect(r.get("py:cas"), b"100", "WATCH/MULTI/EXEC from 5 threads")


def get_message(ps, want_type):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        m = ps.get_message(timeout=1.0)
        if m is not None and m["type"] == want_type:
            return m
    raise AssertionError(f"no {want_type} message within {TIMEOUT}s")


def pubsub(r, proto):
    sub = conn(protocol=proto)
    ps = sub.pubsub()
    ps.subscribe("py:ch")
    expect(get_message(ps, "subscribe")["channel"], b"py:ch", "subscribe confirmation")
    ps.psubscribe("py:pat.*")
    expect(get_message(ps, "psubscribe")["channel"], b"py:pat.*", "psubscribe confirmation")
    expect(r.publish("py:ch", "hello"), 1, "PUBLISH receivers")
    m = get_message(ps, "message")
    expect((m["channel"], m["data"]), (b"py:ch", b"hello"), "message")
    expect(r.publish("py:pat.x", "pm"), 1, "PUBLISH to pattern")
    m = get_message(ps, "pmessage")
    expect((m["pattern"], m["channel"], m["data"]), (b"py:pat.*", b"py:pat.x", b"pm"), "pmessage")
    ps.unsubscribe("py:ch")
    get_message(ps, "unsubscribe")
    expect(r.publish("py:ch", "gone"), 0, "PUBLISH after unsubscribe")
    ps.punsubscribe()
    get_message(ps, "punsubscribe")
    ps.close()
    expect(sub.set("py:after-sub", "ok"), True, "commands after pubsub")


def blocking(r):
    r.delete("py:q")
    waiter = conn()
    result = {}

    def pop():
        try:
            result["v"] = waiter.blpop(["py:q"], timeout=0)
        except Exception as e:  # noqa: BLE001 - reported below
            result["e"] = repr(e)

    t = threading.Thread(target=pop)
    t.start()
    deadline = time.time() + TIMEOUT
    while r.info("clients")["blocked_clients"] < 1:
        if time.time() > deadline:
            raise AssertionError("BLPOP never blocked in redis")
        time.sleep(0.01)
    expect(r.rpush("py:q", "wake"), 1, "RPUSH")
    t.join(TIMEOUT)
    if t.is_alive():
        raise AssertionError("BLPOP was not woken")
    if "e" in result:
        raise AssertionError(f"BLPOP failed: {result['e']}")
    expect(result["v"], (b"py:q", b"wake"), "BLPOP woken by another connection")
    expect(r.blpop(["py:q"], timeout=0.1), None, "BLPOP timeout")


def lock(r):
    lk = r.lock("py:lock", timeout=10)
    expect(lk.acquire(blocking=False), True, "lock acquire")
    other = conn().lock("py:lock", timeout=10)
    expect(other.acquire(blocking=False), False, "second lock acquire while held")
    expect(lk.extend(5), True, "lock extend (Lua)")
    lk.release()
    expect(other.acquire(blocking=False), True, "lock acquire after release")
    other.release()
    expect(r.exists("py:lock"), 0, "lock key gone")


def resp3(r):
    r3 = conn(protocol=3)
    expect(r3.ping(), True, "RESP3 PING")
    r3.hset("py:h3", mapping={"a": "1", "b": "2"})
    expect(r3.hgetall("py:h3"), {b"a": b"1", b"b": b"2"}, "RESP3 HGETALL")
    expect(r3.get("py:nothing"), None, "RESP3 GET missing")
    expect(r3.smembers("py:set1"), {b"a", b"b", b"c"}, "RESP3 SMEMBERS")
    expect(r3.zscore("py:z", "b"), 2.5, "RESP3 ZSCORE")
    p = r3.pipeline(transaction=True)
    p.incr("py:n3").incr("py:n3")
    expect(p.execute(), [1, 2], "RESP3 MULTI/EXEC")
    expect(r3.execute_command("HELLO")[b"proto"], 3, "HELLO in RESP3")


def main():
    r = conn()
    r.flushdb()
    steps = [
        ("strings", lambda: strings(r)),
        ("hashes", lambda: hashes(r)),
        ("lists", lambda: lists(r)),
        ("sets", lambda: sets(r)),
        ("sorted sets", lambda: sorted_sets(r)),
        ("pipelines", lambda: pipelines(r)),
        ("pubsub RESP2", lambda: pubsub(r, 2)),
        ("pubsub RESP3", lambda: pubsub(r, 3)),
        ("blocking", lambda: blocking(r)),
        ("lock", lambda: lock(r)),
        ("resp3", lambda: resp3(r)),
    ]
    failed = []
    for name, step in steps:
        try:
            step()
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - every failure is reported
            failed.append(name)
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
    print(f"redis-py {redis.__version__}")
    if failed:
        print(f"redis-py suite FAILED: {', '.join(failed)}")
        sys.exit(1)
    print("redis-py suite passed")


if __name__ == "__main__":
    main()
