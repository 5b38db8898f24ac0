"""Attacks on credentials against the secured gateway: derived CLI tokens, bad tokens, floods.

* A CLI token got from a JWT that expires in seconds dies when the JWT does
  (it used to live 30 days).
* A CLI token got from an API key dies the moment the key is revoked.
* A principal without ``tokens:issue`` gets no CLI token.
* JWT headers and claims an attacker crafts (``crit``, a numeric ``kid``,
  ``jku``, ``x5u``, wrong claim types...) are a 401 with the reason, audited,
  and the gateway stays up (``crit`` and a numeric ``kid`` used to be a 500).
* 500 bad tokens from one client: 429 once its failed-authentication bucket is
  empty, and the audit log grows by a few records whose counts add up to 500
  (it used to grow by one record per request, without limit).

The tests speak through 127.0.0.1 as a trusted proxy, for clients of their own
(``X-Forwarded-For``), so one test's block and counts do not reach another's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import anyio
import httpx
import pytest

from security.attacks.conftest import HS256_SECRET

pytestmark = pytest.mark.anyio

WINDOW = 1.0  # seconds per aggregated audit record, short so the test sees the counts


@pytest.fixture(scope="module")
def secured_overrides() -> dict[str, Any]:
    # Tests speak as the proxy in front of the gateway (127.0.0.1) for clients of their own
    # (X-Forwarded-For), so the flood's block and each test's counts stay apart.
    security = {"rate_limits": {"audit_window": WINDOW}, "trusted_proxies": ["127.0.0.1"]}
    return {"nexus": {"services": {"security": security}}}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: Any) -> str:
    """A token signed with the gateway's real HS256 secret, with whatever header and claims."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(HS256_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _claims(**extra: Any) -> dict[str, Any]:
    # Built when the module is imported, which may be minutes before the test runs
    # (xdist collects everything first): a day of validity keeps "exp" out of it.
    now = int(time.time())
    return {"sub": "mallory", "roles": ["operator"], "tenant": "acme", "exp": now + 86400, **extra}


async def _cli_token(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/auth/cli-tokens", json={"label": "attack"}, headers=headers)


async def _greet(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/workflows/greet/runs", json={"name": "Ada"}, headers=headers)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _summary(record: Any) -> bool:
    return " more refusals from " in (record.reason or "")


async def _refusals(secured: Any, since: float, client: str) -> list[Any]:
    """The refusals audited since ``since``: records of their own, and ``client``'s counts."""
    records = await anyio.to_thread.run_sync(
        lambda: secured.audit(principal="anonymous", since=since)
    )
    return [r for r in records if not _summary(r) or f" from {client} " in (r.reason or "")]


async def _wait_for_count(secured: Any, since: float, client: str, expected: int) -> list[Any]:
    """Wait until ``client``'s refusals since ``since`` add up to ``expected`` (windows end)."""
    with anyio.fail_after(60):
        while True:
            records = await _refusals(secured, since, client)
            if sum(r.count for r in records) >= expected:
                return records
            await anyio.sleep(WINDOW / 4)


async def test_a_cli_token_from_a_short_lived_jwt_dies_with_it(secured: Any) -> None:
    jwt = secured.jwt("ann", roles=["operator"], ttl=3)
    exp = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))["exp"]
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        issued = await _cli_token(client, **_bearer(jwt))
        assert issued.status_code == 201, issued.text
        body = issued.json()
        assert body["expires_at"] <= exp  # not 30 days
        token = body["token"]
        assert (await _greet(client, **_bearer(token))).status_code in (200, 201)
        with anyio.fail_after(30):  # refused from the JWT's exp on
            while (answer := await _greet(client, **_bearer(token))).status_code != 401:
                assert answer.status_code in (200, 201), answer.text
                await anyio.sleep(0.2)
        assert time.time() >= exp
        assert "expired" in answer.json()["detail"]
    secured.assert_healthy()


async def test_a_cli_token_from_an_api_key_dies_when_the_key_is_revoked(secured: Any) -> None:
    key = await anyio.to_thread.run_sync(lambda: secured.issue("kim", roles=["operator"]))
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        issued = await _cli_token(client, **{"X-API-Key": key.token})
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        # another CLI token got from that one is its grandchild
        again = await _cli_token(client, **_bearer(token))
        assert again.status_code == 201, again.text
        grandchild = again.json()["token"]
        for bearer in (token, grandchild):
            assert (await _greet(client, **_bearer(bearer))).status_code in (200, 201)
        assert await anyio.to_thread.run_sync(lambda: secured.revoke(key.id))
        for bearer in (token, grandchild):
            refused = await _greet(client, **_bearer(bearer))
            assert refused.status_code == 401, refused.text
            assert "revoked" in refused.json()["detail"]
        listed = await client.get("/workflows", headers={"X-API-Key": key.token})
        assert listed.status_code == 401
    secured.assert_healthy()


async def test_a_principal_without_tokens_issue_gets_no_cli_token(secured: Any) -> None:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        refused = await _cli_token(client, **{"X-API-Key": secured.key("viewer")})
        assert refused.status_code == 403, refused.text
        assert "tokens:issue" in refused.json()["detail"]
        jwt = secured.jwt("vic", roles=["viewer"])
        assert (await _cli_token(client, **_bearer(jwt))).status_code == 403
    denied = await anyio.to_thread.run_sync(lambda: secured.audit(principal="viewer@acme"))
    assert any(r.action == "tokens:issue" and r.outcome == "forbidden" for r in denied)
    secured.assert_healthy()


HEADER_ATTACKS: dict[str, tuple[dict[str, Any], Any, str]] = {
    "crit": ({"alg": "HS256", "crit": ["exp"]}, _claims(), "crit"),
    "kid-number": ({"alg": "HS256", "kid": 7}, _claims(), "'kid' must be a string"),
    "kid-object": ({"alg": "HS256", "kid": {"$ne": 1}}, _claims(), "'kid' must be a string"),
    "kid-huge": ({"alg": "HS256", "kid": "k" * 1000}, _claims(), "'kid' is over"),
    "jku": ({"alg": "HS256", "jku": "http://127.0.0.1:1/jwks"}, _claims(), "jku"),
    "x5u": ({"alg": "HS256", "x5u": "http://127.0.0.1:1/cert"}, _claims(), "x5u"),
    "jwk": ({"alg": "HS256", "jwk": {"kty": "oct", "k": "QUFB"}}, _claims(), "jwk"),
    "alg-none": ({"alg": "none"}, _claims(), "not accepted"),
    "alg-list": ({"alg": ["HS256", "none"]}, _claims(), "not accepted"),
    "exp-text": ({"alg": "HS256"}, _claims(exp="never"), "invalid token"),
    "exp-infinite": ({"alg": "HS256"}, _claims(exp=float("inf")), "invalid token"),
    "roles-object": ({"alg": "HS256"}, _claims(roles={"admin": True}), "'roles' claim"),
    "tenant-list": ({"alg": "HS256"}, _claims(tenant=["acme", "globex"]), "'tenant' claim"),
    "claims-array": ({"alg": "HS256"}, [1, 2, 3], "invalid token"),
}
NOT_TOKENS = {
    "not-base64": "%%%.%%%.%%%",
    "header-not-json": _b64(b"{alg") + ".e30.x",
    "huge": "x" * 20_000,  # over the 16 KiB a credential may have, under the header cap
}


async def test_crafted_jwt_headers_and_claims_are_401_with_a_reason(secured: Any) -> None:
    since = time.time()
    me = "198.51.100.20"
    async with httpx.AsyncClient(
        base_url=secured.url, timeout=30, headers={"X-Forwarded-For": me}
    ) as client:
        for case, (header, claims, reason) in HEADER_ATTACKS.items():
            answer = await _greet(client, **_bearer(forge(header, claims)))
            assert answer.status_code == 401, (case, answer.status_code, answer.text)
            detail = answer.json()["detail"]
            assert reason in detail, (case, detail)
        for case, token in NOT_TOKENS.items():
            answer = await _greet(client, **_bearer(token))
            assert answer.status_code == 401, (case, answer.status_code, answer.text)
            assert answer.json()["detail"], case
        # still serving the right token
        good = await _greet(client, **_bearer(secured.jwt("ann", roles=["operator"])))
        assert good.status_code in (200, 201), good.text
    secured.assert_healthy()
    # every refusal is in the audit log, counted (the first of a window is a record of its own)
    expected = len(HEADER_ATTACKS) + len(NOT_TOKENS)
    records = await _wait_for_count(secured, since, me, expected)
    assert sum(r.count for r in records) == expected
    assert records[0].outcome == "unauthenticated" and "crit" in (records[0].reason or "")


async def test_zz_a_flood_of_bad_tokens_is_limited_and_audited_in_aggregate(secured: Any) -> None:
    """One client (behind the trusted proxy) sends 500 bad keys, then the right one."""
    flood = 500
    since = time.time()
    me = "198.51.100.66"
    statuses: list[int] = []
    async with httpx.AsyncClient(
        base_url=secured.url, timeout=30, headers={"X-Forwarded-For": me}
    ) as client:
        for i in range(flood):
            answer = await _greet(client, **{"X-API-Key": f"nxk_guess-{i}"})
            statuses.append(answer.status_code)
        assert set(statuses) <= {401, 429}, sorted(set(statuses))
        first_429 = statuses.index(429)
        # the default bucket: 300 failures at once, refilled at 2 a second meanwhile
        assert 0 < first_429 <= 300 + 2 * (time.time() - since) + 1
        assert statuses.count(429) >= flood - 300 - 20
        retry = float(answer.headers["retry-after"]) if answer.status_code == 429 else 1.0
        # blocked: even the right key is turned away until a token is back ...
        right = {"X-API-Key": secured.key("guest")}
        blocked = await _greet(client, **right)
        refused = flood
        if blocked.status_code == 429:  # (a busy machine may have refilled a token already)
            refused += 1
            retry = float(blocked.headers["retry-after"])
            assert retry > 0
        secured.assert_healthy()
        # ... and let in after it
        with anyio.fail_after(60):
            await anyio.sleep(retry)
            while (ok := await _greet(client, **right)).status_code == 429:
                refused += 1
                await anyio.sleep(float(ok.headers.get("retry-after", "0.5")))
        assert ok.status_code in (200, 201), ok.text
    elapsed = time.time() - since
    rows = await _wait_for_count(secured, since, me, refused)
    assert sum(r.count for r in rows) == refused  # every refused request counted, none twice
    # one record for the first refusal, then one per window with its count
    assert len(rows) <= 3 + int(elapsed / WINDOW) * 2, [(r.count, r.reason) for r in rows]
    assert all("nxk_guess" not in (r.reason or "") for r in rows)
    secured.assert_healthy()
