"""statecar's Python client: the seed library's ``RedisStatePersistence`` over statecar's
``STATE.*`` commands, and (in ``statecar.langgraph``) a LangGraph checkpoint saver.

    from statecar import RedisStatePersistence, CompressionType
"""

from .errors import (
    NotAStateKeyError,
    StateCorruptedError,
    StatecarConfigError,
    StatecarConnectionError,
    StatecarError,
    VersionConflictError,
    VersionInUseError,
    VersioningDisabledError,
    VersionNotFoundError,
)
from .persistence import (
    AsyncRedisStatePersistence,
    CompressionType,
    RedisStatePersistence,
    StateMetadata,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncRedisStatePersistence",
    "CompressionType",
    "NotAStateKeyError",
    "RedisStatePersistence",
    "StateCorruptedError",
    "StateMetadata",
    "StatecarConfigError",
    "StatecarConnectionError",
    "StatecarError",
    "VersionConflictError",
    "VersionInUseError",
    "VersionNotFoundError",
    "VersioningDisabledError",
]
