"""One identity: a token from ``nexus login`` is the same principal on every channel.

Authentication is on (``environment = "staging"``): API keys (alice's is written
in the configuration, by its SHA-256) and CLI tokens, with RBAC. A ``shopper``
may run the shop's workflows but ``order`` (which takes a ``buyer``), and read
events. Alice logs in with ``nexus login``, which exchanges her API key at the
gateway for a CLI token. That token is then used on REST, the WebSocket, SSE,
MCP over HTTP and over stdio, the CLI in process and against the gateway, and
in Python: each time it is alice, each time ``quote`` runs and ``order`` is
refused in the channel's own form, and the audit log (one SQLite file shared
by every process) shows alice and nobody else on every channel. A token from
``nexus login`` in process (kept in the user's folder) is picked up by the MCP
stdio server and the CLI without being passed, and is alice too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cross_support import EXAMPLES, require_plugins

require_plugins()

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import httpx  # noqa: E402

from nexus_core import Nexus  # noqa: E402
from nexus_core.errors import AuthenticationError, PermissionDenied  # noqa: E402
from nexus_core.security import Credentials  # noqa: E402

from .cross_support import (  # noqa: E402
    Gateway,
    base_env,
    gateway,
    load_example,
    mcp_http,
    mcp_stdio,
    nexus,
    receive,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

SHOP = EXAMPLES / "shop.py"
ALICE_KEY = "shop-alice-" + "k" * 24
QUOTE = {"items": [{"sku": "MUG-001", "quantity": 2}]}
ORDER = {"catalog_url": "http://127.0.0.1:9/prices", "items": [{"sku": "MUG-001"}], "country": "DE"}
DENIED = "'alice' lacks the permission 'workflow:order:execute'"
SHOPPER = [
    "workflow:quote:execute",
    "workflow:search:execute",
    "workflow:shipping:execute",
    "workflow:add_to_cart:execute",
    "workflow:view_cart:execute",
    "events:read",
    "tokens:issue",  # nexus login exchanges her key for a CLI token
]
CONFIG = f"""
[nexus]
environment = "staging"

[nexus.services.security]
providers = ["api_key", "cli_token"]
strategy = "rbac"
default_roles = ["shopper"]

[nexus.services.security.roles]
shopper = {json.dumps(SHOPPER)}
buyer = ["workflow:order:execute"]

[[nexus.services.security.api_key.keys]]
principal = "alice"
sha256 = "{hashlib.sha256(ALICE_KEY.encode()).hexdigest()}"
roles = ["shopper"]
label = "alice's key"
"""


@pytest.fixture(scope="module")
def secured(workdir: Path) -> Path:
    """``nexus.toml`` with authentication on, in the folder every process runs in."""
    (workdir / "nexus.toml").write_text(CONFIG, encoding="utf-8")
    return workdir


@pytest.fixture(scope="module")
def served(secured: Path, env: dict[str, str]) -> Iterator[Gateway]:
    with gateway(SHOP, secured, env) as running:
        yield running


@pytest.fixture(scope="module")
async def host(secured: Path, db_url: str) -> AsyncIterator[Nexus]:
    """The shop in this process: same settings, same storage."""
    app = load_example(SHOP, storage=db_url, cwd=secured)
    async with app:
        yield app


async def run_nexus(*args: str, env: dict[str, str], cwd: Path) -> Any:
    return await anyio.to_thread.run_sync(lambda: nexus(*args, env=env, cwd=cwd))


@pytest.fixture(scope="module")
async def token(served: Gateway, secured: Path, env: dict[str, str]) -> str:
    """``nexus login --api-key``: alice's key exchanged at the gateway for a CLI token."""
    done = await run_nexus(
        "--url", served.url, "-o", "json", "login", "--api-key", ALICE_KEY, env=env, cwd=secured
    )
    assert done.code == 0, str(done)
    login = done.json()
    assert (login["logged_in"], login["principal"]) == (True, "alice")
    saved = (await anyio.Path(login["file"]).read_text(encoding="utf-8")).strip()
    assert saved.startswith("nxc_"), "a CLI token of its own, not the API key"
    return saved


async def test_the_login_token_is_alice_everywhere_and_order_is_refused_everywhere(
    served: Gateway, host: Nexus, token: str, secured: Path, env: dict[str, str]
) -> None:
    from mcp.shared.exceptions import MCPError
    from websockets.asyncio.client import connect

    bearer = {"Authorization": f"Bearer {token}"}
    denials: dict[str, str] = {}
    began = time.time()

    # Python, in process: the token is the caller's credentials.
    credentials = Credentials(bearer=token)
    ok = await host.invoke("quote", QUOTE, credentials=credentials)
    assert ok.status == "completed"
    with pytest.raises(PermissionDenied) as refused:
        await host.invoke("order", ORDER, credentials=credentials)
    denials["python"] = refused.value.message

    async with httpx.AsyncClient(base_url=served.url, headers=bearer, timeout=60) as http:
        # SSE: the same token subscribes; the stream is alice's tenant's events.
        async with http.stream("GET", "/events", params={"types": "run.*"}) as events:
            assert events.status_code == 200
            lines = events.aiter_lines()
            assert await anext(lines) == "retry: 3000"

            # REST: 200 for quote, 403 problem+json for order.
            rest = await http.post("/workflows/quote/runs", json=QUOTE)
            assert rest.status_code == 200 and rest.json()["status"] == "completed", rest.text
            refused_rest = await http.post("/workflows/order/runs", json=ORDER)
            assert refused_rest.status_code == 403
            assert refused_rest.headers["content-type"].startswith("application/problem+json")
            assert refused_rest.json()["code"] == "forbidden"
            denials["rest"] = refused_rest.json()["detail"]

            # Live events of every process sharing the store (this test's own host
            # too, whose runs may be logged just before the stream began): wait
            # for the REST run's end.
            seen = []
            with anyio.fail_after(20):
                async for line in lines:
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["run_id"] == rest.json()["run_id"] and seen[-1]["type"] in (
                            "run.completed",
                            "run.failed",
                        ):
                            break
            assert seen[-1]["type"] == "run.completed"

        listed = (await http.get("/workflows")).json()["items"]
        assert "order" not in {item["name"] for item in listed}  # hidden from alice
        assert "quote" in {item["name"] for item in listed}

    # WebSocket: authenticated once, at connect, with the same header.
    async with connect(
        served.url.replace("http://", "ws://") + "/ws", additional_headers=bearer
    ) as ws:
        await ws.send(json.dumps({"type": "run", "id": "q", "workflow": "quote", "inputs": QUOTE}))
        answer = await receive(ws)
        assert answer["type"] == "result" and answer["run"]["status"] == "completed", answer
        await ws.send(json.dumps({"type": "run", "id": "o", "workflow": "order", "inputs": ORDER}))
        answer = await receive(ws)
        assert answer["type"] == "error" and answer["error"]["status"] == 403, answer
        denials["websocket"] = answer["error"]["detail"]

    # MCP over HTTP (bearer) and over stdio (NEXUS_TOKEN): order is hidden, and refused.
    async def mcp_checks(client: Any, name: str) -> None:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert "order" not in tools and "quote" in tools, (name, tools)
        quoted = await client.call_tool("quote", QUOTE)
        assert not quoted.is_error, quoted
        refused = await client.call_tool("order", ORDER)
        assert refused.is_error
        error = refused.meta["nexus/error"]
        assert error["code"] == "forbidden", error
        denials[name] = error["message"]

    async with mcp_http(served.url + "/mcp", token=token) as client:
        await mcp_checks(client, "mcp http")
    async with mcp_stdio(SHOP, secured, {**env, "NEXUS_TOKEN": token}) as client:
        await mcp_checks(client, "mcp stdio")
    # Without a token (and no login kept in the user folder) stdio refuses every request.
    empty_home = base_env(secured / "nobody", NEXUS_STORAGE=env["NEXUS_STORAGE"])
    async with mcp_stdio(SHOP, secured, empty_home) as client:
        with pytest.raises(MCPError, match="authentication failed") as caught:
            await client.list_tools()
        assert caught.value.error.code == -32010

    # The CLI: against the gateway the login is kept and sent; in process it is passed.
    remote = ["--url", served.url]
    local = ["--app", str(SHOP), "--token", token]
    for name, target in (("cli --url", remote), ("cli --app", local)):
        good = await run_nexus(
            *target, "-o", "json", "run", "quote", "--json", json.dumps(QUOTE), env=env, cwd=secured
        )
        assert good.code == 0 and good.json()["status"] == "completed", str(good)
        # `nexus batch` invokes without looking the workflow up first.
        (secured / "order.jsonl").write_text(json.dumps({"workflow": "order", "inputs": ORDER}))
        bad = await run_nexus(*target, "-o", "json", "batch", "order.jsonl", env=env, cwd=secured)
        assert bad.code == 1, str(bad)
        (line,) = bad.records()
        assert (line["status"], line["error"]["code"]) == ("invalid", "forbidden"), str(bad)
        denials[name] = line["error"]["message"]
    bad = await run_nexus(
        *local, "-o", "json", "run", "order", "--json", json.dumps(ORDER), env=env, cwd=secured
    )
    denials["cli --app run"] = _cli_denial(bad)

    # Every channel refused the same principal the same workflow for the same reason.
    assert denials == dict.fromkeys(denials, DENIED), denials

    # And the audit log, written by six processes into one store, knows only alice.
    records = await host.security.query_audit(since=began, limit=1000)
    invocations = [r for r in records if r.action == "invoke"]
    assert {(r.principal, r.tenant) for r in invocations} == {("alice", "default")}, invocations
    by_channel: dict[str, set[tuple[str | None, str]]] = {}
    for record in invocations:
        by_channel.setdefault(record.channel, set()).add((record.workflow, record.outcome))
    # REST, the WebSocket and `nexus --url` are the api channel; `nexus --app` is cli.
    expected = {("quote", "completed"), ("order", "forbidden")}
    assert by_channel == dict.fromkeys(("python", "api", "mcp", "cli"), expected), by_channel


def _cli_denial(done: Any) -> str:
    """The CLI's refusal: exit code 1, the error object on stdout, the message on stderr."""
    assert done.code == 1, str(done)
    error = done.json()["error"]
    assert error["code"] == "forbidden", str(done)
    assert f"error: {error['message']}" in done.stderr
    return str(error["message"])


async def test_nexus_run_against_the_gateway_reports_a_refused_workflow_as_forbidden(
    served: Gateway, token: str, secured: Path, env: dict[str, str]
) -> None:
    bad = await run_nexus(
        "--url",
        served.url,
        "-o",
        "json",
        "run",
        "order",
        "--items",
        json.dumps(ORDER["items"]),
        "--country",
        "DE",
        "--catalog-url",
        ORDER["catalog_url"],
        env=env,
        cwd=secured,
    )
    assert _cli_denial(bad) == DENIED


async def test_a_login_kept_in_process_is_picked_up_by_mcp_stdio_and_the_cli(
    served: Gateway, host: Nexus, secured: Path, env: dict[str, str]
) -> None:
    home = base_env(secured / "local-login", NEXUS_STORAGE=env["NEXUS_STORAGE"])
    login = await run_nexus(
        "--app", str(SHOP), "login", "--principal", "alice", env=home, cwd=secured
    )
    assert login.code == 0, str(login)
    assert "authenticated as alice" in login.stderr
    # No token is passed from here on: both read the one kept by `nexus login`.
    async with mcp_stdio(SHOP, secured, home) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert "quote" in tools and "order" not in tools
        refused = await client.call_tool("order", ORDER)
        assert refused.meta["nexus/error"]["message"] == DENIED
    quoted = await run_nexus(
        "--app",
        str(SHOP),
        "-o",
        "json",
        "run",
        "quote",
        "--json",
        json.dumps(QUOTE),
        env=home,
        cwd=secured,
    )
    assert quoted.code == 0, str(quoted)
    records = await host.security.query_audit(principal="alice", since=time.time() - 60)
    run = quoted.json()["run_id"]
    assert [(r.channel, r.outcome) for r in records if r.run_id == run] == [("cli", "completed")]


async def test_no_credentials_are_refused_alike(
    served: Gateway, host: Nexus, secured: Path, env: dict[str, str]
) -> None:
    with pytest.raises(AuthenticationError):
        await host.invoke("quote", QUOTE)
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        rest = await http.post("/workflows/quote/runs", json=QUOTE)
        assert rest.status_code == 401 and rest.json()["code"] == "unauthenticated"
        assert rest.headers["www-authenticate"].startswith("Bearer")
        mcp = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert mcp.status_code == 401 and "resource_metadata" in mcp.headers["www-authenticate"]
    nobody = base_env(secured / "nobody", NEXUS_STORAGE=env["NEXUS_STORAGE"])
    done = await run_nexus(
        "--url",
        served.url,
        "-o",
        "json",
        "run",
        "quote",
        "--json",
        json.dumps(QUOTE),
        env=nobody,
        cwd=secured,
    )
    assert done.code == 1 and done.json()["error"]["code"] == "unauthenticated", str(done)
