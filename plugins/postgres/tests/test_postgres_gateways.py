"""Two real gateways (``nexus serve`` on two ports) on one PostgreSQL schema.

* An SSE subscriber on B sees a run started on A, live, every event once and
  in order; reconnecting to A with ``Last-Event-ID`` it gets the rest.
* A session made over REST on A is continued on B over MCP and the WebSocket.
* ``/health/ready`` reports the database: 503 with the reason while it is gone
  (this gateway's own login role refused, its connections terminated), 200 after.
* ``/metrics`` counts a lease takeover: a run whose owner died is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse
from pg_support import POSTGRES_URL, Schemas, drop_schema, server_url, with_params
from psycopg import sql

from nexus_plugin_postgres.storage import parse_url

pytest.importorskip("nexus_plugin_api", reason="needs nexus-plugin-api")
pytest.importorskip("nexus_plugin_cli", reason="needs nexus-plugin-cli")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

APP = '''
"""Two gateways' test app: a greeting, and a counter kept in the session."""

from nexus_core import Nexus, Session

app = Nexus("gw")


@app.workflow
async def greet(name: str) -> str:
    """Say hello."""
    return f"hello {name}"


@app.workflow
def bump(session: Session, by: int = 1) -> int:
    """Add to this session's counter; the new value."""
    session.state["count"] = session.state.get("count", 0) + by
    return session.state["count"]
'''

_URL = re.compile(r"(http://127\\.0\\.0\\.1:\\d+)")


def nexus() -> list[str]:
    script = Path(sys.executable).parent / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexus_plugin_cli"]


def until(predicate: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Gateway:
    """``nexus serve app.py --port N`` on the test's storage; its URL and output."""

    def __init__(self, workdir: Path, storage: str, name: str) -> None:
        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env.update(NEXUS_STORAGE=storage, PYTHONUNBUFFERED="1")
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*nexus(), "serve", "app.py", "--port", str(self.port)],
                cwd=workdir,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited:\n{self.output()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health/ready", timeout=3).status_code == 200
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def gateways(workdir: Path, storage: str, count: int) -> Iterator[list[Gateway]]:
    (workdir / "app.py").write_text(textwrap.dedent(APP))
    started = [Gateway(workdir, storage, f"gw{n}") for n in range(count)]
    try:
        for each in started:
            until(each.ready, f"{each.url} to be ready", within=60)
        yield started
    finally:
        for each in started:
            each.stop()


def test_a_subscriber_on_b_sees_a_run_started_on_a(tmp_path: Path, schemas: Schemas) -> None:
    with gateways(tmp_path, schemas.url(), 2) as (a, b), httpx.Client(timeout=30) as http:
        received: list[dict[str, Any]] = []
        with connect_sse(http, "GET", f"{b.url}/events") as stream:
            run = http.post(f"{a.url}/workflows/greet/runs", json={"name": "Ada"})
            assert run.status_code == 200, run.text
            run_id = run.json()["run_id"]
            for sse in stream.iter_sse():
                if not sse.data:
                    continue  # a keep-alive
                event = json.loads(sse.data)
                if event.get("run_id") == run_id:
                    received.append({"id": sse.id, "type": event["type"]})
                    if event["type"] == "run.started":
                        break
        assert [e["type"] for e in received][-1] == "run.started"
        # Reconnect to A with the last id seen on B: the rest of the run, once, in order.
        headers = {"Last-Event-ID": received[-1]["id"]}
        rest: list[dict[str, Any]] = []
        with connect_sse(http, "GET", f"{a.url}/events", headers=headers) as stream:
            for sse in stream.iter_sse():
                if not sse.data:
                    continue  # a keep-alive
                event = json.loads(sse.data)
                if event.get("run_id") == run_id:
                    rest.append({"id": sse.id, "type": event["type"]})
                    if event["type"] == "run.completed":
                        break
        ids = [e["id"] for e in received + rest]
        assert ids == sorted(set(ids))  # once each, in log order
        assert rest[-1]["type"] == "run.completed"
        assert "run.started" not in [e["type"] for e in rest]


@pytest.mark.anyio
async def test_a_session_made_on_a_continues_on_b_over_other_channels(
    tmp_path: Path, schemas: Schemas
) -> None:
    import httpx2

    pytest.importorskip("nexus_plugin_mcp", reason="needs nexus-plugin-mcp")
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from websockets.asyncio.client import connect

    with gateways(tmp_path, schemas.url(), 2) as (a, b):
        async with httpx.AsyncClient(timeout=30) as http:
            created = await http.post(f"{a.url}/sessions")
            assert created.status_code == 201, created.text
            sid = created.json()["session_id"]
            http.cookies.clear()
            one = await http.post(
                f"{a.url}/workflows/bump/runs", json={"by": 2}, headers={"X-Nexus-Session": sid}
            )
            assert one.json()["output"] == 2, one.text
        # MCP on B: the same session, read and written.
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=60.0)) as client,
            Client(streamable_http_client(f"{b.url}/mcp", http_client=client)) as mcp,
        ):
            bumped = await mcp.call_tool("bump", {"by": 3}, meta={"nexus/sessionId": sid})
            assert bumped.structured_content == {"result": 5}, bumped
        # The WebSocket on B, then REST on A again: one state, whichever gateway.
        async with connect(b.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send(
                json.dumps({"type": "run", "id": "w", "workflow": "bump", "session": sid})
            )
            answer = json.loads(await ws.recv())
            assert answer["type"] == "result", answer
            assert answer["run"]["output"] == 6
        async with httpx.AsyncClient(timeout=30) as http:
            session = (await http.get(f"{a.url}/sessions/{sid}")).json()
        assert session["state"] == {"count": 6}
        assert session["channels"] == ["api", "mcp"]


@pytest.fixture
def outage_role(schemas: Schemas) -> Iterator[tuple[str, str]]:
    """A login role of this test's own, owning a new schema: (its URL, its name)."""
    server_url()
    role = f"t_role_{secrets.token_hex(4)}"

    def admin(statement: sql.Composable) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(statement)

    admin(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin(sql.SQL("GRANT CREATE ON DATABASE test TO {}").format(sql.Identifier(role)))
    url = with_params(
        schemas.url(pool_timeout="1").replace("postgres@", f"{role}@", 1), application_name=role
    )
    try:
        yield url, role
    finally:
        admin(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        drop_schema(str(parse_url(url).schema))
        admin(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_health_ready_reports_the_database(tmp_path: Path, outage_role: tuple[str, str]) -> None:
    url, role = outage_role
    with gateways(tmp_path, url, 1) as (gw,), psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        ok = httpx.get(f"{gw.url}/health/ready", timeout=10)
        assert ok.status_code == 200
        assert {c["name"]: c["ok"] for c in ok.json()["checks"]}["storage"] is True
        db.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (role,),
        )
        down = until(
            lambda: (r := httpx.get(f"{gw.url}/health/ready", timeout=10)).status_code == 503 and r,
            "readiness to fail",
        )
        storage = {c["name"]: c for c in down.json()["checks"]}["storage"]
        assert storage["ok"] is False
        assert "PostgreSQL at 127.0.0.1:5432/test" in storage["detail"], storage
        db.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        until(gw.ready, "readiness to come back")
        answer = httpx.post(f"{gw.url}/workflows/greet/runs", json={"name": "again"}, timeout=30)
        assert answer.json()["output"] == "hello again"


def test_metrics_count_a_lease_takeover(tmp_path: Path, schemas: Schemas) -> None:
    """A run left leased by a dead process is taken over by a gateway, and counted."""
    url = schemas.url()
    schema = parse_url(url).schema
    assert schema is not None
    with gateways(tmp_path, url, 1) as (gw,):
        run = {
            "id": "orphan",
            "workflow": "greet",
            "inputs": {"name": "orphan"},
        }
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            db.execute(
                "INSERT INTO runs (id, workflow, status, tenant, inputs, output, created_at,"
                " owner, fence, lease_expires_at)"
                " VALUES (%s, %s, 'running', 'default', %s, 'null', %s, 'dead', 1, %s)",
                (
                    run["id"],
                    run["workflow"],
                    json.dumps(run["inputs"]).encode(),
                    time.time(),
                    time.time() - 1,
                ),
            )

        def done() -> bool:
            got = httpx.get(f"{gw.url}/runs/orphan", timeout=10)
            return got.status_code == 200 and got.json()["status"] == "completed"

        until(done, "the orphaned run to be taken over and completed", within=60)
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
        assert re.search(
            r'nexus_run_takeovers_total\{[^}]*workflow="greet"[^}]*\} 1\.0', metrics
        ), [line for line in metrics.splitlines() if "takeover" in line]
