"""Per-address limits on what costs without proof, and refusals audited once per window."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_security import make_app, secured

from nexus_core import AuthenticationError, Nexus, RateLimited
from nexus_core.config import ConfigError
from nexus_core.security import Credentials, Principal
from nexus_core.security.abuse import RefusalTally

pytestmark = pytest.mark.anyio

ATTACKER = "203.0.113.66"


def limited(storage: str = "memory://", **rate_limits: Any) -> Nexus:
    security = secured(rate_limits=rate_limits) if rate_limits else secured()
    security["roles"]["operator"].append("tokens:issue")
    security["providers"] = ["api_key", "cli_token"]
    return make_app(storage, security=security)


async def refusals(app: Nexus) -> list[Any]:
    return await app.security.query_audit(principal="anonymous", limit=100_000)


async def test_a_flood_of_bad_tokens_grows_the_audit_log_by_a_few_records(tmp_path: Path) -> None:
    app = limited(f"sqlite:///{tmp_path / 'flood.db'}")  # the defaults
    async with app:
        key, _ = await app.security.issue_api_key("alice", roles=["operator"])
        before = len(await refusals(app))
        outcomes: dict[str, int] = {}
        for i in range(2000):
            creds = Credentials(api_key=f"nxk_guess-{i}", client=ATTACKER)
            try:
                await app.invoke("greet", {"name": "x"}, credentials=creds)
            except (AuthenticationError, RateLimited) as exc:
                outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
        # the default bucket (300 at once) is spent, and the rest are turned away unread
        assert outcomes["unauthenticated"] <= 310
        assert outcomes["rate_limited"] >= 1690
        # ... even with the right key, until a token is back
        with pytest.raises(RateLimited) as caught:
            await app.invoke("greet", {}, credentials=Credentials(api_key=key, client=ATTACKER))
        assert caught.value.retry_after is not None and caught.value.retry_after > 0
        # another client is not affected
        ok = await app.invoke("greet", {}, credentials=Credentials(api_key=key, client="10.0.0.2"))
        assert ok.status == "completed"

        records = await refusals(app)
        grown = records[before:]
        assert len(grown) <= 4, [(r.action, r.count, r.reason) for r in grown]
        assert sum(r.count for r in grown) == 2001  # every refusal counted, once
        first, *summaries = grown
        assert (first.action, first.outcome, first.count) == ("invoke", "unauthenticated", 1)
        assert first.workflow == "greet"
        assert summaries and all(ATTACKER in (r.reason or "") for r in summaries)
        assert all("nxk_guess" not in (r.reason or "") for r in grown)  # never the tokens


async def test_the_count_of_a_window_is_written_when_the_window_ends() -> None:
    app = limited(audit_window=0.3, failed_authentications={"requests": 1000, "per": 60})
    async with app:
        storage = app.storage
        assert storage is not None
        for i in range(25):
            with pytest.raises(AuthenticationError):
                await app.security.authenticate(
                    Credentials(bearer=f"nxk_{i}", client=ATTACKER), "ws", audit=True
                )
        with anyio.fail_after(20):  # the host's sweeper writes it, nobody has to ask
            while True:
                await app.security.flush_audit()
                stored = await storage.query_audit(principal="anonymous", limit=100)
                if sum(r.count for r in stored) == 25:
                    break
                await anyio.sleep(0.05)
        assert [(r.channel, r.count) for r in stored] == [("ws", 1), ("ws", 24)]
        # a new window starts with a record of its own again
        with pytest.raises(AuthenticationError):
            await app.security.authenticate(
                Credentials(bearer="nxk_late", client=ATTACKER), "ws", audit=True
            )
        assert [r.count for r in await refusals(app)] == [1, 24, 1]


async def test_in_process_refusals_without_an_address_are_each_recorded() -> None:
    app = limited(failed_authentications={"requests": 1, "per": 3600})
    async with app:
        for _ in range(5):
            with pytest.raises(AuthenticationError):  # never RateLimited: no address to limit
                await app.invoke("greet", {}, credentials=Credentials(api_key="nxk_no"))
        assert [r.count for r in await refusals(app)] == [1] * 5


async def test_the_block_lifts_once_a_token_is_back() -> None:
    app = limited(failed_authentications={"requests": 2, "per": 1.0})
    async with app:
        key, _ = await app.security.issue_api_key("alice", roles=["operator"])
        for _ in range(2):
            with pytest.raises(AuthenticationError):
                await app.security.authenticate(
                    Credentials(api_key="nxk_no", client=ATTACKER), "api"
                )
        with pytest.raises(RateLimited) as caught:
            await app.security.authenticate(Credentials(api_key="nxk_no", client=ATTACKER), "api")
        wait = caught.value.retry_after
        assert wait is not None and 0 < wait <= 1.0
        with pytest.raises(RateLimited):
            await app.security.authenticate(Credentials(api_key=key, client=ATTACKER), "api")
        deadline = time.monotonic() + 10
        while True:  # the wait it named, then the right key is let in
            try:
                who = await app.security.authenticate(
                    Credentials(api_key=key, client=ATTACKER), "api"
                )
                break
            except RateLimited as exc:
                assert time.monotonic() < deadline
                await anyio.sleep(exc.retry_after or 0.05)
        assert who.id == "alice"


async def test_trusted_proxies_are_honoured_and_others_forwarded_for_ignored() -> None:
    security = secured(
        trusted_proxies=["10.0.0.0/8"],
        rate_limits={"failed_authentications": {"requests": 3, "per": 3600}},
    )
    app = make_app(security=security)
    async with app:

        async def fail(client: str, forwarded: str | None) -> str:
            try:
                await app.security.authenticate(
                    Credentials(api_key="nxk_no", client=client, forwarded_for=forwarded), "api"
                )
            except (AuthenticationError, RateLimited) as exc:
                return exc.code
            raise AssertionError("authenticated")

        # through the proxy, each real client has its own bucket
        assert [await fail("10.0.0.1", "198.51.100.1") for _ in range(4)][-1] == "rate_limited"
        assert await fail("10.0.0.1", "198.51.100.2") == "unauthenticated"
        # a direct caller cannot pick a fresh address by sending the header
        codes = [await fail("192.0.2.9", f"198.51.100.{i + 10}") for i in range(4)]
        assert codes[-1] == "rate_limited"


async def test_session_creation_run_listing_and_token_issuance_are_limited_per_address() -> None:
    app = limited(
        session_creation={"requests": 2, "per": 3600},
        run_listing={"requests": 2, "per": 3600},
        token_issuance={"requests": 2, "per": 3600},
    )
    async with app:
        key, _ = await app.security.issue_api_key("alice", roles=["operator"])
        alice = Principal(id="alice", roles=("operator",))
        # in process, without an address, nothing is limited
        for _ in range(5):
            await app.create_session(principal=alice)
            await app.list_runs(principal=alice)
            await app.list_runs(principal=alice, credentials=Credentials())
        creds = Credentials(api_key=key, client=ATTACKER)
        who = await app.security.authenticate(creds, "api")
        for name, call in {
            "sessions:create": lambda: app.create_session(
                channel="api", principal=who, credentials=creds
            ),
            "runs:list": lambda: app.list_runs(principal=who, credentials=creds, channel="api"),
            "tokens:issue": lambda: app.security.exchange_cli_token(creds, "api"),
        }.items():
            await call()
            await call()
            with pytest.raises(RateLimited, match=ATTACKER):
                await call()
            with pytest.raises(RateLimited):
                await call()
            audit = [r for r in await app.security.query_audit() if r.action == name]
            assert [(r.outcome, r.count) for r in audit] == [
                ("rate_limited", 1),
                ("rate_limited", 1),
            ]
        # the address of the credentials last authenticated in the task is used when none is given
        await app.security.authenticate(Credentials(api_key=key, client="192.0.2.50"), "api")
        await app.create_session(principal=who)
        await app.create_session(principal=who)
        with pytest.raises(RateLimited, match="192.0.2.50"):
            await app.create_session(principal=who)


async def test_limits_can_be_lifted_and_must_make_sense() -> None:
    app = limited(failed_authentications=None)
    async with app:
        for _ in range(400):
            with pytest.raises(AuthenticationError):
                await app.security.authenticate(
                    Credentials(api_key="nxk_no", client=ATTACKER), "api"
                )
    with pytest.raises(ConfigError, match="audit_window"):
        limited(audit_window=0)
    with pytest.raises(ConfigError, match="requests"):
        limited(token_issuance={"requests": 0})


# -- the tally, on its own: counts add up, records stay few ---------------------------------

refusal_events = st.lists(
    st.tuples(
        st.sampled_from(["198.51.100.1", "198.51.100.2", "2001:db8::1"]),
        st.sampled_from(["authenticate", "sessions:create"]),
        st.sampled_from(["unauthenticated", "rate_limited"]),
        st.floats(min_value=0, max_value=3.0),  # seconds since the previous refusal
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(events=refusal_events, window=st.floats(min_value=0.5, max_value=10.0))
def test_the_tally_counts_every_refusal_once_in_a_few_records(
    events: list[tuple[str, str, str, float]], window: float
) -> None:
    now = [1_000_000.0]
    tally = RefusalTally(window, clock=lambda: now[0])
    written = 0  # the first of each window: recorded by whoever refused it
    records = []
    for client, action, outcome, gap in events:
        now[0] += gap
        if tally.count(client, "api", outcome, f"no ({client})", action):
            written += 1
        records.extend(tally.drain())
    records.extend(tally.drain(everything=True))
    assert written + sum(r.count for r in records) == len(events)
    assert all(r.count >= 1 for r in records)
    # at most one summary per (client, action) per window that saw a refusal, plus the final drain
    span = now[0] - 1_000_000.0
    keys = {(c, a) for c, a, _, _ in events}
    assert len(records) <= len(keys) * (span / window + 2)
    for record in records:
        assert record.reason is not None and "more refusals from" in record.reason
        assert record.action in {"authenticate", "sessions:create"}
