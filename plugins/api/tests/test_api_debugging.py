"""Debugging a deployment: failed runs' tracebacks (gated), their ERROR log line, /docs offline."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_apps import build
from api_support import serving, subprocess_server, wait_for
from nexus_core import Nexus

pytestmark = pytest.mark.anyio

RUNNER, DEBUGGER, ADMIN = "nxk_runner-key", "nxk_debugger-key", "nxk_admin-key"


def _key(principal: str, key: str, *roles: str) -> dict[str, Any]:
    return {
        "principal": principal,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "roles": list(roles),
    }


def secured() -> Nexus:
    """Authentication on: a runner (may run boom), a debugger (and runs:debug), an admin."""
    security = {
        "auth_enabled": True,
        "providers": ["api_key"],
        "roles": {
            "runner": ["workflow:boom:execute"],
            "debugger": ["workflow:boom:execute", "runs:read", "runs:debug"],
            "root": ["admin"],
        },
        "api_key": {
            "keys": [
                _key("runner", RUNNER, "runner"),
                _key("debugger", DEBUGGER, "debugger"),
                _key("admin", ADMIN, "root"),
            ]
        },
    }
    return build(services={"security": security})


# -- tracebacks over REST ------------------------------------------------------------------


async def test_get_run_returns_the_traceback_only_with_runs_debug() -> None:
    async with serving(secured()) as url, httpx.AsyncClient(base_url=url) as http:
        runner = {"X-API-Key": RUNNER}
        ran = await http.post("/workflows/boom/runs", json={"message": "kaput"}, headers=runner)
        assert ran.status_code == 200, ran.text
        run = ran.json()
        assert run["status"] == "failed"
        # The runner may read its own run, but not its traceback.
        assert run["error"] == {"type": "RuntimeError", "message": "kaput", "node": "boom"}
        own = await http.get(f"/runs/{run['run_id']}", headers=runner)
        assert own.status_code == 200
        assert own.json()["error"] == run["error"]
        for key in (DEBUGGER, ADMIN):
            seen = await http.get(f"/runs/{run['run_id']}", headers={"X-API-Key": key})
            assert seen.status_code == 200, seen.text
            error = seen.json()["error"]
            assert (error["type"], error["message"], error["node"]) == (
                "RuntimeError",
                "kaput",
                "boom",
            )
            tb = error["traceback"]
            assert tb.startswith("Traceback (most recent call last):")
            assert "raise RuntimeError(message)" in tb and "in boom" in tb
            assert tb.rstrip().endswith("RuntimeError: kaput")
        anonymous = await http.get(f"/runs/{run['run_id']}")
        assert anonymous.status_code == 401


async def test_development_with_auth_off_shows_the_traceback() -> None:
    async with serving(build()) as url, httpx.AsyncClient(base_url=url) as http:
        run = (await http.post("/workflows/boom/runs", json={})).json()
        assert "raise RuntimeError(message)" in run["error"]["traceback"]
        got = (await http.get(f"/runs/{run['run_id']}")).json()
        assert got["error"] == run["error"]


# -- the server's log ------------------------------------------------------------------------


def test_the_server_logs_every_failed_run_at_error_with_its_traceback(tmp_path: Path) -> None:
    with subprocess_server(tmp_path) as server:
        run = httpx.post(f"{server.url}/workflows/boom/runs", json={"message": "kaput"}).json()
        first = f"ERROR    nexus.runs: run {run['run_id']} of workflow 'boom' failed at node "
        first += "'boom': RuntimeError: kaput"
        wait_for(lambda: any(first in line for line in server.log) and _ends(server.log, first))
        log = list(server.log)
    at = next(i for i, line in enumerate(log) if first in line)
    assert log[at + 1].rstrip() == "Traceback (most recent call last):"
    assert any("raise RuntimeError(message)" in line for line in log[at + 1 :])


def _ends(log: list[str], first: str) -> bool:
    """The traceback after ``first`` is written whole (its last line names the error)."""
    at = next(i for i, line in enumerate(log) if first in line)
    return any(line.rstrip() == "RuntimeError: kaput" for line in log[at + 1 :])


# -- one log format -------------------------------------------------------------------------

_TEXT_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: \S")


def test_nexus_and_uvicorn_log_lines_share_one_text_format(tmp_path: Path) -> None:
    with subprocess_server(tmp_path) as server:
        run = httpx.post(f"{server.url}/workflows/boom/runs", json={}).json()
        wait_for(lambda: any(run["run_id"] in line for line in server.log))
        server.stop()
        log = [line.rstrip("\n") for line in server.log if line.strip()]
    loggers = set()
    in_traceback = False
    for line in log:
        match = _TEXT_LINE.match(line)
        if match:
            loggers.add(line.split()[1].rstrip(":"))
            in_traceback = "nexus.runs:" in line
            continue
        # Only a failed run's traceback may follow on lines of its own.
        assert in_traceback, f"a line in another format: {line!r}\n" + "\n".join(log)
    assert {"nexus.api", "nexus.runs", "uvicorn.error"} <= loggers, loggers


def test_one_format_with_mcp_on_its_own_port_too(tmp_path: Path) -> None:
    """MCP's HTTP server (a second uvicorn) must not bring uvicorn's own log format back."""
    pytest.importorskip("nexus_plugin_mcp", reason="the MCP channel needs nexus-plugin-mcp")
    port = _free_port()
    env = {"NEXUS_PLUGINS": "nexus-plugin-api,nexus-plugin-mcp"}
    env["NEXUS_CHANNELS__MCP__PORT"] = str(port)
    with subprocess_server(tmp_path, **env) as server:
        wait_for(lambda: any("mcp (http://" in line for line in server.log), timeout=30)
        server.stop()
        log = [line.rstrip("\n") for line in server.log if line.strip()]
    odd = [line for line in log if not _TEXT_LINE.match(line)]
    assert not odd, "lines in another format:\n" + "\n".join(log)
    assert any(line.startswith("INFO     uvicorn.error: ") for line in log), log


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    with subprocess_server(tmp_path, "--log-format", "json") as server:
        run = httpx.post(f"{server.url}/workflows/boom/runs", json={}).json()
        wait_for(lambda: any(run["run_id"] in line for line in server.log))
        server.stop()
        log = [line for line in server.log if line.strip()]
    records = [json.loads(line) for line in log]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert {"nexus.api", "uvicorn.error"} <= {r["logger"] for r in records}
    [failed] = [r for r in records if r["logger"] == "nexus.runs"]
    assert failed["level"] == "ERROR"
    assert (failed["run_id"], failed["workflow"], failed["node"]) == (run["run_id"], "boom", "boom")
    assert failed["message"] == (
        f"run {run['run_id']} of workflow 'boom' failed at node 'boom': RuntimeError: boom"
    )
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert "raise RuntimeError(message)" in failed["traceback"]


# -- every input error at once -----------------------------------------------------------------


async def test_every_bad_field_is_in_the_problem_at_once() -> None:
    async with serving(build()) as url, httpx.AsyncClient(base_url=url) as http:
        bad = await http.post(
            "/workflows/order/runs",
            json={"items": [{"sku": 1}], "ship_to": {"zip": 5}, "note": 3, "extra": True},
        )
    assert bad.status_code == 422, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    problem = bad.json()
    paths = [e["path"] for e in problem["errors"]]
    assert len(paths) == len(set(paths)) >= 4, problem
    assert {"note", "extra"} <= set(paths)
    assert any(p.startswith("items[0]") for p in paths), paths
    assert any(p.startswith("ship_to") for p in paths), paths
    for error in problem["errors"]:
        assert error["path"] in problem["detail"] and error["reason"]


# -- /docs, offline --------------------------------------------------------------------------

_REFERENCE = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")


async def test_docs_reference_only_local_assets_and_each_answers() -> None:
    async with serving(build()) as url, httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert "SwaggerUIBundle(" in html
        assert re.search(r"https?://", html) is None, html  # no CDN, no validator
        assets = _REFERENCE.findall(html)
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui.css", "swagger-ui-bundle.js"}
        for asset in assets:
            assert asset.startswith("/docs/assets/"), asset
            got = await http.get(asset)
            assert got.status_code == 200, asset
            assert len(got.content) > 500
        js = await http.get("/docs/assets/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in js.content
        css = await http.get("/docs/assets/swagger-ui.css")
        assert css.headers["content-type"].startswith("text/css")
        for missing in ("nope.js", "..%2F..%2Fpyproject.toml", "index.html"):
            assert (await http.get(f"/docs/assets/{missing}")).status_code == 404


async def test_docs_and_their_assets_need_credentials_when_auth_is_on() -> None:
    async with serving(secured()) as url, httpx.AsyncClient(base_url=url) as http:
        for path in ("/docs", "/docs/assets/swagger-ui-bundle.js"):
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"X-API-Key": RUNNER})).status_code == 200
