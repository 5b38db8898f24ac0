"""Rate limits (per principal, client, channel, workflow; trusted proxies) and input limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security import make_app, secured

from nexus_core import RateLimited, ValidationError
from nexus_core.errors import InputLimitExceeded
from nexus_core.security import Credentials, Principal
from nexus_core.security.limits import client_address, parse_networks

pytestmark = pytest.mark.anyio

ALICE = Principal(id="alice", roles=("operator",))
BOB = Principal(id="bob", roles=("operator",))


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'rl.db'}"


# -- rate limits ----------------------------------------------------------------------------


async def test_per_principal_limit_gives_the_wait(storage_url: str) -> None:
    app = make_app(
        storage_url,
        security=secured(rate_limits={"per_principal": {"requests": 3, "per": 60}}),
    )
    async with app:
        for _ in range(3):
            await app.invoke_as(ALICE, "greet", {}, channel="api")
        with pytest.raises(RateLimited) as info:
            await app.invoke_as(ALICE, "greet", {}, channel="api")
        assert 19 < info.value.retry_after <= 20  # one token every 20 s
        assert info.value.detail().retry_after == info.value.retry_after
        assert "principal 'alice' on api" in info.value.message
        # buckets are per principal and per channel
        await app.invoke_as(BOB, "greet", {}, channel="api")
        await app.invoke_as(ALICE, "greet", {}, channel="cli")
        outcomes = [r.outcome for r in await app.security.query_audit(principal="alice")]
        assert outcomes == ["completed"] * 3 + ["rate_limited", "completed"]


async def test_per_client_limit_covers_every_principal_and_anonymous() -> None:
    app = make_app(security={"rate_limits": {"per_client": {"requests": 2, "per": 10}}})
    async with app:
        creds = Credentials(client="203.0.113.5")
        await app.invoke("greet", {}, credentials=creds, channel="api")
        await app.invoke("greet", {}, credentials=creds, channel="api")
        with pytest.raises(RateLimited, match="client 203.0.113.5"):
            await app.invoke("greet", {}, credentials=creds, channel="api")
        # another client has its own bucket; a caller without an address has none
        await app.invoke("greet", {}, credentials=Credentials(client="203.0.113.6"), channel="api")
        for _ in range(5):
            await app.invoke("greet", {}, channel="python")


async def test_burst_and_refill(storage_url: str) -> None:
    app = make_app(
        storage_url,
        security=secured(rate_limits={"per_principal": {"requests": 600, "per": 60, "burst": 2}}),
    )
    async with app:
        await app.invoke_as(ALICE, "greet", {})
        await app.invoke_as(ALICE, "greet", {})
        with pytest.raises(RateLimited) as info:
            await app.invoke_as(ALICE, "greet", {})
        assert 0 < info.value.retry_after <= 0.1  # ten tokens a second
        import anyio

        await anyio.sleep(info.value.retry_after + 0.02)
        await app.invoke_as(ALICE, "greet", {})


async def test_per_workflow_and_per_channel_rules() -> None:
    app = make_app(
        security=secured(
            rate_limits={
                "per_principal": {"requests": 100},
                "channels": {"mcp": {"per_principal": {"requests": 2}}},
                "workflows": {"report": {"per_principal": {"requests": 1, "per": 3600}}},
            }
        )
    )
    async with app:
        await app.invoke_as(ALICE, "report", {}, channel="api")
        with pytest.raises(RateLimited) as info:
            await app.invoke_as(ALICE, "report", {}, channel="api")
        assert info.value.retry_after > 3000
        # the workflow's own bucket does not drain the general one
        for _ in range(10):
            await app.invoke_as(ALICE, "greet", {}, channel="api")
        await app.invoke_as(ALICE, "greet", {}, channel="mcp")
        await app.invoke_as(ALICE, "add", {}, channel="mcp")
        with pytest.raises(RateLimited, match="on mcp"):
            await app.invoke_as(ALICE, "greet", {}, channel="mcp")


async def test_forwarded_for_counts_only_from_trusted_proxies() -> None:
    app = make_app(
        security={
            "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
            "rate_limits": {"per_client": {"requests": 1, "per": 3600}},
        }
    )
    async with app:
        # behind our proxy: each real client has its own bucket
        for real in ("198.51.100.1", "198.51.100.2"):
            creds = Credentials(client="10.1.2.3", forwarded_for=f"{real}, 10.9.9.9")
            await app.invoke("greet", {}, credentials=creds, channel="api")
        with pytest.raises(RateLimited, match="client 198.51.100.1"):
            await app.invoke(
                "greet",
                {},
                credentials=Credentials(client="10.1.2.3", forwarded_for="198.51.100.1"),
                channel="api",
            )
        # a direct caller cannot pick its address with the header
        direct = Credentials(client="192.0.2.7", forwarded_for="198.51.100.77")
        await app.invoke("greet", {}, credentials=direct, channel="api")
        spoofed = Credentials(client="192.0.2.7", forwarded_for="198.51.100.78")
        with pytest.raises(RateLimited, match="client 192.0.2.7"):
            await app.invoke("greet", {}, credentials=spoofed, channel="api")
        assert app.security.client_address(spoofed) == "192.0.2.7"


def test_client_address_resolution() -> None:
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])
    assert client_address(None, "1.2.3.4", trusted) is None
    assert client_address("8.8.8.8", "1.2.3.4", trusted) == "8.8.8.8"
    assert client_address("10.0.0.1", None, trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.2.3.4", trusted) == "1.2.3.4"
    # spoofed left-most entries are skipped: the right-most untrusted hop is the client
    assert client_address("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2", trusted) == "1.2.3.4"
    assert client_address("127.0.0.1", "10.0.0.3, 10.0.0.2", trusted) == "10.0.0.3"
    assert client_address("fd00::1", "2001:db8::5", trusted) == "2001:db8::5"
    assert client_address("10.0.0.1", " , ", trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.2.3.4", ()) == "10.0.0.1"


# -- input limits ---------------------------------------------------------------------------------


async def test_input_limits_name_the_limit_and_the_path() -> None:
    app = make_app(
        security={
            "input_limits": {"max_payload_bytes": 200, "max_depth": 3, "max_string_length": 10}
        }
    )
    async with app:
        cases: list[tuple[Any, str, str]] = [
            ({"name": "x" * 11}, "name", "max_string_length (10)"),
            ({"name": "ok", "extra": {"deep": {"er": [1]}}}, "extra.deep.er", "max_depth (3)"),
            ({"name": "ok", "k" * 11: 1}, "", "a key of 11 characters"),
            ({"name": "ok", "pad": ["abcdefghi"] * 30}, "", "max_payload_bytes (200)"),
            (b'{"name": "' + b"y" * 20 + b'"}', "name", "max_string_length"),
            ('{"name": [[[["deep"]]]]}', "name[0][0]", "max_depth"),
            (b"[" * 5000 + b"]" * 5000, "", "max_payload_bytes"),
        ]
        for inputs, path, reason in cases:
            with pytest.raises(InputLimitExceeded) as info:
                await app.invoke("greet", inputs)
            error = info.value.errors[0]
            assert error.path == path, (inputs, error)
            assert reason in error.reason
            assert isinstance(info.value, ValidationError)  # channels render it as bad input
            assert info.value.code == "input_limit"
        assert (await app.invoke("greet", {"name": "Ada"})).output == "Hello, Ada."
        assert (await app.invoke("greet", b'{"name": "Bo"}')).output == "Hello, Bo."


async def test_nesting_deeper_than_the_decoder_allows_is_an_input_limit() -> None:
    app = make_app(security={"input_limits": {"max_payload_bytes": None, "max_depth": 5000}})
    async with app:
        with pytest.raises(InputLimitExceeded, match="max_depth"):
            await app.invoke("greet", b"[" * 100_000 + b"]" * 100_000)
        nested: Any = "x"
        for _ in range(6000):
            nested = [nested]
        with pytest.raises(InputLimitExceeded, match="max_depth"):
            await app.invoke("greet", {"name": nested})


async def test_limits_can_be_turned_off() -> None:
    app = make_app(
        security={
            "input_limits": {
                "max_payload_bytes": None,
                "max_depth": None,
                "max_string_length": None,
            }
        }
    )
    async with app:
        assert (await app.invoke("greet", {"name": "z" * 2_000_000})).status == "completed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _longest(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max([0, *(len(k) for k in value), *(_longest(v) for v in value.values())])
    if isinstance(value, list):
        return max([0, *(_longest(v) for v in value)])
    return 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=json_values,
    depth=st.integers(1, 5),
    length=st.integers(1, 20),
    size=st.integers(2, 400),
    raw=st.booleans(),
)
def test_input_limits_agree_with_a_direct_measure(
    value: Any, depth: int, length: int, size: int, raw: bool
) -> None:
    from nexus_core.config import InputLimitsConfig
    from nexus_core.security.limits import InputLimits

    limits = InputLimits(
        InputLimitsConfig(max_payload_bytes=size, max_depth=depth, max_string_length=length)
    )
    payload = {"v": value}
    encoded = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    over = len(encoded) > size or _depth(payload) > depth or _longest(payload) > length
    try:
        limits.check(encoded if raw else payload)
    except InputLimitExceeded:
        assert over
    else:
        assert not over
