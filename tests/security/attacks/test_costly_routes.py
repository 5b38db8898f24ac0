"""Routes that cost the server without running a workflow are limited per client address.

Session creation, CLI-token issuance and run listing each have a bucket of
their own per client (``rate_limits.session_creation``, ``token_issuance``,
``run_listing``), whoever the caller claims to be: a client that cycles
through keys still empties one bucket. The limits here are small so the test
reaches them; the defaults leave room for any normal use.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

LIMIT = 3


@pytest.fixture(scope="module")
def secured_overrides() -> dict[str, Any]:
    rule = {"requests": LIMIT, "per": 3600}
    return {
        "nexus": {
            "services": {
                "security": {
                    "rate_limits": {
                        "session_creation": rule,
                        "token_issuance": rule,
                        "run_listing": rule,
                    }
                }
            }
        }
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/sessions"), ("POST", "/auth/cli-tokens"), ("GET", "/runs")],
    ids=["session-creation", "token-issuance", "run-listing"],
)
async def test_a_costly_route_is_429_once_the_clients_bucket_is_empty(
    secured: Any, method: str, path: str
) -> None:
    # A different principal on every request: the bucket is the client's, not the key's.
    keys = [secured.issue(f"cycler-{path}-{n}", roles=["operator"]).token for n in range(LIMIT + 1)]
    statuses = []
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        for key in keys:
            answer = await client.request(method, path, headers={"X-API-Key": key})
            statuses.append(answer.status_code)
    assert all(200 <= status < 300 for status in statuses[:LIMIT]), statuses
    assert statuses[LIMIT] == 429, statuses
    assert float(answer.headers["retry-after"]) > 0
    assert answer.json()["code"] == "rate_limited"
    secured.assert_healthy()
