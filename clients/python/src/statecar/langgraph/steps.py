"""What the savers do, written once for both: generators that yield batches of Redis commands.

Each operation is a generator. It yields a :class:`Call` (commands to send in one pipeline) and
is sent back their replies, an exception object standing for each failed command; or it yields an
:class:`Emit` (a result for ``list``). The sync saver drives these with redis-py, the async one
with redis.asyncio, so the logic (and its tests) cannot drift apart.

Data layout: see :mod:`statecar.langgraph.keys`. Each checkpoint is one version of the
namespace's state key, saved with ``STATE.SAVE`` and tagged with its id, its parent's id, its
run id and its serialized metadata, so ``STATE.VERSIONS`` lists and filters checkpoints without
reading them, and ``STATE.LOAD key VERSION n`` reads one.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .. import _resp
from ..errors import StatecarConfigError, StatecarError, from_redis
from .keys import Keys, q

VALUE_MAGIC = b"lgcp1\n"
"""First bytes of every stored checkpoint: format 1, then the serde type, a newline, the bytes."""

LOAD_CHUNK = 16
"""Checkpoints read per pipeline by list and copy_thread."""

KEEP_LATEST = "keep_latest"
DELETE = "delete"


class Call:
    """Send these commands in one pipeline; the generator gets their replies back."""

    __slots__ = ("commands",)

    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands


class Emit:
    """A result for the caller of ``list``."""

    __slots__ = ("item",)

    def __init__(self, item: CheckpointTuple) -> None:
        self.item = item


Steps = Generator["Call | Emit", Any, Any]


def check(reply: Any) -> Any:
    """The reply, or the statecar exception for a failed command."""
    if isinstance(reply, BaseException):
        raise from_redis(reply)
    return reply


def _members(reply: Any) -> list[str]:
    return sorted(_resp.text(m) for m in check(reply) or ())


def _hash(reply: Any) -> dict[bytes, bytes]:
    reply = check(reply)
    if isinstance(reply, dict):
        return {_resp.as_bytes(k): _resp.as_bytes(v) for k, v in reply.items()}
    items = list(reply or ())
    return {_resp.as_bytes(items[i]): _resp.as_bytes(items[i + 1]) for i in range(0, len(items), 2)}


@dataclass
class Entry:
    """One stored checkpoint, from the tags of its version."""

    version: int
    checkpoint_id: str
    parent_id: str | None
    run_id: str | None
    metadata: tuple[str, bytes]
    current: bool = False


def _tags(checkpoint_id: str, parent_id: str | None, run_id: str | None, meta: tuple[str, bytes]) -> list[bytes]:
    # Every tag starts with a name and '=', so none can read as STATE.SAVE's VERSION or EX.
    return [
        b"id=" + checkpoint_id.encode(),
        b"parent=" + (parent_id or "").encode(),
        b"run=" + (run_id or "").encode(),
        b"meta=" + meta[0].encode() + b"\x00" + meta[1],
    ]


def _entry(version: int, tags: Iterable[Any], current: bool = False) -> Entry | None:
    fields: dict[bytes, bytes] = {}
    for t in tags:
        name, sep, value = _resp.as_bytes(t).partition(b"=")
        if sep:
            fields[name] = value
    if b"id" not in fields or b"meta" not in fields:
        return None
    mtype, _, mbytes = fields[b"meta"].partition(b"\x00")
    return Entry(
        version=version,
        checkpoint_id=fields[b"id"].decode(),
        parent_id=fields.get(b"parent", b"").decode() or None,
        run_id=fields.get(b"run", b"").decode() or None,
        metadata=(mtype.decode(), mbytes),
        current=current,
    )


def _entries(reply: Any) -> list[Entry]:
    """STATE.VERSIONS as entries, oldest version first (versions not written by a saver skipped)."""
    out = []
    for v in check(reply) or ():
        m = _resp.as_map(v)
        e = _entry(_resp.as_int(m["version"]), m.get("tags") or (), bool(_resp.as_int(m.get("current", 0))))
        if e is not None:
            out.append(e)
    return out


def _newest_first(entries: list[Entry]) -> list[Entry]:
    """One entry per checkpoint id (a re-put or a rollback can store the same checkpoint twice:
    the newest version wins), newest checkpoint id first."""
    by_id: dict[str, Entry] = {}
    for e in entries:
        if e.checkpoint_id not in by_id or by_id[e.checkpoint_id].version < e.version:
            by_id[e.checkpoint_id] = e
    return sorted(by_id.values(), key=lambda e: e.checkpoint_id, reverse=True)


class Core:
    """The saver's operations over one key layout and serializer."""

    def __init__(self, serde: SerializerProtocol, keys: Keys) -> None:
        self.serde = serde
        self.keys = keys
        self.sweep_every = 64

    def with_serde(self, serde: SerializerProtocol) -> Core:
        """The same operations with another serializer (for ``with_allowlist`` clones)."""
        clone = copy.copy(self)
        clone.serde = serde
        return clone

    # ------------------------------------------------------------------------------------------
    # setup

    def sample_key(self) -> str:
        return self.keys.checkpoint("thread", "")

    def check_rule(self, url: str, reply: Any) -> _resp.Rule:
        """statecar must keep the checkpoint keys versioned and without a default TTL."""
        rule = _resp.Rule.from_reply(reply)
        key = self.sample_key()
        if rule is None:
            raise _resp.no_rule_error(url, key, "checkpoints")
        if not rule.versioning:
            raise StatecarConfigError(
                f"statecar at {url} keeps no versions for {key!r} ({rule.describe()}): the "
                "checkpoints of a thread are the versions of one state key, so the rule needs "
                "versioning = true"
            )
        if rule.default_ttl_s is not None:
            raise StatecarConfigError(
                f"statecar at {url} expires {key!r} after {rule.default_ttl_s}s "
                f"({rule.describe()}), while the pending writes and indexes beside it do not "
                "expire: remove default_ttl_s from the rule for checkpoints"
            )
        # Dead writes hashes of checkpoints that left the history are removed every this many
        # checkpoints of a namespace: at most this many are ever left over.
        self.sweep_every = min(max(rule.max_versions, 16), 256)
        return rule

    # ------------------------------------------------------------------------------------------
    # values

    def _value(self, checkpoint: Checkpoint) -> bytes:
        ctype, cbytes = self.serde.dumps_typed(checkpoint)
        return VALUE_MAGIC + ctype.encode() + b"\n" + cbytes

    def _checkpoint(self, key: str, raw: Any) -> Checkpoint:
        raw = _resp.as_bytes(raw)
        if not raw.startswith(VALUE_MAGIC):
            raise StatecarError(f"statecar: {key!r} holds a value that StatecarSaver did not write")
        ctype, _, cbytes = raw[len(VALUE_MAGIC) :].partition(b"\n")
        return self.serde.loads_typed((ctype.decode(), cbytes))

    def _writes(self, reply: Any) -> list[tuple[str, str, Any]]:
        stored = []
        for packed in _hash(reply).values():
            task_id, channel, wtype, wbytes, task_path, idx = ormsgpack.unpackb(packed)
            stored.append((writes_sort_key(task_path, task_id, idx), task_id, channel, wtype, wbytes))
        stored.sort(key=lambda s: s[0])
        return [(task_id, channel, self.serde.loads_typed((wtype, wbytes))) for _, task_id, channel, wtype, wbytes in stored]

    def _tuple(self, thread_id: str, ns: str, entry: Entry, raw: Any, writes: Any) -> CheckpointTuple:
        key = self.keys.checkpoint(thread_id, ns)
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": entry.checkpoint_id}},
            checkpoint=self._checkpoint(key, raw),
            metadata=self.serde.loads_typed(entry.metadata),
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": entry.parent_id}}
                if entry.parent_id
                else None
            ),
            pending_writes=self._writes(writes),
        )

    # ------------------------------------------------------------------------------------------
    # writing

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Steps:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        parent_id = conf.get("checkpoint_id")
        checkpoint_id = checkpoint["id"]
        md = get_serializable_checkpoint_metadata(config, metadata)
        run_id = md.get("run_id")
        run_id = None if run_id is None else str(run_id)
        key = self.keys.checkpoint(thread_id, ns)
        # Indexes first: if the save then fails, they name a checkpoint that does not exist,
        # which every reader tolerates; the other order could hide a saved one from delete.
        cmds: list[tuple[Any, ...]] = [("SADD", self.keys.namespaces(thread_id), ns)]
        if run_id:
            cmds += [("SADD", self.keys.runs(thread_id, ns), run_id), ("SADD", self.keys.run(run_id), key)]
        # Channel values are stored whole in every checkpoint: the history makes the repetition
        # cheap (that is what statecar is for), and each version reads back on its own.
        tags = _tags(checkpoint_id, parent_id, run_id, self.serde.dumps_typed(md))
        cmds.append(("STATE.SAVE", key, self._value(checkpoint), "TAGS", *tags))
        replies = yield Call(cmds)
        for r in replies:
            check(r)
        if _resp.as_int(replies[-1]) % self.sweep_every == 0:
            yield from self._sweep(thread_id, ns)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> Steps:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        checkpoint_id = conf["checkpoint_id"]
        hkey = self.keys.writes(thread_id, ns, checkpoint_id)
        cmds: list[tuple[Any, ...]] = [("SADD", self.keys.writes_index(thread_id, ns), checkpoint_id)]
        for idx, (channel, value) in enumerate(writes):
            widx = WRITES_IDX_MAP.get(channel, idx)
            wtype, wbytes = self.serde.dumps_typed(value)
            packed = ormsgpack.packb([task_id, channel, wtype, wbytes, task_path, widx])
            # A task's regular writes are stored once (a retried task keeps its first); the
            # special ones (error, interrupt, ...) are replaced, as LangGraph expects.
            cmds.append(("HSET" if widx < 0 else "HSETNX", hkey, f"{q(task_id)}:{widx}", packed))
        replies = yield Call(cmds)
        for r in replies:
            check(r)

    # ------------------------------------------------------------------------------------------
    # reading

    def get_tuple(self, config: RunnableConfig) -> Steps:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns") or ""
        wanted = get_checkpoint_id(config)
        key = self.keys.checkpoint(thread_id, ns)
        # The newest checkpoint (the key's current value) is what is asked for most: one round
        # trip, with its writes when the id is known.
        cmds: list[tuple[Any, ...]] = [("STATE.LOAD", key)]
        if wanted:
            cmds.append(("HGETALL", self.keys.writes(thread_id, ns, wanted)))
        replies = yield Call(cmds)
        loaded = check(replies[0])
        if loaded is None:
            return None
        m = _resp.as_map(loaded)
        entry = _entry(_resp.as_int(m["version"]), m.get("tags") or ())
        if entry is None:
            raise StatecarError(f"statecar: {key!r} holds a value that StatecarSaver did not write")
        if wanted is None:
            (writes,) = yield Call([("HGETALL", self.keys.writes(thread_id, ns, entry.checkpoint_id))])
            return self._tuple(thread_id, ns, entry, m["value"], writes)
        if entry.checkpoint_id == wanted:
            return self._tuple(thread_id, ns, entry, m["value"], replies[1])
        # An older checkpoint: find its version from the tags, then read that version.
        (versions,) = yield Call([("STATE.VERSIONS", key)])
        found = [e for e in _newest_first(_entries(versions)) if e.checkpoint_id == wanted]
        if not found:
            return None
        (loaded,) = yield Call([("STATE.LOAD", key, "VERSION", found[0].version)])
        loaded = check(loaded)
        if loaded is None:
            return None
        return self._tuple(thread_id, ns, found[0], _resp.as_map(loaded)["value"], replies[1])

    def _targets(self, config: RunnableConfig | None) -> Steps:
        """The (thread, namespace) pairs a list covers."""
        if config is None:
            out: list[tuple[str, str]] = []
            cursor: Any = 0
            while True:
                (page,) = yield Call([("STATE.LIST", cursor, "MATCH", self.keys.checkpoint_pattern(), "COUNT", 1000)])
                cursor, keys = check(page)
                out.extend(p for p in (self.keys.parse_checkpoint(_resp.text(k)) for k in keys) if p)
                if _resp.text(cursor) == "0":
                    return sorted(set(out))
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns")
        if ns is not None:
            return [(thread_id, ns)]
        (members,) = yield Call([("SMEMBERS", self.keys.namespaces(thread_id))])
        return [(thread_id, n) for n in _members(members)]

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Steps:
        wanted = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        remaining = limit
        targets = yield from self._targets(config)
        for thread_id, ns in targets:
            if remaining is not None and remaining <= 0:
                return
            key = self.keys.checkpoint(thread_id, ns)
            (versions,) = yield Call([("STATE.VERSIONS", key)])
            selected: list[Entry] = []
            for e in _newest_first(_entries(versions)):
                if wanted and e.checkpoint_id != wanted:
                    continue
                if before_id and e.checkpoint_id >= before_id:
                    continue
                if filter:
                    md = self.serde.loads_typed(e.metadata)
                    if not all(md.get(k) == v for k, v in filter.items()):
                        continue
                if remaining is not None:
                    if remaining <= 0:
                        break
                    remaining -= 1
                selected.append(e)
            for i in range(0, len(selected), LOAD_CHUNK):
                chunk = selected[i : i + LOAD_CHUNK]
                cmds: list[tuple[Any, ...]] = []
                for e in chunk:
                    cmds.append(("STATE.LOAD", key, "VERSION", e.version))
                    cmds.append(("HGETALL", self.keys.writes(thread_id, ns, e.checkpoint_id)))
                replies = yield Call(cmds)
                for j, e in enumerate(chunk):
                    loaded = check(replies[2 * j])
                    if loaded is None:
                        continue  # deleted (or trimmed) since STATE.VERSIONS
                    yield Emit(self._tuple(thread_id, ns, e, _resp.as_map(loaded)["value"], replies[2 * j + 1]))

    # ------------------------------------------------------------------------------------------
    # deleting, pruning, copying

    def _sweep(self, thread_id: str, ns: str) -> Steps:
        """Removes the writes hashes and run-index entries of checkpoints that are no longer in the
        history (trimmed by max_versions). The indexes are read before the history: an id in them
        was saved before it was indexed, so if the history no longer has it, it is gone."""
        key = self.keys.checkpoint(thread_id, ns)
        windex, runs = self.keys.writes_index(thread_id, ns), self.keys.runs(thread_id, ns)
        ids, run_ids = yield Call([("SMEMBERS", windex), ("SMEMBERS", runs)])
        ids, run_ids = _members(ids), _members(run_ids)
        (versions,) = yield Call([("STATE.VERSIONS", key)])
        entries = _entries(versions)
        live_ids = {e.checkpoint_id for e in entries}
        live_runs = {e.run_id for e in entries}
        cmds: list[tuple[Any, ...]] = []
        for c in ids:
            if c not in live_ids:
                cmds += [("DEL", self.keys.writes(thread_id, ns, c)), ("SREM", windex, c)]
        for r in run_ids:
            if r not in live_runs:
                cmds += [("SREM", self.keys.run(r), key), ("SREM", runs, r)]
        if cmds:
            for reply in (yield Call(cmds)):
                check(reply)

    def _delete_namespace(self, thread_id: str, ns: str) -> Steps:
        key = self.keys.checkpoint(thread_id, ns)
        windex, runs = self.keys.writes_index(thread_id, ns), self.keys.runs(thread_id, ns)
        ids, run_ids = yield Call([("SMEMBERS", windex), ("SMEMBERS", runs)])
        # DEL of a state key removes its history too (statecar).
        cmds: list[tuple[Any, ...]] = [("DEL", key)]
        cmds += [("DEL", self.keys.writes(thread_id, ns, c)) for c in _members(ids)]
        cmds += [("SREM", self.keys.run(r), key) for r in _members(run_ids)]
        cmds += [("DEL", windex), ("DEL", runs), ("SREM", self.keys.namespaces(thread_id), ns)]
        for reply in (yield Call(cmds)):
            check(reply)

    def delete_thread(self, thread_id: str) -> Steps:
        thread_id = str(thread_id)
        (members,) = yield Call([("SMEMBERS", self.keys.namespaces(thread_id))])
        for ns in _members(members):
            yield from self._delete_namespace(thread_id, ns)

    def _drop_versions(self, thread_id: str, ns: str, drop: set[int], entries: list[Entry]) -> Steps:
        """Deletes these versions of a namespace's history, with their writes and index entries.
        The current version cannot be deleted in place: the newest surviving checkpoint is rolled
        back to first (it becomes the current value again, as a new version)."""
        key = self.keys.checkpoint(thread_id, ns)
        survivors = [e for e in entries if e.version not in drop]
        if not survivors:
            yield from self._delete_namespace(thread_id, ns)
            return
        drop = set(drop)
        if any(e.current and e.version in drop for e in entries):
            keep = max(survivors, key=lambda e: (e.checkpoint_id, e.version))
            (rolled,) = yield Call([("STATE.ROLLBACK", key, keep.version)])
            check(rolled)
            drop.add(keep.version)  # its content is now the new current version
        dropped = [e for e in entries if e.version in drop]
        live_ids = {e.checkpoint_id for e in survivors}
        live_runs = {e.run_id for e in survivors}
        windex, runs = self.keys.writes_index(thread_id, ns), self.keys.runs(thread_id, ns)
        cmds: list[tuple[Any, ...]] = [("STATE.DELVERSION", key, v) for v in sorted(drop)]
        for c in sorted({e.checkpoint_id for e in dropped} - live_ids):
            cmds += [("DEL", self.keys.writes(thread_id, ns, c)), ("SREM", windex, c)]
        for r in sorted({e.run_id for e in dropped if e.run_id} - live_runs):
            cmds += [("SREM", self.keys.run(r), key), ("SREM", runs, r)]
        for reply in (yield Call(cmds)):
            check(reply)

    def delete_for_runs(self, run_ids: Sequence[str]) -> Steps:
        for run_id in run_ids:
            run_id = str(run_id)
            (keys,) = yield Call([("SMEMBERS", self.keys.run(run_id))])
            for key in _members(keys):
                where = self.keys.parse_checkpoint(key)
                if where is None:
                    continue
                (versions,) = yield Call([("STATE.VERSIONS", key)])
                entries = _entries(versions)
                drop = {e.version for e in entries if e.run_id == run_id}
                if drop:
                    yield from self._drop_versions(where[0], where[1], drop, entries)
            check((yield Call([("DEL", self.keys.run(run_id))]))[0])

    def _keep_latest(self, entries: list[Entry]) -> set[int]:
        """The versions keep_latest keeps: the newest checkpoint, and, while its metadata says
        delta channels (LangGraph's DeltaChannel) changed since their last snapshot, its
        ancestors back to the one where they were all snapshotted, so those channels can still
        be rebuilt from the writes in between."""
        newest = _newest_first(entries)
        by_id = {e.checkpoint_id: e for e in newest}
        keep: set[int] = set()
        e: Entry | None = newest[0] if newest else None
        while e is not None and e.version not in keep:
            keep.add(e.version)
            md = self.serde.loads_typed(e.metadata)
            if not md.get("counters_since_delta_snapshot"):
                break
            e = by_id.get(e.parent_id) if e.parent_id else None
        return keep

    def prune(self, thread_ids: Sequence[str], *, strategy: str = KEEP_LATEST) -> Steps:
        if strategy not in (KEEP_LATEST, DELETE):
            raise ValueError(f"prune strategy {strategy!r}: expected {KEEP_LATEST!r} or {DELETE!r}")
        for thread_id in thread_ids:
            thread_id = str(thread_id)
            if strategy == DELETE:
                yield from self.delete_thread(thread_id)
                continue
            (members,) = yield Call([("SMEMBERS", self.keys.namespaces(thread_id))])
            for ns in _members(members):
                (versions,) = yield Call([("STATE.VERSIONS", self.keys.checkpoint(thread_id, ns))])
                entries = _entries(versions)
                keep = self._keep_latest(entries)
                drop = {e.version for e in entries if e.version not in keep}
                if drop:
                    yield from self._drop_versions(thread_id, ns, drop, entries)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> Steps:
        """Copies every checkpoint (oldest first, so the copy's history has the same order) and
        its writes; the target keeps what it already had."""
        src, dst = str(source_thread_id), str(target_thread_id)
        (members,) = yield Call([("SMEMBERS", self.keys.namespaces(src))])
        for ns in _members(members):
            skey, dkey = self.keys.checkpoint(src, ns), self.keys.checkpoint(dst, ns)
            (versions,) = yield Call([("STATE.VERSIONS", skey)])
            entries = _entries(versions)
            for i in range(0, len(entries), LOAD_CHUNK):
                chunk = entries[i : i + LOAD_CHUNK]
                cmds: list[tuple[Any, ...]] = []
                for e in chunk:
                    cmds.append(("STATE.LOAD", skey, "VERSION", e.version))
                    cmds.append(("HGETALL", self.keys.writes(src, ns, e.checkpoint_id)))
                replies = yield Call(cmds)
                out: list[tuple[Any, ...]] = [("SADD", self.keys.namespaces(dst), ns)]
                for j, e in enumerate(chunk):
                    loaded = check(replies[2 * j])
                    if loaded is None:
                        continue
                    m = _resp.as_map(loaded)
                    writes = _hash(replies[2 * j + 1])
                    if e.run_id:
                        out += [("SADD", self.keys.runs(dst, ns), e.run_id), ("SADD", self.keys.run(e.run_id), dkey)]
                    if writes:
                        out.append(("SADD", self.keys.writes_index(dst, ns), e.checkpoint_id))
                        flat = [x for kv in writes.items() for x in kv]
                        out.append(("HSET", self.keys.writes(dst, ns, e.checkpoint_id), *flat))
                    tags = [_resp.as_bytes(t) for t in m.get("tags") or ()]
                    out.append(("STATE.SAVE", dkey, _resp.as_bytes(m["value"]), "TAGS", *tags))
                for reply in (yield Call(out)):
                    check(reply)
