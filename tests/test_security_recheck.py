"""Long-lived connections: ``SecurityLayer.until_invalid`` ends when the credential does."""

from __future__ import annotations

import time
from typing import Any

import anyio
import jwt
import pytest
from test_security import HS_SECRET, make_app, secured

from nexus_core import AuthenticationError, Nexus, RateLimited
from nexus_core.security import ANONYMOUS, Credentials, Principal

pytestmark = pytest.mark.anyio


def jwt_app(**extra: Any) -> Nexus:
    table = secured(
        providers=["api_key", "cli_token", "jwt"],
        jwt={"keys": [{"algorithm": "HS256", "secret": HS_SECRET}], "leeway": 0},
        **extra,
    )
    table["roles"]["issuer"] = ["tokens:issue"]
    return make_app(security=table)


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "ada", "roles": ["operator"], **claims}, HS_SECRET, algorithm="HS256")


class Rechecks:
    """Counts how often the api_key provider is asked (instrumentation, not a stand-in)."""

    def __init__(self, app: Nexus) -> None:
        self.count = 0
        self.wanted = 1 << 30
        self.reached = anyio.Event()
        provider = app.security.providers["api_key"]
        real = provider.authenticate

        async def counted(credentials: Credentials, channel: str) -> Principal | None:
            self.count += 1
            if self.count >= self.wanted:
                self.reached.set()
            return await real(credentials, channel)

        provider.authenticate = counted  # type: ignore[method-assign]

    async def reach(self, n: int) -> None:
        self.wanted = n
        if self.count < n:
            await self.reached.wait()


async def test_providers_say_when_the_credential_expires() -> None:
    app = jwt_app()
    async with app:
        exp = int(time.time()) + 600
        who = await app.security.authenticate(Credentials(bearer=token(exp=exp)), "api")
        assert who.expires_at == exp
        key, record = await app.security.issue_api_key("bob", roles=["operator"], ttl=60)
        who = await app.security.authenticate(Credentials(api_key=key), "api")
        assert who.expires_at == record.expires_at
        forever, _ = await app.security.issue_api_key("carl", roles=["operator"])
        assert (
            await app.security.authenticate(Credentials(api_key=forever), "api")
        ).expires_at is None


async def test_a_jwt_connection_ends_when_the_token_expires() -> None:
    app = jwt_app(recheck_interval=60)  # expiry, not the periodic recheck, ends it
    async with app:
        exp = time.time() + 1.5
        creds = Credentials(bearer=token(exp=exp))
        who = await app.security.authenticate(creds, "ws")
        with anyio.fail_after(20):
            reason = await app.security.until_invalid(creds, "ws", who)
        ended = time.time()
        assert reason == "the credential expired"
        assert ended >= exp  # not before
        records = await app.security.query_audit(principal="ada")
        assert [(r.action, r.outcome, r.channel) for r in records] == [
            ("authenticate", "unauthenticated", "ws")
        ]
        assert records[0].reason == "connection closed: the credential expired"


async def test_a_revoked_api_key_ends_the_connection_within_the_recheck_interval() -> None:
    interval = 0.3
    app = make_app(security=secured(recheck_interval=interval))
    async with app:
        key, record = await app.security.issue_api_key("bob", roles=["operator"])
        creds = Credentials(api_key=key, client="10.0.0.1")
        who = await app.security.authenticate(creds, "sse")
        rechecks = Rechecks(app)
        ended: list[tuple[str, float]] = []

        async def watch() -> None:
            reason = await app.security.until_invalid(creds, "sse", who)
            ended.append((reason, time.monotonic()))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await rechecks.reach(3)  # it re-checked, and a valid key kept it open
                assert ended == []
                assert await app.security.query_audit(principal="bob") == []  # none per recheck
                revoked = time.monotonic()
                assert await app.security.revoke(record.id)
        [(reason, at)] = ended
        assert reason == "this API key has been revoked"
        assert at - revoked <= interval + 2.0  # the next recheck, with room for a busy CI
        audit = await app.security.query_audit(principal="bob")
        assert [r.reason for r in audit] == ["connection closed: this API key has been revoked"]


async def test_a_key_rotated_with_a_grace_ends_the_connection_after_the_grace() -> None:
    app = make_app(security=secured(recheck_interval=0.2))
    async with app:
        key, record = await app.security.issue_api_key("bob", roles=["operator"])
        creds = Credentials(api_key=key)
        who = await app.security.authenticate(creds, "ws")
        assert who.expires_at is None
        start = time.time()
        await app.security.rotate_api_key(record.id, grace=1.0)
        with anyio.fail_after(20):
            reason = await app.security.until_invalid(creds, "ws", who)
        assert reason == "the credential expired"
        assert time.time() >= start + 1.0


@pytest.mark.parametrize("case", ["anonymous", "auth off"])
async def test_anonymous_or_auth_off_never_ends(case: str) -> None:
    if case == "anonymous":
        app = make_app(
            security=secured(
                providers=["api_key", "anonymous"], recheck_interval=0.05, roles={"anonymous": []}
            )
        )
    else:
        app = make_app(security={"providers": ["api_key"], "recheck_interval": 0.05})
    async with app:
        if case == "anonymous":
            creds = None
            who = await app.security.authenticate(None, "ws")
            assert who.anonymous
        else:
            key, _ = await app.security.issue_api_key("bob", ttl=0.1)
            creds = Credentials(api_key=key)
            who = await app.security.authenticate(creds, "ws")
            assert not who.anonymous
        with anyio.move_on_after(1.0) as scope:
            await app.security.until_invalid(creds, "ws", who)
        assert scope.cancelled_caught  # still waiting when the connection went away
        with anyio.move_on_after(0.5) as scope:
            await app.security.until_invalid(None, "ws", ANONYMOUS)
        assert scope.cancelled_caught
        assert await app.security.query_audit() == []


async def test_recheck_interval_must_be_positive() -> None:
    from nexus_core.config import ConfigError

    with pytest.raises(ConfigError, match="recheck_interval"):
        make_app(security=secured(recheck_interval=0))


async def test_a_connection_on_a_derived_cli_token_ends_when_its_api_key_is_revoked() -> None:
    app = jwt_app(recheck_interval=0.2)
    async with app:
        key, record = await app.security.issue_api_key("bob", roles=["operator", "issuer"])
        token, _ = await app.security.exchange_cli_token(Credentials(api_key=key), "api")
        creds = Credentials(bearer=token)
        who = await app.security.authenticate(creds, "ws")
        assert app.storage is not None
        # revoked behind the layer's back (another instance): the token's lineage says so
        await app.storage.revoke_credential(record.id, at=time.time())
        with anyio.fail_after(20):
            reason = await app.security.until_invalid(creds, "ws", who)
        assert reason == "this CLI token was issued from a credential that has been revoked"


async def test_a_blocked_address_cannot_keep_its_revoked_connection_alive() -> None:
    """Flooding bad tokens to get one's own address blocked does not stop the re-check."""
    app = make_app(
        security=secured(
            recheck_interval=0.2,
            rate_limits={"failed_authentications": {"requests": 1, "per": 3600}},
        )
    )
    async with app:
        key, record = await app.security.issue_api_key("eve", roles=["operator"])
        creds = Credentials(api_key=key, client="192.0.2.66")
        who = await app.security.authenticate(creds, "ws")
        for _ in range(3):
            with pytest.raises((AuthenticationError, RateLimited)):
                await app.security.authenticate(
                    Credentials(api_key="nxk_x", client="192.0.2.66"), "ws"
                )
        with pytest.raises(RateLimited):  # the address is blocked now, the right key included
            await app.security.authenticate(creds, "ws")
        await app.security.revoke(record.id)
        with anyio.fail_after(20):
            reason = await app.security.until_invalid(creds, "ws", who)
        assert reason == "this API key has been revoked"
