#!/usr/bin/env python3
"""Memory per thread of LangGraph checkpoints: StatecarSaver through statecar, against the same
checkpoints stored as plain JSON (one JSON document per checkpoint and per pending write, what a
JSON-document saver such as langgraph-checkpoint-redis keeps), measured with Redis MEMORY USAGE.

    python3 benches/checkpoint_memory.py [--threads 10] [--turns 3,10,25] [--config FILE]

It starts its own redis-server and statecar ($STATECAR_BIN, else the newer of target/release and
target/debug; with config/statecar.toml unless --config) on free loopback ports and stops them at the end. Needs
redis-server, and the Python package with LangGraph: pip install "./clients/python[test]".

Each thread is a real LangGraph graph run with StatecarSaver: per user turn the agent calls a tool
(a JSON order lookup), reads the result and answers, so each turn adds four checkpoints and the
state grows by three messages (about 2.5 KB of text). Then every checkpoint and write of the
thread is read back through the saver and stored again, directly in the same Redis, as plain JSON
(messages in LangChain's own serialized form). Figures are bytes of Redis memory per thread
(MEMORY USAGE ... SAMPLES 0, summed over the keys), and the same as a multiple of ONE plain JSON
copy of the thread's newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, TypedDict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python" / "src"))
sys.path.insert(0, str(REPO / "benches" / "support"))

import redis  # noqa: E402
from langchain_core.load import dumpd  # noqa: E402
from langchain_core.load.serializable import Serializable  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402

from servers import free_port, start_redis, statecar_bin, wait_ping  # noqa: E402
from statecar.langgraph import StatecarSaver  # noqa: E402

WORDS = (
    "the order shipment customer warehouse delivery invoice refund address status tracking "
    "package carrier estimated arrival delayed weather route courier signature payment card "
    "account balance discount coupon return policy window days business please thank you "
    "could would should check confirm update notify email phone support ticket priority "
    "issue resolved pending review manager escalate apologize inconvenience replacement item "
    "size colour quantity price total tax shipping express standard international customs "
    "duty fee label printed scanned depot sorted loaded van driver attempt neighbour locker"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


class State(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    orders_seen: list[str]


def build_graph(seed: int):
    rng = random.Random(seed)

    def agent(state: State) -> dict:
        last = state["messages"][-1]
        if isinstance(last, HumanMessage):
            order = f"#{rng.randint(10000, 99999)}"
            call = {"name": "lookup_order", "args": {"order": order, "fields": ["status", "items", "events"]}, "id": f"call_{rng.getrandbits(40):x}"}
            return {"messages": [AIMessage(content=sentence(rng, 12), tool_calls=[call])]}
        answer = " ".join(sentence(rng, rng.randint(10, 18)) for _ in range(rng.randint(4, 7)))
        return {"messages": [AIMessage(content=answer)]}

    def tool(state: State) -> dict:
        call = state["messages"][-1].tool_calls[0]
        result = {
            "order": call["args"]["order"],
            "status": rng.choice(["shipped", "delayed", "delivered", "processing"]),
            "items": [
                {"sku": f"SKU-{rng.randint(1000, 9999)}", "name": sentence(rng, 3), "qty": rng.randint(1, 4), "price": round(rng.uniform(3, 250), 2)}
                for _ in range(rng.randint(1, 4))
            ],
            "events": [{"at": f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z", "what": sentence(rng, 6)} for _ in range(rng.randint(2, 6))],
        }
        return {
            "messages": [ToolMessage(content=json.dumps(result), tool_call_id=call["id"])],
            "orders_seen": state.get("orders_seen", []) + [call["args"]["order"]],
        }

    def route(state: State) -> str:
        last = state["messages"][-1]
        return "tool" if isinstance(last, AIMessage) and last.tool_calls else END

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tool", tool)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, ["tool", END])
    g.add_edge("tool", "agent")
    return g.compile, rng


# ---------------------------------------------------------------------------------------------
# plain JSON copy of the same checkpoints


def to_json(obj: Any) -> Any:
    if isinstance(obj, Serializable):
        return dumpd(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return str(obj)


def store_plain(direct: redis.Redis, saver: StatecarSaver, thread: str) -> tuple[int, int, int]:
    """Stores the thread's checkpoints and writes as plain JSON; returns (checkpoint bytes,
    writes bytes, bytes of one JSON copy of the newest checkpoint) of Redis memory."""
    cp_bytes = writes_bytes = newest = 0
    tuples = list(saver.list({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}))
    for i, t in enumerate(tuples):
        cid = t.config["configurable"]["checkpoint_id"]
        doc = {
            "thread_id": thread,
            "checkpoint_ns": "",
            "checkpoint_id": cid,
            "parent_checkpoint_id": t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None,
            "checkpoint": t.checkpoint,
            "metadata": t.metadata,
        }
        key = f"plainjson:checkpoint:{{{thread}}}:{cid}"
        direct.set(key, json.dumps(doc, default=to_json))
        used = direct.memory_usage(key, samples=0)
        cp_bytes += used
        if i == 0:
            newest = used
        for j, (task_id, channel, value) in enumerate(t.pending_writes or []):
            wkey = f"plainjson:write:{{{thread}}}:{cid}:{task_id}:{j}"
            direct.set(wkey, json.dumps({"task_id": task_id, "channel": channel, "value": value}, default=to_json))
            writes_bytes += direct.memory_usage(wkey, samples=0)
    return cp_bytes, writes_bytes, newest


def statecar_usage(direct: redis.Redis, saver: StatecarSaver, thread: str) -> tuple[int, int, int]:
    """(checkpoints: the state key and its history, everything else of the thread, versions)."""
    key = saver.state_key(thread)
    cps = (direct.memory_usage(key, samples=0) or 0) + (direct.memory_usage(f"__statecar:h:{key}", samples=0) or 0)
    rest = 0
    for k in direct.scan_iter(match=f"langgraph:*{{{thread}}}*", count=1000):
        if k.decode() != key:
            rest += direct.memory_usage(k, samples=0) or 0
    versions = len(saver.conn.execute_command("STATE.VERSIONS", key))
    return cps, rest, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=10, help="threads per size (default 10)")
    ap.add_argument("--turns", default="3,10,25", help="user turns per thread, comma-separated")
    ap.add_argument("--config", default=str(REPO / "config" / "statecar.toml"))
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not installed")

    tmp = Path(tempfile.mkdtemp(prefix="checkpoint-memory-"))
    rport, sport = free_port(), free_port()
    procs = []
    try:
        procs.append(start_redis(rport, tmp))
        sc = subprocess.Popen(
            [statecar_bin(), "--config", args.config, "--listen", f"127.0.0.1:{sport}", "--upstream", f"redis://127.0.0.1:{rport}", "--metrics-listen", f"127.0.0.1:{free_port()}", "--log-level", "warn"],
            stdout=subprocess.DEVNULL,
        )
        procs.append(sc)
        wait_ping(sport, sc, "statecar")
        direct = redis.Redis(port=rport)
        version = direct.info("server")["redis_version"]
        def shown(p: str) -> str:
            return os.path.relpath(p, REPO) if os.path.isabs(p) and p.startswith(str(REPO)) else p

        print(f"redis {version}, statecar {shown(statecar_bin())}, config {shown(args.config)}, {args.threads} threads per row\n")
        print("| turns | checkpoints | newest, plain JSON | plain JSON, all checkpoints | statecar saver, all checkpoints | statecar / plain | per newest copy: plain / statecar | writes + indexes: plain / statecar |")
        print("|---|---|---|---|---|---|---|---|")
        with StatecarSaver.from_conn_string(f"redis://127.0.0.1:{sport}") as saver:
            for turns in [int(t) for t in args.turns.split(",")]:
                tot = {"plain": 0, "sc": 0, "pw": 0, "sw": 0, "newest": 0, "n": 0}
                for t in range(args.threads):
                    thread = f"bench-{turns}-{t}"
                    compile_graph, rng = build_graph(seed=turns * 1000 + t)
                    graph = compile_graph(checkpointer=saver)
                    config = {"configurable": {"thread_id": thread}}
                    for _ in range(turns):
                        graph.invoke({"messages": [HumanMessage(content=sentence(rng, 15))]}, config)
                    plain, pw, newest = store_plain(direct, saver, thread)
                    sc_cps, sc_rest, versions = statecar_usage(direct, saver, thread)
                    n = len(list(saver.list(config)))
                    assert n == versions, (n, versions)
                    for k, v in (("plain", plain), ("sc", sc_cps), ("pw", pw), ("sw", sc_rest), ("newest", newest), ("n", n)):
                        tot[k] += v
                k = args.threads
                print(
                    f"| {turns} | {tot['n'] / k:.0f} | {tot['newest'] / k / 1024:.1f} KB | {tot['plain'] / k / 1024:.1f} KB "
                    f"| {tot['sc'] / k / 1024:.1f} KB | {tot['sc'] / tot['plain']:.2f}x "
                    f"| {tot['plain'] / tot['newest']:.1f}x / {tot['sc'] / tot['newest']:.2f}x "
                    f"| {tot['pw'] / k / 1024:.1f} KB / {tot['sw'] / k / 1024:.1f} KB |"
                )
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
