#!/usr/bin/env python3
"""Connection state through statecar with redis-py, modelled on redis-py's own ACL and CLIENT
tests: run by tests/clients.rs as
`python3 connection_state_redis_py.py STATECAR_PORT REDIS_PORT PROTOCOL [requirepass]`
(with `requirepass`, Redis was started with `--requirepass sekret` and only that check runs).

statecar has no password of its own here, so AUTH is checked by Redis and the client's commands
run as the ACL user it authenticated as; CLIENT describes statecar's clients; a transaction is
all or nothing. Exits 0 and prints "connection state passed" when every check holds.
"""

import sys
import threading
import time

try:
    import redis
except ImportError:
    print("redis-py is not installed: pip install redis", file=sys.stderr)
    sys.exit(3)

PORT = int(sys.argv[1])
REDIS_PORT = int(sys.argv[2])
PROTOCOL = int(sys.argv[3]) if len(sys.argv) > 3 else 2
MODE = sys.argv[4] if len(sys.argv) > 4 else "main"


def conn(port=PORT, **kw):
    return redis.Redis(host="127.0.0.1", port=port, protocol=PROTOCOL, socket_timeout=20, **kw)


def expect(got, want, what):
    # redis-py decodes some replies only in one protocol.
    if isinstance(got, bytes) and isinstance(want, str):
        got = got.decode()
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def raises(exc, what, fn):
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"{what}: no {exc.__name__} raised")


def acl_users(direct):
    # An ACL user that may only read keys under "ro:", made on Redis itself.
    direct.acl_setuser(
        "reader", enabled=True, passwords=["+readerpw"], keys=["ro:*"], commands=["+get", "+acl|whoami", "+client", "+ping"]
    )
    direct.set("ro:k", "visible")
    direct.set("rw:k", "hidden")
    r = conn()
    # Wrong credentials: Redis's own answer, and the client stays who it was.
    e = raises(redis.AuthenticationError, "AUTH with a wrong password", lambda: r.auth("nope", "reader"))
    expect("WRONGPASS" in str(e) or "invalid username-password" in str(e), True, f"wrong password message {e}")
    expect(r.acl_whoami(), "default", "ACL WHOAMI before AUTH")
    expect(r.auth("readerpw", "reader"), True, "AUTH as reader")
    expect(r.acl_whoami(), "reader", "ACL WHOAMI after AUTH")
    expect(r.get("ro:k"), b"visible", "GET allowed by the ACL")
    e = raises(redis.exceptions.NoPermissionError, "GET outside the user's keys", lambda: r.get("rw:k"))
    expect("NOPERM" in str(e) or "permission" in str(e).lower(), True, f"NOPERM message {e}")
    raises(redis.exceptions.NoPermissionError, "SET not allowed by the ACL", lambda: r.set("ro:k", "x"))
    info = r.client_info()
    expect(info["user"], "reader", "CLIENT INFO user")
    # Another client is unaffected: still the default user.
    other = conn()
    expect(other.acl_whoami(), "default", "another client's identity")
    expect(other.set("rw:k", "still writable"), True, "default user writes")
    # HELLO AUTH (RESP3 clients authenticate this way) is checked by Redis too.
    if PROTOCOL == 3:
        h = conn(username="reader", password="readerpw")
        expect(h.acl_whoami(), "reader", "HELLO 3 AUTH identity")
    # redis-py's connection-time auth (username/password on the client).
    c = conn(username="reader", password="readerpw")
    expect(c.get("ro:k"), b"visible", "connection-time AUTH")
    direct.acl_deluser("reader")


def requirepass(direct):
    # Redis has a password and statecar's upstream URL has none: clients get exactly what a
    # direct client gets until they AUTH, and Redis checks their AUTH.
    r = conn()
    e = raises(redis.exceptions.AuthenticationError, "command before AUTH", lambda: r.get("x"))
    expect("Authentication required" in str(e), True, f"NOAUTH message {e}")
    expect(r.auth("sekret"), True, "AUTH with Redis's password")
    expect(r.set("rp:k", "v"), True, "SET after AUTH")
    expect(r.get("rp:k"), b"v", "GET after AUTH")
    raises(redis.AuthenticationError, "AUTH with a wrong password", lambda: conn().auth("bad"))
    c = conn(password="sekret")
    expect(c.get("rp:k"), b"v", "connection-time AUTH")


def client_commands(direct):
    a = conn()
    b = conn()
    a.client_setname("alpha")
    b.client_setname("beta")
    ida = a.client_id()
    idb = b.client_id()
    expect(ida != idb, True, "client ids differ")
    expect(a.client_getname(), "alpha", "CLIENT GETNAME")
    listed = {c["name"]: c for c in a.client_list()}
    expect("alpha" in listed and "beta" in listed, True, f"CLIENT LIST names {sorted(listed)}")
    expect(int(listed["alpha"]["id"]), ida, "CLIENT LIST id")
    expect(int(listed["beta"]["id"]), idb, "CLIENT LIST id of another client")
    expect("statecar" in listed, False, "statecar's own upstream connections are not listed")
    expect(a.client_info()["name"], "alpha", "CLIENT INFO")
    expect(len(a.client_list(client_id=[idb])), 1, "CLIENT LIST ID")
    # CLIENT KILL by id, by address and by name-ish filters reach statecar's clients.
    expect(a.client_kill_filter(_id=idb), 1, "CLIENT KILL ID")
    gone = False
    for _ in range(200):
        if idb not in [int(x["id"]) for x in a.client_list()]:
            gone = True
            break
        time.sleep(0.02)
    expect(gone, True, "the killed client left CLIENT LIST")
    c = conn()
    c.client_setname("gamma")
    addr = [x for x in a.client_list() if x["name"] == "gamma"][0]["addr"]
    expect(a.client_kill(addr), True, "CLIENT KILL addr (old form)")
    raises(redis.ResponseError, "CLIENT KILL of nobody", lambda: a.client_kill("1.2.3.4:5"))
    expect(a.client_kill_filter(_type="pubsub"), 0, "CLIENT KILL TYPE pubsub with none")
    # CLIENT UNBLOCK reaches a client blocked in BLPOP through statecar.
    blocked = conn()
    bid = blocked.client_id()
    out = {}

    def block():
        out["r"] = blocked.blpop("cs:never", timeout=10)

    t = threading.Thread(target=block)
    t.start()
    deadline = time.time() + 10
    while time.time() < deadline:
        if "b" in [x for x in a.client_list() if int(x["id"]) == bid][0]["flags"]:
            break
        time.sleep(0.05)
    expect(a.client_unblock(bid), True, "CLIENT UNBLOCK")
    t.join(15)
    expect(out.get("r"), None, "BLPOP unblocked with TIMEOUT semantics")
    expect(a.client_unblock(bid), False, "CLIENT UNBLOCK of a client not blocked")


def transactions(direct):
    direct.delete("tx:a", "tx:n", "tx:w")
    r = conn()
    p = r.pipeline(transaction=True)
    p.set("tx:a", "1").incr("tx:n").get("tx:a")
    expect(p.execute(), [True, 1, b"1"], "MULTI/EXEC")
    # A queue-time error aborts the whole transaction, as in Redis.
    p = r.pipeline(transaction=True)
    p.set("tx:a", "2").execute_command("NOSUCHCOMMAND")
    raises(redis.ResponseError, "EXEC after a queueing error", p.execute)
    expect(r.get("tx:a"), b"1", "nothing of the aborted transaction ran")
    # WATCH then a change by someone else: EXEC returns nil.
    with r.pipeline() as p:
        p.watch("tx:w")
        direct.set("tx:w", "changed")
        p.multi()
        p.set("tx:w", "mine")
        raises(redis.WatchError, "EXEC after the watched key changed", p.execute)
    expect(direct.get("tx:w"), b"changed", "the watched write did not happen")


def main():
    if MODE == "requirepass":
        direct = redis.Redis(host="127.0.0.1", port=REDIS_PORT, protocol=PROTOCOL, password="sekret")
        checks = (requirepass,)
    else:
        direct = redis.Redis(host="127.0.0.1", port=REDIS_PORT, protocol=PROTOCOL)
        checks = (acl_users, client_commands, transactions)
    for check in checks:
        try:
            check(direct)
        except Exception as e:
            print(f"FAILED in {check.__name__} (RESP{PROTOCOL}): {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    print("connection state passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
