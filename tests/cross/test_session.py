"""One session: made over REST, continued from MCP, the CLI, the WebSocket and Python.

The shop's cart lives in ``session.state``. A session is created with ``POST
/sessions``; each channel then adds to or reads the cart, naming the session
its own way (``X-Nexus-Session``, ``_meta["nexus/sessionId"]``, ``nexus
session use`` / ``--session``, the WebSocket message's ``session``,
``session=`` in Python). Every run must see what the run before it wrote, on
whatever channel, and ``GET /sessions/{id}`` must list every channel that used
the session. The gateway, the MCP stdio server, each ``nexus`` process and this
test's own host are separate processes sharing one SQLite file, as the
development tier runs them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cross_support import EXAMPLES, require_plugins

require_plugins()

import anyio.to_thread  # noqa: E402
import httpx  # noqa: E402

from nexus_core import Nexus  # noqa: E402
from nexus_core.errors import SessionNotFound  # noqa: E402

from .cross_support import (  # noqa: E402
    Gateway,
    gateway,
    load_example,
    mcp_http,
    mcp_stdio,
    nexus,
    receive,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

SHOP = EXAMPLES / "shop.py"


@pytest.fixture(scope="module")
def served(workdir: Path, env: dict[str, str]) -> Iterator[Gateway]:
    with gateway(SHOP, workdir, env) as running:
        yield running


@pytest.fixture(scope="module")
async def host(db_url: str) -> AsyncIterator[Nexus]:
    """The shop in this process, on the gateway's storage (the embedded tier's view)."""
    app = load_example(SHOP, storage=db_url)
    async with app:
        yield app


def cart(*lines: tuple[str, int]) -> dict[str, Any]:
    """The cart view the shop answers with."""
    return {
        "lines": [{"sku": sku, "quantity": n} for sku, n in sorted(lines)],
        "count": sum(n for _, n in lines),
    }


async def run_nexus(*args: str, env: dict[str, str], cwd: Path) -> Any:
    done = await anyio.to_thread.run_sync(lambda: nexus(*args, env=env, cwd=cwd))
    assert done.code == 0, str(done)
    return done


async def test_a_session_made_over_rest_continues_on_every_channel(
    served: Gateway, host: Nexus, workdir: Path, env: dict[str, str]
) -> None:
    from websockets.asyncio.client import connect

    app_ref = str(SHOP)
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        # REST: create the session, then write to it.
        created = await http.post("/sessions")
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        assert created.headers["X-Nexus-Session"] == sid
        assert created.json()["channels"] == ["api"]
        http.cookies.clear()  # the session is named explicitly below, never by cookie
        headers = {"X-Nexus-Session": sid}
        rest = await http.post(
            "/workflows/add_to_cart/runs", json={"sku": "MUG-001", "quantity": 2}, headers=headers
        )
        assert rest.status_code == 200, rest.text
        assert rest.json()["session_id"] == sid
        assert rest.json()["output"] == cart(("MUG-001", 2))

        # MCP over stdio (another process): reads what REST wrote, adds to it.
        meta = {"nexus/sessionId": sid}
        async with mcp_stdio(SHOP, workdir, env) as stdio:
            seen = await stdio.call_tool("view_cart", {}, meta=meta)
            assert seen.structured_content == cart(("MUG-001", 2)), seen
            added = await stdio.call_tool("add_to_cart", {"sku": "PEN-100"}, meta=meta)
            assert added.structured_content == cart(("MUG-001", 2), ("PEN-100", 1))
            assert added.meta["nexus/sessionId"] == sid

        # The CLI in process: `nexus session use` makes it current, `nexus run` joins it.
        local = ["--app", app_ref]
        used = await run_nexus(*local, "-o", "json", "session", "use", sid, env=env, cwd=workdir)
        assert used.json()["id"] == sid
        assert used.json()["state"]["cart"] == {"MUG-001": 2, "PEN-100": 1}
        ran = await run_nexus(
            *local, "-o", "json", "run", "add_to_cart", "--sku", "LMP-220", env=env, cwd=workdir
        )
        three = cart(("MUG-001", 2), ("PEN-100", 1), ("LMP-220", 1))
        assert ran.json()["session_id"] == sid
        assert ran.json()["output"] == three

        # MCP over the gateway's HTTP endpoint, the WebSocket, and the CLI against the gateway.
        async with mcp_http(served.url + "/mcp") as mcp:
            over_http = await mcp.call_tool("view_cart", {}, meta=meta)
            assert over_http.structured_content == three
        ws_url = served.url.replace("http://", "ws://") + "/ws"
        async with connect(ws_url) as ws:
            message = {"type": "run", "id": "v", "workflow": "view_cart", "session": sid}
            await ws.send(json.dumps(message))
            answer = await receive(ws)
            assert answer["type"] == "result", answer
            assert answer["run"]["output"] == three
        remote = await run_nexus(
            "--url",
            served.url,
            "-o",
            "json",
            "run",
            "view_cart",
            "--session",
            sid,
            env=env,
            cwd=workdir,
        )
        assert remote.json()["output"] == three

        # Python, on the same storage: the embedded tier sees it too, and writes last.
        last = await host.invoke("add_to_cart", {"sku": "MUG-001"}, session=sid)
        assert last.output == cart(("MUG-001", 3), ("PEN-100", 1), ("LMP-220", 1))

        # The session remembers every channel that used it, in first-use order.
        session = await http.get(f"/sessions/{sid}")
        assert session.status_code == 200, session.text
        body = session.json()
        assert body["state"]["cart"] == {"MUG-001": 3, "PEN-100": 1, "LMP-220": 1}
        # REST, WebSocket and `nexus --url` are all the API channel; `nexus --app` is "cli".
        assert body["channels"] == ["api", "mcp", "cli", "python"]

        # The runs of the session, whichever channel started them.
        runs = (await http.get("/runs", params={"session_id": sid, "limit": 50})).json()["items"]
        assert sorted(r["channel"] for r in runs) == sorted(
            ["api", "mcp", "mcp", "cli", "mcp", "api", "api", "python"]
        )


async def test_an_unknown_session_is_refused_alike_everywhere(
    served: Gateway, host: Nexus, workdir: Path, env: dict[str, str]
) -> None:
    gone = "no-such-session-token"
    with pytest.raises(SessionNotFound) as raised:
        await host.invoke("view_cart", {}, session=gone)
    message = raised.value.message
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        rest = await http.post("/workflows/view_cart/runs", headers={"X-Nexus-Session": gone})
        assert rest.status_code == 404
        assert (rest.json()["code"], rest.json()["detail"]) == ("session_not_found", message)
    async with mcp_http(served.url + "/mcp") as mcp:
        tool = await mcp.call_tool("view_cart", {}, meta={"nexus/sessionId": gone})
        assert tool.is_error
        assert tool.meta["nexus/error"] == {"code": "session_not_found", "message": message}
    for target in (["--app", str(SHOP)], ["--url", served.url]):
        done = await anyio.to_thread.run_sync(
            lambda target=target: nexus(
                *target, "-o", "json", "run", "view_cart", "--session", gone, env=env, cwd=workdir
            )
        )
        assert done.code == 1, str(done)
        assert done.json()["error"]["code"] == "session_not_found", str(done)
        assert done.json()["error"]["message"] == message
