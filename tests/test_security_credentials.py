"""Derived credentials: a CLI token issued from a credential lives no longer and dies with it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from test_security import HS_SECRET, make_app, secured

from nexus_core import AuthenticationError, Nexus, PermissionDenied
from nexus_core.security import Credentials

pytestmark = pytest.mark.anyio

STATIC_KEY = "static-deploy-key-" + "z" * 20
ROLES = {
    "operator": ["workflow:*:execute", "runs:read", "tokens:issue"],
    "runner": ["workflow:*:execute"],  # may run, may not mint tokens
}


def app_with(storage: str = "memory://", *, static: bool = True, **extra: Any) -> Nexus:
    keys = (
        [
            {
                "principal": "deployer",
                "sha256": hashlib.sha256(STATIC_KEY.encode()).hexdigest(),
                "roles": ["operator"],
            }
        ]
        if static
        else []
    )
    return make_app(
        storage,
        security=secured(
            **{
                "providers": ["jwt", "api_key", "cli_token"],
                "roles": ROLES,
                "jwt": {"keys": [{"algorithm": "HS256", "secret": HS_SECRET}], "leeway": 0},
                "api_key": {"keys": keys},
                **extra,
            }
        ),
    )


def a_jwt(ttl: float, **claims: Any) -> tuple[str, int]:
    exp = int(time.time() + ttl)
    token = jwt.encode(
        {"sub": "ann", "roles": ["operator"], "exp": exp, **claims}, HS_SECRET, algorithm="HS256"
    )
    return token, exp


async def works(app: Nexus, token: str) -> bool:
    try:
        await app.security.authenticate(Credentials(bearer=token), "cli")
    except AuthenticationError:
        return False
    return True


async def test_a_token_from_a_short_lived_jwt_expires_with_it() -> None:
    app = app_with()
    async with app:
        bearer, exp = a_jwt(3)
        token, record = await app.security.exchange_cli_token(
            Credentials(bearer=bearer, client="10.1.1.1"), "api", label="laptop"
        )
        assert record.expires_at == exp  # not 30 days
        assert record.parent is None  # a JWT cannot be revoked: its expiry is the bound
        assert await works(app, token)
        app.security.clock = lambda: exp + 0.001
        with pytest.raises(AuthenticationError, match="CLI token has expired"):
            await app.security.authenticate(Credentials(bearer=token), "cli")


async def test_an_api_key_revoked_later_kills_the_cli_token_at_once() -> None:
    app = app_with()
    async with app:
        key, key_record = await app.security.issue_api_key("bob", roles=["operator"])
        token, record = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        assert record.parent == key_record.id
        assert await works(app, token)
        assert await app.security.revoke(key_record.id)  # revokes what derives from it too
        with pytest.raises(AuthenticationError, match="revoked"):
            await app.security.authenticate(Credentials(bearer=token), "cli")
        assert await app.security.list_credentials(kind="cli_token") == []
        # Revoked straight in storage (another tool, another instance): the lineage says so.
        key, key_record = await app.security.issue_api_key("bob", roles=["operator"])
        token, _ = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        assert app.storage is not None
        await app.storage.revoke_credential(key_record.id, at=time.time())
        with pytest.raises(AuthenticationError, match="issued from a credential that has been"):
            await app.security.authenticate(Credentials(bearer=token), "cli")


async def test_expiry_is_bounded_by_the_key_and_ttl_only_shortens() -> None:
    app = app_with()
    async with app:
        key, key_record = await app.security.issue_api_key("bob", roles=["operator"], ttl=120)
        _, record = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        assert record.expires_at == key_record.expires_at
        _, short = await app.security.exchange_cli_token(Credentials(api_key=key), "api", ttl=5)
        assert short.expires_at is not None and short.expires_at <= time.time() + 5
        forever, _ = await app.security.issue_api_key("carl", roles=["operator"])
        _, long = await app.security.exchange_cli_token(
            Credentials(api_key=forever), "api", ttl=10**9
        )
        assert long.expires_at is not None and long.expires_at <= time.time() + 30 * 86400


async def test_a_chain_of_cli_tokens_dies_with_its_root() -> None:
    app = app_with()
    async with app:
        key, key_record = await app.security.issue_api_key("bob", roles=["operator"], ttl=600)
        first, one = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        second, two = await app.security.exchange_cli_token(Credentials(bearer=first), "api")
        third, three = await app.security.exchange_cli_token(Credentials(bearer=second), "api")
        assert (one.parent, two.parent, three.parent) == (key_record.id, one.id, two.id)
        assert three.expires_at is not None and three.expires_at <= key_record.expires_at  # type: ignore[operator]
        assert all([await works(app, t) for t in (first, second, third)])
        await app.security.revoke(key_record.id)
        assert [await works(app, t) for t in (first, second, third)] == [False] * 3


async def test_a_rotated_key_takes_its_tokens_along_after_the_grace() -> None:
    app = app_with()
    async with app:
        key, key_record = await app.security.issue_api_key("bob", roles=["operator"])
        token, _ = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        start = app.security.clock()
        await app.security.rotate_api_key(key_record.id, grace=60)
        assert await works(app, token)  # the grace holds for it too
        app.security.clock = lambda: start + 61
        assert not await works(app, token)


async def test_a_configured_key_removed_from_the_configuration_kills_its_tokens(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    async with app_with(url) as app:
        token, record = await app.security.exchange_cli_token(
            Credentials(api_key=STATIC_KEY), "api"
        )
        assert record.parent is not None and STATIC_KEY not in record.parent
        assert hashlib.sha256(STATIC_KEY.encode()).hexdigest() not in record.parent
        assert await works(app, token)
    async with app_with(url, static=False) as later:  # the key was taken out of nexus.toml
        with pytest.raises(AuthenticationError, match="no longer configured"):
            await later.security.authenticate(Credentials(bearer=token), "cli")


async def test_issuing_needs_tokens_issue_and_a_denial_is_audited() -> None:
    app = app_with()
    async with app:
        key, _ = await app.security.issue_api_key("robot", roles=["runner"])
        with pytest.raises(PermissionDenied, match="'tokens:issue'"):
            await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        [denied] = await app.security.query_audit(principal="robot")
        assert (denied.action, denied.outcome, denied.channel) == (
            "tokens:issue",
            "forbidden",
            "api",
        )
        assert await app.security.list_credentials(kind="cli_token") == []
        with pytest.raises(AuthenticationError):
            await app.security.exchange_cli_token(None, "api")
        with pytest.raises(AuthenticationError):
            await app.security.exchange_cli_token(Credentials(api_key="nxk_wrong"), "api")
        issued = await app.security.query_audit(principal="ann")
        assert issued == []


async def test_issuance_is_audited_and_development_lets_anyone_with_credentials_issue() -> None:
    app = make_app(
        security={
            "providers": ["api_key", "cli_token"],
            "roles": {"runner": ["workflow:*:execute"]},
        }
    )
    async with app:  # development: access control is not enforced
        key, _ = await app.security.issue_api_key("dev", roles=["runner"])
        _, record = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        assert record.principal == "dev"
        [issued] = await app.security.query_audit(principal="dev")
        assert (issued.action, issued.outcome) == ("cli_token:issue", "ok")
        with pytest.raises(AuthenticationError, match="whoever the credentials prove"):
            await app.security.exchange_cli_token(None, "api")


async def test_a_jwt_already_past_its_exp_within_the_leeway_gets_no_token() -> None:
    app = app_with(jwt={"keys": [{"algorithm": "HS256", "secret": HS_SECRET}], "leeway": 60})
    async with app:
        bearer, _ = a_jwt(-5)  # expired, but within the leeway: it authenticates
        assert await works(app, bearer)
        with pytest.raises(AuthenticationError, match="has expired"):
            await app.security.exchange_cli_token(Credentials(bearer=bearer), "api")


async def test_in_process_issuance_to_a_principal_keeps_its_expiry() -> None:
    app = app_with()
    async with app:
        bearer, exp = a_jwt(30)
        who = await app.security.authenticate(Credentials(bearer=bearer), "cli")
        _, record = await app.security.issue_cli_token(who)
        assert record.expires_at == exp
        _, plain = await app.security.issue_cli_token("local-user")  # trusted code, by id
        assert plain.expires_at is not None and plain.expires_at > time.time() + 29 * 86400
