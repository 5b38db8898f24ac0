"""Tenant isolation over random data: A can neither read, list, cancel nor watch B's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security import make_app, secured

from nexus_core import PermissionDenied
from nexus_core.errors import RunNotFound, SessionNotFound
from nexus_core.events import Event
from nexus_core.security import Principal

pytestmark = pytest.mark.anyio

TENANTS = ["acme", "globex", "initech"]
ROLES = {
    "operator": ["workflow:*:execute", "runs:read", "runs:cancel", "events:read", "sessions:admin"],
    "member": ["workflow:*:execute"],
}


def principal(name: str, tenant: str, role: str) -> Principal:
    return Principal(id=f"{name}@{tenant}", tenant=tenant, roles=(role,))


people = st.builds(
    principal,
    st.sampled_from(["ann", "bob"]),
    st.sampled_from(TENANTS),
    st.sampled_from(sorted(ROLES)),
)
actions = st.lists(
    st.tuples(people, st.sampled_from(["greet", "visit", "nap"])), min_size=1, max_size=8
)


def _reads(who: Principal) -> bool:
    return "events:read" in ROLES[who.roles[0]]


def _is_marker(event: Event) -> bool:
    return event.type == "workflow.registered" and (event.data or {}).get("workflow") == "marker"


async def _drain(sub: Any, into: list[Event]) -> None:
    async for event in sub:
        into.append(event)  # noqa: PERF401 - the test reads the list while events arrive


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    actions=actions,
    observers=st.lists(people, min_size=1, max_size=4, unique_by=lambda p: (p.id, p.roles)),
)
async def test_no_principal_sees_another_tenants_data(
    actions: list[tuple[Principal, str]], observers: list[Principal]
) -> None:
    app = make_app(security=secured(roles=ROLES))
    async with app, anyio.create_task_group() as tg:
        seen: list[list[Event]] = []
        subs = []
        for who in observers:
            seen.append([])
            if "events:read" not in ROLES[who.roles[0]]:
                with pytest.raises(PermissionDenied):
                    app.subscribe(("*",), principal=who)
                continue
            sub = app.subscribe(("*",), principal=who)
            subs.append(sub)
            tg.start_soon(_drain, sub, seen[-1])

        runs: list[tuple[str, Principal]] = []
        sessions: list[tuple[str, Principal]] = []
        for who, workflow in actions:
            if workflow == "nap":
                result = await app.invoke_as(who, "nap", {"seconds": 30}, wait=False)
            else:
                result = await app.invoke_as(who, workflow, {})
            runs.append((result.run_id, who))
            if result.session_id:
                sessions.append((result.session_id, who))

        # A barrier, not a wait: an event every subscriber may see, published after the
        # events of the actions above, so whatever of those reaches a subscriber is in first.
        def marker() -> str:
            """Registered while serving: its workflow.registered event reaches everyone."""
            return "marker"

        app.workflow(name="marker")(marker)
        watched = [events for events, who in zip(seen, observers, strict=True) if _reads(who)]
        with anyio.fail_after(10):
            while not all(any(_is_marker(e) for e in events) for events in watched):  # noqa: ASYNC110
                await anyio.sleep(0.01)

        for observer in observers:
            listed = await app.list_runs(principal=observer, limit=1000)
            assert all(r.tenant == observer.tenant for r in listed)
            for run_id, owner in runs:
                if owner.tenant == observer.tenant:
                    continue
                with pytest.raises(RunNotFound):
                    await app.get_run(run_id, principal=observer)
                with pytest.raises(RunNotFound):
                    await app.cancel(run_id, principal=observer)
                assert run_id not in {r.id for r in listed}
                # paging from another tenant's run id finds nothing either
                assert await app.list_runs(principal=observer, before=run_id) == []
            for session_id, owner in sessions:
                if owner.tenant == observer.tenant:
                    continue
                with pytest.raises(SessionNotFound):
                    await app.get_session(session_id, principal=observer)
                with pytest.raises(SessionNotFound):  # nor resume it to run a workflow
                    await app.invoke_as(observer, "visit", {}, session=session_id)
            # guessing ids finds nothing
            with pytest.raises(RunNotFound):
                await app.get_run("0" * 32, principal=observer)

        for run_id, owner in runs:  # the owners still can
            assert (await app.get_run(run_id, principal=owner)).run_id == run_id
        for observer, events in zip(observers, seen, strict=True):
            if any(owner.tenant == observer.tenant for _, owner in runs):
                assert [e for e in events if not _is_marker(e)] or not _reads(observer)
            assert all(
                e.tenant == observer.tenant
                or (e.tenant is None and e.type == "workflow.registered")
                for e in events
            ), [e for e in events if e.tenant != observer.tenant]
        for sub in subs:
            await sub.aclose()
        tg.cancel_scope.cancel()


async def test_within_a_tenant_members_see_their_own_runs_only(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 't.db'}", security=secured(roles=ROLES))
    async with app:
        ann = principal("ann", "acme", "member")
        bob = principal("bob", "acme", "member")
        boss = principal("boss", "acme", "operator")
        mine = await app.invoke_as(ann, "greet", {})
        theirs = await app.invoke_as(bob, "nap", {"seconds": 30}, wait=False)
        assert [r.id for r in await app.list_runs(principal=ann)] == [mine.run_id]
        with pytest.raises(RunNotFound):  # same tenant, not hers, no runs:read
            await app.get_run(theirs.run_id, principal=ann)
        with pytest.raises(RunNotFound):
            await app.cancel(theirs.run_id, principal=ann)
        assert {r.id for r in await app.list_runs(principal=boss)} == {mine.run_id, theirs.run_id}
        assert (await app.get_run(mine.run_id, principal=boss)).status == "completed"
        assert await app.cancel(theirs.run_id, principal=boss) is True
        denied = await app.security.query_audit(principal=ann.id)
        assert {(r.action, r.outcome) for r in denied} >= {("runs:read", "forbidden")}


async def test_reading_without_cancelling() -> None:
    roles = {"viewer": ["workflow:*:execute", "runs:read"]}
    app = make_app(security=secured(roles=roles))
    async with app:
        owner = Principal(id="owner", roles=("viewer",))
        viewer = Principal(id="viewer", roles=("viewer",))
        run = await app.invoke_as(owner, "nap", {"seconds": 30}, wait=False)
        assert (await app.get_run(run.run_id, principal=viewer)).run_id == run.run_id
        with pytest.raises(PermissionDenied, match="may not cancel"):
            await app.cancel(run.run_id, principal=viewer)
        assert await app.cancel(run.run_id, principal=owner) is True


async def test_sessions_belong_to_their_owner_unless_sessions_admin() -> None:
    app = make_app(security=secured(roles=ROLES))
    async with app:
        ann = principal("ann", "acme", "member")
        bob = principal("bob", "acme", "member")
        boss = principal("boss", "acme", "operator")
        session = await app.create_session(principal=ann)
        assert (await app.get_session(session.id, principal=ann)).id == session.id
        with pytest.raises(SessionNotFound):
            await app.get_session(session.id, principal=bob)
        assert (await app.get_session(session.id, principal=boss)).id == session.id
        # a session nobody owns: whoever of its tenant holds the token
        shared = await app.create_session(
            principal=Principal(id="x", tenant="acme", anonymous=True)
        )
        assert (await app.get_session(shared.id, principal=bob)).id == shared.id
        with pytest.raises(SessionNotFound):
            await app.get_session(shared.id, principal=principal("eve", "globex", "operator"))


async def test_events_need_events_read() -> None:
    app = make_app(security=secured(roles=ROLES))
    async with app:
        member = principal("ann", "acme", "member")
        with pytest.raises(PermissionDenied, match="events:read"):
            app.subscribe(("run.*",), principal=member)
        with anyio.fail_after(10):  # the denial is audited in the background
            while not (records := await app.security.query_audit(principal=member.id)):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        [record] = records
        assert (record.action, record.outcome) == ("events:read", "forbidden")


async def test_audit_queries_on_behalf_of_a_viewer_are_tenant_scoped() -> None:
    roles = {**ROLES, "auditor": ["audit:read"]}
    app = make_app(security=secured(roles=roles))
    async with app:
        for tenant in ("acme", "globex"):
            await app.invoke_as(principal("ann", tenant, "member"), "greet", {})
        auditor = principal("eve", "acme", "auditor")
        records = await app.security.query_audit(viewer=auditor)
        assert [r.tenant for r in records] == ["acme"]
        with pytest.raises(PermissionDenied):
            await app.security.query_audit(viewer=principal("ann", "acme", "member"))
        everything = await app.security.query_audit()  # in-process: no viewer, no scope
        assert {r.tenant for r in everything} == {"acme", "globex"}


async def test_nexus_without_principal_is_the_trusted_in_process_view() -> None:
    app = make_app(security=secured(roles=ROLES))
    async with app:
        run = await app.invoke_as(principal("ann", "globex", "member"), "greet", {})
        assert (await app.get_run(run.run_id)).run_id == run.run_id
        assert len(await app.list_runs()) == 1
