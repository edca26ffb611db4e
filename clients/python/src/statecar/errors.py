"""Exceptions raised by the statecar client.

Every error statecar (or the Redis behind it) answers becomes one of these, carrying statecar's
own message as its text. They derive from redis-py's ``RedisError``, so code that already catches
``redis.RedisError`` keeps working.
"""

from __future__ import annotations

import redis.exceptions


class StatecarError(redis.exceptions.RedisError):
    """Base class: anything statecar or the Redis behind it refused."""


class StatecarConnectionError(StatecarError, ConnectionError):
    """statecar cannot be reached (or the connection broke)."""


class StatecarConfigError(StatecarError, ValueError):
    """statecar's ``[[state]]`` rule for the keys differs from what the client was told to do
    (``compression_type``, ``enable_versioning``, ``max_versions``, ``default_ttl``), or the server
    is not statecar at all."""


class NotAStateKeyError(StatecarError):
    """No ``[[state]]`` rule matches the key, so statecar keeps no metadata or versions for it."""


class VersioningDisabledError(StatecarError):
    """The key's rule keeps no versions (``versioning = false``)."""


class VersionConflictError(StatecarError):
    """``save_with_metadata(..., version=n)`` found a stored version other than ``n - 1``."""


class VersionNotFoundError(StatecarError):
    """The version does not exist (never written, deleted, or trimmed by ``max_versions``)."""


class VersionInUseError(StatecarError):
    """The version is the key's current value and cannot be deleted (roll back first)."""


class StateCorruptedError(StatecarError):
    """The stored value failed statecar's checksum verification; the damaged bytes are never
    returned."""


_BY_MESSAGE = (
    ("STATEVERSION", VersionConflictError),
    ("is not a state key", NotAStateKeyError),
    ("keeps no versions", VersioningDisabledError),
    ("failed verification", StateCorruptedError),
    ("roll back to another version first", VersionInUseError),
    ("no version ", VersionNotFoundError),
)


def from_redis(exc: BaseException) -> StatecarError:
    """The statecar exception for a redis-py exception, with the server's message."""
    if isinstance(exc, StatecarError):
        return exc
    message = str(exc)
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
        return StatecarConnectionError(message)
    for needle, cls in _BY_MESSAGE:
        if needle in message:
            return cls(message)
    return StatecarError(message)
