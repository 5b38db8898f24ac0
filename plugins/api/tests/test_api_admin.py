"""CLI tokens (``/auth/cli-tokens``), the configuration (``/config``) and tenant isolation of
event streams, against a real server with the core's own security layer (authentication on).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from api_apps import build, register
from api_support import serving
from httpx_sse import aconnect_sse
from nexus_core import ConfigSectionSpec, Nexus, hookimpl
from websockets.asyncio.client import connect

from nexus_plugin_api.admin import MASK, is_secret_key, mask, mask_text

pytestmark = pytest.mark.anyio

OPS, USER, ALICE, BOB = "nxk_ops-key", "nxk_user-key", "nxk_alice-key", "nxk_bob-key"
JWT_SECRET = "j" * 40


def _key(principal: str, key: str, *roles: str, tenant: str = "default") -> dict[str, Any]:
    return {
        "principal": principal,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "roles": list(roles),
        "tenant": tenant,
    }


class Vault(msgspec.Struct, kw_only=True):
    """A plugin's settings with secrets in them."""

    password: str = ""
    dsn: str = ""
    label: str = ""


class VaultPlugin:
    @hookimpl
    def nexus_config_sections(self) -> list[ConfigSectionSpec]:
        return [ConfigSectionSpec(name="plugins.vault", factory=Vault)]


def secure(*, cli_tokens: bool = True, **extra: Any) -> Nexus:
    """The test app with authentication on, API keys, and (by default) CLI tokens."""
    security: dict[str, Any] = {
        "auth_enabled": True,
        "providers": ["api_key", "cli_token"] if cli_tokens else ["api_key"],
        "roles": {
            "operator": ["admin"],
            "user": ["workflow:*:execute", "events:read", "runs:read", "tokens:issue"],
        },
        "api_key": {
            "keys": [
                _key("ops", OPS, "operator"),
                _key("user", USER, "user"),
                _key("alice", ALICE, "user", tenant="acme"),
                _key("bob", BOB, "user", tenant="globex"),
            ]
        },
        "jwt": {"keys": [{"algorithm": "HS256", "kid": "k1", "secret": JWT_SECRET}]},
    }
    if not extra:
        return build(services={"security": security})
    app = Nexus(
        "test-api",
        storage="memory://",
        autoload=False,
        plugins=["nexus_plugin_api.plugin", VaultPlugin()],
        config={
            "channels": {"api": {"host": "127.0.0.1", "port": 0}},
            "services": {"security": security},
            **extra,
        },
        env={},
    )
    register(app)
    return app


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


# -- CLI tokens ----------------------------------------------------------------------------


async def test_an_api_key_is_exchanged_for_a_cli_token_and_revoked() -> None:
    app = secure()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        missing = await http.post("/auth/cli-tokens")
        _problem(missing, 401, "unauthenticated")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        _problem(
            await http.post("/auth/cli-tokens", headers={"X-API-Key": "nxk_no"}),
            401,
            "unauthenticated",
        )

        before = time.time()
        issued = await http.post(
            "/auth/cli-tokens", json={"label": "laptop"}, headers={"X-API-Key": USER}
        )
        assert issued.status_code == 201, issued.text
        assert issued.headers["cache-control"] == "no-store"
        body = issued.json()
        assert set(body) == {"token", "id", "expires_at", "principal", "tenant"}
        assert body["token"].startswith("nxc_")
        assert body["principal"] == "user" and body["tenant"] == "default"
        assert body["expires_at"] > before + 29 * 86400  # cli_token.ttl: 30 days
        token = body["token"]
        bearer = {"Authorization": f"Bearer {token}"}

        # The token is the key's principal, with its roles: it may run workflows ...
        ran = await http.post("/workflows/greet/runs", json={"name": "Ada"}, headers=bearer)
        assert ran.status_code == 200 and ran.json()["output"] == "Hello, Ada."
        # ... and no more than the key could (no admin).
        _problem(await http.get("/config", headers=bearer), 403, "forbidden")
        # Exchanged for another, the new one derives from it: no longer-lived, revoked with it.
        child = await http.post("/auth/cli-tokens", json={"label": "child"}, headers=bearer)
        assert child.status_code == 201, child.text
        assert child.json()["expires_at"] <= body["expires_at"]
        child_bearer = {"Authorization": f"Bearer {child.json()['token']}"}
        records = await app.security.list_credentials(principal="user", kind="cli_token")
        assert [(r.id, r.label) for r in records] == [
            (body["id"], "laptop"),
            (child.json()["id"], "child"),
        ]

        # Bad bodies, once authenticated.
        bad = await http.post("/auth/cli-tokens", json={"label": 3}, headers={"X-API-Key": USER})
        assert _problem(bad, 422, "validation_error")["errors"][0]["path"] == "label"
        not_json = await http.post("/auth/cli-tokens", content=b"{", headers={"X-API-Key": USER})
        _problem(not_json, 400, "invalid_json")

        # Logging out with an API key revokes nothing: the key goes on working.
        kept = await http.delete("/auth/cli-tokens/current", headers={"X-API-Key": USER})
        assert kept.json() == {"revoked": False, "principal": "user"}
        assert (await http.get("/workflows", headers={"X-API-Key": USER})).status_code == 200

        gone = await http.delete("/auth/cli-tokens/current", headers=bearer)
        assert gone.status_code == 200 and gone.json() == {"revoked": True, "principal": "user"}
        _problem(await http.get("/workflows", headers=bearer), 401, "unauthenticated")
        orphan = _problem(
            await http.get("/workflows", headers=child_bearer), 401, "unauthenticated"
        )
        assert "revoked" in orphan["detail"]
        _problem(
            await http.delete("/auth/cli-tokens/current", headers=bearer), 401, "unauthenticated"
        )
        _problem(await http.delete("/auth/cli-tokens/current"), 401, "unauthenticated")

        actions = [r.action for r in await app.security.query_audit(principal="user")]
        assert "cli_token:issue" in actions and "cli_token:revoke" in actions


async def test_cli_tokens_need_the_provider_and_credentials() -> None:
    async with serving(secure(cli_tokens=False)) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/auth/cli-tokens", headers={"X-API-Key": USER})
        assert "cli_token" in _problem(refused, 403, "unsupported")["detail"]
    # With authentication off, an anonymous caller still gets no token.
    async with serving(build()) as url, httpx.AsyncClient(base_url=url) as http:
        _problem(await http.post("/auth/cli-tokens"), 401, "unauthenticated")
        _problem(await http.delete("/auth/cli-tokens/current"), 401, "unauthenticated")


# -- configuration --------------------------------------------------------------------------


def test_masking_rules() -> None:
    assert is_secret_key("secret") and is_secret_key("db_password") and is_secret_key("api_key")
    assert is_secret_key("token") and is_secret_key("KeyFile") and is_secret_key("sha256")
    assert not is_secret_key("keys") and not is_secret_key("prefix")
    assert mask_text("postgresql://app:pa55@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_text("redis://:pw@host/0") == "redis://:***@host/0"
    assert mask_text("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000/x"
    assert mask_text("sqlite:///tmp/nexus.db") == "sqlite:///tmp/nexus.db"
    assert mask_text("https://h/p?user=a&api_key=zz&x=1") == "https://h/p?user=a&api_key=***&x=1"
    table = {
        "api_key": {"prefix": "nxk_", "keys": [{"principal": "p", "sha256": "ab"}]},
        "jwt": {"keys": [{"kid": "k", "secret": "s", "secret_env": None}]},
        "tokens": ["a", "b"],
        "password": "",
    }
    assert mask(table) == {
        "api_key": {"prefix": "nxk_", "keys": [{"principal": "p", "sha256": MASK}]},
        "jwt": {"keys": [{"kid": "k", "secret": MASK, "secret_env": None}]},
        "tokens": MASK,
        "password": "",
    }


async def test_config_needs_admin_and_masks_secrets() -> None:
    vault = {"password": "hunter2", "dsn": "redis://:pw@cache:6379/0", "label": "v"}
    app = secure(plugins={"vault": vault})
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        _problem(await http.get("/config"), 401, "unauthenticated")
        _problem(await http.get("/config", headers={"X-API-Key": USER}), 403, "forbidden")
        _problem(await http.get("/config/check", headers={"X-API-Key": USER}), 403, "forbidden")
        denials = await app.security.query_audit(principal="user")
        assert [r.outcome for r in denials if r.action == "admin"] == ["forbidden", "forbidden"]

        shown = await http.get("/config", headers={"X-API-Key": OPS})
        assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
        body = shown.json()
        assert set(body) == {"config", "sources", "path"}
        assert body["path"] is None
        text = shown.text
        for secret in ("hunter2", JWT_SECRET, ":pw@", hashlib.sha256(OPS.encode()).hexdigest()):
            assert secret not in text, secret
        nexus = body["config"]["nexus"]
        security = nexus["services"]["security"]
        assert security["jwt"]["keys"][0]["secret"] == MASK
        assert security["api_key"]["keys"][0]["sha256"] == MASK
        assert security["api_key"]["keys"][0]["principal"] == "ops"
        assert security["api_key"]["prefix"] == "nxk_"
        assert security["cli_token"]["ttl"] == 30 * 86400.0
        assert nexus["plugins"]["vault"] == {
            "password": MASK,
            "dsn": "redis://:***@cache:6379/0",
            "label": "v",
        }
        assert body["sources"]["nexus.services.security.auth_enabled"] == "code"
        assert body["sources"]["nexus.services.security.timezone"] == "default"
        assert body["sources"].keys() == app.config.sources().keys()

        check = await http.get("/config/check", headers={"X-API-Key": OPS})
        assert check.json() == {
            "ok": True,
            "errors": [],
            "file": None,
            "environment": "development",
            # The configuration's default, resolved (not the storage the host was given).
            "storage": app.config.storage_url,
        }


async def test_config_check_rereads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "nexus.toml"
    config.write_text(
        '[nexus]\nstorage = "memory://"\n[nexus.channels.api]\nhost = "127.0.0.1"\nport = 0\n',
        encoding="utf-8",
    )
    app = Nexus(
        "from-file", config=config, autoload=False, plugins=["nexus_plugin_api.plugin"], env={}
    )
    register(app)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        shown = (await http.get("/config")).json()  # authentication off: open
        assert shown["path"] == str(config)
        assert shown["sources"]["nexus.storage"] == str(config)
        ok = (await http.get("/config/check")).json()
        assert ok["ok"] is True and ok["file"] == str(config)

        config.write_text(config.read_text() + "[nexus.services.security]\nstratgy = 'rbac'\n")
        typo = await http.get("/config/check")
        assert typo.status_code == 200
        report = typo.json()
        assert report["ok"] is False
        (issue,) = report["errors"]
        assert "stratgy" in issue["message"] and issue["suggestion"] == "strategy"
        assert issue["key"] == "nexus.services.security.stratgy"
        assert issue["source"] == str(config)

        config.write_text('[nexus]\nenvironment = "production"\nstorage = "memory://"\n')
        production = (await http.get("/config/check")).json()
        assert production["ok"] is False
        assert "production" in production["errors"][0]["message"]

        config.unlink()
        missing = (await http.get("/config/check")).json()
        assert missing["ok"] is False and "not found" in missing["errors"][0]["message"]


# -- tenant isolation of event streams ----------------------------------------------------


async def test_sse_and_websocket_subscribers_see_only_their_tenant() -> None:
    app = secure()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        alice = {"X-API-Key": ALICE}
        bob = {"X-API-Key": BOB}
        ws_url = url.replace("http://", "ws://") + "/ws"
        async with (
            aconnect_sse(http, "GET", "/events", params={"types": "*"}, headers=alice) as source,
            connect(ws_url, additional_headers=alice) as ws,
        ):
            await ws.send(json.dumps({"type": "subscribe", "id": "all", "types": ["*"]}))
            assert json.loads(await ws.recv())["subscription"] == "all"
            events = source.aiter_sse()
            with anyio.fail_after(10):
                assert (await events.__anext__()).retry == 3000  # subscribed

            theirs = await http.post("/workflows/greet/runs", json={"name": "B"}, headers=bob)
            assert theirs.status_code == 200
            bob_run = theirs.json()["run_id"]
            ours = await http.post("/workflows/greet/runs", json={"name": "A"}, headers=alice)
            alice_run = ours.json()["run_id"]

            seen: list[dict[str, Any]] = []
            with anyio.fail_after(10):
                async for sse in events:
                    seen.append(json.loads(sse.data))
                    if sse.event == "run.completed" and seen[-1]["run_id"] == alice_run:
                        break
            over_ws: list[dict[str, Any]] = []
            with anyio.fail_after(10):
                while True:
                    message = json.loads(await ws.recv())
                    over_ws.append(message["event"])
                    event = message["event"]
                    if event["type"] == "run.completed" and event["run_id"] == alice_run:
                        break
        for stream in (seen, over_ws):
            runs = {event.get("run_id") for event in stream} - {None}
            assert runs == {alice_run}, stream
            assert bob_run not in json.dumps(stream)

        # Nor can alice follow bob's run by its id.
        _problem(await http.get(f"/runs/{bob_run}/events", headers=alice), 404, "run_not_found")
        _problem(await http.get(f"/runs/{bob_run}", headers=alice), 404, "run_not_found")
