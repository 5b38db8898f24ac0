"""``nexus mcp --log-format json``: every stderr line is a JSON object; all bad arguments named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _mcp_support import server_params
from mcp import ClientSession, stdio_client

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_json_logs_and_every_bad_argument_over_stdio(example_app: Path) -> None:
    params = server_params(example_app)
    params.args = [*params.args, "--log-format", "json"]
    errlog = example_app.parent / "stderr.log"
    with errlog.open("w") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            bad = await session.call_tool("greet", {"name": 3, "excited": "very", "extra": 1})
            failed = await session.call_tool("explode", {"reason": "on purpose"})
    # All three bad arguments at once, each on its own line with its path.
    assert bad.is_error is True
    lines = _text(bad).splitlines()
    assert lines[0] == "invalid arguments for 'greet':"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == ["excited", "extra", "name"]
    assert bad.meta is not None
    assert sorted(e["path"] for e in bad.meta["nexus/error"]["errors"]) == [
        "excited",
        "extra",
        "name",
    ]
    # The failed run: its error for the agent, no traceback.
    assert failed.is_error is True
    assert "failed at node 'explode': ValueError: boom: on purpose" in _text(failed)
    assert "Traceback" not in json.dumps(failed.meta or {})

    # The server's stderr: JSON lines only; the failed run's line has its context.
    logged = [line for line in errlog.read_text().splitlines() if line.strip()]
    assert logged, "the server logged nothing"
    records = [json.loads(line) for line in logged]  # every line parses
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    [run] = [r for r in records if r["logger"] == "nexus.runs"]
    assert run["level"] == "ERROR"
    assert run["workflow"] == "explode" and run["node"] == "explode" and run["run_id"]
    assert run["message"] == (
        f"run {run['run_id']} of workflow 'explode' failed at node 'explode': "
        "ValueError: boom: on purpose"
    )
    assert run["traceback"].rstrip().endswith("ValueError: boom: on purpose")
    assert 'raise ValueError(f"boom: {reason}")' in run["traceback"]
