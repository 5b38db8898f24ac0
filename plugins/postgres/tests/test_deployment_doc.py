"""The documented deployment, run as the page shows it: two gateways, two workers, one database.

``docs/how-to/deploy-production.md``, section "Two gateways and two workers":
its ``app.py``, its ``nexus.toml`` and every command of its console blocks are
read from the page and run here, in order (``tests/test_docs.py`` cannot: it
serves one server per page). Only the database and the ports change: the
page's URL becomes a schema of the test's own, and ports 8001 and 8002 free
ones. A command ending in ``&`` starts in the background (and is stopped at
the end); any other must exit 0 and print what the page shows (``...``
matches anything).

Then calls spread over both gateways: REST on each, the WebSocket on B, MCP
on A and on B, and an SSE subscriber on B that hears a run posted on A. Every
run went through the queue (its Procrastinate job succeeded) and was executed
by one of the two workers, never by a gateway.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import Schemas

from nexus_plugin_postgres.storage import parse_url

pytest.importorskip("nexus_plugin_api", reason="the page serves over HTTP")
pytest.importorskip("nexus_plugin_cli", reason="the page runs `nexus serve` and `nexus worker`")
pytest.importorskip("nexus_plugin_mcp", reason="the test calls the gateways over MCP")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAGE = Path(__file__).resolve().parents[3] / "docs" / "how-to" / "deploy-production.md"
SECTION = "### Two gateways and two workers"
#: What the page's configuration names, replaced by the test's own.
DOC_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=nexus_two"
DOC_PORTS = ("8001", "8002")
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


@dataclass
class Command:
    """One ``$ ...`` line of a console block and the output the page shows under it."""

    text: str
    want: str


def section_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block of the section, in page order."""
    page = PAGE.read_text()
    start = page.index(SECTION)
    end = min(
        (i for i in (page.find("\n## ", start), page.find("\n### ", start + 1)) if i != -1),
        default=len(page),
    )
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(page[start:end])]


def console_commands(text: str) -> Iterator[Command]:
    command: str | None = None
    want: list[str] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield Command(command, "\n".join(want))
            command, want = line[2:], []
        else:
            want.append(line)
    if command is not None:
        yield Command(command, "\n".join(want))


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def until(predicate: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


class Deployment:
    """The page's processes, started as its commands say; stopped with ``SIGTERM`` at the end."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        self.url = url
        settings = parse_url(url)
        self.schema = str(settings.schema)
        self.ports = {doc: free_port() for doc in DOC_PORTS}
        self.background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env

    def gateway(self, doc_port: str) -> str:
        return f"http://127.0.0.1:{self.ports[doc_port]}"

    def ours(self, text: str) -> str:
        """The page's text with the test's database and ports."""
        text = text.replace(DOC_URL, self.url)
        for doc, port in self.ports.items():
            text = text.replace(f"127.0.0.1:{doc}", f"127.0.0.1:{port}")
            text = text.replace(f"--port {doc}", f"--port {port}")
        server = parse_url(self.url)
        where = self.url.split("@", 1)[-1].split("?", 1)[0]
        text = text.replace("127.0.0.1:5432/test", where)
        return text.replace("(schema nexus_two)", f"(schema {server.schema})")

    def run(self, command: Command) -> None:
        line = self.ours(command.text)
        if line.endswith("&"):
            n = len(self.background)
            log = self.workdir / f"background-{n}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    ["bash", "-c", "exec " + line[:-1].strip()],
                    cwd=self.workdir,
                    env=self.env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.background.append((line, process, log))
            return
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = f"$ {line}\nexit {done.returncode}\n{done.stdout}{done.stderr}\n{self.logs()}"
        assert done.returncode == 0, report
        want = self.ours(command.want).strip()
        got = (done.stdout + done.stderr).strip()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        checker = doctest.OutputChecker()
        assert checker.check_output(
            want + "\n" if want else "", got + "\n" if got else "", flags
        ), f"expected:\n{want}\n{report}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {line}\n{log.read_text(errors='replace')[-3000:]}"
            for line, _, log in self.background
        )

    def pids(self, kind: str) -> set[int]:
        return {p.pid for line, p, _ in self.background if f"nexus {kind} " in line}

    def stop(self) -> None:
        for _, process, _ in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.background:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    settings = parse_url(url)
    with psycopg.connect(settings.conninfo, autocommit=True) as conn:
        return list(conn.execute(query, params or None).fetchall())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_documented_deployment_runs_as_shown(tmp_path: Path, schemas: Schemas) -> None:
    blocks = section_blocks()
    (python,) = [text for lang, text in blocks if lang == "python"]
    (toml,) = [text for lang, text in blocks if lang == "toml"]
    consoles = [text for lang, text in blocks if lang == "console"]
    assert DOC_URL in toml, "the page's configuration names the database the test replaces"
    deployment = Deployment(tmp_path, schemas.url())
    (tmp_path / "app.py").write_text(python)
    (tmp_path / "nexus.toml").write_text(deployment.ours(toml))
    commands = [command for text in consoles for command in console_commands(text)]
    assert sum(c.text.endswith("&") for c in commands) == 4  # two workers, two gateways
    try:
        for command in commands:
            deployment.run(command)
        await spread_calls(deployment)
    finally:
        deployment.stop()
    assert all(p.returncode == 0 for _, p, _ in deployment.background), deployment.logs()


async def spread_calls(deployment: Deployment) -> None:
    """REST, WebSocket, MCP and SSE across both gateways; every run executed by a worker."""
    import anyio
    import httpx2
    from httpx_sse import aconnect_sse
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from websockets.asyncio.client import connect

    a, b = deployment.gateway("8001"), deployment.gateway("8002")
    run_ids: list[str] = []
    async with httpx.AsyncClient(timeout=60) as http:
        for gateway, name in ((a, "Ann"), (b, "Ben")):
            answer = await http.post(f"{gateway}/workflows/greet/runs", json={"name": name})
            assert answer.status_code == 200, answer.text
            assert answer.json()["output"] == f"hello {name}"
            run_ids.append(answer.json()["run_id"])
        # SSE on B hears a run posted on A, executed by a worker, to its end.
        async with aconnect_sse(http, "GET", f"{b}/events") as stream:
            posted = await http.post(f"{a}/workflows/greet/runs", json={"name": "Sse"})
            run_id = posted.json()["run_id"]
            run_ids.append(run_id)
            seen: list[str] = []
            with anyio.fail_after(30):
                async for sse in stream.aiter_sse():
                    event = json.loads(sse.data) if sse.data else {}
                    if event.get("run_id") == run_id:
                        seen.append(event["type"])
                        if event["type"] == "run.completed":
                            break
        assert seen[0] == "run.started" and seen[-1] == "run.completed", seen
    async with connect(b.replace("http://", "ws://") + "/ws") as ws:
        await ws.send(
            json.dumps({"type": "run", "id": "w", "workflow": "greet", "inputs": {"name": "Wes"}})
        )
        with anyio.fail_after(30):
            answer = json.loads(await ws.recv())
        assert answer["type"] == "result", answer
        assert answer["run"]["output"] == "hello Wes"
        run_ids.append(answer["run"]["run_id"])
    for gateway, name in ((a, "Mia"), (b, "Max")):
        async with (
            httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=60.0)) as client,
            Client(streamable_http_client(f"{gateway}/mcp", http_client=client)) as mcp,
        ):
            called = await mcp.call_tool("greet", {"name": name})
            assert called.structured_content == {"result": f"hello {name}"}, called
    # Every run (MCP's too) went through the queue and was executed by a worker.
    url = deployment.url
    owners = rows(url, "SELECT id, owner, status FROM runs")
    # Ours, MCP's two, and the one the page's own curl posted.
    assert len(owners) == len(run_ids) + 3 and set(run_ids) <= {r[0] for r in owners}
    workers, gateways = deployment.pids("worker"), deployment.pids("serve")
    assert len(workers) == 2 and len(gateways) == 2
    for run_id, owner, status in owners:
        assert status == "completed", run_id
        assert int(owner.split("/")[-2]) in workers, f"run {run_id} executed by {owner}"
    jobs = rows(url, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
    assert jobs == [("succeeded", len(owners))]
