"""``memory://``: everything in plain dicts and lists of this process, lost on exit.

For tests and throwaway runs. It keeps the same promises as a persistent
backend: records are copied in and out through a JSON round trip (so a caller
mutating a returned record cannot corrupt the store, and a value that could not
be stored in SQLite fails here too), and every read-modify-write happens without
an ``await`` in the middle, so concurrent tasks of one event loop never see a
half-made change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from ..events import Event
from .base import (
    AuditRecord,
    CredentialRecord,
    NodeCheckpoint,
    RunRecord,
    SessionRecord,
    Storage,
)

__all__ = ["MemoryStorage"]

_T = TypeVar("_T")

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (SessionRecord, RunRecord, NodeCheckpoint, Event, AuditRecord, CredentialRecord)
}


def _copy(record: _T) -> _T:
    """A deep copy of a record through JSON, as a persistent backend would return it."""
    return _decoders[type(record)].decode(_encoder.encode(record))  # type: ignore[no-any-return]


def _key_of(run: RunRecord) -> tuple[str, str, str]:
    """What an idempotency key is unique within: its tenant and principal."""
    assert run.idempotency_key is not None
    return (run.tenant, run.principal or "", run.idempotency_key)


def _run_order(run: RunRecord) -> tuple[float, str]:
    """The total order of runs: by creation time, then id."""
    return (run.created_at, run.id)


class MemoryStorage(Storage):
    """Storage in this process's memory (``memory://``). Not persistent; for tests.

    Safe under concurrent tasks of one event loop: no method awaits between
    reading and writing its state.
    """

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._sessions: dict[str, SessionRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        # (tenant, principal, key) -> run id: a key is its principal's own.
        self._idempotency: dict[tuple[str, str, str], str] = {}
        self._checkpoints: dict[str, dict[str, NodeCheckpoint]] = {}
        self._events: list[Event] = []
        self._event_index: dict[str, int] = {}
        self._audit: list[AuditRecord] = []
        self._cache: dict[str, tuple[bytes, float | None]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._blobs: dict[str, bytes] = {}
        self._credentials: dict[str, CredentialRecord] = {}
        self._credential_hashes: dict[tuple[str, str], str] = {}

    @property
    def persistent(self) -> bool:
        """False: everything is lost when the process exits."""
        return False

    # -- sessions --------------------------------------------------------------

    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session; an id already in use raises ``ValueError``."""
        if session.id in self._sessions:
            raise ValueError(f"session {session.id!r} already exists")
        self._sessions[session.id] = _copy(session)

    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """The session, or None if unknown, of another tenant, or expired."""
        session = self._sessions.get(session_id)
        if session is None or (tenant is not None and session.tenant != tenant):
            return None
        if session.expires_at <= time.time():
            return None
        return _copy(session)

    async def save_session(self, session: SessionRecord) -> None:
        """Replace the mutable fields of a stored session; an unknown id does nothing."""
        stored = self._sessions.get(session.id)
        if stored is None:
            return
        new = _copy(session)
        self._sessions[session.id] = msgspec.structs.replace(
            stored,
            last_seen_at=new.last_seen_at,
            expires_at=new.expires_at,
            ttl=new.ttl,
            channels=new.channels,
            state=new.state,
        )

    async def delete_session(self, session_id: str) -> None:
        """Remove a session (no error if it does not exist)."""
        self._sessions.pop(session_id, None)

    async def expire_sessions(self, now: float) -> list[str]:
        """Delete the sessions with ``expires_at <= now``; return their ids."""
        expired = [sid for sid, s in self._sessions.items() if s.expires_at <= now]
        for sid in expired:
            del self._sessions[sid]
        return expired

    async def count_sessions(self, now: float) -> int:
        """How many sessions have ``expires_at > now``."""
        return sum(1 for s in self._sessions.values() if s.expires_at > now)

    # -- runs ------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run, or return the run already holding its idempotency key."""
        if run.idempotency_key is not None:
            existing = self._idempotency.get(_key_of(run))
            if existing is not None:
                return _copy(self._runs[existing]), False
        if run.id in self._runs:
            raise ValueError(f"run {run.id!r} already exists")
        self._runs[run.id] = _copy(run)
        if run.idempotency_key is not None:
            self._idempotency[_key_of(run)] = run.id
        return _copy(run), True

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""
        run = self._runs.get(run_id)
        if run is None or (tenant is not None and run.tenant != tenant):
            return None
        return _copy(run)

    async def save_run(self, run: RunRecord) -> None:
        """Replace the mutable fields of a stored run; an unknown id does nothing."""
        stored = self._runs.get(run.id)
        if stored is None:
            return
        new = _copy(run)
        self._runs[run.id] = msgspec.structs.replace(
            stored,
            status=new.status,
            output=new.output,
            error=new.error,
            started_at=new.started_at,
            finished_at=new.finished_at,
            owner=new.owner,
        )

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
        """Runs newest first (by ``created_at``, then id), filtered; paged with ``before``."""
        if limit <= 0:
            return []
        cursor: tuple[float, str] | None = None
        if before is not None:
            anchor = self._runs.get(before)
            if anchor is None or (tenant is not None and anchor.tenant != tenant):
                return []
            cursor = _run_order(anchor)
        matches = [
            r
            for r in self._runs.values()
            if (tenant is None or r.tenant == tenant)
            and (workflow is None or r.workflow == workflow)
            and (status is None or r.status == status)
            and (session_id is None or r.session_id == session_id)
            and (principal is None or r.principal == principal)
            and (cursor is None or _run_order(r) < cursor)
        ]
        matches.sort(key=_run_order, reverse=True)
        return [_copy(r) for r in matches[:limit]]

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still ``pending`` or ``running``, oldest first."""
        runs = [r for r in self._runs.values() if r.status in ("pending", "running")]
        runs.sort(key=_run_order)
        return [_copy(r) for r in runs]

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node, replacing an earlier record of the same node."""
        self._checkpoints.setdefault(checkpoint.run_id, {})[checkpoint.node_id] = _copy(checkpoint)

    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""
        return {k: _copy(v) for k, v in self._checkpoints.get(run_id, {}).items()}

    # -- events ----------------------------------------------------------------

    async def append_event(self, event: Event) -> None:
        """Append to the log; an event whose id is already logged is not appended again."""
        if event.id in self._event_index:
            return
        self._event_index[event.id] = len(self._events)
        self._events.append(_copy(event))

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append several events in order (no await between them: one atomic step)."""
        for event in events:
            if event.id not in self._event_index:
                self._event_index[event.id] = len(self._events)
                self._events.append(_copy(event))

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events after the one with id ``after`` (from the start if None or unknown)."""
        if limit <= 0:
            return []
        start = 0
        if after is not None and after in self._event_index:
            start = self._event_index[after] + 1
        out: list[Event] = []
        for event in self._events[start:]:
            if run_id is not None and event.run_id != run_id:
                continue
            out.append(_copy(event))
            if len(out) >= limit:
                break
        return out

    # -- audit -----------------------------------------------------------------

    async def append_audit(self, record: AuditRecord) -> None:
        """Append an audit record."""
        self._audit.append(_copy(record))

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
        """Audit records oldest first (by time, then append order), filtered."""
        if limit <= 0:
            return []
        matches = [
            r
            for r in self._audit
            if (tenant is None or r.tenant == tenant)
            and (principal is None or r.principal == principal)
            and (workflow is None or r.workflow == workflow)
            and (since is None or r.time >= since)
            and (until is None or r.time < until)
        ]
        matches.sort(key=lambda r: r.time)  # stable: append order breaks ties
        return [_copy(r) for r in matches[:limit]]

    # -- credentials -----------------------------------------------------------

    async def put_credential(self, record: CredentialRecord) -> None:
        """Store a new credential; a used id or ``(kind, token_hash)`` raises ``ValueError``."""
        key = (record.kind, record.token_hash)
        if record.id in self._credentials or key in self._credential_hashes:
            raise ValueError(f"credential {record.id!r} (or its token) already exists")
        self._credentials[record.id] = _copy(record)
        self._credential_hashes[key] = record.id

    async def get_credential(self, kind: str, token_hash: str) -> CredentialRecord | None:
        """The credential of that kind with that token hash, or None."""
        credential_id = self._credential_hashes.get((kind, token_hash))
        return None if credential_id is None else _copy(self._credentials[credential_id])

    async def get_credential_by_id(self, credential_id: str) -> CredentialRecord | None:
        """The credential with that id, or None."""
        record = self._credentials.get(credential_id)
        return None if record is None else _copy(record)

    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
    ) -> list[CredentialRecord]:
        """Credentials oldest first (by ``created_at``, then id), filtered."""
        matches = [
            r
            for r in self._credentials.values()
            if (principal is None or r.principal == principal)
            and (kind is None or r.kind == kind)
            and (tenant is None or r.tenant == tenant)
        ]
        matches.sort(key=lambda r: (r.created_at, r.id))
        return [_copy(r) for r in matches]

    async def revoke_credential(self, credential_id: str, *, at: float) -> bool:
        """Set ``revoked_at`` to ``at`` unless already revoked at or before it."""
        record = self._credentials.get(credential_id)
        if record is None or (record.revoked_at is not None and record.revoked_at <= at):
            return False
        self._credentials[credential_id] = msgspec.structs.replace(record, revoked_at=at)
        return True

    # -- cache -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None if absent or expired."""
        entry = self._cache.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self._cache[key]
            return None
        return value

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Set a value, expiring after ``ttl`` seconds (never if None)."""
        expires_at = None if ttl is None else time.monotonic() + ttl
        self._cache[key] = (bytes(value), expires_at)

    async def cache_delete(self, key: str) -> None:
        """Remove a value (no error if absent)."""
        self._cache.pop(key, None)

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """Take ``cost`` tokens from bucket ``key``: 0.0 if taken, else the seconds to wait."""
        now = time.monotonic()
        tokens, updated = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + max(0.0, now - updated) * refill_per_second)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if cost > capacity or refill_per_second <= 0:
            return math.inf
        return (cost - tokens) / refill_per_second

    # -- blobs -----------------------------------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` (replacing)."""
        self._blobs[key] = bytes(data)

    async def get_blob(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        return self._blobs.get(key)

    async def delete_blob(self, key: str) -> None:
        """Remove a blob (no error if absent)."""
        self._blobs.pop(key, None)

    async def list_blobs(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted."""
        return sorted(k for k in self._blobs if k.startswith(prefix))

    # -- retention -------------------------------------------------------------

    async def prune(self, before: float, *, limit: int = 500) -> int:
        """Delete one batch of finished runs, events and audit records older than ``before``."""
        if limit <= 0:
            return 0
        old = [
            run
            for run in self._runs.values()
            if run.status not in ("pending", "running")
            and (run.finished_at or run.created_at) < before
        ]
        old.sort(key=_run_order)
        for run in old[:limit]:
            del self._runs[run.id]
            self._checkpoints.pop(run.id, None)
            if run.idempotency_key is not None and self._idempotency.get(_key_of(run)) == run.id:
                del self._idempotency[_key_of(run)]
        cut = 0
        while cut < min(limit, len(self._events)) and self._events[cut].time < before:
            cut += 1
        if cut:
            del self._events[:cut]
            self._event_index = {event.id: index for index, event in enumerate(self._events)}
        kept: list[AuditRecord] = []
        audits = 0
        for record in self._audit:
            if audits < limit and record.time < before:
                audits += 1
            else:
                kept.append(record)
        self._audit = kept
        return min(len(old), limit) + cut + audits
