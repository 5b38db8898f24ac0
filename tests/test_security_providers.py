"""The built-in auth providers: the contract suite, and the API key and CLI token lifecycles."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from test_security import HS_SECRET, make_app, secured

from nexus_core import AuthenticationError, AuthProviderSpec, Nexus, hookimpl
from nexus_core.security import Credentials, Principal
from nexus_core.testing.auth import AuthProviderContract

pytestmark = pytest.mark.anyio

STATIC_KEY = "static-key-of-the-ci-robot"


# -- the contract suite on every built-in provider ------------------------------------------


class TestApiKeyProvider(AuthProviderContract):
    provider_name = "api_key"

    def security_config(self) -> dict[str, Any]:
        sha = hashlib.sha256(STATIC_KEY.encode()).hexdigest()
        return {"api_key": {"keys": [{"principal": "robot", "sha256": sha, "roles": ["contract"]}]}}

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        key, _ = await app.security.issue_api_key("alice", label="contract")
        return [
            (Credentials(api_key=key), "alice"),
            (Credentials(bearer=key), "alice"),
            (Credentials(api_key=STATIC_KEY), "robot"),
            (Credentials(bearer=STATIC_KEY), "robot"),
        ]

    async def invalid_credentials(self, app: Nexus) -> list[Credentials]:
        revoked, record = await app.security.issue_api_key("bob")
        await app.security.revoke(record.id)
        expired, _ = await app.security.issue_api_key("carol", ttl=1)
        app.security.clock = lambda: time.time() + 5
        return [
            Credentials(api_key="nxk_not-a-key-we-issued"),
            Credentials(bearer="nxk_not-a-key-we-issued"),
            Credentials(api_key="anything at all in X-API-Key"),
            Credentials(api_key=revoked),
            Credentials(bearer=expired),
        ]

    async def foreign_credentials(self, app: Nexus) -> list[Credentials]:
        cli = "nxc_" + "x" * 43
        return [
            Credentials(bearer="eyJ.a.b"),
            Credentials(bearer=cli),
            Credentials(client="1.2.3.4"),
        ]


class TestCliTokenProvider(AuthProviderContract):
    provider_name = "cli_token"

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        who = Principal(id="dev", tenant="acme", roles=("contract",))
        token, _ = await app.security.issue_cli_token(who, label="laptop")
        return [(Credentials(bearer=token), "dev")]

    async def invalid_credentials(self, app: Nexus) -> list[Credentials]:
        revoked, record = await app.security.issue_cli_token("dev")
        await app.security.revoke(record.id)
        return [Credentials(bearer="nxc_forged-token"), Credentials(bearer=revoked)]

    async def foreign_credentials(self, app: Nexus) -> list[Credentials]:
        return [Credentials(api_key="nxc_abc"), Credentials(bearer="nxk_abc"), Credentials()]


def _hs_token(**claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


class TestJwtProvider(AuthProviderContract):
    provider_name = "jwt"

    def security_config(self) -> dict[str, Any]:
        return {
            "jwt": {
                "keys": [{"algorithm": "HS256", "secret": HS_SECRET}],
                "issuer": "https://idp.example",
                "audience": ["nexus"],
            }
        }

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        good = _hs_token(sub="alice", iss="https://idp.example", aud="nexus", tenant="acme")
        return [(Credentials(bearer=good), "alice")]

    async def invalid_credentials(self, app: Nexus) -> list[Credentials]:
        ok = {"iss": "https://idp.example", "aud": "nexus"}
        return [
            Credentials(bearer=_hs_token(sub="a", exp=int(time.time()) - 3600, **ok)),
            Credentials(bearer=_hs_token(sub="a", iss="https://evil.example", aud="nexus")),
            Credentials(bearer=_hs_token(sub="a", iss="https://idp.example", aud="other")),
            Credentials(bearer=jwt.encode({"sub": "a", **ok}, "x" * 40, algorithm="HS256")),
            Credentials(bearer=_hs_token(**ok)),  # no sub
        ]

    async def foreign_credentials(self, app: Nexus) -> list[Credentials]:
        return [Credentials(bearer="nxk_abc"), Credentials(api_key="a.b.c"), Credentials()]


class TestAnonymousProvider(AuthProviderContract):
    provider_name = "anonymous"
    accepts_no_credentials = True

    def security_config(self) -> dict[str, Any]:
        return {"anonymous": {"roles": ["contract"]}}

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        return [(Credentials(), "anonymous"), (Credentials(client="198.51.100.1"), "anonymous")]

    async def foreign_credentials(self, app: Nexus) -> list[Credentials]:
        return [Credentials(bearer="x"), Credentials(api_key="y")]


class _HeaderProvider:
    """A plugin's provider: one fixed token per user, as a custom SSO would be."""

    name = "header"

    def __init__(self, app: Nexus, config: Any) -> None:
        self.users = {"tok-alice-123456": "alice"}

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        token = credentials.bearer
        if token is None or not token.startswith("tok-"):
            return None
        if token not in self.users:
            raise AuthenticationError("unknown header token")
        return Principal(id=self.users[token])


class _HeaderPlugin:
    @hookimpl
    def nexus_auth_providers(self) -> list[AuthProviderSpec]:
        return [AuthProviderSpec(name="header", factory=_HeaderProvider)]


class TestPluginProvider(AuthProviderContract):
    """A custom provider contributed through the hook runs the same suite."""

    provider_name = "header"

    def plugins(self) -> list[object]:
        return [_HeaderPlugin()]

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        return [(Credentials(bearer="tok-alice-123456"), "alice")]

    async def invalid_credentials(self, app: Nexus) -> list[Credentials]:
        return [Credentials(bearer="tok-mallory-999999")]


# -- API key lifecycle ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sec.db'}"


async def test_api_key_lifecycle_issue_use_rotate_revoke(storage_url: str) -> None:
    app = make_app(storage_url, security=secured())
    async with app:
        now = [time.time()]
        app.security.clock = lambda: now[0]
        key, record = await app.security.issue_api_key(
            "alice", roles=["operator"], tenant="acme", label="laptop", attributes={"team": "x"}
        )
        assert key.startswith("nxk_") and len(key) > 40
        assert record.token_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in repr(record)
        # both header forms work, and the principal carries what was issued
        for creds in (Credentials(api_key=key), Credentials(bearer=key)):
            who = await app.security.authenticate(creds, "api")
            assert (who.id, who.tenant, who.roles, who.provider) == (
                "alice",
                "acme",
                ("operator",),
                "api_key",
            )
            assert who.attributes == {"team": "x"}
            assert (await app.invoke("greet", {}, credentials=creds)).status == "completed"

        # a second key for the same principal (rotation by hand), both active
        second, second_record = await app.security.issue_api_key(
            "alice", roles=["operator"], tenant="acme"
        )
        active = await app.security.list_credentials(principal="alice")
        assert {r.id for r in active} == {record.id, second_record.id}

        # rotate with a grace period: old and new work until the grace ends
        new_key, new_record = await app.security.rotate_api_key(record.id, grace=60)
        assert new_record.roles == ["operator"] and new_record.tenant == "acme"
        for k in (key, new_key):
            await app.invoke("greet", {}, credentials=Credentials(api_key=k))
        now[0] += 61
        with pytest.raises(AuthenticationError, match="revoked"):
            await app.invoke("greet", {}, credentials=Credentials(api_key=key))
        await app.invoke("greet", {}, credentials=Credentials(api_key=new_key))

        # revoke: a 401 from then on
        assert await app.security.revoke(new_record.id) is True
        assert await app.security.revoke(new_record.id) is False
        with pytest.raises(AuthenticationError, match="revoked"):
            await app.invoke("greet", {}, credentials=Credentials(bearer=new_key))
        assert await app.security.revoke("api_key_unknown") is False
        assert await app.security.revoke(second, tenant="other") is False  # not an id anyway

        ids = {r.id for r in await app.security.list_credentials(principal="alice")}
        assert record.id not in ids and new_record.id not in ids
        everything = await app.security.list_credentials(include_inactive=True)
        assert {record.id, new_record.id} <= {r.id for r in everything}
        audit = await app.security.query_audit(principal="alice")
        assert [r.outcome for r in audit] == ["completed"] * 5  # 2 first, 2 in grace, 1 new
        failures = await app.security.query_audit(principal="anonymous")
        assert [r.outcome for r in failures] == ["unauthenticated", "unauthenticated"]


async def test_api_key_expiry_and_default_ttl() -> None:
    app = make_app(security=secured(api_key={"default_ttl": 30}))
    async with app:
        now = [1_000_000.0]
        app.security.clock = lambda: now[0]
        key, record = await app.security.issue_api_key("alice", roles=["operator"])
        assert record.expires_at == 1_000_030.0
        await app.invoke("greet", {}, credentials=Credentials(api_key=key))
        now[0] += 31
        with pytest.raises(AuthenticationError, match="expired"):
            await app.invoke("greet", {}, credentials=Credentials(api_key=key))
        assert await app.security.list_credentials() == []


async def test_revoke_is_tenant_scoped() -> None:
    app = make_app(security=secured())
    async with app:
        key, record = await app.security.issue_api_key("alice", roles=["operator"], tenant="a")
        assert await app.security.revoke(record.id, tenant="b") is False
        await app.invoke("greet", {}, credentials=Credentials(api_key=key))
        assert await app.security.revoke(record.id, tenant="a") is True


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    first = make_app(url, security=secured())
    async with first:
        key, _ = await first.security.issue_api_key("alice", roles=["operator"])
    second = make_app(url, security=secured())
    async with second:
        who = await second.security.authenticate(Credentials(api_key=key), "api")
        assert who.id == "alice"


async def test_cli_token_lifecycle() -> None:
    app = make_app(security=secured(providers=["api_key", "cli_token"]))
    async with app:
        key, _ = await app.security.issue_api_key("dev", roles=["operator"], tenant="acme")
        # `nexus login`: the user proves who they are, the CLI gets a token of its own
        who = await app.security.authenticate(Credentials(api_key=key), "cli")
        token, record = await app.security.issue_cli_token(who, label="laptop")
        assert token.startswith("nxc_")
        assert (record.kind, record.principal, record.tenant, record.roles) == (
            "cli_token",
            "dev",
            "acme",
            ["operator"],
        )
        assert record.expires_at is not None and record.expires_at > time.time() + 29 * 86400
        creds = Credentials(bearer=token)
        assert (
            await app.invoke("greet", {}, credentials=creds, channel="cli")
        ).status == "completed"
        # MCP bearer tokens are the same tokens
        assert (
            await app.invoke("greet", {}, credentials=creds, channel="mcp")
        ).status == "completed"
        listed = await app.security.list_credentials(principal="dev", kind="cli_token")
        assert [r.id for r in listed] == [record.id]
        assert await app.security.revoke(record.id)
        with pytest.raises(AuthenticationError, match="CLI token has been revoked"):
            await app.invoke("greet", {}, credentials=creds, channel="cli")
        with pytest.raises(ValueError, match="anonymous"):
            await app.security.issue_cli_token(Principal(id="anonymous", anonymous=True))


async def test_logout_revokes_by_the_token_itself() -> None:
    app = make_app(security=secured(providers=["api_key", "cli_token"]))
    async with app:
        issued = await app.security.issue_cli_token("dev", roles=["operator"])
        assert issued.token.startswith("nxc_") and issued.record.principal == "dev"
        key, _ = await app.security.issue_api_key("dev", roles=["operator"])
        assert await app.security.revoke_cli_token(key) is False  # not a CLI token
        assert await app.security.revoke_cli_token(issued.token) is True
        assert await app.security.revoke_cli_token(issued.token) is False
        with pytest.raises(AuthenticationError, match="revoked"):
            await app.security.authenticate(Credentials(bearer=issued.token), "cli")
        assert await app.security.revoke_token(key) is True  # any kind
        with pytest.raises(AuthenticationError, match="revoked"):
            await app.security.authenticate(Credentials(api_key=key), "cli")
        assert await app.security.revoke_token("nxk_never-issued") is False
