"""Reading statecar's replies, the same way over RESP2 and RESP3.

statecar answers STATE.LOAD, STATE.VERSIONS, STATE.RULE and STATE.STATS with a map in RESP3 and a
flat key, value, key, value array in RESP2; redis-py hands those over as a dict or a list, with
bytes or str depending on ``decode_responses``. Everything here accepts all of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import StatecarConfigError, StatecarError


def text(v: Any) -> str:
    """A reply element as text."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def as_bytes(v: Any) -> bytes:
    """A bulk reply element as bytes."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    return str(v).encode("utf-8")


def as_int(v: Any) -> int:
    """An integer reply element (redis-py may give bytes for some replies)."""
    if isinstance(v, int):
        return v
    return int(text(v))


def as_map(reply: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat array as a dict with text keys."""
    if isinstance(reply, dict):
        return {text(k): v for k, v in reply.items()}
    if isinstance(reply, (list, tuple)):
        if len(reply) % 2:
            raise StatecarError(f"statecar: unexpected reply shape: {reply!r}")
        return {text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
    raise StatecarError(f"statecar: unexpected reply: {reply!r}")


@dataclass(frozen=True)
class Rule:
    """statecar's ``[[state]]`` rule for a key, as ``STATE.RULE`` reports it."""

    pattern: str
    index: int
    compression: str
    min_size: int
    versioning: bool
    max_versions: int
    default_ttl_s: int | None
    on_corruption: str

    @classmethod
    def from_reply(cls, reply: Any) -> Rule | None:
        if reply is None:
            return None
        m = as_map(reply)
        ttl = as_int(m["default_ttl_s"])
        return cls(
            pattern=text(m["pattern"]),
            index=as_int(m["index"]),
            compression=text(m["compression"]),
            min_size=as_int(m["min_size"]),
            versioning=bool(as_int(m["versioning"])),
            max_versions=as_int(m["max_versions"]),
            default_ttl_s=None if ttl < 0 else ttl,
            on_corruption=text(m["on_corruption"]),
        )

    def describe(self) -> str:
        ttl = "none" if self.default_ttl_s is None else f"{self.default_ttl_s}s"
        history = f"{self.max_versions} versions" if self.versioning else "no versions"
        return (
            f"[[state]] rule {self.index} (pattern {self.pattern!r}: "
            f"compression {self.compression!r}, {history}, default TTL {ttl})"
        )


def rule_error(url: str, key: str, exc: BaseException) -> StatecarError:
    """The error for a failed STATE.RULE: a plain Redis (or an old statecar) does not know it."""
    message = str(exc)
    if "unknown command" in message.lower():
        return StatecarConfigError(
            f"the server at {url} does not know STATE.RULE: it is not statecar (or a statecar "
            f"older than this client). Point the URL at statecar's port (6380 by default), "
            f"not at Redis. ({message})"
        )
    from .errors import from_redis

    return from_redis(exc)


def no_rule_error(url: str, key: str, what: str) -> StatecarConfigError:
    return StatecarConfigError(
        f"statecar at {url} has no [[state]] rule for {key!r}, so {what} would be stored as plain "
        f"Redis values, without compression, checksums or versions. Add a rule to statecar's "
        f"configuration (config/statecar.toml), e.g. [[state]] pattern = "
        f"\"{key.split(':')[0]}:*\", and restart or SIGHUP statecar."
    )
