"""The storage contract suites: one per role, and :class:`StorageContract` for them all.

A backend runs the suite of every role it declares (:attr:`Backend.roles`),
reusing it with a few lines in its own tests::

    import pytest
    from nexus_core.testing import CacheContract, BlobStoreContract


    class TestMyBackend(CacheContract, BlobStoreContract):
        @pytest.fixture
        def storage_factory(self, tmp_path):
            # A callable returning a new, unopened backend over EMPTY data on each
            # call (a fresh file, database schema or key prefix).
            counter = iter(range(1_000_000))
            return lambda: MyBackend(f"my://{tmp_path}/db{next(counter)}")

A backend serving every role (a :class:`~nexus_core.storage.base.Storage`)
mixes in :class:`StorageContract`, which is all of them plus a hypothesis state
machine over every role at once (:func:`storage_state_machine`).

Suites per role: :class:`SessionStoreContract`, :class:`RunStoreContract`
(runs, checkpoints, leases with fencing, and :func:`lease_state_machine`),
:class:`EventLogContract`, :class:`AuditLogContract`,
:class:`CredentialStoreContract`, :class:`CacheContract` (values and token
buckets) and :class:`BlobStoreContract`.

Fixtures: ``storage_factory`` (override it) gives every test, including the
state machines and the hypothesis tests, which need a new empty backend per
example. A backend that can only supply one opened backend may instead
override the ``storage`` fixture (an async generator yielding an opened, empty
backend, closed afterwards); the tests that need new backends are then
skipped. ``reopen`` returns a new, unopened backend over the same data as a
closed one (``type(backend)(backend.url)`` by default): the close-and-reopen
tests of a persistent backend use it.

The tests are ``@pytest.mark.anyio`` coroutines, run on the backend named by
the class's ``anyio_backend`` fixture (``"asyncio"``; override it to run on
others). Needs pytest, anyio's pytest plugin (installed with anyio) and
hypothesis: ``pip install nexus-core[test]``.

What the suites pin down, beyond the docstrings of the role contracts in
:mod:`nexus_core.storage.base`:

* records come back equal to what was stored, and are copies: mutating a
  returned (or a stored) record does not change the store;
* a new record whose id is in use raises
  :class:`~nexus_core.storage.base.AlreadyExists` ("already exists") and
  stores nothing;
* a persistent backend keeps everything across a close and reopen;
* ``save_session``/``save_run`` change only the mutable fields and do nothing for
  an unknown id;
* runs are ordered by ``(created_at, id)`` whatever order they were created
  in: ``list_runs`` newest first (paging with ``before`` returns every run
  once), ``unfinished_runs`` and ``claimable_runs`` oldest first; an unknown
  ``before`` (or another tenant's) gives an empty page;
* leases: a claim takes an unleased or expired unfinished run and adds one to
  its fence, one of concurrent claims wins, a heartbeat renews only what its
  owner still holds, and a write with a stale fence raises
  :class:`~nexus_core.storage.base.LeaseLost` and changes nothing;
* the log gives event ids: increasing in append order, ``read_events`` after
  an id works once that event is pruned; events come back with every field
  (a ``None`` ``run_id`` included);
* audit records come oldest first by ``time``, ties in append order;
* pruning deletes finished runs (and their checkpoints), a prefix of the
  event log and audit records older than its cut-off, at most ``limit`` per
  call, and frees a pruned run's idempotency key (a backend whose
  ``prune_*`` raises ``NotImplementedError`` skips these tests);
* credentials are found by ``(kind, token_hash)`` and by id, revoked ones
  included; ``revoke_credential`` keeps the earliest revocation time;
* keys and prefixes are plain text: ``*``, ``?``, ``[``, ``%`` and ``_`` match
  only themselves.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ..events import Event
from ..storage.base import (
    ROLES,
    AlreadyExists,
    AuditLog,
    AuditRecord,
    Backend,
    BlobStore,
    Cache,
    CredentialRecord,
    CredentialStore,
    EventLog,
    LeaseLost,
    NodeCheckpoint,
    RunFinish,
    RunRecord,
    RunStore,
    SessionRecord,
    SessionStore,
    Storage,
    event_seq,
)

__all__ = [
    "AuditLogContract",
    "BackendFactory",
    "BlobStoreContract",
    "CacheContract",
    "CredentialStoreContract",
    "EventLogContract",
    "RunStoreContract",
    "SessionStoreContract",
    "StorageContract",
    "StorageFactory",
    "lease_state_machine",
    "storage_state_machine",
]

#: Returns a new, unopened backend over empty data on each call.
BackendFactory = Callable[[], Backend]
#: Returns a new, unopened Storage (every role) over empty data on each call.
StorageFactory = Callable[[], Storage]

_HOUR = 3600.0


def _session(
    sid: str = "s1", *, tenant: str = "default", expires_in: float = _HOUR
) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        id=sid,
        tenant=tenant,
        principal="alice",
        created_at=now,
        last_seen_at=now,
        expires_at=now + expires_in,
        ttl=abs(expires_in),
        channels=["api"],
        state={"step": 1, "nested": {"items": [1, 2, 3]}},
    )


def _run(rid: str = "r1", **fields: Any) -> RunRecord:
    fields.setdefault("workflow", "greet")
    fields.setdefault("created_at", 1000.0)
    fields.setdefault("inputs", {"name": "Ada", "tags": ["a", "b"]})
    return RunRecord(id=rid, **fields)


def _audit(aid: str, t: float, **fields: Any) -> AuditRecord:
    fields.setdefault("action", "invoke")
    fields.setdefault("outcome", "allowed")
    return AuditRecord(id=aid, time=t, **fields)


def _credential(cid: str, **fields: Any) -> CredentialRecord:
    fields.setdefault("kind", "api_key")
    fields.setdefault("token_hash", f"hash-of-{cid}")
    fields.setdefault("principal", "alice")
    fields.setdefault("created_at", 1000.0)
    return CredentialRecord(id=cid, **fields)


async def _skip_unless_prunes(prune: Callable[..., Awaitable[int]]) -> None:
    """Skip the test when ``prune`` (a ``prune_*`` method) raises ``NotImplementedError``."""
    try:
        await prune(0.0, limit=1)  # an empty store: nothing goes
    except NotImplementedError:
        pytest.skip(f"this backend does not implement {prune.__name__} (retention is ignored)")


def _portal_settings(**overrides: Any) -> settings:
    return settings(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        **overrides,
    )


class _BackendContract:
    """What every role suite shares: the fixtures, and the lifecycle tests."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: Settings of the hypothesis state machines; a slow backend may lower them.
    state_machine_settings: ClassVar[settings] = settings(
        max_examples=30,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The async library the tests run on."""
        return "asyncio"

    @pytest.fixture
    def storage_factory(self) -> BackendFactory:
        """Override: a callable returning a new, unopened backend over empty data per call."""
        pytest.skip("define a storage_factory fixture to run this test")

    @pytest.fixture
    def reopen(self) -> Callable[[Backend], Backend]:
        """A new, unopened backend over the same data as a closed one (override if needed)."""
        return lambda backend: type(backend)(backend.url)

    @pytest.fixture
    async def storage(self, storage_factory: BackendFactory) -> AsyncIterator[Any]:
        """An opened, empty backend, closed after the test."""
        store = storage_factory()
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    async def _reopened(
        self,
        storage_factory: BackendFactory,
        reopen: Callable[[Backend], Backend],
        fill: Callable[[Any], Awaitable[None]],
        check: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Fill a new backend, close it, and check the data through a reopened one."""
        store = storage_factory()
        if not store.persistent:
            pytest.skip("not a persistent backend: nothing survives a close")
        await store.open()
        try:
            await fill(store)
        finally:
            await store.close()
        again = reopen(store)
        await again.open()
        try:
            await check(again)
        finally:
            await again.close()

    # -- lifecycle -------------------------------------------------------------

    async def test_ping_and_persistent(self, storage: Backend) -> None:
        """An opened backend answers ping; ``persistent`` is a bool."""
        assert await storage.ping() is True
        assert isinstance(storage.persistent, bool)


class SessionStoreContract(_BackendContract):
    """The ``"sessions"`` role (:class:`~nexus_core.storage.base.SessionStore`)."""

    async def test_session_create_get(self, storage: SessionStore) -> None:
        """A created session reads back equal; an unknown id is None."""
        session = _session("s1")
        await storage.create_session(session)
        assert await storage.get_session("s1") == session
        assert await storage.get_session("nope") is None

    async def test_session_tenant_scoping(self, storage: SessionStore) -> None:
        """A session of another tenant reads as None; no tenant means any."""
        await storage.create_session(_session("s1", tenant="acme"))
        assert await storage.get_session("s1", tenant="other") is None
        found = await storage.get_session("s1", tenant="acme")
        assert found is not None
        assert found.tenant == "acme"
        assert await storage.get_session("s1") == found

    async def test_session_expired_is_not_returned(self, storage: SessionStore) -> None:
        """A session whose ``expires_at`` is past reads as None."""
        await storage.create_session(_session("old", expires_in=-1.0))
        assert await storage.get_session("old") is None

    async def test_session_save_replaces_mutable_fields(self, storage: SessionStore) -> None:
        """save_session changes last seen, expiry, ttl, channels, state, nothing else."""
        session = _session("s1", tenant="acme")
        await storage.create_session(session)
        changed = msgspec.structs.replace(
            session,
            last_seen_at=session.last_seen_at + 5,
            expires_at=session.expires_at + 60,
            ttl=session.ttl + 60,
            channels=["api", "cli"],
            state={"step": 2},
            # Identity fields are not the caller's to change:
            tenant="intruder",
            principal="mallory",
            created_at=0.0,
        )
        await storage.save_session(changed)
        assert await storage.get_session("s1", tenant="intruder") is None
        assert await storage.get_session("s1", tenant="acme") == msgspec.structs.replace(
            changed, tenant="acme", principal="alice", created_at=session.created_at
        )

    async def test_session_save_unknown_does_nothing(self, storage: SessionStore) -> None:
        """Saving a session that was never created does not create it."""
        await storage.save_session(_session("ghost"))
        assert await storage.get_session("ghost") is None

    async def test_session_delete(self, storage: SessionStore) -> None:
        """delete_session removes one session; deleting twice or unknown is fine."""
        await storage.create_session(_session("s1"))
        await storage.create_session(_session("s2"))
        await storage.delete_session("s1")
        await storage.delete_session("s1")  # again: no error
        await storage.delete_session("never-existed")
        assert await storage.get_session("s1") is None
        assert await storage.get_session("s2") is not None

    async def test_session_expire_and_count(self, storage: SessionStore) -> None:
        """expire_sessions deletes and returns the expired; count_sessions counts live."""
        now = time.time()
        await storage.create_session(_session("live1"))
        await storage.create_session(_session("live2", tenant="other"))
        await storage.create_session(_session("dead1", expires_in=-10))
        await storage.create_session(_session("dead2", expires_in=-20))
        assert await storage.count_sessions(now) == 2
        assert await storage.count_sessions(now - 15) == 3  # dead1 was live then
        assert sorted(await storage.expire_sessions(now)) == ["dead1", "dead2"]
        assert await storage.expire_sessions(now) == []
        assert await storage.count_sessions(now) == 2
        assert sorted(await storage.expire_sessions(now + 2 * _HOUR)) == ["live1", "live2"]
        assert await storage.count_sessions(now) == 0

    async def test_session_records_are_copies(self, storage: SessionStore) -> None:
        """Mutating a stored or returned session does not change the store."""
        session = _session("s1")
        await storage.create_session(session)
        session.state["step"] = 99
        session.channels.append("mutated")
        got = await storage.get_session("s1")
        assert got is not None
        assert got.state["step"] == 1
        assert got.channels == ["api"]
        got.state["nested"]["items"].append(4)
        again = await storage.get_session("s1")
        assert again is not None
        assert again.state["nested"]["items"] == [1, 2, 3]

    async def test_session_duplicate_id_is_refused(self, storage: SessionStore) -> None:
        """A session id in use raises AlreadyExists ("already exists"); nothing changes."""
        first = _session("s1")
        await storage.create_session(first)
        with pytest.raises(AlreadyExists, match="already exists"):
            await storage.create_session(_session("s1", tenant="intruder"))
        assert await storage.get_session("s1") == first
        assert await storage.get_session("s1", tenant="intruder") is None

    async def test_sessions_survive_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent backend keeps its sessions across a close and reopen."""
        session = _session("s1", tenant="acme")

        async def fill(store: SessionStore) -> None:
            await store.create_session(session)

        async def check(store: SessionStore) -> None:
            assert await store.get_session("s1") == session
            assert await store.count_sessions(time.time()) == 1

        await self._reopened(storage_factory, reopen, fill, check)


class RunStoreContract(_BackendContract):
    """The ``"runs"`` role (:class:`~nexus_core.storage.base.RunStore`), leases included."""

    async def test_run_create_get(self, storage: RunStore) -> None:
        """A created run reads back equal, scoped by tenant."""
        run = _run("r1", tenant="acme", principal="alice", session_id="s1", channel="api")
        stored, created = await storage.create_run(run)
        assert created is True
        assert stored == run
        assert await storage.get_run("r1") == run
        assert await storage.get_run("r1", tenant="acme") == run
        assert await storage.get_run("r1", tenant="other") is None
        assert await storage.get_run("nope") is None

    async def test_run_save_replaces_mutable_fields(self, storage: RunStore) -> None:
        """save_run changes status, output, error, times, nothing else (owner and lease neither)."""
        run = _run("r1", tenant="acme", idempotency_key="k1", input_hash="h1")
        await storage.create_run(run)
        done = msgspec.structs.replace(
            run,
            status="failed",
            output={"partial": [1, 2]},
            error={"code": "boom", "message": "it broke"},
            started_at=1001.0,
            finished_at=1002.5,
            # Identity fields are not the caller's to change, nor the lease:
            owner="gateway-1",
            lease_expires_at=99.0,
            tenant="intruder",
            workflow="other",
            inputs={"evil": True},
            created_at=5.0,
            idempotency_key="k2",
        )
        await storage.save_run(done)
        expected = msgspec.structs.replace(
            run,
            status="failed",
            output={"partial": [1, 2]},
            error={"code": "boom", "message": "it broke"},
            started_at=1001.0,
            finished_at=1002.5,
        )
        assert await storage.get_run("r1") == expected
        assert await storage.get_run("r1", tenant="intruder") is None
        # Saving back clears what is now None.
        await storage.save_run(msgspec.structs.replace(expected, status="running", error=None))
        got = await storage.get_run("r1")
        assert got is not None
        assert (got.status, got.error) == ("running", None)

    async def test_run_save_unknown_does_nothing(self, storage: RunStore) -> None:
        """Saving a run that was never created does not create it."""
        await storage.save_run(_run("ghost", status="completed"))
        assert await storage.get_run("ghost") is None
        assert await storage.list_runs() == []

    async def test_run_records_are_copies(self, storage: RunStore) -> None:
        """Mutating a stored or returned run does not change the store."""
        run = _run("r1")
        await storage.create_run(run)
        run.inputs["name"] = "mutated"
        got = await storage.get_run("r1")
        assert got is not None
        assert got.inputs["name"] == "Ada"
        got.inputs["tags"].append("c")
        again = await storage.get_run("r1")
        assert again is not None
        assert again.inputs["tags"] == ["a", "b"]

    async def test_list_runs_filters(self, storage: RunStore) -> None:
        """list_runs filters by tenant, workflow, status, session, principal; limit."""
        specs = [
            ("r1", "acme", "wf-a", "completed", "s1", "alice"),
            ("r2", "acme", "wf-b", "running", "s1", "bob"),
            ("r3", "acme", "wf-a", "running", "s2", "alice"),
            ("r4", "other", "wf-a", "completed", None, "alice"),
            ("r5", "other", "wf-b", "failed", None, None),
        ]
        for i, (rid, tenant, workflow, status, sid, principal) in enumerate(specs):
            await storage.create_run(
                _run(
                    rid,
                    tenant=tenant,
                    workflow=workflow,
                    status=status,
                    session_id=sid,
                    principal=principal,
                    created_at=1000.0 + i,
                )
            )

        async def ids(**filters: Any) -> list[str]:
            return [r.id for r in await storage.list_runs(**filters)]

        assert await ids() == ["r5", "r4", "r3", "r2", "r1"]
        assert await ids(tenant="acme") == ["r3", "r2", "r1"]
        assert await ids(tenant="nobody") == []
        assert await ids(workflow="wf-a") == ["r4", "r3", "r1"]
        assert await ids(status="running") == ["r3", "r2"]
        assert await ids(session_id="s1") == ["r2", "r1"]
        assert await ids(principal="alice") == ["r4", "r3", "r1"]
        assert await ids(tenant="acme", workflow="wf-a", principal="alice") == ["r3", "r1"]
        assert await ids(tenant="other", status="failed") == ["r5"]
        assert await ids(limit=2) == ["r5", "r4"]
        assert await ids(limit=0) == []

    async def test_list_runs_newest_first_and_paging(self, storage: RunStore) -> None:
        """Runs come newest first by (created_at, id); ``before`` pages."""
        # Inserted out of order; ties in created_at are broken by id.
        created = {"r3": 3.0, "r1": 1.0, "r6": 5.0, "r2": 2.0, "r5": 5.0, "r4": 4.0, "r7": 7.0}
        for rid, at in created.items():
            await storage.create_run(_run(rid, created_at=at))
        expected = ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]
        assert [r.id for r in await storage.list_runs()] == expected
        pages: list[list[str]] = []
        before: str | None = None
        while True:
            page = [r.id for r in await storage.list_runs(limit=3, before=before)]
            if not page:
                break
            pages.append(page)
            before = page[-1]
        assert pages == [["r7", "r6", "r5"], ["r4", "r3", "r2"], ["r1"]]
        assert [r.id for r in await storage.list_runs(before="r5", limit=2)] == ["r4", "r3"]
        assert await storage.list_runs(before="unknown-run") == []

    async def test_list_runs_before_of_another_tenant_is_unknown(self, storage: RunStore) -> None:
        """A ``before`` cursor of another tenant gives nothing."""
        await storage.create_run(_run("a1", tenant="acme", created_at=1.0))
        await storage.create_run(_run("o1", tenant="other", created_at=2.0))
        await storage.create_run(_run("a2", tenant="acme", created_at=3.0))
        assert [r.id for r in await storage.list_runs(tenant="acme", before="a2")] == ["a1"]
        assert await storage.list_runs(tenant="acme", before="o1") == []
        assert [r.id for r in await storage.list_runs(before="o1")] == ["a1"]

    async def test_idempotent_create(self, storage: RunStore) -> None:
        """One key, tenant and principal: one run; the second create returns it, not created."""
        first, created = await storage.create_run(
            _run("r1", tenant="acme", principal="ann", idempotency_key="key-1", input_hash="h")
        )
        assert created is True
        again, created = await storage.create_run(
            _run(
                "r2",
                tenant="acme",
                principal="ann",
                idempotency_key="key-1",
                input_hash="h2",
                created_at=2e3,
            )
        )
        assert created is False
        assert again == first
        assert await storage.get_run("r2") is None
        # The key is scoped to the tenant...
        other, created = await storage.create_run(
            _run("r3", tenant="other", principal="ann", idempotency_key="key-1")
        )
        assert created is True
        assert other.id == "r3"
        # ...and to the principal: another principal's equal key is a different key.
        bobs, created = await storage.create_run(
            _run("r6", tenant="acme", principal="bob", idempotency_key="key-1", input_hash="h")
        )
        assert (bobs.id, created) == ("r6", True)
        # Without a principal, the key is unique among the runs without one.
        nobody, created = await storage.create_run(
            _run("r7", tenant="acme", idempotency_key="key-1", input_hash="h")
        )
        assert (nobody.id, created) == ("r7", True)
        again, created = await storage.create_run(
            _run("r8", tenant="acme", idempotency_key="key-1", input_hash="h")
        )
        assert (again.id, created) == ("r7", False)
        # Without a key nothing is deduplicated.
        assert (await storage.create_run(_run("r4", tenant="acme")))[1] is True
        assert (await storage.create_run(_run("r5", tenant="acme")))[1] is True
        assert {r.id for r in await storage.list_runs(tenant="acme")} == {
            "r1",
            "r4",
            "r5",
            "r6",
            "r7",
        }

    async def test_idempotent_create_concurrent(self, storage: RunStore) -> None:
        """20 concurrent creates with one key make exactly one run."""
        results: list[tuple[RunRecord, bool]] = []

        async def create(i: int) -> None:
            run = _run(f"r{i}", tenant="acme", idempotency_key="same", created_at=1000.0 + i)
            results.append(await storage.create_run(run))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(create, i)
        assert len(results) == 20
        assert sum(created for _, created in results) == 1
        winner = next(run for run, created in results if created)
        assert all(run == winner for run, _ in results)
        assert [r.id for r in await storage.list_runs(tenant="acme")] == [winner.id]

    async def test_unfinished_runs(self, storage: RunStore) -> None:
        """unfinished_runs lists pending and running runs, oldest first."""
        statuses = ["completed", "running", "pending", "failed", "cancelled", "pending"]
        for i, status in enumerate(statuses):
            await storage.create_run(_run(f"r{i}", status=status, created_at=100.0 - i))
        assert [r.id for r in await storage.unfinished_runs()] == ["r5", "r2", "r1"]
        run = await storage.get_run("r2")
        assert run is not None
        await storage.save_run(msgspec.structs.replace(run, status="completed"))
        assert [r.id for r in await storage.unfinished_runs()] == ["r5", "r1"]

    async def test_checkpoints(self, storage: RunStore) -> None:
        """Checkpoints are kept per run and node; a node's new one replaces the old."""
        assert await storage.get_checkpoints("r1") == {}
        await storage.create_run(_run("r1", fence=3))
        await storage.create_run(_run("r2"))
        a = NodeCheckpoint(run_id="r1", node_id="a", status="completed", output={"x": 1}, fence=3)
        b = NodeCheckpoint(
            run_id="r1",
            node_id="b",
            status="failed",
            error="boom",
            started_at=5.0,
            duration_ms=12.5,
            attempts=2,
            fence=3,
        )
        other = NodeCheckpoint(run_id="r2", node_id="a", status="completed", output=[1, 2])
        for checkpoint in (a, b, other):
            await storage.save_checkpoint(checkpoint)
        assert await storage.get_checkpoints("r1") == {"a": a, "b": b}
        retried = msgspec.structs.replace(b, status="completed", error=None, output=3, attempts=3)
        await storage.save_checkpoint(retried)
        assert await storage.get_checkpoints("r1") == {"a": a, "b": retried}
        assert await storage.get_checkpoints("r2") == {"a": other}

    async def test_finish_run_stores_the_last_checkpoints_and_the_run(
        self, storage: RunStore
    ) -> None:
        """``finish_run`` is ``save_checkpoint`` for each, then ``save_run``."""
        run = _run("r1", status="running")
        await storage.create_run(run)
        first = NodeCheckpoint(run_id="r1", node_id="a", status="completed", output=1)
        await storage.save_checkpoint(first)
        last = NodeCheckpoint(run_id="r1", node_id="b", status="completed", output={"y": 2})
        done = msgspec.structs.replace(run, status="completed", output={"y": 2}, finished_at=9.0)
        await storage.finish_run(done)  # no checkpoints: just the run
        await storage.finish_run(done, [last])
        stored = await storage.get_run("r1")
        assert stored is not None
        assert (stored.status, stored.output, stored.finished_at) == ("completed", {"y": 2}, 9.0)
        assert await storage.get_checkpoints("r1") == {"a": first, "b": last}

    async def test_run_duplicate_id_is_refused(self, storage: RunStore) -> None:
        """A run id in use raises AlreadyExists ("already exists"); nothing changes."""
        first = _run("r1", tenant="acme")
        await storage.create_run(first)
        for again in (
            _run("r1", tenant="other", created_at=2.0),
            _run("r1", idempotency_key="fresh-key"),
        ):
            with pytest.raises(AlreadyExists, match="already exists"):
                await storage.create_run(again)
        assert await storage.get_run("r1") == first
        assert [r.id for r in await storage.list_runs()] == ["r1"]
        # The refused run's idempotency key was not taken.
        fresh, created = await storage.create_run(_run("r2", idempotency_key="fresh-key"))
        assert (fresh.id, created) == ("r2", True)

    async def test_checkpoint_records_are_copies(self, storage: RunStore) -> None:
        """Mutating a stored or returned checkpoint does not change the store."""
        await storage.create_run(_run("r1"))
        checkpoint = NodeCheckpoint(run_id="r1", node_id="a", status="completed", output=[1])
        await storage.save_checkpoint(checkpoint)
        checkpoint.output.append(2)
        got = await storage.get_checkpoints("r1")
        assert got["a"].output == [1]
        got["a"].output.append(3)
        assert (await storage.get_checkpoints("r1"))["a"].output == [1]

    def test_list_runs_tie_break_whatever_the_creation_order(
        self,
        storage_factory: BackendFactory,
        anyio_backend_name: str,
        anyio_backend_options: dict[str, Any],
    ) -> None:
        """Many runs with equal ``created_at``, created in random order, page exactly once each.

        Paging with ``before`` from the first page to the last returns every
        run once, in ``(created_at, id)`` descending order.
        """

        @_portal_settings(max_examples=15)
        @given(
            times=st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=1, max_size=30),
            seed=st.integers(0, 2**32 - 1),
            page=st.integers(1, 7),
        )
        def check(times: list[float], seed: int, page: int) -> None:
            # Ids that sort differently from their numbers: r10 < r2.
            runs = [_run(f"r{i}", created_at=at) for i, at in enumerate(times)]
            random.Random(seed).shuffle(runs)
            expected = [r.id for r in sorted(runs, key=lambda r: (r.created_at, r.id))][::-1]

            async def scenario() -> None:
                store = storage_factory()
                assert isinstance(store, RunStore)
                await store.open()
                try:
                    for run in runs:
                        await store.create_run(run)
                    seen: list[str] = []
                    before: str | None = None
                    while got := await store.list_runs(limit=page, before=before):
                        assert len(got) <= page
                        seen.extend(r.id for r in got)
                        before = got[-1].id
                    assert seen == expected
                finally:
                    await store.close()

            portal.call(scenario)

        with start_blocking_portal(anyio_backend_name, anyio_backend_options) as portal:
            check()

    async def test_runs_survive_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent backend keeps runs, checkpoints, leases and keys across a reopen."""
        run = _run(
            "r1", tenant="acme", idempotency_key="k", owner="o1", fence=2, lease_expires_at=5000.0
        )
        done = _run("r2", status="completed", finished_at=1001.0, output={"ok": True})
        checkpoint = NodeCheckpoint(run_id="r1", node_id="a", status="completed", fence=2)

        async def fill(store: RunStore) -> None:
            await store.create_run(run)
            await store.create_run(done)
            await store.save_checkpoint(checkpoint)

        async def check(store: RunStore) -> None:
            assert await store.get_run("r1") == run
            assert await store.get_run("r2") == done
            assert await store.get_checkpoints("r1") == {"a": checkpoint}
            assert [r.id for r in await store.unfinished_runs()] == ["r1"]
            again, created = await store.create_run(_run("r3", tenant="acme", idempotency_key="k"))
            assert (again.id, created) == ("r1", False)
            assert await store.claim_run("r1", "o2", lease=10.0, now=4000.0) is None

        await self._reopened(storage_factory, reopen, fill, check)

    # -- leases ----------------------------------------------------------------

    async def test_create_run_stores_the_lease_as_given(self, storage: RunStore) -> None:
        """A new run keeps the owner, fence and lease it was created with."""
        leased = _run("r1", owner="o1", fence=1, lease_expires_at=1030.0)
        stored, created = await storage.create_run(leased)
        assert created
        assert stored == leased
        assert await storage.get_run("r1") == leased
        unleased = await storage.create_run(_run("r2"))
        assert (unleased[0].owner, unleased[0].fence, unleased[0].lease_expires_at) == (
            None,
            0,
            None,
        )

    async def test_claim_an_unleased_or_expired_run(self, storage: RunStore) -> None:
        """A claim takes an unleased or expired run: owner set, fence + 1, lease from ``now``."""
        await storage.create_run(_run("r1", status="running", inputs={"x": 1}))
        claimed = await storage.claim_run("r1", "o1", lease=30.0, now=1000.0)
        assert claimed is not None
        assert (claimed.owner, claimed.fence, claimed.lease_expires_at) == ("o1", 1, 1030.0)
        assert (claimed.status, claimed.inputs) == ("running", {"x": 1})
        assert await storage.get_run("r1") == claimed
        # Expired (at its expiry time exactly, too): another owner takes it over.
        again = await storage.claim_run("r1", "o2", lease=30.0, now=1030.0)
        assert again is not None
        assert (again.owner, again.fence, again.lease_expires_at) == ("o2", 2, 1060.0)
        # A pending run is claimable too.
        await storage.create_run(_run("r2", owner="gone", fence=4, lease_expires_at=10.0))
        taken = await storage.claim_run("r2", "o1", lease=5.0, now=11.0)
        assert taken is not None
        assert (taken.owner, taken.fence, taken.lease_expires_at) == ("o1", 5, 16.0)

    async def test_claim_of_a_live_lease_finished_or_unknown_run_fails(
        self, storage: RunStore
    ) -> None:
        """A live lease, a finished run or an unknown id: None, and nothing changes."""
        live = _run("r1", status="running", owner="o1", fence=3, lease_expires_at=1030.0)
        await storage.create_run(live)
        assert await storage.claim_run("r1", "o2", lease=30.0, now=1029.9) is None
        assert await storage.claim_run("r1", "o1", lease=30.0, now=1000.0) is None  # its own too
        assert await storage.get_run("r1") == live
        for status in ("completed", "failed", "cancelled"):
            done = _run(f"done-{status}", status=status, finished_at=1.0)
            await storage.create_run(done)
            assert await storage.claim_run(done.id, "o2", lease=30.0, now=5000.0) is None
            assert await storage.get_run(done.id) == done
        assert await storage.claim_run("unknown", "o2", lease=30.0, now=5000.0) is None
        assert await storage.get_run("unknown") is None

    async def test_concurrent_claims_one_wins(self, storage: RunStore) -> None:
        """20 concurrent claimers of one expired run: exactly one gets it."""
        await storage.create_run(
            _run("r1", status="running", owner="dead", fence=7, lease_expires_at=10.0)
        )
        results: dict[str, RunRecord | None] = {}

        async def claim(owner: str) -> None:
            results[owner] = await storage.claim_run("r1", owner, lease=30.0, now=100.0)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(claim, f"o{n}")
        winners = [owner for owner, got in results.items() if got is not None]
        assert len(results) == 20
        assert len(winners) == 1
        stored = await storage.get_run("r1")
        assert stored is not None
        assert (stored.owner, stored.fence) == (winners[0], 8)
        assert results[winners[0]] == stored

    async def test_renew_leases_returns_only_what_is_held(self, storage: RunStore) -> None:
        """A heartbeat extends the leases its owner holds with those fences, and says which."""
        lease = {"owner": "o1", "lease_expires_at": 1030.0}
        await storage.create_run(_run("mine", status="running", fence=2, **lease))
        await storage.create_run(_run("stale", status="running", fence=5, **lease))
        await storage.create_run(
            _run("theirs", status="running", fence=1, owner="o2", lease_expires_at=1030.0)
        )
        await storage.create_run(_run("done", status="completed", fence=1, **lease))
        fences = {"mine": 2, "stale": 4, "theirs": 1, "done": 1, "unknown": 1}
        assert await storage.renew_leases("o1", fences, until=2000.0) == {"mine"}
        assert await storage.renew_leases("o1", {}, until=2000.0) == set()
        expires = {}
        for rid in ("mine", "stale", "theirs", "done"):
            run = await storage.get_run(rid)
            assert run is not None
            expires[rid] = run.lease_expires_at
        assert expires == {"mine": 2000.0, "stale": 1030.0, "theirs": 1030.0, "done": 1030.0}
        mine = await storage.get_run("mine")
        assert mine is not None
        assert (mine.owner, mine.fence) == ("o1", 2)  # a heartbeat does not claim

    async def test_release_with_until_in_the_past(self, storage: RunStore) -> None:
        """Renewing to a time past releases the lease: another process may claim at once."""
        await storage.create_run(_run("r1", status="running"))
        claimed = await storage.claim_run("r1", "o1", lease=30.0, now=1000.0)
        assert claimed is not None
        assert await storage.claimable_runs(1001.0) == []
        assert await storage.renew_leases("o1", {"r1": 1}, until=999.0) == {"r1"}
        assert [r.id for r in await storage.claimable_runs(1001.0)] == ["r1"]
        again = await storage.claim_run("r1", "o2", lease=30.0, now=1001.0)
        assert again is not None
        assert (again.owner, again.fence) == ("o2", 2)
        assert await storage.renew_leases("o1", {"r1": 1}, until=5000.0) == set()

    async def test_claimable_runs(self, storage: RunStore) -> None:
        """Unfinished runs with no lease or an expired one at ``now``, oldest first, limited."""
        specs = [
            ("live", "running", 1100.0, 5.0),
            ("expired", "running", 900.0, 4.0),
            ("unleased", "pending", None, 3.0),
            ("at-expiry", "running", 1000.0, 2.0),
            ("done", "completed", None, 1.0),
        ]
        for rid, status, expires, created in specs:
            owner = None if expires is None else "o1"
            await storage.create_run(
                _run(
                    rid,
                    status=status,
                    owner=owner,
                    fence=1 if owner else 0,
                    lease_expires_at=expires,
                    created_at=created,
                )
            )
        assert [r.id for r in await storage.claimable_runs(1000.0)] == [
            "at-expiry",
            "unleased",
            "expired",
        ]
        assert [r.id for r in await storage.claimable_runs(1000.0, limit=2)] == [
            "at-expiry",
            "unleased",
        ]
        assert [r.id for r in await storage.claimable_runs(1200.0)] == [
            "at-expiry",
            "unleased",
            "expired",
            "live",
        ]
        got = await storage.claimable_runs(1000.0, limit=1)
        assert got == [await storage.get_run("at-expiry")]
        # Only the named workflows (a worker's queues): another's backlog starves nobody.
        await storage.create_run(_run("other", workflow="report", created_at=0.5))
        assert [r.id for r in await storage.claimable_runs(1000.0, limit=1)] == ["other"]
        only = await storage.claimable_runs(1000.0, limit=1, workflows=("report",))
        assert [r.id for r in only] == ["other"]
        rest = await storage.claimable_runs(1000.0, workflows=["greet"])
        assert [r.id for r in rest] == ["at-expiry", "unleased", "expired"]
        assert await storage.claimable_runs(1000.0, workflows=()) == []

    async def test_stale_writes_raise_lease_lost_and_change_nothing(
        self, storage: RunStore
    ) -> None:
        """save_run, save_checkpoint and finish_run with a stale fence raise LeaseLost."""
        await storage.create_run(_run("r1", status="running"))
        old = await storage.claim_run("r1", "o1", lease=30.0, now=1000.0)
        assert old is not None
        first = NodeCheckpoint(run_id="r1", node_id="a", status="completed", output=1, fence=1)
        await storage.save_checkpoint(first)
        new = await storage.claim_run("r1", "o2", lease=30.0, now=1031.0)  # o1's lease expired
        assert new is not None
        assert new.fence == 2

        stale_run = msgspec.structs.replace(
            old, status="completed", output="stale", finished_at=1040.0
        )
        stale_a = msgspec.structs.replace(first, output="stale", attempts=9)
        stale_b = NodeCheckpoint(run_id="r1", node_id="b", status="completed", fence=1)
        writes: list[Callable[[], Awaitable[None]]] = [
            lambda: storage.save_run(stale_run),
            lambda: storage.save_checkpoint(stale_a),
            lambda: storage.save_checkpoint(stale_b),
            lambda: storage.finish_run(stale_run),
            lambda: storage.finish_run(stale_run, [stale_a, stale_b]),
        ]
        for write in writes:
            with pytest.raises(LeaseLost) as caught:
                await write()
            assert (caught.value.run_id, caught.value.fence, caught.value.current) == ("r1", 1, 2)
            assert "stale fencing token" in str(caught.value)
        assert await storage.get_run("r1") == new
        assert await storage.get_checkpoints("r1") == {"a": first}

        # finish_run is all or nothing: a current run with a stale checkpoint writes neither.
        done = msgspec.structs.replace(new, status="completed", finished_at=1040.0)
        with pytest.raises(LeaseLost):
            await storage.finish_run(done, [stale_b])
        assert await storage.get_run("r1") == new
        assert await storage.get_checkpoints("r1") == {"a": first}

        # The current owner's writes land.
        b = msgspec.structs.replace(stale_b, fence=2)
        await storage.finish_run(done, [b])
        assert await storage.get_run("r1") == done
        assert await storage.get_checkpoints("r1") == {"a": first, "b": b}

    async def test_checkpoint_of_an_unknown_run_raises_lease_lost(self, storage: RunStore) -> None:
        """A checkpoint of a run that does not exist is refused (and a finish with one)."""
        ghost = NodeCheckpoint(run_id="ghost", node_id="a", status="completed")
        with pytest.raises(LeaseLost) as caught:
            await storage.save_checkpoint(ghost)
        assert caught.value.current is None
        with pytest.raises(LeaseLost):
            await storage.finish_run(_run("ghost", status="completed"), [ghost])
        assert await storage.get_checkpoints("ghost") == {}
        assert await storage.get_run("ghost") is None
        await storage.finish_run(_run("ghost", status="completed"))  # no checkpoints: nothing
        assert await storage.get_run("ghost") is None

    def test_lease_state_machine(
        self,
        storage_factory: BackendFactory,
        anyio_backend_name: str,
        anyio_backend_options: dict[str, Any],
    ) -> None:
        """Claims, heartbeats, expiry, takeovers, stale writes agree with a model (hypothesis)."""
        with start_blocking_portal(anyio_backend_name, anyio_backend_options) as portal:
            machine = lease_state_machine(storage_factory, portal=portal)  # type: ignore[arg-type]
            run_state_machine_as_test(machine, settings=self.state_machine_settings)

    # -- retention -------------------------------------------------------------

    async def test_prune_runs(self, storage: RunStore) -> None:
        """prune_runs deletes finished runs older than the cut-off with their checkpoints.

        In batches of at most ``limit``; unfinished runs stay however old; a
        kept run keeps its checkpoints.
        """
        await _skip_unless_prunes(storage.prune_runs)
        cut = 10_000.0
        old_done = [
            _run(f"old{i}", created_at=cut - 500 - i, status="completed", finished_at=cut - 400)
            for i in range(5)
        ]
        old_running = _run("old-running", created_at=cut - 900, status="running")
        finished_late = _run("late", created_at=cut - 900, status="failed", finished_at=cut + 5)
        recent = _run("recent", created_at=cut + 10, status="completed", finished_at=cut + 20)
        for run in [*old_done, old_running, finished_late, recent]:
            await storage.create_run(run)
            await storage.save_checkpoint(
                NodeCheckpoint(run_id=run.id, node_id="n", status="completed", output=1)
            )
        deleted = []
        while count := await storage.prune_runs(cut, limit=2):
            assert count <= 2
            deleted.append(count)
        assert deleted == [2, 2, 1]
        for run in old_done:
            assert await storage.get_run(run.id) is None
            assert await storage.get_checkpoints(run.id) == {}
        for run in (old_running, finished_late, recent):
            assert await storage.get_run(run.id) is not None
            assert set(await storage.get_checkpoints(run.id)) == {"n"}

    async def test_prune_frees_an_idempotency_key(self, storage: RunStore) -> None:
        """A pruned run's idempotency key may be used again."""
        await _skip_unless_prunes(storage.prune_runs)
        old = _run("old", created_at=1.0, status="completed", finished_at=2.0, idempotency_key="k")
        await storage.create_run(old)
        assert await storage.prune_runs(100.0) == 1
        again = _run("new", created_at=200.0, idempotency_key="k")
        stored, created = await storage.create_run(again)
        assert created
        assert stored.id == "new"


class EventLogContract(_BackendContract):
    """The ``"events"`` role (:class:`~nexus_core.storage.base.EventLog`): one order, log ids."""

    async def test_events_replay_in_append_order(self, storage: EventLog) -> None:
        """Events replay in append order, whatever their own ids and times."""
        # Ids and times deliberately out of order: appending order is what counts.
        events = [
            Event(type="step", id=f"e{(i * 7) % 10}", time=100.0 - i, data={"i": i})
            for i in range(10)
        ]
        logged = [await storage.append_event(event) for event in events]
        assert [e.data["i"] for e in logged] == list(range(10))
        assert await storage.read_events() == logged
        # The log's ids replace the given ones; everything else is as given.
        for given_event, got in zip(events, logged, strict=True):
            assert msgspec.structs.replace(got, id=given_event.id) == given_event

    async def test_event_ids_increase_in_append_order(self, storage: EventLog) -> None:
        """Ids are log positions: increasing (as positions and as text) in append order."""
        assert await storage.last_event_id() is None
        logged = await storage.append_events([Event(type="a", data={"i": i}) for i in range(3)])
        logged += [await storage.append_event(Event(type="b"))]
        logged += await storage.append_events([Event(type="c"), Event(type="c")])
        assert await storage.append_events([]) == []
        positions = [event_seq(e.id) for e in logged]
        assert all(p > 0 for p in positions)
        assert positions == sorted(set(positions))
        assert [e.id for e in logged] == sorted(e.id for e in logged)
        assert await storage.read_events() == logged
        assert await storage.last_event_id() == logged[-1].id
        # Appending one event twice logs it twice, under two ids.
        again = await storage.append_events([logged[0], logged[0]])
        assert len({e.id for e in again}) == 2
        assert event_seq(again[0].id) > positions[-1]
        assert await storage.last_event_id() == again[-1].id

    async def test_events_after_cursor_and_limit(self, storage: EventLog) -> None:
        """``after`` reads later events, a non-position id reads all; ``limit`` pages."""
        events = await storage.append_events([Event(type="step", data={"i": i}) for i in range(12)])
        assert await storage.read_events(after=events[3].id) == events[4:]
        assert await storage.read_events(after=events[-1].id) == []
        assert await storage.read_events(after="not-in-the-log") == events
        assert await storage.read_events(limit=5) == events[:5]
        assert await storage.read_events(limit=0) == []
        # Paging by cursor reads everything once, in order.
        seen: list[Event] = []
        cursor: str | None = None
        while page := await storage.read_events(after=cursor, limit=5):
            seen.extend(page)
            cursor = page[-1].id
        assert seen == events

    async def test_events_run_filter(self, storage: EventLog) -> None:
        """``run_id`` keeps one run's events, also combined with ``after``."""
        events = await storage.append_events(
            [Event(type="x", run_id=("r1" if i % 3 else "r2"), data={"i": i}) for i in range(9)]
        )
        r1 = [e for e in events if e.run_id == "r1"]
        assert await storage.read_events(run_id="r1") == r1
        assert await storage.read_events(run_id="r1", limit=2) == r1[:2]
        # ``after`` may name an event of another run.
        assert await storage.read_events(run_id="r1", after=events[3].id) == [
            e for e in events[4:] if e.run_id == "r1"
        ]
        assert await storage.read_events(run_id="nope") == []

    async def test_events_without_a_run_round_trip(self, storage: EventLog) -> None:
        """Every field comes back, the ones at their defaults too (a None ``run_id``)."""
        bare = Event(type="workflow.registered", time=5.0)
        full = Event(
            type="run.started",
            time=6.0,
            channel="api",
            session_id="s1",
            run_id="r1",
            tenant="acme",
            data={"nested": {"a": [1, None, "x"]}, "empty": {}},
        )
        logged = await storage.append_events([bare, full])
        got = await storage.read_events()
        assert got == logged
        assert (got[0].run_id, got[0].channel, got[0].tenant, got[0].data) == (None, None, None, {})
        assert msgspec.structs.replace(got[0], id=bare.id) == bare
        assert msgspec.structs.replace(got[1], id=full.id) == full
        assert await storage.read_events(run_id="r1") == [logged[1]]

    async def test_event_records_are_copies(self, storage: EventLog) -> None:
        """Mutating an appended or returned event's data does not change the log."""
        event = Event(type="x", data={"items": [1]})
        [logged] = await storage.append_events([event])
        event.data["items"].append(2)
        logged.data["items"].append(3)
        [got] = await storage.read_events()
        assert got.data == {"items": [1]}
        got.data["items"].append(4)
        assert (await storage.read_events())[0].data == {"items": [1]}

    async def test_read_after_a_pruned_event(self, storage: EventLog) -> None:
        """prune_events removes a prefix; reading after a pruned id still reads what follows."""
        await _skip_unless_prunes(storage.prune_events)
        cut = 10_000.0
        events = await storage.append_events(
            [Event(type="step", time=cut - 100 + i * 20, data={"i": i}) for i in range(10)]
        )
        deleted = []
        while count := await storage.prune_events(cut, limit=2):
            assert count <= 2
            deleted.append(count)
        assert sum(deleted) == 5
        assert await storage.read_events() == events[5:]
        assert await storage.read_events(after=events[2].id) == events[5:]  # pruned: a position
        assert await storage.read_events(after=events[6].id) == events[7:]
        assert await storage.last_event_id() == events[-1].id
        # New events continue after the kept ones.
        [later] = await storage.append_events([Event(type="later")])
        assert event_seq(later.id) > event_seq(events[-1].id)

    async def test_prune_events_is_a_prefix(self, storage: EventLog) -> None:
        """An old event after a recent one stays: only a prefix of the log goes."""
        await _skip_unless_prunes(storage.prune_events)
        events = await storage.append_events(
            [Event(type="x", time=t) for t in (1.0, 2.0, 50.0, 3.0)]
        )
        assert await storage.prune_events(10.0) == 2
        assert await storage.read_events() == events[2:]

    async def test_events_survive_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent log keeps its events and its positions across a reopen."""
        logged: list[Event] = []

        async def fill(store: EventLog) -> None:
            logged.extend(await store.append_events([Event(type="a"), Event(type="b", run_id="r")]))

        async def check(store: EventLog) -> None:
            assert await store.read_events() == logged
            assert await store.last_event_id() == logged[-1].id
            [later] = await store.append_events([Event(type="c")])
            assert event_seq(later.id) > event_seq(logged[-1].id)

        await self._reopened(storage_factory, reopen, fill, check)


class AuditLogContract(_BackendContract):
    """The ``"audit"`` role (:class:`~nexus_core.storage.base.AuditLog`): append-only records."""

    async def test_audit_append_and_query(self, storage: AuditLog) -> None:
        """Audit comes oldest first, filtered; ``since`` inclusive, ``until`` not."""
        records = [
            _audit("a1", 10.0, tenant="acme", principal="alice", workflow="w1"),
            _audit("a2", 30.0, tenant="acme", principal="bob", workflow="w2", outcome="denied"),
            _audit("a3", 20.0, tenant="other", principal="alice", workflow="w1", reason="rbac"),
            _audit("a4", 20.0, tenant="acme", principal="alice", workflow="w2", run_id="r1"),
            _audit("a5", 40.0, principal="carol", channel="cli", input_hash="abc"),
        ]
        for record in records:
            await storage.append_audit(record)

        async def ids(**filters: Any) -> list[str]:
            return [r.id for r in await storage.query_audit(**filters)]

        assert await storage.query_audit(limit=1) == [records[0]]
        assert await ids() == ["a1", "a3", "a4", "a2", "a5"]  # by time, ties in append order
        assert await ids(tenant="acme") == ["a1", "a4", "a2"]
        assert await ids(principal="alice") == ["a1", "a3", "a4"]
        assert await ids(workflow="w2") == ["a4", "a2"]
        assert await ids(since=20.0) == ["a3", "a4", "a2", "a5"]  # inclusive
        assert await ids(until=30.0) == ["a1", "a3", "a4"]  # exclusive
        assert await ids(since=20.0, until=30.0, tenant="acme") == ["a4"]
        assert await ids(limit=2) == ["a1", "a3"]
        assert await storage.query_audit(tenant="acme", limit=0) == []
        assert (await storage.query_audit(principal="carol"))[0] == records[4]

    async def test_audit_append_many_keeps_order(self, storage: AuditLog) -> None:
        """``append_audits`` appends in order, like one ``append_audit`` per record."""
        await storage.append_audits([])
        burst = [_audit(f"b{i}", 50.0, principal=f"p{i % 3}") for i in range(7)]
        await storage.append_audit(_audit("first", 50.0))
        await storage.append_audits(burst)
        assert [r.id for r in await storage.query_audit()] == ["first"] + [r.id for r in burst]
        assert await storage.query_audit(principal="p1") == [burst[1], burst[4]]

    async def test_audit_records_are_copies(self, storage: AuditLog) -> None:
        """Mutating an appended or returned record does not change the log."""
        record = _audit("a1", 1.0, principal="alice")
        await storage.append_audit(record)
        record.principal = "mallory"
        [got] = await storage.query_audit()
        assert got.principal == "alice"
        got.principal = "eve"
        assert (await storage.query_audit())[0].principal == "alice"

    async def test_prune_audit(self, storage: AuditLog) -> None:
        """prune_audit deletes records older than the cut-off, at most ``limit`` per call."""
        await _skip_unless_prunes(storage.prune_audit)
        cut = 10_000.0
        await storage.append_audits([_audit(f"a{i}", cut - 50 + i * 20) for i in range(6)])
        deleted = []
        while count := await storage.prune_audit(cut, limit=2):
            assert count <= 2
            deleted.append(count)
        assert deleted == [2, 1]
        assert [a.id for a in await storage.query_audit(limit=100)] == ["a3", "a4", "a5"]

    async def test_audit_survives_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent backend keeps its audit records across a reopen."""
        records = [_audit("a1", 1.0, tenant="acme"), _audit("a2", 1.0, reason="why")]

        async def fill(store: AuditLog) -> None:
            await store.append_audits(records)

        async def check(store: AuditLog) -> None:
            assert await store.query_audit() == records

        await self._reopened(storage_factory, reopen, fill, check)


class CredentialStoreContract(_BackendContract):
    """The ``"credentials"`` role (:class:`~nexus_core.storage.base.CredentialStore`)."""

    async def test_credential_put_and_get(self, storage: CredentialStore) -> None:
        """A credential comes back equal by ``(kind, token_hash)`` and by id."""
        record = _credential(
            "c1",
            tenant="acme",
            roles=["admin", "ops"],
            scopes=["workflow:*:execute"],
            attributes={"team": "infra", "level": 3, "nested": {"a": [1, 2]}},
            expires_at=5000.0,
            label="ci key",
        )
        await storage.put_credential(record)
        assert await storage.get_credential("api_key", "hash-of-c1") == record
        assert await storage.get_credential_by_id("c1") == record
        assert await storage.get_credential("cli_token", "hash-of-c1") is None  # other kind
        assert await storage.get_credential("api_key", "nope") is None
        assert await storage.get_credential_by_id("nope") is None

    async def test_credential_duplicates_are_refused(self, storage: CredentialStore) -> None:
        """A used id, or a used ``(kind, token_hash)``: ``AlreadyExists``; nothing changes."""
        await storage.put_credential(_credential("c1"))
        with pytest.raises(AlreadyExists, match="already exists"):
            await storage.put_credential(_credential("c1", token_hash="other"))
        with pytest.raises(AlreadyExists, match="already exists"):
            await storage.put_credential(_credential("c2", token_hash="hash-of-c1"))
        assert await storage.get_credential("api_key", "other") is None
        assert await storage.get_credential_by_id("c2") is None
        # The same hash under another kind is another credential.
        await storage.put_credential(_credential("c3", kind="cli_token", token_hash="hash-of-c1"))
        found = await storage.get_credential("cli_token", "hash-of-c1")
        assert found is not None
        assert found.id == "c3"

    async def test_credential_list_filters_and_order(self, storage: CredentialStore) -> None:
        """Listed oldest first (``created_at``, then id), by principal, kind and tenant."""
        records = [
            _credential("c4", created_at=30.0, principal="bob"),
            _credential("c2", created_at=10.0, kind="cli_token", tenant="acme"),
            _credential("c3", created_at=20.0, principal="bob", tenant="acme"),
            _credential("c1", created_at=20.0),
        ]
        for record in records:
            await storage.put_credential(record)
        await storage.revoke_credential("c4", at=40.0)

        async def ids(**filters: Any) -> list[str]:
            return [r.id for r in await storage.list_credentials(**filters)]

        assert await ids() == ["c2", "c1", "c3", "c4"]  # revoked ones too
        assert await ids(principal="bob") == ["c3", "c4"]
        assert await ids(kind="api_key") == ["c1", "c3", "c4"]
        assert await ids(tenant="acme") == ["c2", "c3"]
        assert await ids(principal="bob", tenant="acme", kind="api_key") == ["c3"]
        assert await ids(principal="nobody") == []

    async def test_credential_revoke(self, storage: CredentialStore) -> None:
        """The earliest revocation wins; nothing but ``revoked_at`` changes."""
        record = _credential("c1", roles=["r"], expires_at=9000.0)
        await storage.put_credential(record)
        assert await storage.revoke_credential("nope", at=1.0) is False
        assert await storage.revoke_credential("c1", at=2000.0) is True
        got = await storage.get_credential("api_key", "hash-of-c1")
        assert got == msgspec.structs.replace(record, revoked_at=2000.0)
        assert await storage.revoke_credential("c1", at=2000.0) is False
        assert await storage.revoke_credential("c1", at=3000.0) is False  # later: kept
        assert await storage.revoke_credential("c1", at=1500.0) is True  # earlier: wins
        got = await storage.get_credential_by_id("c1")
        assert got is not None
        assert got.revoked_at == 1500.0
        [listed] = await storage.list_credentials()
        assert listed.revoked_at == 1500.0

    async def test_credential_records_are_copies(self, storage: CredentialStore) -> None:
        """Mutating a stored or returned credential does not change the store."""
        record = _credential("c1", roles=["a"], attributes={"k": [1]})
        await storage.put_credential(record)
        record.roles.append("mutated")
        got = await storage.get_credential_by_id("c1")
        assert got is not None
        assert got.roles == ["a"]
        got.attributes["k"].append(2)
        again = await storage.get_credential("api_key", "hash-of-c1")
        assert again is not None
        assert again.attributes == {"k": [1]}

    async def test_credentials_survive_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent backend keeps credentials and revocations across a reopen."""
        record = _credential("c1", roles=["admin"], attributes={"a": 1})

        async def fill(store: CredentialStore) -> None:
            await store.put_credential(record)
            await store.revoke_credential("c1", at=2000.0)

        async def check(store: CredentialStore) -> None:
            expected = msgspec.structs.replace(record, revoked_at=2000.0)
            assert await store.get_credential("api_key", "hash-of-c1") == expected
            with pytest.raises(AlreadyExists, match="already exists"):
                await store.put_credential(record)

        await self._reopened(storage_factory, reopen, fill, check)


class CacheContract(_BackendContract):
    """The ``"cache"`` role (:class:`~nexus_core.storage.base.Cache`): values, token buckets."""

    async def test_cache_get_set_delete(self, storage: Cache) -> None:
        """Cache values (any bytes, also empty) are set, replaced, deleted."""
        assert await storage.cache_get("k") is None
        await storage.cache_set("k", b"v1")
        assert await storage.cache_get("k") == b"v1"
        await storage.cache_set("k", b"\x00binary\xff")
        assert await storage.cache_get("k") == b"\x00binary\xff"
        await storage.cache_set("empty", b"")
        assert await storage.cache_get("empty") == b""
        await storage.cache_delete("k")
        await storage.cache_delete("k")  # again: no error
        assert await storage.cache_get("k") is None

    async def test_cache_ttl(self, storage: Cache) -> None:
        """A value with a ttl expires; one without never does."""
        await storage.cache_set("short", b"1", ttl=0.1)
        await storage.cache_set("forever", b"2")
        await storage.cache_set("reset", b"3", ttl=0.05)
        await storage.cache_set("reset", b"4")  # a new set without ttl never expires
        assert await storage.cache_get("short") == b"1"
        await anyio.sleep(0.25)
        assert await storage.cache_get("short") is None
        assert await storage.cache_get("forever") == b"2"
        assert await storage.cache_get("reset") == b"4"
        await storage.cache_set("short", b"5", ttl=60)  # an expired key can be set again
        assert await storage.cache_get("short") == b"5"

    # -- rate limits -----------------------------------------------------------

    async def test_take_tokens_bucket_starts_full_and_runs_dry(self, storage: Cache) -> None:
        """A new bucket is full; once dry a take returns a wait."""
        for _ in range(3):
            assert await storage.take_tokens("k", capacity=3, refill_per_second=0.001) == 0.0
        wait = await storage.take_tokens("k", capacity=3, refill_per_second=0.001)
        assert 0 < wait <= 1000.0
        # Another key is another bucket.
        assert await storage.take_tokens("k2", capacity=3, refill_per_second=0.001) == 0.0

    async def test_take_tokens_cost_and_failed_take_takes_nothing(self, storage: Cache) -> None:
        """``cost`` counts; a refused take takes nothing."""
        limits: dict[str, float] = {"capacity": 5, "refill_per_second": 0.001}
        assert await storage.take_tokens("k", cost=3, **limits) == 0.0
        assert await storage.take_tokens("k", cost=3, **limits) > 0  # 2 left: refused
        assert await storage.take_tokens("k", cost=2, **limits) == 0.0  # the 2 are still there
        assert await storage.take_tokens("k", cost=1, **limits) > 0

    async def test_take_tokens_refills_over_time(self, storage: Cache) -> None:
        """After the returned wait a take succeeds; refill stops at capacity."""
        limits: dict[str, float] = {"capacity": 2, "refill_per_second": 10.0}
        assert await storage.take_tokens("k", **limits) == 0.0
        assert await storage.take_tokens("k", **limits) == 0.0
        wait = await storage.take_tokens("k", **limits)
        assert 0 < wait <= 0.1 + 1e-6
        await anyio.sleep(wait + 0.05)
        assert await storage.take_tokens("k", **limits) == 0.0
        # Half a second refills 5 tokens' worth, but the bucket holds 2; the second
        # take fails unless 0.2 s pass between the two calls.
        await anyio.sleep(0.5)
        assert await storage.take_tokens("k", cost=2, **limits) == 0.0
        assert await storage.take_tokens("k", cost=2, **limits) > 0

    async def test_take_tokens_concurrent(self, storage: Cache) -> None:
        """50 concurrent takers of a 10-token bucket: exactly 10 succeed."""
        results: list[float] = []

        async def take() -> None:
            results.append(await storage.take_tokens("k", capacity=10, refill_per_second=1e-9))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(take)
        assert len(results) == 50
        assert results.count(0.0) == 10
        assert all(wait > 0 for wait in results if wait != 0.0)

    async def test_cache_keys_are_plain_text(self, storage: Cache) -> None:
        """``*``, ``?``, ``[``, ``%`` and ``_`` in keys match only themselves."""
        await storage.cache_set("kx", b"plain")
        await storage.cache_set("kab", b"plain2")
        for key in ("k*", "k?", "k[x]", "k%", "k_", "k[", "k%b", "k_b"):
            assert await storage.cache_get(key) is None
            await storage.cache_delete(key)
        assert await storage.cache_get("kx") == b"plain"
        assert await storage.cache_get("kab") == b"plain2"
        for key in ("k*", "k?", "k[x]", "k%", "k_"):
            await storage.cache_set(key, key.encode())
        for key in ("k*", "k?", "k[x]", "k%", "k_"):
            assert await storage.cache_get(key) == key.encode()
        assert await storage.cache_get("kx") == b"plain"
        # Buckets too: a key with wildcards is its own bucket.
        limits: dict[str, float] = {"capacity": 1, "refill_per_second": 1e-9}
        assert await storage.take_tokens("b_", **limits) == 0.0
        assert await storage.take_tokens("b%", **limits) == 0.0
        assert await storage.take_tokens("bx", **limits) == 0.0
        assert await storage.take_tokens("b*", **limits) == 0.0
        assert await storage.take_tokens("b_", **limits) > 0

    async def test_cache_survives_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent cache keeps values without a ttl, and buckets, across a reopen."""

        async def fill(store: Cache) -> None:
            await store.cache_set("k", b"v")
            await store.take_tokens("b", capacity=1, refill_per_second=1e-9)

        async def check(store: Cache) -> None:
            assert await store.cache_get("k") == b"v"
            assert await store.take_tokens("b", capacity=1, refill_per_second=1e-9) > 0

        await self._reopened(storage_factory, reopen, fill, check)


class BlobStoreContract(_BackendContract):
    """The ``"blobs"`` role (:class:`~nexus_core.storage.base.BlobStore`): bytes by key."""

    async def test_blobs(self, storage: BlobStore) -> None:
        """Blobs are put, replaced, read, deleted and listed by prefix, sorted."""
        assert await storage.get_blob("a/1") is None
        assert await storage.list_blobs() == []
        for key in ("b/2", "a/1", "a/2", "ab", "a/sub/3", "c"):
            await storage.put_blob(key, key.encode())
        await storage.put_blob("a/1", b"\x00replaced\xff")
        await storage.put_blob("empty", b"")
        assert await storage.get_blob("a/1") == b"\x00replaced\xff"
        assert await storage.get_blob("empty") == b""
        assert await storage.list_blobs() == ["a/1", "a/2", "a/sub/3", "ab", "b/2", "c", "empty"]
        assert await storage.list_blobs("a/") == ["a/1", "a/2", "a/sub/3"]
        assert await storage.list_blobs("a") == ["a/1", "a/2", "a/sub/3", "ab"]
        assert await storage.list_blobs("zzz") == []
        await storage.delete_blob("a/2")
        await storage.delete_blob("a/2")  # again: no error
        assert await storage.get_blob("a/2") is None
        assert await storage.list_blobs("a/") == ["a/1", "a/sub/3"]

    async def test_blob_keys_with_unusual_characters(self, storage: BlobStore) -> None:
        """Prefix listing is literal (no wildcards) and handles any code point."""
        keys = ["dir/é", "dir/\U0001f600", "dir/%_", "dir/ÿ", "dir0", "dir/\U0010ffff"]
        for key in keys:
            await storage.put_blob(key, b"x")
        assert await storage.list_blobs("dir/") == sorted(k for k in keys if k.startswith("dir/"))
        assert await storage.list_blobs("dir/%") == ["dir/%_"]
        assert await storage.list_blobs("dir/\U0010ffff") == ["dir/\U0010ffff"]

    async def test_blob_prefixes_are_plain_text(self, storage: BlobStore) -> None:
        """``*``, ``?``, ``[``, ``%`` and ``_`` in a prefix (or a key) match only themselves."""
        keys = ["a*b", "a?", "a[1]", "a%", "a_", "ab", "axb", "a1]", "a\\", "a\\x"]
        for key in keys:
            await storage.put_blob(key, key.encode())
        assert await storage.list_blobs("a*") == ["a*b"]
        assert await storage.list_blobs("a?") == ["a?"]
        assert await storage.list_blobs("a[") == ["a[1]"]
        assert await storage.list_blobs("a[1") == ["a[1]"]
        assert await storage.list_blobs("a%") == ["a%"]
        assert await storage.list_blobs("a_") == ["a_"]
        assert await storage.list_blobs("a\\") == ["a\\", "a\\x"]
        assert await storage.list_blobs("a") == sorted(keys)
        for key in keys:
            assert await storage.get_blob(key) == key.encode()
        await storage.delete_blob("a_")
        assert await storage.get_blob("ab") == b"ab"
        assert await storage.list_blobs("a_") == []

    async def test_blobs_survive_close_and_reopen(
        self, storage_factory: BackendFactory, reopen: Callable[[Backend], Backend]
    ) -> None:
        """A persistent backend keeps its blobs across a reopen."""

        async def fill(store: BlobStore) -> None:
            await store.put_blob("a/1", b"\x00one")
            await store.put_blob("b", b"")

        async def check(store: BlobStore) -> None:
            assert await store.list_blobs() == ["a/1", "b"]
            assert await store.get_blob("a/1") == b"\x00one"
            assert await store.get_blob("b") == b""

        await self._reopened(storage_factory, reopen, fill, check)


class StorageContract(
    SessionStoreContract,
    RunStoreContract,
    EventLogContract,
    AuditLogContract,
    CredentialStoreContract,
    CacheContract,
    BlobStoreContract,
):
    """Every role's suite, for a backend serving them all (a :class:`Storage`).

    Mix into a ``Test*`` class and provide ``storage_factory`` (or ``storage``).
    """

    @pytest.fixture
    def storage_factory(self) -> StorageFactory:
        """Override: a callable returning a new, unopened Storage over empty data per call."""
        pytest.skip("define a storage_factory fixture to run this test")

    async def test_declares_every_role(self, storage: Storage) -> None:
        """A Storage declares every role."""
        assert set(ROLES) <= set(storage.roles)

    async def test_finish_run_logged_writes_the_run_and_its_events_or_neither(
        self, storage: Storage
    ) -> None:
        """``finish_run_logged``: fenced as ``finish_run``; refused, it appends nothing."""
        before = await storage.append_events([Event(type="earlier", run_id="r0")])
        await storage.create_run(_run("r1", status="running"))
        old = await storage.claim_run("r1", "o1", lease=30.0, now=1000.0)
        new = await storage.claim_run("r1", "o2", lease=30.0, now=1031.0)  # o1's expired
        assert old is not None
        assert new is not None
        last = NodeCheckpoint(run_id="r1", node_id="a", status="completed", output=1, fence=1)
        ending = [
            Event(type="other.run", run_id="r2", data={"queued": "before"}),
            Event(type="run.completed", run_id="r1", data={"output": 1}),
        ]
        stale = msgspec.structs.replace(old, status="completed", output=1, finished_at=1040.0)
        ended = [_audit("a-stale", 1040.0, run_id="r1", outcome="completed")]
        with pytest.raises(LeaseLost):
            await storage.finish_run_logged(stale, [last], ending, audits=ended)
        assert await storage.read_events() == before  # nothing of it was appended
        assert await storage.query_audit() == []
        assert await storage.get_run("r1") == new
        assert await storage.get_checkpoints("r1") == {}

        done = msgspec.structs.replace(new, status="completed", output=1, finished_at=1040.0)
        current = msgspec.structs.replace(last, fence=2)
        ended = [_audit("a-done", 1040.0, run_id="r1", outcome="completed")]
        logged = await storage.finish_run_logged(done, [current], ending, audits=ended)
        assert await storage.query_audit() == ended
        assert [(e.type, e.data) for e in logged] == [(e.type, e.data) for e in ending]
        assert [event_seq(e.id) for e in logged] == [
            event_seq(before[0].id) + 1,
            event_seq(before[0].id) + 2,
        ]
        assert await storage.read_events() == before + logged
        assert await storage.get_run("r1") == done
        assert await storage.get_checkpoints("r1") == {"a": current}
        assert await storage.finish_run_logged(done, [], []) == []  # the run alone

    async def test_log_writes_gives_each_write_its_own_outcome_in_order(
        self, storage: Storage
    ) -> None:
        """``log_writes``: appends and final writes in order; a refused one alone fails."""
        claimed = []
        for rid in ("r1", "r2"):
            await storage.create_run(_run(rid, status="running"))
            record = await storage.claim_run(rid, "o1", lease=30.0, now=1000.0)
            assert record is not None
            claimed.append(record)
        r1 = msgspec.structs.replace(claimed[0], status="completed")
        stale = msgspec.structs.replace(claimed[1], status="failed", fence=0)
        outcomes = await storage.log_writes(
            [
                (None, [Event(type="a", run_id="x")]),
                (RunFinish(r1), [Event(type="b", run_id="r1"), Event(type="c", run_id="r1")]),
                (RunFinish(stale, (), [_audit("refused", 2.0)]), [Event(type="no", run_id="r2")]),
                (None, [Event(type="d")]),
            ]
        )
        assert isinstance(outcomes[2], LeaseLost)
        landed = [e for outcome in outcomes if not isinstance(outcome, Exception) for e in outcome]
        assert [e.type for e in landed] == ["a", "b", "c", "d"]
        assert await storage.read_events() == landed  # in order, nothing of the refused one
        seqs = [event_seq(e.id) for e in landed]
        assert seqs == sorted(seqs)
        assert await storage.get_run("r1") == r1
        assert await storage.query_audit() == []  # the refused write's record went with it
        stored = await storage.get_run("r2")
        assert stored is not None
        assert stored.status == "running"

    async def test_prune_is_one_batch_of_each_role(self, storage: Storage) -> None:
        """``prune`` deletes one batch of each of runs, events and audit records; the sum."""
        try:
            await storage.prune(0.0, limit=1)
        except NotImplementedError:
            pytest.skip("this backend does not implement pruning (retention_days is ignored)")
        cut = 10_000.0
        for i in range(3):
            await storage.create_run(
                _run(f"old{i}", created_at=cut - 500 - i, status="completed", finished_at=1.0)
            )
        events = await storage.append_events(
            [Event(type="step", time=cut - 100 + i * 40, data={"i": i}) for i in range(5)]
        )
        await storage.append_audits([_audit(f"a{i}", cut - 50 + i * 40) for i in range(3)])
        counts = []
        while count := await storage.prune(cut, limit=2):
            assert count <= 2 * 3  # one batch: at most ``limit`` of each kind
            counts.append(count)
        assert sum(counts) == 3 + 3 + 2
        assert await storage.list_runs() == []
        assert await storage.read_events() == events[3:]
        assert [a.id for a in await storage.query_audit()] == ["a2"]
        assert await storage.prune(cut, limit=100) == 0

    # -- the state machine -----------------------------------------------------

    def test_state_machine(
        self,
        storage_factory: StorageFactory,
        anyio_backend_name: str,
        anyio_backend_options: dict[str, Any],
    ) -> None:
        """Random sequences of calls agree with a plain-dict model (hypothesis)."""
        with start_blocking_portal(anyio_backend_name, anyio_backend_options) as portal:
            machine = storage_state_machine(storage_factory, portal=portal)
            run_state_machine_as_test(machine, settings=self.state_machine_settings)


# -- the stateful model ----------------------------------------------------------

_SESSION_IDS = st.sampled_from(["s0", "s1", "s2", "s3"])
_TENANTS = st.sampled_from(["t0", "t1"])
_MAYBE_TENANT = st.none() | _TENANTS
_CREDENTIAL_IDS = st.sampled_from(["c0", "c1", "c2", "c3"])
_CREDENTIAL_KINDS = st.sampled_from(["api_key", "cli_token"])
_TOKEN_HASHES = st.sampled_from(["h0", "h1", "h2"])
_PRINCIPALS = st.sampled_from(["alice", "bob"])
_STATUSES = st.sampled_from(["pending", "running", "completed", "failed", "cancelled"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
_JSON_DICT = st.dictionaries(st.text(max_size=3), _JSON, max_size=3)
_CACHE_KEYS = st.sampled_from(["c0", "c1", "c2"])
_BLOB_KEYS = st.text(alphabet="ab/", min_size=1, max_size=4)


def storage_state_machine(
    factory: StorageFactory, *, portal: BlockingPortal | None = None
) -> type[RuleBasedStateMachine]:
    """A hypothesis state machine checking a backend against a plain-dict model.

    ``factory`` returns a new, unopened Storage over empty data on each call;
    each example opens one and closes it at teardown. The machine drives the
    async storage through ``portal`` (an anyio blocking portal), or starts a
    portal of its own per example. Run it with
    ``hypothesis.stateful.run_state_machine_as_test(machine)`` or expose
    ``machine.TestCase`` to unittest.

    It covers sessions, runs (idempotency, filters, ordering, paging, fenced
    saves: every run it saves carries the fence it was created with),
    checkpoints, events (ids the log gives), cache, blobs and credentials.
    """

    class StorageMachine(RuleBasedStateMachine):
        """The storage against dicts of what it should hold."""

        runs = Bundle("runs")
        events = Bundle("events")

        def __init__(self) -> None:
            super().__init__()
            self._own_portal: AbstractContextManager[BlockingPortal] | None = None
            if portal is None:
                self._own_portal = start_blocking_portal()
                self.portal = self._own_portal.__enter__()
            else:
                self.portal = portal
            self.storage: Storage | None = None
            try:
                store = factory()
                self.call(store.open)
            except BaseException:
                self._exit_portal()
                raise
            self.storage = store
            self.sessions: dict[str, SessionRecord] = {}
            self.model_runs: dict[str, RunRecord] = {}
            self.keys: dict[tuple[str, str | None, str | None], str] = {}
            self.checkpoints: dict[tuple[str, str], NodeCheckpoint] = {}
            self.event_log: list[Event] = []
            self.cache: dict[str, bytes] = {}
            self.blobs: dict[str, bytes] = {}
            self.credentials: dict[str, CredentialRecord] = {}
            self.counter = 0

        def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            """Run an async storage method to completion on the portal."""
            return self.portal.call(functools.partial(fn, *args, **kwargs))

        def _exit_portal(self) -> None:
            if self._own_portal is not None:
                self._own_portal.__exit__(None, None, None)
                self._own_portal = None

        def teardown(self) -> None:
            """Close the storage (and the portal, if the machine started it)."""
            try:
                if self.storage is not None:
                    self.call(self.storage.close)
            finally:
                self._exit_portal()

        @property
        def store(self) -> Storage:
            assert self.storage is not None
            return self.storage

        # -- sessions ----------------------------------------------------------

        @rule(sid=_SESSION_IDS, tenant=_TENANTS, live=st.booleans(), state=_JSON_DICT)
        def create_session(self, sid: str, tenant: str, live: bool, state: dict[str, Any]) -> None:
            if sid in self.sessions:
                return  # reusing an id is an error; covered by the example tests
            now = time.time()
            session = SessionRecord(
                id=sid,
                tenant=tenant,
                principal="p",
                created_at=now,
                last_seen_at=now,
                expires_at=now + (_HOUR if live else -_HOUR),
                ttl=_HOUR,
                state=state,
            )
            self.call(self.store.create_session, session)
            self.sessions[sid] = session

        @rule(sid=_SESSION_IDS, tenant=_MAYBE_TENANT)
        def get_session(self, sid: str, tenant: str | None) -> None:
            expected = self.sessions.get(sid)
            if expected is not None and (
                (tenant is not None and expected.tenant != tenant)
                or expected.expires_at <= time.time()
            ):
                expected = None
            assert self.call(self.store.get_session, sid, tenant=tenant) == expected

        @rule(
            sid=_SESSION_IDS,
            live=st.booleans(),
            state=_JSON_DICT,
            channels=st.lists(st.sampled_from(["api", "cli", "mcp"]), max_size=3),
        )
        def save_session(
            self, sid: str, live: bool, state: dict[str, Any], channels: list[str]
        ) -> None:
            now = time.time()
            stored = self.sessions.get(sid)
            base = stored or SessionRecord(
                id=sid, created_at=now, last_seen_at=now, expires_at=now, ttl=1.0
            )
            changes: dict[str, Any] = {
                "last_seen_at": now,
                "expires_at": now + (2 * _HOUR if live else -_HOUR),
                "ttl": 2 * _HOUR,
                "channels": channels,
                "state": state,
            }
            self.call(
                self.store.save_session,
                msgspec.structs.replace(base, principal="intruder", **changes),
            )
            if stored is not None:
                self.sessions[sid] = msgspec.structs.replace(stored, **changes)

        @rule(sid=_SESSION_IDS)
        def delete_session(self, sid: str) -> None:
            self.call(self.store.delete_session, sid)
            self.sessions.pop(sid, None)

        @rule()
        def expire_and_count_sessions(self) -> None:
            now = time.time()
            live = sum(1 for s in self.sessions.values() if s.expires_at > now)
            assert self.call(self.store.count_sessions, now) == live
            expired = sorted(sid for sid, s in self.sessions.items() if s.expires_at <= now)
            assert sorted(self.call(self.store.expire_sessions, now)) == expired
            for sid in expired:
                del self.sessions[sid]

        # -- runs ----------------------------------------------------------------

        @rule(
            target=runs,
            tenant=_TENANTS,
            key=st.sampled_from([None, "k0", "k1"]),
            workflow=st.sampled_from(["w0", "w1"]),
            status=_STATUSES,
            created_at=st.sampled_from([1.0, 2.0, 3.0]),
            inputs=_JSON_DICT,
            fence=st.integers(0, 2),
        )
        def create_run(
            self,
            tenant: str,
            key: str | None,
            workflow: str,
            status: str,
            created_at: float,
            inputs: dict[str, Any],
            fence: int,
        ) -> str:
            self.counter += 1
            run = RunRecord(
                id=f"r{self.counter}",
                workflow=workflow,
                status=status,  # type: ignore[arg-type]
                tenant=tenant,
                principal=f"p{self.counter % 2}",
                created_at=created_at,
                idempotency_key=key,
                inputs=inputs,
                owner="g0" if fence else None,
                fence=fence,
                lease_expires_at=_HOUR if fence else None,
            )
            got, created = self.call(self.store.create_run, run)
            scope = (tenant, run.principal, key)
            existing = self.keys.get(scope) if key is not None else None
            if existing is not None:
                assert (got, created) == (self.model_runs[existing], False)
                return existing
            assert (got, created) == (run, True)
            self.model_runs[run.id] = run
            if key is not None:
                self.keys[scope] = run.id
            return run.id

        @rule(rid=runs, tenant=_MAYBE_TENANT)
        def get_run(self, rid: str, tenant: str | None) -> None:
            expected = self.model_runs[rid]
            if tenant is not None and expected.tenant != tenant:
                assert self.call(self.store.get_run, rid, tenant=tenant) is None
            else:
                assert self.call(self.store.get_run, rid, tenant=tenant) == expected

        @rule(rid=runs, status=_STATUSES, output=_JSON)
        def save_run(self, rid: str, status: str, output: Any) -> None:
            changes: dict[str, Any] = {
                "status": status,
                "output": output,
                "finished_at": 9.0 if status in ("completed", "failed") else None,
            }
            stored = self.model_runs[rid]  # its fence: the one it was created with
            self.call(
                self.store.save_run,
                msgspec.structs.replace(
                    stored, tenant="intruder", workflow="x", owner="intruder", **changes
                ),
            )
            self.model_runs[rid] = msgspec.structs.replace(stored, **changes)

        @rule(rid=runs, status=_STATUSES)
        def save_run_stale(self, rid: str, status: str) -> None:
            stored = self.model_runs[rid]
            stale = msgspec.structs.replace(stored, status=status, fence=stored.fence + 1)
            with pytest.raises(LeaseLost):
                self.call(self.store.save_run, stale)

        @rule(
            tenant=_MAYBE_TENANT,
            workflow=st.none() | st.sampled_from(["w0", "w1"]),
            status=st.none() | _STATUSES,
            principal=st.none() | st.sampled_from(["p0", "p1"]),
            limit=st.integers(1, 5),
            before=st.none() | runs | st.just("missing"),
        )
        def list_runs(
            self,
            tenant: str | None,
            workflow: str | None,
            status: str | None,
            principal: str | None,
            limit: int,
            before: str | None,
        ) -> None:
            def order(run: RunRecord) -> tuple[float, str]:
                return (run.created_at, run.id)

            anchor = self.model_runs.get(before) if before is not None else None
            if before is not None and (
                anchor is None or (tenant is not None and anchor.tenant != tenant)
            ):
                expected: list[RunRecord] = []
            else:
                expected = sorted(
                    (
                        r
                        for r in self.model_runs.values()
                        if (tenant is None or r.tenant == tenant)
                        and (workflow is None or r.workflow == workflow)
                        and (status is None or r.status == status)
                        and (principal is None or r.principal == principal)
                        and (anchor is None or order(r) < order(anchor))
                    ),
                    key=order,
                    reverse=True,
                )[:limit]
            got = self.call(
                self.store.list_runs,
                tenant=tenant,
                workflow=workflow,
                status=status,
                principal=principal,
                limit=limit,
                before=before,
            )
            assert got == expected

        @rule()
        def unfinished_runs(self) -> None:
            expected = sorted(
                (r for r in self.model_runs.values() if r.status in ("pending", "running")),
                key=lambda r: (r.created_at, r.id),
            )
            assert self.call(self.store.unfinished_runs) == expected

        @rule(rid=runs, node=st.sampled_from(["n0", "n1"]), status=_STATUSES, output=_JSON)
        def save_checkpoint(self, rid: str, node: str, status: str, output: Any) -> None:
            fence = self.model_runs[rid].fence
            checkpoint = NodeCheckpoint(
                run_id=rid, node_id=node, status=status, output=output, fence=fence
            )
            self.call(self.store.save_checkpoint, checkpoint)
            self.checkpoints[(rid, node)] = checkpoint

        @rule(rid=runs)
        def get_checkpoints(self, rid: str) -> None:
            expected = {n: c for (r, n), c in self.checkpoints.items() if r == rid}
            assert self.call(self.store.get_checkpoints, rid) == expected

        # -- events --------------------------------------------------------------

        @rule(target=events, rid=st.none() | runs, data=_JSON_DICT)
        def append_event(self, rid: str | None, data: dict[str, Any]) -> str:
            self.counter += 1
            event = Event(type="t", id=f"e{(self.counter * 7919) % 10007}", run_id=rid, data=data)
            logged: Event
            [logged] = self.call(self.store.append_events, [event])
            assert msgspec.structs.replace(logged, id=event.id) == event
            if self.event_log:
                assert event_seq(logged.id) > event_seq(self.event_log[-1].id)
            self.event_log.append(logged)
            return logged.id

        @rule(eid=events)
        def append_event_again(self, eid: str) -> None:
            event = next(e for e in self.event_log if e.id == eid)
            [logged] = self.call(self.store.append_events, [event])
            assert logged.id != event.id  # logged again, under a new id
            self.event_log.append(logged)

        @rule(
            after=st.none() | events | st.just("missing"),
            limit=st.integers(1, 6),
            rid=st.none() | runs,
        )
        def read_events(self, after: str | None, limit: int, rid: str | None) -> None:
            position = event_seq(after)
            expected = [
                e
                for e in self.event_log
                if event_seq(e.id) > position and (rid is None or e.run_id == rid)
            ]
            got = self.call(self.store.read_events, after=after, limit=limit, run_id=rid)
            assert got == expected[:limit]

        @rule()
        def last_event_id(self) -> None:
            expected = self.event_log[-1].id if self.event_log else None
            assert self.call(self.store.last_event_id) == expected

        # -- cache ---------------------------------------------------------------

        @rule(key=_CACHE_KEYS, value=st.binary(max_size=8), ttl=st.none() | st.just(_HOUR))
        def cache_set(self, key: str, value: bytes, ttl: float | None) -> None:
            self.call(self.store.cache_set, key, value, ttl=ttl)
            self.cache[key] = value

        @rule(key=_CACHE_KEYS)
        def cache_get(self, key: str) -> None:
            assert self.call(self.store.cache_get, key) == self.cache.get(key)

        @rule(key=_CACHE_KEYS)
        def cache_delete(self, key: str) -> None:
            self.call(self.store.cache_delete, key)
            self.cache.pop(key, None)

        # -- blobs ---------------------------------------------------------------

        @rule(key=_BLOB_KEYS, data=st.binary(max_size=8))
        def put_blob(self, key: str, data: bytes) -> None:
            self.call(self.store.put_blob, key, data)
            self.blobs[key] = data

        @rule(key=_BLOB_KEYS)
        def get_blob(self, key: str) -> None:
            assert self.call(self.store.get_blob, key) == self.blobs.get(key)

        @rule(key=_BLOB_KEYS)
        def delete_blob(self, key: str) -> None:
            self.call(self.store.delete_blob, key)
            self.blobs.pop(key, None)

        @rule(prefix=st.text(alphabet="ab/", max_size=2))
        def list_blobs(self, prefix: str) -> None:
            expected = sorted(k for k in self.blobs if k.startswith(prefix))
            assert self.call(self.store.list_blobs, prefix) == expected

        # -- credentials ---------------------------------------------------------

        @rule(
            cid=_CREDENTIAL_IDS,
            kind=_CREDENTIAL_KINDS,
            token_hash=_TOKEN_HASHES,
            principal=_PRINCIPALS,
            tenant=_TENANTS,
            created_at=st.integers(0, 3).map(float),
        )
        def put_credential(
            self,
            cid: str,
            kind: str,
            token_hash: str,
            principal: str,
            tenant: str,
            created_at: float,
        ) -> None:
            record = CredentialRecord(
                id=cid,
                kind=kind,
                token_hash=token_hash,
                principal=principal,
                tenant=tenant,
                roles=["r"],
                created_at=created_at,
            )
            taken = cid in self.credentials or any(
                (c.kind, c.token_hash) == (kind, token_hash) for c in self.credentials.values()
            )
            if taken:
                with pytest.raises(AlreadyExists, match="already exists"):
                    self.call(self.store.put_credential, record)
            else:
                self.call(self.store.put_credential, record)
                self.credentials[cid] = record

        @rule(kind=_CREDENTIAL_KINDS, token_hash=_TOKEN_HASHES)
        def get_credential(self, kind: str, token_hash: str) -> None:
            expected = next(
                (
                    c
                    for c in self.credentials.values()
                    if (c.kind, c.token_hash) == (kind, token_hash)
                ),
                None,
            )
            assert self.call(self.store.get_credential, kind, token_hash) == expected

        @rule(cid=_CREDENTIAL_IDS)
        def get_credential_by_id(self, cid: str) -> None:
            assert self.call(self.store.get_credential_by_id, cid) == self.credentials.get(cid)

        @rule(
            principal=st.none() | _PRINCIPALS,
            kind=st.none() | _CREDENTIAL_KINDS,
            tenant=_MAYBE_TENANT,
        )
        def list_credentials(
            self, principal: str | None, kind: str | None, tenant: str | None
        ) -> None:
            expected = sorted(
                (
                    c
                    for c in self.credentials.values()
                    if (principal is None or c.principal == principal)
                    and (kind is None or c.kind == kind)
                    and (tenant is None or c.tenant == tenant)
                ),
                key=lambda c: (c.created_at, c.id),
            )
            got = self.call(
                self.store.list_credentials, principal=principal, kind=kind, tenant=tenant
            )
            assert got == expected

        @rule(cid=_CREDENTIAL_IDS, at=st.integers(0, 5).map(float))
        def revoke_credential(self, cid: str, at: float) -> None:
            stored = self.credentials.get(cid)
            changes = stored is not None and (stored.revoked_at is None or stored.revoked_at > at)
            assert self.call(self.store.revoke_credential, cid, at=at) is changes
            if changes:
                assert stored is not None
                self.credentials[cid] = msgspec.structs.replace(stored, revoked_at=at)

    return StorageMachine


_OWNERS = st.sampled_from(["o0", "o1", "o2"])
_LEASE_RUNS = st.sampled_from(["r0", "r1", "r2"])
_LEASES = st.sampled_from([5.0, 10.0, 30.0])


def lease_state_machine(
    factory: Callable[[], RunStore], *, portal: BlockingPortal | None = None
) -> type[RuleBasedStateMachine]:
    """A hypothesis state machine over the lease protocol of a run store, against a model.

    Three owners claim three runs, heartbeat, release, let time pass (a fake
    ``now``: passed to ``claim_run``/``claimable_runs``, and ``until`` to
    ``renew_leases``, so no clock is involved), take runs over, and write
    with the last fence each was given: a write with a stale fence must be
    refused (:class:`~nexus_core.storage.base.LeaseLost`) and change nothing.
    ``factory`` and ``portal`` as for :func:`storage_state_machine`.
    """

    class LeaseMachine(RuleBasedStateMachine):
        """The run store's leases against a model of who holds what."""

        def __init__(self) -> None:
            super().__init__()
            self._own_portal: AbstractContextManager[BlockingPortal] | None = None
            if portal is None:
                self._own_portal = start_blocking_portal()
                self.portal = self._own_portal.__enter__()
            else:
                self.portal = portal
            self.storage: RunStore | None = None
            self.now = 1000.0
            try:
                store = factory()
                self.call(store.open)
            except BaseException:
                self._exit_portal()
                raise
            self.storage = store
            self.model: dict[str, RunRecord] = {}
            self.checkpoints: dict[str, dict[str, NodeCheckpoint]] = {}
            # The fence each owner was last given for a run (kept once lost: stale).
            self.tokens: dict[tuple[str, str], int] = {}
            self.counter = 0
            initial = [
                _run("r0", created_at=1.0),
                _run(
                    "r1",
                    status="running",
                    created_at=2.0,
                    owner="o0",
                    fence=1,
                    lease_expires_at=self.now + 30,
                ),
                _run("r2", created_at=3.0),
            ]
            for run in initial:
                self.call(self.store.create_run, run)
                self.model[run.id] = run
                self.checkpoints[run.id] = {}
            self.tokens[("o0", "r1")] = 1

        def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            """Run an async storage method to completion on the portal."""
            return self.portal.call(functools.partial(fn, *args, **kwargs))

        def _exit_portal(self) -> None:
            if self._own_portal is not None:
                self._own_portal.__exit__(None, None, None)
                self._own_portal = None

        def teardown(self) -> None:
            """Close the store (and the portal, if the machine started it)."""
            try:
                if self.storage is not None:
                    self.call(self.storage.close)
            finally:
                self._exit_portal()

        @property
        def store(self) -> RunStore:
            assert self.storage is not None
            return self.storage

        def _claimable(self, run: RunRecord) -> bool:
            return run.status in ("pending", "running") and (
                run.lease_expires_at is None or run.lease_expires_at <= self.now
            )

        def _held(self, owner: str) -> dict[str, int]:
            return {rid: fence for (o, rid), fence in self.tokens.items() if o == owner}

        # -- the protocol --------------------------------------------------------

        @rule(owner=_OWNERS, rid=_LEASE_RUNS, lease=_LEASES)
        def claim(self, owner: str, rid: str, lease: float) -> None:
            run = self.model[rid]
            got = self.call(self.store.claim_run, rid, owner, lease=lease, now=self.now)
            if not self._claimable(run):
                assert got is None
                return
            expected = msgspec.structs.replace(
                run, owner=owner, fence=run.fence + 1, lease_expires_at=self.now + lease
            )
            assert got == expected
            self.model[rid] = expected
            self.tokens[(owner, rid)] = expected.fence

        def _renew(self, owner: str, until: float) -> None:
            fences = self._held(owner)
            expected = {
                rid
                for rid, fence in fences.items()
                if self.model[rid].owner == owner
                and self.model[rid].fence == fence
                and self.model[rid].status in ("pending", "running")
            }
            assert self.call(self.store.renew_leases, owner, fences, until=until) == expected
            for rid in expected:
                self.model[rid] = msgspec.structs.replace(self.model[rid], lease_expires_at=until)

        @rule(owner=_OWNERS, lease=_LEASES)
        def heartbeat(self, owner: str, lease: float) -> None:
            self._renew(owner, self.now + lease)

        @rule(owner=_OWNERS)
        def release(self, owner: str) -> None:
            self._renew(owner, self.now - 1.0)

        @rule(seconds=st.sampled_from([1.0, 5.0, 10.0, 40.0]))
        def advance(self, seconds: float) -> None:
            self.now += seconds

        @rule(owner=_OWNERS, rid=_LEASE_RUNS, node=st.sampled_from(["a", "b"]))
        def write_checkpoint(self, owner: str, rid: str, node: str) -> None:
            self.counter += 1
            fence = self.tokens.get((owner, rid), 0)
            checkpoint = NodeCheckpoint(
                run_id=rid, node_id=node, status="completed", output=self.counter, fence=fence
            )
            if self.model[rid].fence != fence:
                with pytest.raises(LeaseLost):
                    self.call(self.store.save_checkpoint, checkpoint)
                return
            self.call(self.store.save_checkpoint, checkpoint)
            self.checkpoints[rid][node] = checkpoint

        @rule(owner=_OWNERS, rid=_LEASE_RUNS)
        def save_run(self, owner: str, rid: str) -> None:
            self.counter += 1
            fence = self.tokens.get((owner, rid), 0)
            run = msgspec.structs.replace(
                self.model[rid], fence=fence, output=self.counter, started_at=self.now
            )
            if self.model[rid].fence != fence:
                with pytest.raises(LeaseLost):
                    self.call(self.store.save_run, run)
                return
            self.call(self.store.save_run, run)
            self.model[rid] = run

        @rule(
            owner=_OWNERS,
            rid=_LEASE_RUNS,
            status=st.sampled_from(["completed", "failed", "cancelled"]),
        )
        def finish(self, owner: str, rid: str, status: str) -> None:
            self.counter += 1
            fence = self.tokens.get((owner, rid), 0)
            run = msgspec.structs.replace(
                self.model[rid], fence=fence, status=status, finished_at=self.now
            )
            last = NodeCheckpoint(
                run_id=rid, node_id="last", status="completed", output=self.counter, fence=fence
            )
            if self.model[rid].fence != fence:
                with pytest.raises(LeaseLost):
                    self.call(self.store.finish_run, run, [last])
                return
            self.call(self.store.finish_run, run, [last])
            self.model[rid] = run
            self.checkpoints[rid]["last"] = last

        # -- what must hold after every step ---------------------------------------

        @invariant()
        def runs_agree(self) -> None:
            for rid, expected in self.model.items():
                assert self.call(self.store.get_run, rid) == expected
                assert self.call(self.store.get_checkpoints, rid) == self.checkpoints[rid]

        @invariant()
        def claimable_agree(self) -> None:
            expected = [r for r in self.model.values() if self._claimable(r)]
            expected.sort(key=lambda r: (r.created_at, r.id))
            assert self.call(self.store.claimable_runs, self.now) == expected

    return LeaseMachine
