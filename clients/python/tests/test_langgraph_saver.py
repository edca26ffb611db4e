"""StatecarSaver and AsyncStatecarSaver beyond the conformance suite: real graphs, what statecar
and Redis hold, the bounded history, rule checks, and the sync bridge of the async saver."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Annotated, TypedDict

import pytest
import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_config, generate_metadata
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from statecar import StatecarConfigError
from statecar.langgraph import AsyncStatecarSaver, StatecarSaver

SIGNATURE = b"\xe5SCK"


class State(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    notes: list[str]


def chat_graph():
    def reply(state: State) -> dict:
        n = len(state["messages"])
        return {
            "messages": [AIMessage(content=f"answer {n}: " + "lorem ipsum dolor sit amet " * 8)],
            "notes": state.get("notes", []) + [f"note {n}"],
        }

    g = StateGraph(State)
    g.add_node("reply", reply)
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    return g


def tid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def history_key(key: str) -> str:
    return f"__statecar:h:{key}"


def test_graph_checkpoints_are_versions_of_one_state_key(statecar_url, redis_direct):
    thread = tid()
    config = {"configurable": {"thread_id": thread}}
    with StatecarSaver.from_conn_string(statecar_url) as saver:
        graph = chat_graph().compile(checkpointer=saver)
        for i in range(5):
            out = graph.invoke({"messages": [HumanMessage(content=f"question {i}")]}, config)
        assert len(out["messages"]) == 10 and out["notes"][-1] == "note 9"

        history = list(graph.get_state_history(config))
        key = saver.state_key(thread)
        assert key == f"langgraph:checkpoint:{{{thread}}}:"
        versions = redis.Redis.from_url(statecar_url).execute_command("STATE.VERSIONS", key)
        assert len(versions) == len(history) == 15  # input, loop step, and done, per turn

        # In Redis: one envelope for the newest checkpoint (the key itself), the 14 older ones in
        # its history hash (docs/FORMAT.md: the newest is stored nowhere else), and no other copy
        # of any checkpoint.
        assert redis_direct.get(key).startswith(SIGNATURE)
        fields = redis_direct.hkeys(history_key(key))
        assert sorted(int(f) for f in fields if f.isdigit()) == list(range(1, 15))
        assert redis_direct.hget(history_key(key), "last") == b"15"
        cp_keys = set(redis_direct.scan_iter(match=f"langgraph:checkpoint:{{{thread}}}*"))
        assert cp_keys == {key.encode()}

        # Resuming a thread and travelling back in time work from what statecar returns.
        earlier = next(h for h in history if len(h.values.get("messages", [])) == 2 and h.next == ())
        forked = graph.invoke({"messages": [HumanMessage(content="again")]}, earlier.config)
        assert len(forked["messages"]) == 4
        assert graph.get_state(config).values["messages"][-1].content.startswith("answer 3")


def test_async_graph(statecar_url):
    async def main():
        thread = tid()
        config = {"configurable": {"thread_id": thread}}
        async with AsyncStatecarSaver.from_conn_string(statecar_url) as saver:
            graph = chat_graph().compile(checkpointer=saver)
            for i in range(3):
                out = await graph.ainvoke({"messages": [HumanMessage(content=f"q{i}")]}, config)
            assert len(out["messages"]) == 6
            state = await graph.aget_state(config)
            assert state.values["notes"] == ["note 1", "note 3", "note 5"]
            assert len([h async for h in graph.aget_state_history(config)]) == 9
            await saver.adelete_thread(thread)
            assert (await graph.aget_state(config)).values == {}

    asyncio.run(main())


def test_async_saver_sync_methods_from_another_thread(statecar_url):
    async def main():
        async with AsyncStatecarSaver.from_conn_string(statecar_url) as saver:
            config = generate_config(tid())
            stored = await saver.aput(config, generate_checkpoint(), generate_metadata(step=7), {})
            got = {}
            t = threading.Thread(target=lambda: got.update(t=saver.get_tuple(stored)))
            t.start()
            while t.is_alive():
                await asyncio.sleep(0.01)
            assert got["t"].metadata["step"] == 7
            with pytest.raises(asyncio.InvalidStateError, match="would deadlock"):
                saver.get_tuple(stored)

    asyncio.run(main())


def put_chain(saver, thread: str, n: int, *, ns: str = "", run_id: str | None = None, counters_from: int | None = None):
    stored = []
    parent = None
    for i in range(n):
        config = generate_config(thread, checkpoint_ns=ns)
        if parent:
            config["configurable"]["checkpoint_id"] = parent["configurable"]["checkpoint_id"]
        extra = {}
        if run_id:
            extra["run_id"] = run_id
        if counters_from is not None and i >= counters_from:
            extra["counters_since_delta_snapshot"] = {"ch": [i - counters_from + 1, 1]}
        cp = generate_checkpoint(channel_values={"step": i, "text": "x" * 200})
        cp["channel_versions"] = {"step": i + 1, "text": 1}
        parent = saver.put(config, cp, generate_metadata(step=i, **extra), {"step": i + 1})
        saver.put_writes(parent, [("ch", f"write {i}")], f"task-{i}")
        stored.append(parent)
    return stored


def test_bounded_history_cleans_up_what_it_trims(statecar_with, redis_direct):
    url = statecar_with(
        """
[[state]]
pattern = "small:checkpoint:*"
compression = "zstd"
versioning = true
max_versions = 3
"""
    )
    with StatecarSaver.from_conn_string(url, key_prefix="small:") as saver:
        thread = tid()
        stored = put_chain(saver, thread, 40, run_id="run-a")
        listed = list(saver.list(generate_config(thread)))
        assert [t.metadata["step"] for t in listed] == [39, 38, 37]
        assert saver.get_tuple(stored[0]) is None  # trimmed out of the history
        assert saver.get_tuple(stored[-1]).pending_writes == [("task-39", "ch", "write 39")]
        # Writes hashes of trimmed checkpoints are swept every 16 checkpoints (the sweep for
        # max_versions = 3): never more than that left over.
        writes = list(redis_direct.scan_iter(match=f"small:writes:{{{thread}}}*", count=1000))
        assert 3 <= len(writes) <= 3 + 16, writes
        saver.delete_thread(thread)
        leftovers = [k for k in redis_direct.scan_iter(match=f"small:*{thread}*", count=1000)]
        assert leftovers == []
        assert redis_direct.exists("small:run:run-a") == 0


def test_delete_for_runs_of_the_newest_checkpoint_keeps_the_rest_readable(statecar_url):
    with StatecarSaver.from_conn_string(statecar_url) as saver:
        thread = tid()
        first = put_chain(saver, thread, 3, run_id="keep-" + thread)
        last = put_chain(saver, thread, 2, run_id="drop-" + thread)
        saver.delete_for_runs(["drop-" + thread])
        latest = saver.get_tuple(generate_config(thread))
        assert latest.config["configurable"]["checkpoint_id"] == first[-1]["configurable"]["checkpoint_id"]
        assert latest.pending_writes == [("task-2", "ch", "write 2")]
        assert [t.metadata["step"] for t in saver.list(generate_config(thread))] == [2, 1, 0]
        assert saver.get_tuple(last[0]) is None


def test_prune_keep_latest_keeps_the_ancestors_delta_channels_need(statecar_url):
    with StatecarSaver.from_conn_string(statecar_url) as saver:
        thread = tid()
        # Steps 3 and 4 carry counters_since_delta_snapshot: step 2 is the last full snapshot.
        put_chain(saver, thread, 5, counters_from=3)
        saver.prune([thread])
        assert [t.metadata["step"] for t in saver.list(generate_config(thread))] == [4, 3, 2]
        other = tid()
        put_chain(saver, other, 4)
        saver.prune([other])
        assert [t.metadata["step"] for t in saver.list(generate_config(other))] == [3]
        with pytest.raises(ValueError, match="prune strategy 'oldest'"):
            saver.prune([other], strategy="oldest")


def test_list_without_a_thread_and_copy(statecar_url):
    with StatecarSaver.from_conn_string(statecar_url) as saver:
        a, b = tid(), tid()
        put_chain(saver, a, 2, ns="child:1")
        saver.copy_thread(a, b)
        everywhere = {t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"step": 1})}
        assert {a, b} <= everywhere
        copied = saver.get_tuple(generate_config(b, checkpoint_ns="child:1"))
        assert copied.checkpoint["channel_values"]["step"] == 1
        assert copied.pending_writes == [("task-1", "ch", "write 1")]


def test_rule_checks_fail_loudly(statecar_url, statecar_with, servers):
    with pytest.raises(StatecarConfigError, match="has no \\[\\[state\\]\\] rule for 'nope:checkpoint:"):
        with StatecarSaver.from_conn_string(statecar_url, key_prefix="nope:"):
            pass
    url = statecar_with(
        """
[[state]]
pattern = "flat:checkpoint:*"
versioning = false

[[state]]
pattern = "ttl:checkpoint:*"
versioning = true
default_ttl_s = 60
"""
    )
    with pytest.raises(StatecarConfigError, match="needs versioning = true"):
        with StatecarSaver.from_conn_string(url, key_prefix="flat:"):
            pass
    with pytest.raises(StatecarConfigError, match="remove default_ttl_s"):
        with StatecarSaver.from_conn_string(url, key_prefix="ttl:"):
            pass
    with pytest.raises(StatecarConfigError, match="not statecar"):
        with StatecarSaver.from_conn_string(f"redis://127.0.0.1:{servers[0].port}"):
            pass
    with pytest.raises(ValueError, match="decode_responses=False"):
        StatecarSaver(redis.Redis.from_url(statecar_url, decode_responses=True))

    async def main():
        with pytest.raises(StatecarConfigError, match="needs versioning = true"):
            async with AsyncStatecarSaver.from_conn_string(url, key_prefix="flat:"):
                pass

    asyncio.run(main())


def test_with_allowlist_clones_use_their_own_serializer(statecar_url):
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    strict = JsonPlusSerializer(allowed_msgpack_modules=None)
    with StatecarSaver.from_conn_string(statecar_url, serde=strict) as saver:
        clone = saver.with_allowlist([("some.module", "SomeClass")])
        assert clone is not saver
        assert clone._core.serde is clone.serde and saver._core.serde is saver.serde
        config = generate_config(tid())
        stored = clone.put(config, generate_checkpoint(channel_values={"k": "v"}), generate_metadata(), {"k": 1})
        assert saver.get_tuple(stored).checkpoint["channel_values"] == {"k": "v"}
