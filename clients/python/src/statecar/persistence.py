"""``RedisStatePersistence``: the seed library's API, kept by statecar.

The seed library compressed, checksummed and versioned state in the Python process. With statecar
the sidecar does that for every client, and this class keeps the seed's names, arguments and
return shapes while each call becomes one ``STATE.*`` command:

=================================================  ==============================================
call                                               statecar command
=================================================  ==============================================
``save_with_metadata(state, state_id, v, tags)``   ``STATE.SAVE key json [VERSION v] [TAGS ...]``
``load_with_metadata(state_id, version=None)``     ``STATE.LOAD key [VERSION n]``
``list_states(pattern="*")``                       ``STATE.LIST cursor MATCH prefix+pattern``
``list_versions(state_id)``                        ``STATE.VERSIONS key``
``delete_version(state_id, version)``              ``STATE.DELVERSION key version``
``rollback(state_id, version)``                    ``STATE.ROLLBACK key version``
``delete_state(state_id)``                         ``DEL key`` (the key and its history)
``get_stats()``                                    ``STATE.STATS`` (+ ``STATE.LIST`` to count)
constructor                                        ``STATE.RULE key`` (checks the options)
=================================================  ==============================================

The policy (codec, history length, default TTL) lives in statecar's configuration, shared by every
client. The constructor's ``compression_type``, ``enable_versioning``, ``max_versions`` and
``default_ttl`` are checked against statecar's rule for the keys, and a difference raises
``StatecarConfigError`` naming both, rather than being silently ignored.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.asyncio

from . import _resp
from .errors import StatecarConfigError, StatecarError, from_redis

DEFAULT_URL = "redis://localhost:6380/0"
"""statecar's default port: the seed's redis_url pointed at the sidecar instead of Redis."""


class CompressionType(str, enum.Enum):
    """The seed's compression choices (statecar's ``compression`` values), plus zstd."""

    NONE = "none"
    LZ4 = "lz4"
    ZLIB = "zlib"
    ZSTD = "zstd"


@dataclass
class StateMetadata:
    """What statecar knows about one stored version.

    Attribute access (``metadata.version``) and item access (``metadata["version"]``) both work.
    """

    state_id: str
    version: int
    created_at: float | None
    """When the content was saved, seconds since the epoch (a rollback keeps the original)."""
    size_bytes: int
    """Length of the JSON the state serialised to."""
    compressed_size: int
    """What Redis stores for it: statecar's envelope, compressed when that is smaller."""
    compression_type: str
    """The codec used for this version (``none`` when compressing did not make it smaller)."""
    checksum: str | None
    """CRC32 of the JSON, hex."""
    tags: list[str] = field(default_factory=list)
    ttl: int | None = None
    """Seconds left before the key expires, ``None`` for no expiry (from ``load_with_metadata``)."""
    current: bool | None = None
    """Whether the key holds this version now (from ``list_versions``)."""
    intact: bool | None = None
    """Whether ``load_with_metadata`` can read this version: its header verifies and, for a version
    stored as a delta, the version it reads through is there (from ``list_versions``)."""

    @property
    def compression_ratio(self) -> float:
        return self.size_bytes / self.compressed_size if self.compressed_size else 0.0

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metadata(state_id: str, m: dict[str, Any]) -> StateMetadata:
    created = m.get("created")
    ttl = m.get("ttl")
    current = m.get("current")
    intact = m.get("intact")
    return StateMetadata(
        state_id=state_id,
        version=_resp.as_int(m.get("version", 0)),
        created_at=None if created is None else _resp.as_int(created) / 1000.0,
        size_bytes=_resp.as_int(m.get("size", 0)),
        compressed_size=_resp.as_int(m.get("stored_size", 0)),
        compression_type=_resp.text(m.get("codec", "")),
        checksum=None if m.get("checksum") is None else _resp.text(m["checksum"]),
        tags=[_resp.text(t) for t in (m.get("tags") or [])],
        ttl=None if ttl is None or _resp.as_int(ttl) < 0 else _resp.as_int(ttl),
        current=None if current is None else bool(_resp.as_int(current)),
        intact=None if intact is None else bool(_resp.as_int(intact)),
    )


def _number(v: Any) -> Any:
    s = _resp.text(v)
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


class _Core:
    """Arguments, checks and reply parsing shared by the sync and asyncio classes."""

    def __init__(
        self,
        redis_url: str,
        compression_type: CompressionType | str,
        enable_versioning: bool,
        max_versions: int,
        default_ttl: int | None,
        key_prefix: str,
    ) -> None:
        try:
            self.compression_type = CompressionType(
                compression_type.value
                if isinstance(compression_type, CompressionType)
                else str(compression_type).lower()
            )
        except ValueError:
            raise ValueError(
                f"compression_type {compression_type!r}: expected one of "
                f"{', '.join(c.name for c in CompressionType)}"
            ) from None
        if enable_versioning and max_versions < 1:
            raise ValueError(f"max_versions must be at least 1, not {max_versions}")
        if default_ttl is not None and default_ttl <= 0:
            raise ValueError(f"default_ttl must be a positive number of seconds or None, not {default_ttl}")
        self.redis_url = redis_url
        self.enable_versioning = bool(enable_versioning)
        self.max_versions = int(max_versions)
        self.default_ttl = default_ttl
        self.key_prefix = key_prefix

    # keys and values

    def key(self, state_id: str) -> str:
        return f"{self.key_prefix}{state_id}"

    def state_id(self, key: Any) -> str:
        return _resp.text(key)[len(self.key_prefix) :]

    @staticmethod
    def dumps(state: Any) -> bytes:
        return json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def loads(raw: Any) -> Any:
        return json.loads(_resp.as_bytes(raw))

    # the rule check

    def sample_key(self) -> str:
        return self.key("_")

    def check_rule(self, reply: Any) -> _resp.Rule:
        """Compares statecar's rule with the constructor's options; raises on a difference."""
        rule = _resp.Rule.from_reply(reply)
        key = self.sample_key()
        if rule is None:
            raise _resp.no_rule_error(self.redis_url, key, "states")
        problems = []
        if rule.compression != self.compression_type.value:
            problems.append(
                f"compression_type={self.compression_type.name} but the rule says "
                f"compression = \"{rule.compression}\""
            )
        if rule.versioning != self.enable_versioning:
            problems.append(
                f"enable_versioning={self.enable_versioning} but the rule says "
                f"versioning = {str(rule.versioning).lower()}"
            )
        elif rule.versioning and rule.max_versions != self.max_versions:
            problems.append(
                f"max_versions={self.max_versions} but the rule says "
                f"max_versions = {rule.max_versions}"
            )
        if rule.default_ttl_s != self.default_ttl:
            said = "no default_ttl_s" if rule.default_ttl_s is None else f"default_ttl_s = {rule.default_ttl_s}"
            problems.append(f"default_ttl={self.default_ttl} but the rule has {said}")
        if problems:
            raise StatecarConfigError(
                f"statecar at {self.redis_url} stores {key[:-1]}* keys by "
                f"{rule.describe()}, which differs from this RedisStatePersistence: "
                + "; ".join(problems)
                + ". statecar applies its rule to every client: change the rule in statecar's "
                "configuration, or pass the options that match it."
            )
        return rule

    # commands

    def save_args(self, state: Any, state_id: str, version: int | None, tags: list[str] | None) -> list[Any]:
        if not isinstance(state_id, str) or not state_id:
            raise ValueError("state_id must be a non-empty string")
        value = self.dumps(state)
        if not self.enable_versioning:
            if version is not None or tags:
                raise ValueError(
                    "version and tags are kept with versions: they need enable_versioning=True "
                    "(and a [[state]] rule with versioning = true)"
                )
            return ["SET", self.key(state_id), value]
        args: list[Any] = ["STATE.SAVE", self.key(state_id), value]
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise TypeError(f"version must be an int, not {type(version).__name__}")
            args += ["VERSION", version]
        if tags:
            tags = [str(t) for t in tags]
            for a, b in zip(tags, tags[1:]):
                if a.upper() in ("VERSION", "EX") and b.lstrip("-").isdigit():
                    raise ValueError(f"tags {a!r}, {b!r} would read as an option of STATE.SAVE")
            args += ["TAGS", *tags]
        return args

    def load_args(self, state_id: str, version: int | None) -> list[Any]:
        args: list[Any] = ["STATE.LOAD", self.key(state_id)]
        if version is not None:
            args += ["VERSION", int(version)]
        return args

    def parse_load(self, state_id: str, reply: Any) -> tuple[Any, StateMetadata | None]:
        if reply is None:
            return None, None
        m = _resp.as_map(reply)
        return self.loads(m["value"]), _metadata(state_id, m)

    def parse_versions(self, state_id: str, reply: Any) -> list[StateMetadata]:
        return [_metadata(state_id, _resp.as_map(v)) for v in reply or []]

    def list_args(self, cursor: Any, pattern: str) -> list[Any]:
        return ["STATE.LIST", cursor, "MATCH", self.key(pattern), "COUNT", 1000]

    def parse_stats(self, stats: Any, total: int) -> dict[str, Any]:
        m = {k: _number(v) for k, v in _resp.as_map(stats).items()}
        redis_info = {k[len("upstream_") :]: v for k, v in m.items() if k.startswith("upstream_")}
        proxy = {k: v for k, v in m.items() if not k.startswith("upstream_")}
        return {
            "total_states": total,
            "compression_type": self.compression_type.value,
            "versioning_enabled": self.enable_versioning,
            "max_versions": self.max_versions,
            "default_ttl": self.default_ttl,
            "key_prefix": self.key_prefix,
            "statecar": proxy,
            "redis_info": redis_info,
        }


def _client_kwargs(redis_options: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(redis_options or {})
    # Values are JSON bytes and statecar's replies carry binary fields: decode here, not in redis-py.
    opts["decode_responses"] = False
    return opts


class RedisStatePersistence:
    """State persistence through statecar (synchronous). See the module documentation.

    Args:
        redis_url: statecar's address (``redis://host:6380/0``); the seed's Redis URL with the
            sidecar's port.
        compression_type: must match the ``compression`` of statecar's rule for the keys.
        enable_versioning: must match the rule's ``versioning``.
        max_versions: must match the rule's ``max_versions`` (when versioning).
        default_ttl: seconds; must match the rule's ``default_ttl_s`` (``None``: no default TTL).
        redis_options: passed to ``redis.Redis.from_url`` (``max_connections``,
            ``socket_timeout``, ``socket_connect_timeout``, ``retry_on_timeout``,
            ``socket_keepalive``, ...): they apply to the connection to statecar.
        key_prefix: states are stored under ``key_prefix + state_id``.

    The constructor connects to statecar and checks its rule (``STATE.RULE``): a difference from the
    options raises ``StatecarConfigError``, an unreachable statecar ``StatecarConnectionError``.
    """

    def __init__(
        self,
        redis_url: str = DEFAULT_URL,
        compression_type: CompressionType | str = CompressionType.LZ4,
        enable_versioning: bool = True,
        max_versions: int = 10,
        default_ttl: int | None = None,
        redis_options: dict[str, Any] | None = None,
        *,
        key_prefix: str = "state:",
    ) -> None:
        self._core = _Core(redis_url, compression_type, enable_versioning, max_versions, default_ttl, key_prefix)
        self.redis = redis.Redis.from_url(redis_url, **_client_kwargs(redis_options))
        try:
            reply = self.redis.execute_command("STATE.RULE", self._core.sample_key())
        except redis.exceptions.ResponseError as e:
            self.redis.close()
            raise _resp.rule_error(redis_url, self._core.sample_key(), e) from e
        except redis.exceptions.RedisError as e:
            self.redis.close()
            raise from_redis(e) from e
        self.rule = self._core.check_rule(reply)

    def __getattr__(self, name: str) -> Any:
        # The seed's option attributes (compression_type, max_versions, ...).
        core = self.__dict__.get("_core")
        if core is not None and hasattr(core, name):
            return getattr(core, name)
        raise AttributeError(name)

    def _call(self, *args: Any) -> Any:
        try:
            return self.redis.execute_command(*args)
        except redis.exceptions.RedisError as e:
            raise from_redis(e) from e

    def save_with_metadata(
        self,
        state: Any,
        state_id: str,
        version: int | None = None,
        tags: list[str] | None = None,
    ) -> bool:
        """Saves ``state`` (anything ``json.dumps`` takes) as a new version of ``state_id``.

        ``version``: optimistic concurrency: the save is refused with ``VersionConflictError``
        unless the stored version is ``version - 1`` (0 for a new state). Returns True.
        """
        self._call(*self._core.save_args(state, state_id, version, tags))
        return True

    def load_with_metadata(self, state_id: str, version: int | None = None) -> tuple[Any, StateMetadata | None]:
        """``(state, metadata)`` of the current version (or of ``version``); ``(None, None)`` if
        there is none."""
        return self._core.parse_load(state_id, self._call(*self._core.load_args(state_id, version)))

    def list_states(self, pattern: str = "*") -> list[str]:
        """The state ids whose key matches ``key_prefix + pattern`` (a Redis glob), via a cursor
        (never KEYS)."""
        out: list[str] = []
        cursor: Any = 0
        while True:
            cursor, keys = self._call(*self._core.list_args(cursor, pattern))
            out.extend(self._core.state_id(k) for k in keys)
            if _resp.text(cursor) == "0":
                return out

    def list_versions(self, state_id: str) -> list[StateMetadata]:
        """Every kept version of ``state_id``, oldest first."""
        return self._core.parse_versions(state_id, self._call("STATE.VERSIONS", self._core.key(state_id)))

    def delete_version(self, state_id: str, version: int) -> bool:
        """Deletes one version from the history; False if there was no such version. The current
        version cannot be deleted (``VersionInUseError``): roll back first."""
        return bool(self._call("STATE.DELVERSION", self._core.key(state_id), int(version)))

    def rollback(self, state_id: str, version: int) -> int:
        """Makes ``version``'s content the current state again, as a new version (history is never
        rewritten); returns the new version number."""
        return _resp.as_int(self._call("STATE.ROLLBACK", self._core.key(state_id), int(version)))

    def delete_state(self, state_id: str) -> bool:
        """Deletes the state and its whole history; False if it did not exist."""
        return bool(self._call("DEL", self._core.key(state_id)))

    def get_stats(self) -> dict[str, Any]:
        """Totals: this instance's options, statecar's figures (``statecar``), Redis's memory
        figures (``redis_info``) and how many states there are (``total_states``)."""
        stats = self._call("STATE.STATS")
        return self._core.parse_stats(stats, len(self.list_states()))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> RedisStatePersistence:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRedisStatePersistence:
    """The asyncio twin of :class:`RedisStatePersistence`: the same arguments and methods, as
    coroutines. statecar's rule is checked on the first call (or by ``await check_rule()``)."""

    def __init__(
        self,
        redis_url: str = DEFAULT_URL,
        compression_type: CompressionType | str = CompressionType.LZ4,
        enable_versioning: bool = True,
        max_versions: int = 10,
        default_ttl: int | None = None,
        redis_options: dict[str, Any] | None = None,
        *,
        key_prefix: str = "state:",
    ) -> None:
        self._core = _Core(redis_url, compression_type, enable_versioning, max_versions, default_ttl, key_prefix)
        self.redis = redis.asyncio.Redis.from_url(redis_url, **_client_kwargs(redis_options))
        self.rule: _resp.Rule | None = None

    def __getattr__(self, name: str) -> Any:
        core = self.__dict__.get("_core")
        if core is not None and hasattr(core, name):
            return getattr(core, name)
        raise AttributeError(name)

    async def check_rule(self) -> _resp.Rule:
        """Checks statecar's rule against the options (done once, before the first call)."""
        if self.rule is None:
            try:
                reply = await self.redis.execute_command("STATE.RULE", self._core.sample_key())
            except redis.exceptions.ResponseError as e:
                raise _resp.rule_error(self._core.redis_url, self._core.sample_key(), e) from e
            except redis.exceptions.RedisError as e:
                raise from_redis(e) from e
            self.rule = self._core.check_rule(reply)
        return self.rule

    async def _call(self, *args: Any) -> Any:
        await self.check_rule()
        try:
            return await self.redis.execute_command(*args)
        except redis.exceptions.RedisError as e:
            raise from_redis(e) from e

    async def save_with_metadata(
        self,
        state: Any,
        state_id: str,
        version: int | None = None,
        tags: list[str] | None = None,
    ) -> bool:
        await self._call(*self._core.save_args(state, state_id, version, tags))
        return True

    async def load_with_metadata(self, state_id: str, version: int | None = None) -> tuple[Any, StateMetadata | None]:
        return self._core.parse_load(state_id, await self._call(*self._core.load_args(state_id, version)))

    async def list_states(self, pattern: str = "*") -> list[str]:
        out: list[str] = []
        cursor: Any = 0
        while True:
            cursor, keys = await self._call(*self._core.list_args(cursor, pattern))
            out.extend(self._core.state_id(k) for k in keys)
            if _resp.text(cursor) == "0":
                return out

    async def list_versions(self, state_id: str) -> list[StateMetadata]:
        return self._core.parse_versions(state_id, await self._call("STATE.VERSIONS", self._core.key(state_id)))

    async def delete_version(self, state_id: str, version: int) -> bool:
        return bool(await self._call("STATE.DELVERSION", self._core.key(state_id), int(version)))

    async def rollback(self, state_id: str, version: int) -> int:
        return _resp.as_int(await self._call("STATE.ROLLBACK", self._core.key(state_id), int(version)))

    async def delete_state(self, state_id: str) -> bool:
        return bool(await self._call("DEL", self._core.key(state_id)))

    async def get_stats(self) -> dict[str, Any]:
        stats = await self._call("STATE.STATS")
        return self._core.parse_stats(stats, len(await self.list_states()))

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncRedisStatePersistence:
        await self.check_rule()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


__all__ = [
    "AsyncRedisStatePersistence",
    "CompressionType",
    "RedisStatePersistence",
    "StateMetadata",
    "StatecarError",
]
