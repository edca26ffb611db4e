"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) against both savers,
through a real statecar in front of a real redis-server: every base capability and every
extended one the savers implement (all of them) must pass."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from statecar.langgraph import AsyncStatecarSaver, StatecarSaver


def registered(kind: str, url: str, protocol: int):
    name = f"{kind} (RESP{protocol})"
    if kind == "AsyncStatecarSaver":

        @checkpointer_test(name=name)
        async def factory():
            async with AsyncStatecarSaver.from_conn_string(url, protocol=protocol) as saver:
                yield saver

    else:

        @checkpointer_test(name=name)
        async def factory():
            with StatecarSaver.from_conn_string(url, protocol=protocol) as saver:
                yield saver

    return factory


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("kind", ["StatecarSaver", "AsyncStatecarSaver"])
async def test_langgraph_checkpoint_conformance(statecar_url, kind, protocol):
    report = await validate(registered(kind, statecar_url, protocol), progress=ProgressCallbacks.default())
    report.print_report()
    failures = {name: r.failures for name, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    assert {c.value for c in ALL_CAPABILITIES} == {n for n, r in report.results.items() if r.detected}
    assert report.passed_all(), failures
    assert report.conformance_level() == "FULL"
