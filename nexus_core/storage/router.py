"""``StorageRouter``: one :class:`Storage` made of a backend per role.

When configuration names different URLs for different roles
(``[nexus.storage]`` with ``url`` and, say, ``cache = "redis://..."``), the
host talks to a :class:`StorageRouter`: every method of a role goes to the
backend serving that role. Each distinct backend is opened and closed once,
however many roles it serves. When every role has one URL the host uses that
backend itself and no router is made (see
:func:`nexus_core.storage.select.select_storage`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import cast

from ..events import Event
from .base import (
    ROLES,
    AuditLog,
    AuditRecord,
    Backend,
    BlobStore,
    Cache,
    CredentialRecord,
    CredentialStore,
    EventLog,
    NodeCheckpoint,
    Role,
    RunFinish,
    RunRecord,
    RunStore,
    SessionRecord,
    SessionStore,
    Storage,
)

__all__ = ["StorageRouter"]


class StorageRouter(Storage):
    """A :class:`Storage` whose every role is served by a backend of its own.

    ``backends`` maps every role of :data:`~nexus_core.storage.base.ROLES` to
    the (unopened) backend serving it; one backend object may serve several
    roles, and is then opened and closed once. Each backend must implement
    the contract of the roles it is given (:class:`RunStore` for ``"runs"``...).
    ``url`` is what :attr:`url` shows: the default URL of the configuration.

    :meth:`open` opens the distinct backends in role order (a failure closes
    the ones already open and raises); :meth:`close` closes them in reverse
    order. :meth:`ping` and :attr:`persistent` hold when they hold for every
    backend; :meth:`prune` prunes runs, events and audit each on its own
    backend.
    """

    def __init__(self, backends: Mapping[Role, Backend], *, url: str) -> None:
        missing = [role for role in ROLES if role not in backends]
        if missing:
            raise ValueError(f"StorageRouter: no backend for the roles {', '.join(missing)}")
        super().__init__(url)
        #: The backend of every role.
        self.backends: dict[Role, Backend] = {role: backends[role] for role in ROLES}
        distinct: dict[int, Backend] = {}
        for backend in self.backends.values():
            distinct.setdefault(id(backend), backend)
        #: Each backend once, in the order of the first role it serves.
        self.distinct: tuple[Backend, ...] = tuple(distinct.values())
        self._runs = cast(RunStore, self.backends["runs"])
        self._events = cast(EventLog, self.backends["events"])
        self._audit = cast(AuditLog, self.backends["audit"])
        self._credentials = cast(CredentialStore, self.backends["credentials"])
        self._sessions = cast(SessionStore, self.backends["sessions"])
        self._cache = cast(Cache, self.backends["cache"])
        self._blobs = cast(BlobStore, self.backends["blobs"])

    def __repr__(self) -> str:
        roles = ", ".join(f"{role}={backend.url!r}" for role, backend in self.backends.items())
        return f"StorageRouter({roles})"

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open each backend once, in role order; a failure closes those already open."""
        opened: list[Backend] = []
        try:
            for backend in self.distinct:
                await backend.open()
                opened.append(backend)
        except BaseException:
            for backend in reversed(opened):
                try:
                    await backend.close()
                except Exception:  # the open failure is the error to report
                    continue
            raise

    async def close(self) -> None:
        """Close each backend once, in reverse order; every one is closed even if one fails."""
        error: BaseException | None = None
        for backend in reversed(self.distinct):
            try:
                await backend.close()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    async def ping(self) -> bool:
        """Whether every backend answers now."""
        results = [await backend.ping() for backend in self.distinct]
        return all(results)

    @property
    def persistent(self) -> bool:
        """Whether every backend keeps its data across a close and reopen."""
        return all(backend.persistent for backend in self.distinct)

    # -- sessions --------------------------------------------------------------

    async def create_session(self, session: SessionRecord) -> None:
        """See :meth:`SessionStore.create_session`."""
        await self._sessions.create_session(session)

    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """See :meth:`SessionStore.get_session`."""
        return await self._sessions.get_session(session_id, tenant=tenant)

    async def save_session(self, session: SessionRecord) -> None:
        """See :meth:`SessionStore.save_session`."""
        await self._sessions.save_session(session)

    async def delete_session(self, session_id: str) -> None:
        """See :meth:`SessionStore.delete_session`."""
        await self._sessions.delete_session(session_id)

    async def expire_sessions(self, now: float) -> list[str]:
        """See :meth:`SessionStore.expire_sessions`."""
        return await self._sessions.expire_sessions(now)

    async def count_sessions(self, now: float) -> int:
        """See :meth:`SessionStore.count_sessions`."""
        return await self._sessions.count_sessions(now)

    # -- runs ------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """See :meth:`RunStore.create_run`."""
        return await self._runs.create_run(run)

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """See :meth:`RunStore.get_run`."""
        return await self._runs.get_run(run_id, tenant=tenant)

    async def save_run(self, run: RunRecord) -> None:
        """See :meth:`RunStore.save_run`."""
        await self._runs.save_run(run)

    async def list_runs(
        self,
        *,
        tenant: str | None = None,
        workflow: str | None = None,
        status: str | None = None,
        session_id: str | None = None,
        principal: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        """See :meth:`RunStore.list_runs`."""
        return await self._runs.list_runs(
            tenant=tenant,
            workflow=workflow,
            status=status,
            session_id=session_id,
            principal=principal,
            limit=limit,
            before=before,
        )

    async def unfinished_runs(self) -> list[RunRecord]:
        """See :meth:`RunStore.unfinished_runs`."""
        return await self._runs.unfinished_runs()

    async def claim_run(
        self, run_id: str, owner: str, *, lease: float, now: float
    ) -> RunRecord | None:
        """See :meth:`RunStore.claim_run`."""
        return await self._runs.claim_run(run_id, owner, lease=lease, now=now)

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], *, until: float
    ) -> set[str]:
        """See :meth:`RunStore.renew_leases`."""
        return await self._runs.renew_leases(owner, fences, until=until)

    async def claimable_runs(
        self, now: float, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """See :meth:`RunStore.claimable_runs`."""
        return await self._runs.claimable_runs(now, limit=limit, workflows=workflows)

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """See :meth:`RunStore.save_checkpoint`."""
        await self._runs.save_checkpoint(checkpoint)

    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """See :meth:`RunStore.get_checkpoints`."""
        return await self._runs.get_checkpoints(run_id)

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """See :meth:`RunStore.finish_run`: the runs backend's own (one transaction if it can)."""
        await self._runs.finish_run(run, checkpoints)

    def _finishing_backend(self) -> Storage | None:
        """The one backend of the runs, events and audit roles, if one serves all three."""
        runs = self.backends["runs"]
        if runs is self.backends["events"] is self.backends["audit"] and isinstance(runs, Storage):
            return runs
        return None

    async def log_writes(
        self, writes: Sequence[tuple[RunFinish | None, Sequence[Event]]]
    ) -> list[list[Event] | Exception]:
        """See :meth:`Storage.log_writes`: one backend's own when it serves all three roles."""
        both = self._finishing_backend()
        if both is not None:
            return await both.log_writes(writes)
        return await super().log_writes(writes)

    async def finish_run_logged(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        *,
        audits: Sequence[AuditRecord] = (),
    ) -> list[Event]:
        """See :meth:`Storage.finish_run_logged`: one backend's own when it serves all three."""
        both = self._finishing_backend()
        if both is not None:
            return await both.finish_run_logged(run, checkpoints, events, audits=audits)
        return await super().finish_run_logged(run, checkpoints, events, audits=audits)

    async def prune_runs(self, before: float, *, limit: int = 500) -> int:
        """See :meth:`RunStore.prune_runs`: on the runs backend."""
        return await self._runs.prune_runs(before, limit=limit)

    # -- events ----------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """See :meth:`EventLog.append_events`."""
        return await self._events.append_events(events)

    async def append_event(self, event: Event) -> Event:
        """See :meth:`EventLog.append_event`."""
        return await self._events.append_event(event)

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """See :meth:`EventLog.read_events`."""
        return await self._events.read_events(after=after, limit=limit, run_id=run_id)

    async def last_event_id(self) -> str | None:
        """See :meth:`EventLog.last_event_id`."""
        return await self._events.last_event_id()

    async def prune_events(self, before: float, *, limit: int = 500) -> int:
        """See :meth:`EventLog.prune_events`: on the events backend."""
        return await self._events.prune_events(before, limit=limit)

    # -- audit -----------------------------------------------------------------

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """See :meth:`AuditLog.append_audits`."""
        await self._audit.append_audits(records)

    async def append_audit(self, record: AuditRecord) -> None:
        """See :meth:`AuditLog.append_audit`."""
        await self._audit.append_audit(record)

    async def query_audit(
        self,
        *,
        tenant: str | None = None,
        principal: str | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """See :meth:`AuditLog.query_audit`."""
        return await self._audit.query_audit(
            tenant=tenant,
            principal=principal,
            workflow=workflow,
            since=since,
            until=until,
            limit=limit,
        )

    async def prune_audit(self, before: float, *, limit: int = 500) -> int:
        """See :meth:`AuditLog.prune_audit`: on the audit backend."""
        return await self._audit.prune_audit(before, limit=limit)

    # -- credentials -----------------------------------------------------------

    async def put_credential(self, record: CredentialRecord) -> None:
        """See :meth:`CredentialStore.put_credential`."""
        await self._credentials.put_credential(record)

    async def get_credential(self, kind: str, token_hash: str) -> CredentialRecord | None:
        """See :meth:`CredentialStore.get_credential`."""
        return await self._credentials.get_credential(kind, token_hash)

    async def get_credential_by_id(self, credential_id: str) -> CredentialRecord | None:
        """See :meth:`CredentialStore.get_credential_by_id`."""
        return await self._credentials.get_credential_by_id(credential_id)

    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
    ) -> list[CredentialRecord]:
        """See :meth:`CredentialStore.list_credentials`."""
        return await self._credentials.list_credentials(
            principal=principal, kind=kind, tenant=tenant
        )

    async def revoke_credential(self, credential_id: str, *, at: float) -> bool:
        """See :meth:`CredentialStore.revoke_credential`."""
        return await self._credentials.revoke_credential(credential_id, at=at)

    # -- cache -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """See :meth:`Cache.cache_get`."""
        return await self._cache.cache_get(key)

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """See :meth:`Cache.cache_set`."""
        await self._cache.cache_set(key, value, ttl=ttl)

    async def cache_delete(self, key: str) -> None:
        """See :meth:`Cache.cache_delete`."""
        await self._cache.cache_delete(key)

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """See :meth:`Cache.take_tokens`."""
        return await self._cache.take_tokens(
            key, capacity=capacity, refill_per_second=refill_per_second, cost=cost
        )

    # -- blobs -----------------------------------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        """See :meth:`BlobStore.put_blob`."""
        await self._blobs.put_blob(key, data)

    async def get_blob(self, key: str) -> bytes | None:
        """See :meth:`BlobStore.get_blob`."""
        return await self._blobs.get_blob(key)

    async def delete_blob(self, key: str) -> None:
        """See :meth:`BlobStore.delete_blob`."""
        await self._blobs.delete_blob(key)

    async def list_blobs(self, prefix: str = "") -> list[str]:
        """See :meth:`BlobStore.list_blobs`."""
        return await self._blobs.list_blobs(prefix)

    async def iter_blob(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """See :meth:`BlobStore.iter_blob`."""
        async for chunk in self._blobs.iter_blob(key, chunk_size):
            yield chunk
