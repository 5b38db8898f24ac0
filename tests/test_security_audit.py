"""Audit: N invocations give N records, queryable by principal, workflow and time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security import make_app, secured

from nexus_core import AuthenticationError, PermissionDenied, RateLimited
from nexus_core.security import Credentials, Principal, hash_inputs
from nexus_core.storage.base import AuditRecord

pytestmark = pytest.mark.anyio

#: What each kind of invocation should leave in the audit log: (outcome, principal).
KINDS = {
    "ok": ("completed", "alice"),
    "fails": ("failed", "alice"),
    "bad_key": ("unauthenticated", "anonymous"),
    "no_key": ("unauthenticated", "anonymous"),
    "forbidden": ("forbidden", "greeter"),
    "limited": ("rate_limited", "carol"),
}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=15))
async def test_n_invocations_give_n_records(
    kinds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'a.db'}"
    app = make_app(
        url,
        security=secured(
            rate_limits={"workflows": {"nap": {"per_principal": {"requests": 1, "per": 3600}}}}
        ),
    )

    @app.workflow
    def explode() -> None:
        raise RuntimeError("kaboom")

    async with app:
        alice, _ = await app.security.issue_api_key("alice", roles=["operator"])
        greeter, _ = await app.security.issue_api_key("greeter", roles=["greeter"])
        carol, _ = await app.security.issue_api_key("carol", roles=["operator"])
        await app.invoke("nap", {}, credentials=Credentials(api_key=carol))  # drains carol's bucket
        start = time.time()
        for i, kind in enumerate(kinds):
            secret = f"secret-{i}"
            try:
                if kind == "ok":
                    await app.invoke(
                        "greet", {"name": secret}, credentials=Credentials(api_key=alice)
                    )
                elif kind == "fails":
                    await app.invoke("explode", {}, credentials=Credentials(bearer=alice))
                elif kind == "bad_key":
                    await app.invoke("greet", {}, credentials=Credentials(api_key="nxk_" + secret))
                elif kind == "no_key":
                    await app.invoke("greet", {"name": secret})
                elif kind == "forbidden":
                    await app.invoke("add", {}, credentials=Credentials(api_key=greeter))
                else:
                    await app.invoke("nap", {}, credentials=Credentials(api_key=carol))
            except (AuthenticationError, PermissionDenied, RateLimited):
                assert kind in ("bad_key", "no_key", "forbidden", "limited")
        records = await app.security.query_audit(since=start, limit=10_000)
        assert [(r.outcome, r.principal) for r in records] == [KINDS[k] for k in kinds]
        for record in records:
            assert record.action == "invoke"
            assert record.time >= start
            text = repr(record)
            assert "secret-" not in text and alice not in text  # never raw inputs or keys
            if record.outcome in ("completed", "failed"):
                assert record.run_id and record.input_hash and len(record.input_hash) == 64
        ok_inputs = [{"name": f"secret-{i}"} for i, k in enumerate(kinds) if k == "ok"]
        by_alice = await app.security.query_audit(principal="alice", workflow="greet", since=start)
        assert [r.input_hash for r in by_alice] == [hash_inputs(v) for v in ok_inputs]


async def test_query_by_principal_workflow_and_time(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'q.db'}", security=secured())
    async with app:
        ann = Principal(id="ann", roles=("operator",))
        bob = Principal(id="bob", roles=("operator",))
        await app.invoke_as(ann, "greet", {})
        middle = time.time()
        await app.invoke_as(bob, "add", {})
        await app.invoke_as(bob, "greet", {})
        assert [r.workflow for r in await app.security.query_audit(principal=bob)] == [
            "add",
            "greet",
        ]
        assert [r.principal for r in await app.security.query_audit(workflow="greet")] == [
            "ann",
            "bob",
        ]
        assert [r.principal for r in await app.security.query_audit(until=middle)] == ["ann"]
        assert len(await app.security.query_audit(since=middle)) == 2
        assert len(await app.security.query_audit(limit=1)) == 1
        assert [r.channel for r in await app.security.query_audit(principal=ann)] == ["python"]


async def test_records_written_behind_are_stored_by_shutdown(tmp_path: Path) -> None:
    # Refused invocations answer without waiting for their audit record; the
    # host writes it behind and stores every one before it stops.
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    async with make_app(url, security=secured()) as app:
        storage = app.storage
        assert storage is not None
        write = storage.append_audits

        async def slowly(records: Sequence[AuditRecord]) -> None:
            await anyio.sleep(0.05)  # a slow disk: records are still queued at shutdown
            await write(records)

        storage.append_audits = slowly  # type: ignore[method-assign]
        for _ in range(20):
            with pytest.raises(AuthenticationError):
                await app.invoke("greet", {}, credentials=Credentials(api_key="nxk_wrong"))
    async with make_app(url, security=secured()) as again:
        records = await again.storage.query_audit(limit=100)
        assert [r.outcome for r in records] == ["unauthenticated"] * 20
