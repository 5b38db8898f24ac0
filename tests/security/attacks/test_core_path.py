"""Attacks on the core path (issue #12 items 2 and 4), over REST and the WebSocket.

* **ABAC bypass by type.** The how-to's rule "refunds over 500 need a team
  lead" was decided on the raw inputs, and validation then read text as a
  number: ``{"amount": "900"}``, ``"9e5"`` and ``"Infinity"`` ran. Now inputs
  are validated strictly first (422 naming ``amount``, nothing runs) and the
  rule decides on exactly the values the workflow receives; a principal with
  no ``level`` attribute is refused too (the condition fails closed).
* **Idempotency keys shared between principals.** Replaying another
  principal's ``Idempotency-Key`` returned that principal's run id and output,
  and other inputs got a 409 that told the key existed. Now a key is its
  principal's own: another principal's equal key is a new run of its own.

MCP and the CLI forms of both attacks live in the MCP/CLI module.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
import pytest

websockets_client = pytest.importorskip("websockets.asyncio.client")

pytestmark = pytest.mark.anyio

TEXT_NUMBERS = ["900", "9e5", "Infinity", "NaN", "1e3", "0x384"]


def _refunders(secured: Any) -> dict[str, Any]:
    """Fresh support keys of one test (levels agent, lead, and none at all)."""
    suffix = uuid.uuid4().hex[:6]
    return {
        level: secured.issue(
            f"refunder-{level}-{suffix}",
            roles=["support"],
            attributes={} if level == "none" else {"level": level},
        )
        for level in ("agent", "lead", "none")
    }


async def _refund(secured: Any, key: str, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/json"
            return await client.post(
                "/workflows/refund/runs", content=body, headers={"X-API-Key": key, **headers}
            )
        return await client.post(
            "/workflows/refund/runs", json=body, headers={"X-API-Key": key, **headers}
        )


def _names_amount(problem: dict[str, Any]) -> bool:
    return any(error["path"] == "amount" for error in problem.get("errors", []))


def _outcomes(secured: Any, principal: str, workflow: str) -> list[str]:
    """What each invocation of ``workflow`` by ``principal`` came to, from the audit log."""
    records = secured.audit(principal=principal, workflow=workflow)
    return sorted(r.outcome for r in records if r.action == "invoke")


def _completed(secured: Any, principal: str, workflow: str) -> list[str]:
    return [o for o in _outcomes(secured, principal, workflow) if o == "completed"]


# -- ABAC bypass by type ------------------------------------------------------------------------


async def test_rest_a_number_as_text_is_422_naming_amount_and_never_runs(secured: Any) -> None:
    agent = secured.issue(f"text-agent-{uuid.uuid4().hex[:6]}", roles=["support"])
    for text in TEXT_NUMBERS:
        answer = await _refund(secured, agent.token, {"order": "A1", "amount": text})
        assert answer.status_code == 422, (text, answer.text)
        problem = answer.json()
        assert problem["code"] == "validation_error" and _names_amount(problem), problem
        assert "expected 'float', got 'str'" in problem["detail"]
    # Refused before any decision: nothing ran, each is audited as a validation error.
    assert _outcomes(secured, agent.principal, "refund") == ["validation_error"] * len(TEXT_NUMBERS)
    secured.assert_healthy()


async def test_rest_a_big_refund_is_403_unless_a_lead(secured: Any) -> None:
    refunders = _refunders(secured)
    for level in ("agent", "none"):  # "none": no level attribute at all, fails closed
        answer = await _refund(secured, refunders[level].token, {"order": "A1", "amount": 900})
        assert answer.status_code == 403, (level, answer.text)
        assert answer.json()["code"] == "forbidden"
        small = await _refund(secured, refunders[level].token, {"order": "A1", "amount": 20})
        assert small.status_code == 200 and small.json()["output"] == 20, small.text
    lead = await _refund(secured, refunders["lead"].token, {"order": "A1", "amount": 900})
    assert lead.status_code == 200 and lead.json()["output"] == 900, lead.text
    secured.assert_healthy()


async def _ws_exchange(secured: Any, key: str, messages: list[dict[str, Any]]) -> list[Any]:
    """Send each message on one WebSocket and collect the answer to each, by id."""
    answers: dict[str, Any] = {}
    headers = {"X-API-Key": key}
    async with websockets_client.connect(secured.ws_url + "/ws", additional_headers=headers) as ws:
        for message in messages:
            await ws.send(json.dumps({"type": "run", "workflow": "refund", **message}))
        with anyio.fail_after(60):
            while len(answers) < len(messages):
                answer = json.loads(await ws.recv())
                if answer.get("id") is not None:
                    answers[answer["id"]] = answer
    return [answers[m["id"]] for m in messages]


async def test_websocket_a_number_as_text_is_422_naming_amount_and_never_runs(
    secured: Any,
) -> None:
    agent = secured.issue(f"ws-text-agent-{uuid.uuid4().hex[:6]}", roles=["support"])
    texts = [
        {"id": f"t{i}", "inputs": {"order": "A1", "amount": text}}
        for i, text in enumerate(TEXT_NUMBERS)
    ]
    for answer in await _ws_exchange(secured, agent.token, texts):
        assert answer["type"] == "error", answer
        problem = answer["error"]
        assert problem["status"] == 422 and problem["code"] == "validation_error", problem
        assert _names_amount(problem), problem
    assert _outcomes(secured, agent.principal, "refund") == ["validation_error"] * len(TEXT_NUMBERS)
    secured.assert_healthy()


async def test_websocket_a_big_refund_is_403_unless_a_lead(secured: Any) -> None:
    refunders = _refunders(secured)
    big = [{"id": "big", "inputs": {"order": "A1", "amount": 900}}]
    for level in ("agent", "none"):
        [answer] = await _ws_exchange(secured, refunders[level].token, big)
        assert answer["type"] == "error", answer
        assert answer["error"]["status"] == 403 and answer["error"]["code"] == "forbidden"
    [answer] = await _ws_exchange(secured, refunders["lead"].token, big)
    assert answer["type"] == "result" and answer["run"]["output"] == 900, answer
    for level in ("agent", "none"):
        assert _outcomes(secured, refunders[level].principal, "refund") == ["forbidden"]
    secured.assert_healthy()


# -- idempotency keys are the caller's own -------------------------------------------------------


async def _greet(secured: Any, key: str, name: str, idempotency_key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        return await client.post(
            "/workflows/greet/runs",
            json={"name": name},
            headers={"X-API-Key": key, "Idempotency-Key": idempotency_key},
        )


async def test_rest_replaying_another_principals_key_is_a_new_run_of_ones_own(
    secured: Any,
) -> None:
    ann = secured.issue(f"idem-ann-{uuid.uuid4().hex[:6]}", roles=["guest"])
    bob = secured.issue(f"idem-bob-{uuid.uuid4().hex[:6]}", roles=["guest"])  # no runs:read
    key = f"order-{uuid.uuid4().hex}"
    first = await _greet(secured, ann.token, "Ann's secret", key)
    assert first.status_code == 200, first.text
    ann_run = first.json()["run_id"]

    # Same key, same inputs: bob gets a run of his own, never ann's id.
    same = await _greet(secured, bob.token, "Ann's secret", key)
    assert same.status_code == 200, same.text
    assert same.json()["run_id"] != ann_run
    # Same key, other inputs: no 409 that would tell him the key exists, and not ann's output.
    other = await _greet(secured, bob.token, "Bob", key + "-2")
    assert other.status_code == 200, other.text
    # The key is now his own (his 'same' run): reusing it with other inputs is his own 409.
    replay = await _greet(secured, bob.token, "Bob", key)
    assert replay.status_code == 409, replay.text
    guess = await _greet(secured, bob.token, "Bob", f"order-{uuid.uuid4().hex}")
    assert guess.status_code == 200 and guess.json()["output"] == "Hello, Bob.", guess.text

    # Ann's key still finds ann's run for ann, once.
    again = await _greet(secured, ann.token, "Ann's secret", key)
    assert again.status_code == 200 and again.json()["run_id"] == ann_run, again.text
    async with httpx.AsyncClient(base_url=secured.url, timeout=30) as client:
        peek = await client.get(f"/runs/{ann_run}", headers={"X-API-Key": bob.token})
    assert peek.status_code == 404, peek.text
    assert len(_completed(secured, ann.principal, "greet")) == 1
    assert len(_completed(secured, bob.principal, "greet")) == 3
    secured.assert_healthy()


async def test_rest_another_principals_key_with_other_inputs_is_not_409(secured: Any) -> None:
    ann = secured.issue(f"idem2-ann-{uuid.uuid4().hex[:6]}", roles=["guest"])
    bob = secured.issue(f"idem2-bob-{uuid.uuid4().hex[:6]}", roles=["guest"])
    key = f"order-{uuid.uuid4().hex}"
    first = await _greet(secured, ann.token, "Ann", key)
    assert first.status_code == 200, first.text
    probe = await _greet(secured, bob.token, "Mallory", key)
    assert probe.status_code == 200, probe.text  # before: 409, "this key was already used"
    assert probe.json()["output"] == "Hello, Mallory."
    assert probe.json()["run_id"] != first.json()["run_id"]
    # The other tenant's principal with the same name and key: its own run as well.
    other_tenant = secured.issue(ann.principal, roles=["guest"], tenant="globex")
    theirs = await _greet(secured, other_tenant.token, "Ann", key)
    assert theirs.status_code == 200 and theirs.json()["run_id"] != first.json()["run_id"]
    secured.assert_healthy()
