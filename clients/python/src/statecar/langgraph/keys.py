"""Where the saver keeps a thread's checkpoints in Redis.

A thread's checkpoints in one namespace are the versions of ONE statecar state key, so that
consecutive checkpoints (which repeat almost everything before them) sit side by side in
statecar's history, compressed, checksummed and, where statecar stores deltas, stored as
differences from each other. Everything else is small plain Redis data beside it:

    {p}checkpoint:{thread}:ns          state key: each version is one checkpoint;
                                       tags: id=, parent=, run=, meta=
    {p}writes:{thread}:ns:checkpoint   hash: the checkpoint's pending writes, field task:idx
    {p}writes-index:{thread}:ns        set: checkpoint ids that have a writes hash
    {p}runs:{thread}:ns                set: run ids with a checkpoint in this namespace
    {p}namespaces:{thread}             set: the thread's namespaces
    {p}run:run_id                      set: the state keys holding checkpoints of that run

Thread ids, namespaces and checkpoint ids are percent-encoded, so they cannot break the key's
shape; the thread id sits in a hash tag, so a thread's keys share one Redis Cluster slot.
"""

from __future__ import annotations

from urllib.parse import quote, unquote


def q(s: str) -> str:
    return quote(str(s), safe="")


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def checkpoint(self, thread_id: str, ns: str) -> str:
        return f"{self.prefix}checkpoint:{{{q(thread_id)}}}:{q(ns)}"

    def checkpoint_pattern(self) -> str:
        return f"{self.prefix}checkpoint:*"

    def parse_checkpoint(self, key: str) -> tuple[str, str] | None:
        """(thread_id, ns) of a checkpoint key, or None if it is not one."""
        head = f"{self.prefix}checkpoint:{{"
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        tid, sep, ns = rest.partition("}:")
        if not sep:
            return None
        return unquote(tid), unquote(ns)

    def writes(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        return f"{self.prefix}writes:{{{q(thread_id)}}}:{q(ns)}:{q(checkpoint_id)}"

    def writes_index(self, thread_id: str, ns: str) -> str:
        return f"{self.prefix}writes-index:{{{q(thread_id)}}}:{q(ns)}"

    def runs(self, thread_id: str, ns: str) -> str:
        return f"{self.prefix}runs:{{{q(thread_id)}}}:{q(ns)}"

    def namespaces(self, thread_id: str) -> str:
        return f"{self.prefix}namespaces:{{{q(thread_id)}}}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}run:{q(run_id)}"
