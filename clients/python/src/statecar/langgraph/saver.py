"""``StatecarSaver`` and ``AsyncStatecarSaver``: LangGraph checkpoint savers through statecar.

Both run the operations of :mod:`statecar.langgraph.steps`; they differ only in how commands reach
statecar (redis-py or redis.asyncio).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis
import redis.asyncio
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .. import _resp
from ..errors import from_redis
from .keys import Keys
from .steps import Call, Core, Emit, Steps

DEFAULT_PREFIX = "langgraph:"


def _check_client(conn: Any) -> None:
    kwargs = getattr(getattr(conn, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ValueError(
            "StatecarSaver needs a Redis client with decode_responses=False: checkpoints are "
            "binary (LangGraph's serializer)"
        )


def _url_of(conn: Any) -> str:
    kwargs = getattr(getattr(conn, "connection_pool", None), "connection_kwargs", {})
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class StatecarSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpoint saver that keeps each thread's checkpoints as the versions of a
    statecar state key (compressed, checksummed, versioned by statecar), on plain Redis.

    Args:
        conn: a redis-py client connected to statecar (``decode_responses=False``).
        serde: LangGraph serializer (default: LangGraph's JsonPlusSerializer).
        key_prefix: prefix of every key the saver writes; statecar needs a ``[[state]]`` rule
            with ``versioning = true`` for ``{key_prefix}checkpoint:*`` (config/statecar.toml has
            one for the default prefix).

    The rule is checked before the first operation (or by :meth:`setup`); a missing or unsuitable
    rule raises ``StatecarConfigError``.

    Use :meth:`from_conn_string` to have the saver own its connection::

        with StatecarSaver.from_conn_string("redis://localhost:6380") as saver:
            graph = builder.compile(checkpointer=saver)
    """

    def __init__(
        self,
        conn: redis.Redis,
        *,
        serde: SerializerProtocol | None = None,
        key_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(serde=serde)
        _check_client(conn)
        self.conn = conn
        self._core = Core(self.serde, Keys(key_prefix))
        self.rule: _resp.Rule | None = None

    @classmethod
    @contextmanager
    def from_conn_string(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        key_prefix: str = DEFAULT_PREFIX,
        **redis_kwargs: Any,
    ) -> Iterator[StatecarSaver]:
        """A saver on its own connection to statecar at ``url``, closed on exit."""
        conn = redis.Redis.from_url(url, **{**redis_kwargs, "decode_responses": False})
        try:
            saver = cls(conn, serde=serde, key_prefix=key_prefix)
            saver.setup()
            yield saver
        finally:
            conn.close()

    def setup(self) -> _resp.Rule:
        """Checks statecar's rule for the checkpoint keys (done once, before the first call)."""
        if self.rule is None:
            key = self._core.sample_key()
            try:
                reply = self.conn.execute_command("STATE.RULE", key)
            except redis.exceptions.ResponseError as e:
                raise _resp.rule_error(_url_of(self.conn), key, e) from e
            except redis.exceptions.RedisError as e:
                raise from_redis(e) from e
            self.rule = self._core.check_rule(_url_of(self.conn), reply)
        return self.rule

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> StatecarSaver:
        clone = super().with_allowlist(extra_allowlist)
        if clone is not self:
            clone._core = clone._core.with_serde(clone.serde)
        return clone

    def state_key(self, thread_id: str, checkpoint_ns: str = "") -> str:
        """The statecar state key whose versions are the thread's checkpoints in this namespace
        (for ``STATE.VERSIONS``, ``statecar decode KEY --versions``, ...)."""
        return self._core.keys.checkpoint(thread_id, checkpoint_ns)

    def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.conn.pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        try:
            return pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as e:
            raise from_redis(e) from e

    def _run(self, steps: Steps) -> Any:
        self.setup()
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value
            reply = self._execute(step.commands) if isinstance(step, Call) else None

    def _iter(self, steps: Steps) -> Iterator[Any]:
        self.setup()
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration:
                return
            if isinstance(step, Emit):
                reply = None
                yield step.item
            else:
                reply = self._execute(step.commands)

    # BaseCheckpointSaver, sync

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._core.get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self._iter(self._core.list(config, filter=filter, before=before, limit=limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self._core.put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._run(self._core.put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(self._core.delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._run(self._core.delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._run(self._core.copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._run(self._core.prune(thread_ids, strategy=strategy))

    # Async versions of the same calls, run in a worker thread (redis-py's pool is thread-safe).
    # For an event loop that should not use threads, see AsyncStatecarSaver.

    async def _in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._in_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await self._in_thread(lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._in_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._in_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._in_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._in_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._in_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._in_thread(self.prune, thread_ids, strategy=strategy)


class AsyncStatecarSaver(BaseCheckpointSaver[int]):
    """The asyncio saver (redis.asyncio): same storage and arguments as :class:`StatecarSaver`.

    Use :meth:`from_conn_string` as an async context manager::

        async with AsyncStatecarSaver.from_conn_string("redis://localhost:6380") as saver:
            graph = builder.compile(checkpointer=saver)

    Its sync methods (``get_tuple``, ``put``, ...) work from other threads while the event loop
    runs (as LangGraph's sync graph API uses them); called on the loop's own thread they raise, as
    they would otherwise deadlock.
    """

    def __init__(
        self,
        conn: redis.asyncio.Redis,
        *,
        serde: SerializerProtocol | None = None,
        key_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(serde=serde)
        _check_client(conn)
        self.conn = conn
        self._core = Core(self.serde, Keys(key_prefix))
        self.rule: _resp.Rule | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    @asynccontextmanager
    async def from_conn_string(
        cls,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        key_prefix: str = DEFAULT_PREFIX,
        **redis_kwargs: Any,
    ) -> AsyncIterator[AsyncStatecarSaver]:
        """A saver on its own connection to statecar at ``url``, closed on exit."""
        conn = redis.asyncio.Redis.from_url(url, **{**redis_kwargs, "decode_responses": False})
        try:
            saver = cls(conn, serde=serde, key_prefix=key_prefix)
            await saver.asetup()
            yield saver
        finally:
            await conn.aclose()

    async def asetup(self) -> _resp.Rule:
        """Checks statecar's rule for the checkpoint keys (done once, before the first call)."""
        self.loop = asyncio.get_running_loop()
        if self.rule is None:
            key = self._core.sample_key()
            try:
                reply = await self.conn.execute_command("STATE.RULE", key)
            except redis.exceptions.ResponseError as e:
                raise _resp.rule_error(_url_of(self.conn), key, e) from e
            except redis.exceptions.RedisError as e:
                raise from_redis(e) from e
            self.rule = self._core.check_rule(_url_of(self.conn), reply)
        return self.rule

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> AsyncStatecarSaver:
        clone = super().with_allowlist(extra_allowlist)
        if clone is not self:
            clone._core = clone._core.with_serde(clone.serde)
        return clone

    def state_key(self, thread_id: str, checkpoint_ns: str = "") -> str:
        """See :meth:`StatecarSaver.state_key`."""
        return self._core.keys.checkpoint(thread_id, checkpoint_ns)

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.conn.pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        try:
            return await pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as e:
            raise from_redis(e) from e

    async def _run(self, steps: Steps) -> Any:
        await self.asetup()
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value
            reply = await self._execute(step.commands) if isinstance(step, Call) else None

    async def _iter(self, steps: Steps) -> AsyncIterator[Any]:
        await self.asetup()
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration:
                return
            if isinstance(step, Emit):
                reply = None
                yield step.item
            else:
                reply = await self._execute(step.commands)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self._core.get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        async for item in self._iter(self._core.list(config, filter=filter, before=before, limit=limit)):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(self._core.put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(self._core.put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self._core.delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self._core.delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self._core.copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self._core.prune(thread_ids, strategy=strategy))

    # Sync versions, for LangGraph's sync API used from another thread.

    def _from_thread(self, coro: Any) -> Any:
        loop = self.loop
        if loop is None or not loop.is_running():
            coro.close()
            raise RuntimeError(
                "AsyncStatecarSaver's sync methods need its event loop running in another "
                "thread; use the async methods (ainvoke, astream, ...) or StatecarSaver"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None  # no loop in this thread: the normal case
        if running is loop:
            coro.close()
            raise asyncio.InvalidStateError(
                "sync calls on AsyncStatecarSaver from its own event loop would deadlock; "
                "use the async methods (ainvoke, astream, aget_state, ...)"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._from_thread(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        return iter(self._from_thread(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._from_thread(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._from_thread(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._from_thread(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._from_thread(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._from_thread(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._from_thread(self.aprune(thread_ids, strategy=strategy))
