"""Redis stopped and restarted under load, on a redis-server of the test's own.

Two ``nexus serve`` gateways share one SQLite records file and the test's
Redis (bus, rate-limit buckets, sessions). While requests run on both,
Redis is stopped, then started again:

* every request is answered 200 or 503 (``code`` ``unavailable``, naming
  Redis), never anything else; both hosts stay up;
* ``/health/ready`` fails naming Redis while it is down, and is ok again after;
* every run answered 200 is completed in the durable log, and an SSE
  subscriber on B (connected throughout) receives each one's
  ``run.completed`` exactly once: during the outage over the log, after it
  over the stream again.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis_support import OwnRedis
from test_redis_gateways import NEXUS, _env, _mcp_call, gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("nexus_plugin_api") is None
        or importlib.util.find_spec("nexus_plugin_cli") is None,
        reason="the gateways need nexus-plugin-api and nexus-plugin-cli (nexus serve)",
    ),
]


async def _until(condition: Any, what: str, seconds: float = 30.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polls state other tasks change
            await anyio.sleep(0.02)
    assert condition(), what


def test_redis_restarted_mid_load_loses_no_accepted_run_and_no_event(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path)
    server.start()
    db = tmp_path / "records.db"
    try:
        with (
            gateway(tmp_path, "a", db, server.url) as a,
            gateway(tmp_path, "b", db, server.url) as b,
        ):
            anyio.run(_scenario, server, a, b, db)
    finally:
        server.stop()


async def _scenario(server: OwnRedis, a: str, b: str, db: Path) -> None:
    answers: list[tuple[str, int, dict[str, Any], str]] = []  # (phase, status, body, workflow)
    completed_on_b: list[str] = []
    phase = "before"
    stop_load = anyio.Event()

    async def subscribe_on_b(ready: anyio.Event) -> None:
        from httpx_sse import aconnect_sse

        async with (
            httpx.AsyncClient(base_url=b, timeout=None) as http,
            aconnect_sse(http, "GET", "/events", params={"types": "run.completed"}) as source,
        ):
            ready.set()
            async for sse in source.aiter_sse():
                if sse.event == "run.completed":
                    completed_on_b.append(json.loads(sse.data)["run_id"])  # noqa: PERF401

    async def load(base: str, workflow: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while not stop_load.is_set():
                response = await http.post(f"/workflows/{workflow}/runs", json={"n": 1})
                answers.append((phase, response.status_code, response.json(), workflow))
                await anyio.sleep(0.005)

    def count(wanted_phase: str, status: int, workflow: str | None = None) -> int:
        return sum(
            1
            for p, s, _, w in answers
            if p == wanted_phase and s == status and workflow in (None, w)
        )

    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(subscribe_on_b, ready)
        with anyio.fail_after(20):
            await ready.wait()
        # metered takes a token from Redis per run; greet needs Redis only for its events.
        for base in (a, b):
            tg.start_soon(load, base, "metered")
            tg.start_soon(load, base, "greet")
        await _until(lambda: count("before", 200) >= 20, "runs before the outage")
        has_mcp = importlib.util.find_spec("nexus_plugin_mcp") is not None
        if has_mcp:
            # A's /mcp is built on its first request (an import of the mcp package,
            # seconds on a loaded machine): build it now, so the MCP call during the
            # outage below is about the outage, not a cold start.
            warm = await _mcp_call(a, "greet", {"n": 1})
            assert not warm.is_error, warm.content

        phase = "down"
        server.stop()
        await _until(lambda: count("down", 503) >= 10, "503s while Redis is down")
        # Runs that need no Redis are still accepted; their events reach B over the log.
        await _until(lambda: count("down", 200) >= 10, "runs accepted while Redis is down")
        async with httpx.AsyncClient(timeout=10) as http:
            for base in (a, b):
                ready_report = await http.get(f"{base}/health/ready")
                assert ready_report.status_code == 503
                storage = next(c for c in ready_report.json()["checks"] if c["name"] == "storage")
                assert "Redis" in storage["detail"]
                assert (await http.get(f"{base}/health/live")).status_code == 200
        # Every channel says so in its own terms: an MCP tool error, a CLI message.
        if has_mcp:
            result = await _mcp_call(a, "metered", {"n": 1})
            assert result.is_error
            assert result.content[0].text.startswith("unavailable: Redis at ")
        cli = await anyio.run_process(
            [NEXUS, "--url", b, "run", "metered", "--n", "1"],
            env=_env(db.parent),
            check=False,
        )
        assert cli.returncode == 1
        assert b"Redis at " in cli.stderr and b"unreachable" in cli.stderr
        assert b"Traceback" not in cli.stderr

        server.start()
        phase = "after"
        await _until(
            lambda: count("after", 200, "metered") >= 20, "limited runs after Redis is back", 60
        )
        stop_load.set()
        async with httpx.AsyncClient(timeout=10) as http:
            for base in (a, b):
                assert (await http.get(f"{base}/health/ready")).status_code == 200

        accepted = [body["run_id"] for _, status, body, _ in answers if status == 200]
        await _until(
            lambda: set(accepted) <= set(completed_on_b), "every accepted run's event on B", 30
        )
        tg.cancel_scope.cancel()

    statuses = {status for _, status, _, _ in answers}
    assert statuses <= {200, 503}, statuses
    refused = [body for _, status, body, _ in answers if status == 503]
    assert refused
    assert all(body["code"] == "unavailable" and "Redis" in body["detail"] for body in refused)
    # Each accepted run's completion reached B once, whichever way it came.
    assert len(completed_on_b) == len(set(completed_on_b))
    # And the durable log has every accepted run, completed.
    with sqlite3.connect(db) as conn:
        finished = {
            run_id for (run_id,) in conn.execute("SELECT id FROM runs WHERE status = 'completed'")
        }
    assert set(accepted) <= finished
