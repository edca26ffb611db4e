"""The examples run as a user runs them, against statecar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=EXAMPLES,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_seed_quick_start_with_only_import_and_url_changed(statecar_url, tmp_path):
    source = (EXAMPLES / "quickstart.py").read_text()
    # The example is the seed's Quick Start with the import and the URL changed; here only the
    # port differs again (the test's statecar is on a free port, not 6380).
    assert "from statecar import RedisStatePersistence, CompressionType" in source
    assert 'redis_url="redis://localhost:6380"' in source
    script = tmp_path / "quickstart.py"
    script.write_text(source.replace("redis://localhost:6380", statecar_url))
    first = run(str(script))
    assert "Loaded state: {'user_id': 'user_123', 'conversation': [" in first
    assert re.search(r"^Version: 1$", first, re.M), first
    second = run(str(script))
    assert re.search(r"^Version: 2$", second, re.M), second


def test_langgraph_example(statecar_url):
    out = run("langgraph_agent.py", {"STATECAR_URL": statecar_url})
    assert "agent: Here is what I found:" in out
    m = re.search(r"(\d+) messages, 3 lookups, (\d+) checkpoints", out)
    assert m and int(m.group(1)) == 12, out
    v = re.search(r"statecar: (\d+) versions of langgraph:checkpoint:\{demo-\d+\}:, (\d+) bytes of checkpoints stored as (\d+)", out)
    assert v, out
    assert int(v.group(1)) == int(m.group(2)), "every checkpoint is a version of the thread's key"
    assert int(v.group(3)) < int(v.group(2)), "stored smaller than written"
    assert "forked from an earlier checkpoint: 8 messages" in out
