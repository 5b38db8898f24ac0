"""The refusals in secure-a-deployment.md's table, over REST, against the secured gateway.

| failure | HTTP API |
| no or bad credentials | 401 with ``WWW-Authenticate`` |
| not allowed | 403 |
| too many requests | 429 with ``Retry-After`` |
| input over a limit | 413 (size) or 422, naming the limit |

The other channels' forms of the same refusals are in the modules of their
own areas; this one pins the HTTP column and that the gateway survives each.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def secured_overrides() -> dict[str, Any]:
    # The doc's per-workflow rule, made small enough to reach in a test.
    return {
        "nexus": {
            "services": {
                "security": {
                    "rate_limits": {
                        "workflows": {"nap": {"per_principal": {"requests": 3, "per": 3600}}}
                    },
                    "input_limits": {"max_payload_bytes": 4096, "max_string_length": 100},
                }
            }
        }
    }


async def _run(secured: Any, workflow: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        return await client.post(f"/workflows/{workflow}/runs", json=body, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "nxk_not-a-key"},
        {"Authorization": "Bearer nxk_not-a-key"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
    ],
    ids=["none", "bad-api-key", "bad-bearer-key", "bad-jwt", "basic"],
)
async def test_no_or_bad_credentials_is_401_with_www_authenticate(
    secured: Any, headers: dict[str, str]
) -> None:
    answer = await _run(secured, "greet", {"name": "Ada"}, **headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].lower().startswith("bearer")
    assert answer.json()["code"] == "unauthenticated"
    secured.assert_healthy()


async def test_a_valid_key_and_a_valid_jwt_run(secured: Any) -> None:
    with_key = await _run(secured, "greet", {"name": "Ada"}, **{"X-API-Key": secured.key("guest")})
    assert with_key.status_code in (200, 201), with_key.text
    assert with_key.json()["output"] == "Hello, Ada."
    for algorithm in ("HS256", "RS256"):
        token = secured.jwt("jo", roles=["guest"], algorithm=algorithm)
        with_jwt = await _run(secured, "greet", {"name": "Jo"}, Authorization=f"Bearer {token}")
        assert with_jwt.status_code in (200, 201), (algorithm, with_jwt.text)


async def test_not_allowed_is_403_naming_the_permission(secured: Any) -> None:
    answer = await _run(
        secured, "refund", {"order": "A1", "amount": 5}, **{"X-API-Key": secured.key("viewer")}
    )
    assert answer.status_code == 403, answer.text
    assert "workflow:refund:execute" in answer.json()["detail"]
    secured.assert_healthy()


async def test_over_the_rate_limit_is_429_with_retry_after(secured: Any) -> None:
    key = secured.issue("sleepy", roles=["operator"]).token
    statuses = []
    for _ in range(4):
        answer = await _run(secured, "nap", {"seconds": 0}, **{"X-API-Key": key})
        statuses.append(answer.status_code)
    assert statuses[:3] in ([200] * 3, [201] * 3), statuses
    assert statuses[3] == 429
    assert float(answer.headers["retry-after"]) > 0
    secured.assert_healthy()


async def test_input_over_a_limit_names_the_limit(secured: Any) -> None:
    key = {"X-API-Key": secured.key("guest")}
    too_long = await _run(secured, "greet", {"name": "x" * 101}, **key)
    assert too_long.status_code == 422, too_long.text
    assert "max_string_length" in too_long.text and "name" in too_long.text
    too_big = await _run(secured, "greet", {"name": "x", "pad": ["y" * 90] * 60}, **key)
    assert too_big.status_code == 413, too_big.text
    assert "max_payload_bytes" in too_big.text
    secured.assert_healthy()
