"""A LangGraph graph whose checkpoints go through statecar.

    bash .ci/dev                  # README's first command: statecar on 127.0.0.1:6380
    python3 langgraph_agent.py    # or STATECAR_URL=redis://host:port python3 langgraph_agent.py

A tiny "agent" (no LLM needed): it plans, calls a tool, and answers, in a loop over three user
turns on one thread. Every step is a checkpoint; statecar keeps the thread's checkpoints as the
versions of one state key, compressed and checksummed. At the end the script shows the graph's
own view (the state, its history) and statecar's (the versions it holds, and what they cost).
"""

from __future__ import annotations

import os
from typing import Annotated, TypedDict

import redis
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from statecar.langgraph import StatecarSaver

URL = os.environ.get("STATECAR_URL", "redis://localhost:6380")


class State(TypedDict):
    messages: Annotated[list[BaseMessage], add_messages]
    lookups: int


def agent(state: State) -> dict:
    last = state["messages"][-1]
    if isinstance(last, HumanMessage):
        # Decide to look something up first.
        call = {"name": "lookup", "args": {"query": last.content}, "id": f"call_{len(state['messages'])}"}
        return {"messages": [AIMessage(content="", tool_calls=[call])]}
    return {"messages": [AIMessage(content=f"Here is what I found: {last.content}")]}


def tool(state: State) -> dict:
    call = state["messages"][-1].tool_calls[0]
    result = f"{call['args']['query']!r} -> 3 matching orders, the newest shipped on Monday"
    return {"messages": [ToolMessage(content=result, tool_call_id=call["id"])], "lookups": state.get("lookups", 0) + 1}


def route(state: State) -> str:
    last = state["messages"][-1]
    return "tool" if isinstance(last, AIMessage) and last.tool_calls else END


def build() -> StateGraph:
    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tool", tool)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, ["tool", END])
    g.add_edge("tool", "agent")
    return g


def main() -> None:
    thread = {"configurable": {"thread_id": f"demo-{os.getpid()}"}}
    with StatecarSaver.from_conn_string(URL) as saver:
        graph = build().compile(checkpointer=saver)
        for question in ["where is order 1042?", "and order 1043?", "which one is cheaper?"]:
            out = graph.invoke({"messages": [HumanMessage(content=question)]}, thread)
            print(f"user: {question}\nagent: {out['messages'][-1].content}")

        state = graph.get_state(thread)
        history = list(graph.get_state_history(thread))
        print(f"\nthread {thread['configurable']['thread_id']}: {len(state.values['messages'])} messages, "
              f"{state.values['lookups']} lookups, {len(history)} checkpoints")

        # statecar's view: the checkpoints are the versions of one state key.
        key = saver.state_key(thread["configurable"]["thread_id"])
        versions = redis.Redis.from_url(URL).execute_command("STATE.VERSIONS", key)
        # A map per version (RESP3), or a flat key, value, ... array (RESP2).
        sizes = [v if isinstance(v, dict) else dict(zip(v[::2], v[1::2])) for v in versions]
        plain = sum(s[b"size"] for s in sizes)
        stored = sum(s[b"stored_size"] for s in sizes)
        print(f"statecar: {len(sizes)} versions of {key}, {plain} bytes of checkpoints stored as {stored}")

        # Time travel: continue from the checkpoint before the last question.
        earlier = next(h for h in history if h.next == () and len(h.values["messages"]) == 4)
        forked = graph.invoke({"messages": [HumanMessage(content="actually, order 1099?")]}, earlier.config)
        print(f"forked from an earlier checkpoint: {len(forked['messages'])} messages")


if __name__ == "__main__":
    main()
