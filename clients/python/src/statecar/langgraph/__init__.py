"""LangGraph checkpoint savers through statecar, on plain Redis (no modules).

    from statecar.langgraph import StatecarSaver, AsyncStatecarSaver

    with StatecarSaver.from_conn_string("redis://localhost:6380") as saver:
        graph = builder.compile(checkpointer=saver)

Each thread's checkpoints (per namespace) are the versions of one statecar state key, so statecar
compresses and checksums every checkpoint and keeps them as one bounded history (the rule's
``max_versions``): consecutive checkpoints, which repeat almost everything, cost what statecar's
history makes them cost rather than a full copy each.
"""

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"statecar.langgraph needs LangGraph's checkpoint package ({e}): "
        "pip install 'statecar[langgraph]' (or pip install langgraph-checkpoint)"
    ) from e

from .saver import AsyncStatecarSaver, StatecarSaver

__all__ = ["AsyncStatecarSaver", "StatecarSaver"]
