"""``memory://``: everything in plain dicts and lists of this process, lost on exit.

For tests and throwaway runs. It keeps the same promises as a persistent
backend: records are copied in and out through a JSON round trip (so a caller
mutating a returned record cannot corrupt the store, and a value that could not
be stored in SQLite fails here too), and every read-modify-write happens without
an ``await`` in the middle, so concurrent tasks of one event loop never see a
half-made change.

It is bounded, so a long-lived process on ``memory://`` stays flat in memory
(and in garbage-collection pauses) under sustained load. Events, audit
records and checkpoints, the bulk of it, are kept as their JSON bytes (with
the few fields the queries filter on beside them), which the garbage collector
never has to walk; runs are kept as records. Beyond a count, or
an age, the oldest finished runs (with their checkpoints), events and audit
records are dropped, as retention would prune them. The bounds come from the
URL's query string (:class:`MemoryBounds`)::

    memory://                                   # 10,000 runs, 50,000 events, 20,000 audit records
    memory://?max_runs=1000&max_events=20000    # tighter
    memory://?max_age=600                       # also nothing older than 10 minutes
    memory://?max_runs=none&max_events=none&max_audit=none   # keep everything
"""

from __future__ import annotations

import bisect
import collections
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgspec

from ..events import Event
from .base import (
    AlreadyExists,
    AuditRecord,
    CredentialRecord,
    LeaseLost,
    NodeCheckpoint,
    RunRecord,
    SessionRecord,
    Storage,
    event_id,
    event_seq,
)

__all__ = ["MemoryBounds", "MemoryStorage"]

_T = TypeVar("_T")

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (SessionRecord, RunRecord, NodeCheckpoint, Event, AuditRecord, CredentialRecord)
}


def _copy(record: _T) -> _T:
    """A deep copy of a record through JSON, as a persistent backend would return it."""
    return _decoders[type(record)].decode(_encoder.encode(record))  # type: ignore[no-any-return]


def _copy_data(value: Any) -> Any:
    """A deep copy of JSON data through JSON (a value that cannot change is itself)."""
    if value is None or isinstance(value, str | int | float):
        return value
    return msgspec.json.decode(_encoder.encode(value))


_encode = _encoder.encode
_decode_event = _decoders[Event].decode
_decode_audit = _decoders[AuditRecord].decode
_decode_checkpoint = _decoders[NodeCheckpoint].decode

#: An audit record as kept: (when the store took it, its time, tenant, principal,
#: workflow, its JSON). Atomic values only, so the garbage collector skips it.
_StoredAudit = tuple[float, float, str, str | None, str | None, bytes]


def _key_of(run: RunRecord) -> tuple[str, str, str]:
    """What an idempotency key is unique within: its tenant and principal."""
    assert run.idempotency_key is not None
    return (run.tenant, run.principal or "", run.idempotency_key)


def _run_order(run: RunRecord) -> tuple[float, str]:
    """The total order of runs: by creation time, then id."""
    return (run.created_at, run.id)


_UNFINISHED = ("pending", "running")

#: Past this many entries dropped from the front, a list is compacted (amortised O(1)).
_COMPACT_AFTER = 4096


class MemoryBounds(msgspec.Struct, frozen=True, kw_only=True):
    """What a ``memory://`` store keeps, read from its URL's query string.

    ``max_runs``: finished runs kept (the oldest finished first go, with their
    checkpoints and idempotency keys); runs still pending or running are never
    dropped. ``max_events``: events kept in the log (the oldest go; ids keep
    growing, so replay after a dropped id still works). ``max_audit``: audit
    records kept (the oldest go). ``max_age``: seconds; a finished run, event
    or audit record that the store took in longer ago than that is dropped.
    Age is measured on the store's own clock from when it recorded the record
    (a run: when it finished), not from the record's timestamps. ``None``
    means no bound. Dropping happens on every write and read of that kind, so
    the bounds hold whenever the store is looked at.
    """

    max_runs: int | None = 10_000
    max_events: int | None = 50_000
    max_audit: int | None = 20_000
    max_age: float | None = None

    @classmethod
    def from_url(cls, url: str) -> MemoryBounds:
        """The bounds named in ``url``'s query; defaults for those not named.

        Raises ``ValueError`` naming the parameter for an unknown one or a value
        that is not a positive number (or ``none``).
        """
        values: dict[str, int | float | None] = {}
        known = ("max_runs", "max_events", "max_audit", "max_age")
        for name, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if name not in known:
                raise ValueError(
                    f"memory:// URL {url!r}: unknown parameter {name!r} (known: {', '.join(known)})"
                )
            text = raw.strip().lower()
            if text == "none":
                values[name] = None
                continue
            try:
                number: int | float = float(text) if name == "max_age" else int(text)
            except ValueError:
                number = 0
            if not number > 0 or (isinstance(number, float) and not math.isfinite(number)):
                kind = "a number of seconds" if name == "max_age" else "a whole number"
                raise ValueError(
                    f"memory:// URL {url!r}: {name} must be {kind} greater than 0, "
                    f"or 'none' for no bound (got {raw!r})"
                )
            values[name] = number
        return cls(**values)  # type: ignore[arg-type]


class MemoryStorage(Storage):
    """Storage in this process's memory (``memory://``). Not persistent; for tests.

    Safe under concurrent tasks of one event loop: no method awaits between
    reading and writing its state.
    """

    def __init__(
        self, url: str = "memory://", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """A store bounded as ``url``'s query says (:class:`MemoryBounds`).

        ``clock`` is what ``max_age`` is measured with (seconds, never going
        back); tests pass their own.
        """
        super().__init__(url)
        #: What this store keeps (from the URL).
        self.bounds = MemoryBounds.from_url(url)
        self._clock = clock
        self._sessions: dict[str, SessionRecord] = {}
        self._runs: dict[str, RunRecord] = {}
        # Finished run id -> when the store saw it finish, in that order (oldest first).
        self._finished: collections.OrderedDict[str, float] = collections.OrderedDict()
        # (tenant, principal, key) -> run id: a key is its principal's own.
        self._idempotency: dict[tuple[str, str, str], str] = {}
        self._checkpoints: dict[str, dict[str, bytes]] = {}  # run -> node -> JSON
        # The log: events (JSON, ids already given), their positions, runs, times and
        # when they were appended, all in order; the live part starts at _head.
        self._events: list[bytes] = []
        self._seqs: list[int] = []
        self._event_runs: list[str | None] = []
        self._event_times: list[float] = []
        self._stamps: list[float] = []
        self._head = 0
        self._last_seq = 0  # the last position handed out (never reused, pruned or not)
        self._audit: collections.deque[_StoredAudit] = collections.deque()
        self._cache: dict[str, tuple[bytes, float | None]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._blobs: dict[str, bytes] = {}
        self._credentials: dict[str, CredentialRecord] = {}
        self._credential_hashes: dict[tuple[str, str], str] = {}

    @property
    def persistent(self) -> bool:
        """False: everything is lost when the process exits."""
        return False

    # -- bounds ----------------------------------------------------------------

    def _drop_run(self, run_id: str) -> None:
        """Forget a run: its record, checkpoints and idempotency key."""
        run = self._runs.pop(run_id, None)
        self._finished.pop(run_id, None)
        self._checkpoints.pop(run_id, None)
        if run is not None and run.idempotency_key is not None:
            key = _key_of(run)
            if self._idempotency.get(key) == run_id:
                del self._idempotency[key]

    def _note_status(self, run: RunRecord) -> None:
        """Track whether a stored run is finished (and since when); then apply the bounds."""
        if run.status in _UNFINISHED:
            self._finished.pop(run.id, None)
        elif run.id not in self._finished:
            self._finished[run.id] = self._clock()
        self._trim_runs()

    def _trim_runs(self) -> None:
        """Drop the oldest finished runs beyond ``max_runs`` or older than ``max_age``."""
        bounds = self.bounds
        finished = self._finished
        if bounds.max_runs is not None:
            while len(finished) > bounds.max_runs:
                self._drop_run(next(iter(finished)))
        if bounds.max_age is not None and finished:
            cut = self._clock() - bounds.max_age
            while finished:
                run_id = next(iter(finished))
                if finished[run_id] >= cut:
                    break
                self._drop_run(run_id)

    def _trim_events(self) -> None:
        """Drop the oldest events beyond ``max_events`` or older than ``max_age``."""
        bounds = self.bounds
        head, end = self._head, len(self._events)
        if bounds.max_events is not None and end - head > bounds.max_events:
            head = end - bounds.max_events
        if bounds.max_age is not None:
            head = bisect.bisect_left(self._stamps, self._clock() - bounds.max_age, head, end)
        self._set_head(head)

    def _set_head(self, head: int) -> None:
        """Make ``head`` the first live event, freeing the dropped ones now and then."""
        if head == self._head:
            return
        if head >= _COMPACT_AFTER or head * 2 >= len(self._events):
            del self._events[:head]
            del self._seqs[:head]
            del self._event_runs[:head]
            del self._event_times[:head]
            del self._stamps[:head]
            head = 0
        self._head = head

    def _trim_audit(self) -> None:
        """Drop the oldest audit records beyond ``max_audit`` or older than ``max_age``."""
        bounds = self.bounds
        audit = self._audit
        if bounds.max_audit is not None:
            while len(audit) > bounds.max_audit:
                audit.popleft()
        if bounds.max_age is not None:
            cut = self._clock() - bounds.max_age
            while audit and audit[0][0] < cut:
                audit.popleft()

    # -- sessions --------------------------------------------------------------

    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session; an id already in use raises :class:`AlreadyExists`."""
        if session.id in self._sessions:
            raise AlreadyExists(f"session {session.id!r} already exists")
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
        self._trim_runs()
        if run.idempotency_key is not None:
            existing = self._idempotency.get(_key_of(run))
            if existing is not None:
                return _copy(self._runs[existing]), False
        if run.id in self._runs:
            raise AlreadyExists(f"run {run.id!r} already exists")
        self._runs[run.id] = _copy(run)
        if run.idempotency_key is not None:
            self._idempotency[_key_of(run)] = run.id
        if run.status not in _UNFINISHED:
            self._note_status(run)
        return _copy(run), True

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""
        self._trim_runs()
        run = self._runs.get(run_id)
        if run is None or (tenant is not None and run.tenant != tenant):
            return None
        return _copy(run)

    async def save_run(self, run: RunRecord) -> None:
        """Replace the mutable fields of a stored run when ``run.fence`` is the stored one.

        A stale fence raises :class:`LeaseLost`; an unknown id does nothing.
        """
        stored = self._runs.get(run.id)
        if stored is None:
            return
        if stored.fence != run.fence:
            raise LeaseLost(run.id, run.fence, stored.fence)
        self._replace_run(stored, run)

    def _replace_run(self, stored: RunRecord, run: RunRecord) -> None:
        # Only the fields a write changes are taken; the caller's data is copied.
        output, error = _copy_data(run.output), _copy_data(run.error)
        new = self._runs[run.id] = msgspec.structs.replace(
            stored,
            status=run.status,
            output=output,
            error=error,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )
        self._note_status(new)

    def _check_fence(self, run_id: str, fence: int) -> None:
        """Raise :class:`LeaseLost` unless the run exists with this fencing token."""
        stored = self._runs.get(run_id)
        if stored is None or stored.fence != fence:
            raise LeaseLost(run_id, fence, None if stored is None else stored.fence)

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """The last checkpoints and the run's final state, all or nothing (fenced)."""
        stored = self._runs.get(run.id)
        if stored is None and not checkpoints:
            return  # an unknown run, as save_run
        self._check_fence(run.id, run.fence)
        for checkpoint in checkpoints:
            self._check_fence(checkpoint.run_id, checkpoint.fence)
        assert stored is not None
        for checkpoint in checkpoints:
            self._checkpoints.setdefault(checkpoint.run_id, {})[checkpoint.node_id] = _encode(
                checkpoint
            )
        self._replace_run(stored, run)

    async def claim_run(
        self, run_id: str, owner: str, *, lease: float, now: float
    ) -> RunRecord | None:
        """Take an unfinished run whose lease is None or expired at ``now``; fence + 1."""
        stored = self._runs.get(run_id)
        if stored is None or stored.status not in _UNFINISHED:
            return None
        if stored.lease_expires_at is not None and stored.lease_expires_at > now:
            return None
        claimed = msgspec.structs.replace(
            stored, owner=owner, fence=stored.fence + 1, lease_expires_at=now + lease
        )
        self._runs[run_id] = claimed
        return _copy(claimed)

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], *, until: float
    ) -> set[str]:
        """Extend to ``until`` the leases ``owner`` still holds with these tokens; their ids."""
        held: set[str] = set()
        for run_id, fence in fences.items():
            stored = self._runs.get(run_id)
            if (
                stored is not None
                and stored.status in _UNFINISHED
                and stored.owner == owner
                and stored.fence == fence
            ):
                self._runs[run_id] = msgspec.structs.replace(stored, lease_expires_at=until)
                held.add(run_id)
        return held

    async def claimable_runs(
        self, now: float, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """Unfinished runs with no lease or an expired one at ``now``, oldest first."""
        if limit <= 0:
            return []
        runs = [
            r
            for r in self._runs.values()
            if r.status in _UNFINISHED
            and (r.lease_expires_at is None or r.lease_expires_at <= now)
            and (workflows is None or r.workflow in workflows)
        ]
        runs.sort(key=_run_order)
        return [_copy(r) for r in runs[:limit]]

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
        self._trim_runs()
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
        runs = [r for r in self._runs.values() if r.status in _UNFINISHED]
        runs.sort(key=_run_order)
        return [_copy(r) for r in runs]

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node, replacing an earlier one; fenced (:class:`LeaseLost`)."""
        self._check_fence(checkpoint.run_id, checkpoint.fence)
        self._checkpoints.setdefault(checkpoint.run_id, {})[checkpoint.node_id] = _encode(
            checkpoint
        )

    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""
        self._trim_runs()
        return {k: _decode_checkpoint(v) for k, v in self._checkpoints.get(run_id, {}).items()}

    # -- events ----------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append events in order (one atomic step); each gets the id of its log position."""
        logged: list[Event] = []
        now = self._clock()
        for event in events:
            self._last_seq += 1
            # Returned as given with its id, as the SQLite backend returns it:
            # equal to what read_events decodes (events are frozen, their data JSON).
            entry = msgspec.structs.replace(event, id=event_id(self._last_seq))
            self._events.append(_encode(entry))
            self._seqs.append(self._last_seq)
            self._event_runs.append(entry.run_id)
            self._event_times.append(entry.time)
            self._stamps.append(now)
            logged.append(entry)
        self._trim_events()
        return logged

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events after position ``event_seq(after)``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        self._trim_events()
        events, runs = self._events, self._event_runs
        start = bisect.bisect_right(self._seqs, event_seq(after), self._head)
        out: list[Event] = []
        for index in range(start, len(events)):
            if run_id is not None and runs[index] != run_id:
                continue
            out.append(_decode_event(events[index]))
            if len(out) >= limit:
                break
        return out

    async def last_event_id(self) -> str | None:
        """The id of the newest event in the log (None when it is empty)."""
        self._trim_events()
        return event_id(self._seqs[-1]) if len(self._seqs) > self._head else None

    # -- audit -----------------------------------------------------------------

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records, in order."""
        now = self._clock()
        self._audit.extend(
            (now, r.time, r.tenant, r.principal, r.workflow, _encode(r)) for r in records
        )
        self._trim_audit()

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
        self._trim_audit()
        matches = [
            entry
            for entry in self._audit
            if (tenant is None or entry[2] == tenant)
            and (principal is None or entry[3] == principal)
            and (workflow is None or entry[4] == workflow)
            and (since is None or entry[1] >= since)
            and (until is None or entry[1] < until)
        ]
        matches.sort(key=lambda entry: entry[1])  # stable: append order breaks ties
        return [_decode_audit(entry[5]) for entry in matches[:limit]]

    # -- credentials -----------------------------------------------------------

    async def put_credential(self, record: CredentialRecord) -> None:
        """Store a new credential; a used id or ``(kind, token_hash)``: :class:`AlreadyExists`."""
        key = (record.kind, record.token_hash)
        if record.id in self._credentials or key in self._credential_hashes:
            raise AlreadyExists(f"credential {record.id!r} (or its token) already exists")
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
        """Keys starting with ``prefix`` (plain text), sorted by code point."""
        return sorted(k for k in self._blobs if k.startswith(prefix))

    # -- retention -------------------------------------------------------------

    async def prune_runs(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` finished runs older than ``before``, with their checkpoints."""
        if limit <= 0:
            return 0
        old = [
            run
            for run in self._runs.values()
            if run.status not in _UNFINISHED and (run.finished_at or run.created_at) < before
        ]
        old.sort(key=_run_order)
        for run in old[:limit]:
            self._drop_run(run.id)
        return min(len(old), limit)

    async def prune_events(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` of the oldest events whose ``time`` is before ``before``."""
        head = self._head
        end = min(head + max(limit, 0), len(self._events))
        cut = head
        while cut < end and self._event_times[cut] < before:
            cut += 1
        self._set_head(cut)
        return cut - head

    async def prune_audit(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` audit records whose ``time`` is before ``before``."""
        kept: collections.deque[_StoredAudit] = collections.deque()
        audits = 0
        for entry in self._audit:
            if audits < limit and entry[1] < before:
                audits += 1
            else:
                kept.append(entry)
        self._audit = kept
        return audits
