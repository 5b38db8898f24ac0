"""The storage contracts: what Nexus keeps, split by role, and the rules every backend keeps.

What the host persists falls into seven roles, each a small contract a
backend may implement alone:

======================  ==============================================================
role                    contract
======================  ==============================================================
``"runs"``              :class:`RunStore`: runs, node checkpoints, leases with fencing
``"events"``            :class:`EventLog`: the event log, one order across processes
``"audit"``             :class:`AuditLog`: append-only audit records
``"credentials"``       :class:`CredentialStore`: issued API keys and CLI tokens
``"sessions"``          :class:`SessionStore`: cross-channel sessions
``"cache"``             :class:`Cache`: values with a TTL, atomic rate-limit buckets
``"blobs"``             :class:`BlobStore`: bytes by key
======================  ==============================================================

A backend subclasses :class:`Backend` and the roles it serves (its
:attr:`Backend.roles` says which), and is registered through the
``nexus_storage_backends`` hook with the URL schemes it serves.
:class:`Storage` is every role at once (the memory and SQLite backends). The
host opens each backend at start-up and closes it at shutdown; configuration
names a URL per role (``nexus.storage.url`` serves every role not named).
Every method is async and safe to call concurrently from many tasks, and, for
shared backends, from many processes and machines.

Records are msgspec Structs; values inside them (inputs, outputs, session
state) are JSON-ready builtins. Rules every backend keeps, beyond each
method's docstring:

* Records come back equal to what was stored, and are copies: mutating a
  returned (or a stored) record never changes the store.
* A new record whose id (or other unique key) is in use raises
  :class:`AlreadyExists` (a ``ValueError``) and stores nothing.
* A persistent backend (:attr:`Backend.persistent`) keeps everything across
  :meth:`Backend.close` and a new :meth:`Backend.open` on the same URL.
* Keys and prefixes are plain strings: ``*``, ``?``, ``[``, ``%`` and ``_``
  match only themselves.
* Events are encoded by the backend as it likes, but must come back with every
  field, the ones left at their defaults (a ``None`` ``run_id``) included.

``nexus_core.testing`` holds a contract suite per role: a backend passes the
suites of the roles it declares, or it is not done.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import msgspec

from ..events import Event, event_id, event_seq

__all__ = [
    "ROLES",
    "AlreadyExists",
    "AuditLog",
    "AuditRecord",
    "Backend",
    "BlobStore",
    "Cache",
    "CredentialRecord",
    "CredentialStore",
    "EventLog",
    "LeaseLost",
    "NodeCheckpoint",
    "Role",
    "RunFinish",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "SessionRecord",
    "SessionStore",
    "Storage",
    "event_id",
    "event_seq",
]

#: The storage roles, in the order configuration and errors list them.
Role = Literal["runs", "events", "audit", "credentials", "sessions", "cache", "blobs"]
ROLES: tuple[Role, ...] = ("runs", "events", "audit", "credentials", "sessions", "cache", "blobs")


class AlreadyExists(ValueError):
    """A new record's id (or other unique key) is already in use: nothing was stored.

    The message names the record (``"run 'r1' already exists"``). A subclass of
    ``ValueError``, so callers written before it existed still catch it.
    """


class LeaseLost(RuntimeError):
    """A write of a run was refused: the writer's fencing token is not the run's current one.

    Another process took the run over (its lease had expired) and now owns it;
    whatever the stale owner was about to write is dropped, so it can never
    overwrite the new owner's work. ``run_id`` names the run.
    """

    def __init__(self, run_id: str, fence: int, current: int | None = None) -> None:
        now = "the run no longer exists" if current is None else f"the run's token is {current}"
        super().__init__(f"run {run_id!r}: stale fencing token {fence} ({now})")
        self.run_id = run_id
        self.fence = fence
        self.current = current


RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]


class SessionRecord(msgspec.Struct, kw_only=True):
    """A session, usable from any channel. ``id`` is the unguessable token clients hold."""

    id: str
    tenant: str = "default"
    principal: str | None = None
    created_at: float
    last_seen_at: float
    expires_at: float
    ttl: float
    channels: list[str] = []
    state: dict[str, Any] = {}


class RunRecord(msgspec.Struct, kw_only=True):
    """One invocation of a workflow and what came of it."""

    id: str
    workflow: str
    status: RunStatus = "pending"
    tenant: str = "default"
    principal: str | None = None
    session_id: str | None = None
    channel: str | None = None
    inputs: dict[str, Any] = {}
    output: Any = None
    error: dict[str, Any] | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    input_hash: str | None = None
    #: The process incarnation holding the run's lease (``Nexus.owner_id``), if any.
    owner: str | None = None
    #: The fencing token: 0 until first claimed, then one more with every claim.
    fence: int = 0
    #: When the owner's lease ends unless renewed (Unix time); None: not leased.
    lease_expires_at: float | None = None


class NodeCheckpoint(msgspec.Struct, kw_only=True):
    """A finished node of a run: written before the next node starts.

    Or, with status ``running``, a node an owner that resumed the run is about
    to start: its ``attempts`` are the executions before that owner's (so the
    next owner counts that one too, and no claim that started nothing).
    """

    run_id: str
    node_id: str
    status: str
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    duration_ms: float | None = None
    #: How many times the node was executed, every process and retry counted.
    attempts: int = 0
    #: The fencing token of the run's owner that wrote it (see :class:`RunStore`).
    fence: int = 0


class AuditRecord(msgspec.Struct, kw_only=True):
    """An append-only record of an invocation or an auth decision. Never holds raw inputs."""

    id: str
    time: float
    action: str
    outcome: str
    tenant: str = "default"
    principal: str | None = None
    channel: str | None = None
    workflow: str | None = None
    run_id: str | None = None
    reason: str | None = None
    input_hash: str | None = None
    #: How many refusals this record stands for: refused authentications from one
    #: client address are written once per window with their count (1 otherwise).
    count: int = 1


class RunFinish(NamedTuple):
    """A run's final write (:meth:`Storage.log_writes`): its record, last checkpoints, audit.

    .. versionadded:: 0.3
    """

    run: RunRecord
    checkpoints: Sequence[NodeCheckpoint] = ()
    #: The run's audit records (how it ended), written with it or not at all.
    audits: Sequence[AuditRecord] = ()


class CredentialRecord(msgspec.Struct, kw_only=True):
    """A credential the host issued (an API key, a CLI token): stored by the hash of its token.

    ``token_hash`` is the SHA-256 hex digest of the token; the token itself is
    shown once, when issued, and never stored. ``kind`` is ``"api_key"`` or
    ``"cli_token"`` (plugins may use kinds of their own). A credential is
    usable while ``revoked_at`` is None or in the future and ``expires_at`` is
    None or in the future.
    """

    id: str
    kind: str
    token_hash: str
    principal: str
    tenant: str = "default"
    roles: list[str] = []
    scopes: list[str] = []
    attributes: dict[str, Any] = {}
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    label: str | None = None
    #: The id of the credential this one was issued from (a CLI token from an API
    #: key...): revoking or expiring that one refuses this one too.
    parent: str | None = None


class Backend(abc.ABC):  # noqa: B024 - the roles hold the abstract methods
    """What every storage backend has: its URL, its lifecycle and the roles it serves.

    ``url`` is the URL the backend was chosen by. A backend class also
    subclasses the role contracts it implements and lists them in
    :attr:`roles`; the host refuses a configuration that asks a backend for a
    role it does not declare.
    """

    #: The roles this backend serves (see :data:`ROLES`).
    roles: ClassVar[frozenset[Role]] = frozenset()

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Connect, create or migrate the schema. Called once by the host at start-up.

        Several processes may open one shared backend at once: a schema
        migration must be safe then (SQLite: an immediate transaction;
        PostgreSQL: an advisory lock).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release connections. Called once at shutdown."""

    async def ping(self) -> bool:
        """Whether the backend answers now (readiness)."""
        return True

    @property
    def persistent(self) -> bool:
        """Whether data survives a close and reopen (production refuses a store that does not)."""
        return True


class SessionStore(Backend):
    """The ``"sessions"`` role: sessions usable from every channel, with an expiry."""

    @abc.abstractmethod
    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session; an id in use raises :class:`AlreadyExists`."""

    @abc.abstractmethod
    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """The session, or None if unknown, of another tenant, or expired (``expires_at`` past)."""

    @abc.abstractmethod
    async def save_session(self, session: SessionRecord) -> None:
        """Replace a session's mutable fields (last seen, expiry and ttl, channels, state).

        Identity fields (tenant, principal, created_at) are kept as stored. An
        unknown id does nothing (it does not create the session).
        """

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> None:
        """Remove a session (no error if it does not exist)."""

    @abc.abstractmethod
    async def expire_sessions(self, now: float) -> list[str]:
        """Delete sessions whose ``expires_at`` is <= ``now``; return their ids."""

    @abc.abstractmethod
    async def count_sessions(self, now: float) -> int:
        """How many sessions are live at ``now``."""


class RunStore(Backend):
    """The ``"runs"`` role: runs, their node checkpoints, and the leases they execute under.

    **Leases and fencing.** A run executes under a lease held by one process
    incarnation (``owner``) until ``lease_expires_at``, renewed by the
    owner's heartbeat (:meth:`renew_leases`). :meth:`claim_run` takes a run
    whose lease has expired (or that was never leased), atomically: of two
    processes claiming one run, one wins. Every claim adds one to the run's
    fencing token (``fence``). Every write of a running run (:meth:`save_run`,
    :meth:`save_checkpoint`, :meth:`finish_run`) carries the writer's token and
    is refused with :class:`LeaseLost` when it is not the stored one, so a
    process that lost its lease cannot overwrite the new owner's work.
    """

    @abc.abstractmethod
    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run as given (owner, fence and lease included); returns (record, created).

        When ``run.idempotency_key`` is set and a run with the same key,
        tenant and principal exists, nothing is written and ``(existing,
        False)`` is returned. A key is its principal's own: the same key of
        another principal (or tenant) is a different key. A run without a
        principal keys as principal ``""``. This must be atomic: two
        concurrent calls with one key create one run. A run id in use raises
        :class:`AlreadyExists`.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""

    @abc.abstractmethod
    async def save_run(self, run: RunRecord) -> None:
        """Replace a run's mutable fields (status, output, error, started/finished).

        Only when the stored ``fence`` equals ``run.fence``; otherwise
        :class:`LeaseLost`. Owner, fence and lease change only through
        :meth:`claim_run` and :meth:`renew_leases`; everything else is kept as
        stored. An unknown id does nothing.
        """

    @abc.abstractmethod
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
        """Runs newest first, filtered; ``before`` is a run id to page after.

        The order is by ``(created_at, id)`` descending, whatever order the
        runs were created in, so paging is stable when times tie. An unknown
        ``before`` (or one of another tenant, when ``tenant`` is given)
        returns an empty list.
        """

    @abc.abstractmethod
    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still ``pending`` or ``running``, oldest first (by ``created_at``, then id)."""

    @abc.abstractmethod
    async def claim_run(
        self, run_id: str, owner: str, *, lease: float, now: float
    ) -> RunRecord | None:
        """Take an unfinished run whose lease has expired (or that has none): atomically.

        When the run is ``pending`` or ``running`` and its ``lease_expires_at``
        is None or <= ``now``: set ``owner``, add one to ``fence``, set
        ``lease_expires_at = now + lease``, and return the updated record.
        Otherwise (finished, leased by anyone until after ``now``, unknown)
        change nothing and return None. Of concurrent claims of one run, at
        most one succeeds.
        """

    @abc.abstractmethod
    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], *, until: float
    ) -> set[str]:
        """The heartbeat: extend the leases ``owner`` holds to ``until``; the ids still held.

        ``fences`` maps run ids to the tokens the owner holds them with. A
        lease is extended only when the stored run is unfinished and its owner
        and fence are the given ones; the returned set holds exactly those ids.
        An ``until`` in the past releases the leases (another process may
        claim the runs at once).
        """

    @abc.abstractmethod
    async def claimable_runs(
        self, now: float, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """Unfinished runs with no lease or an expired one at ``now``, oldest first.

        At most ``limit``; with ``workflows``, only runs of those workflows (a
        worker serving some queues must not be starved by others' backlog).
        """

    @abc.abstractmethod
    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node of a run (replacing an earlier record of that node).

        Only when the run exists and its stored ``fence`` equals
        ``checkpoint.fence``; otherwise :class:`LeaseLost` and nothing is written.
        """

    @abc.abstractmethod
    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """Record the run's last nodes, then its final state: the host's last write of a run.

        Fenced as :meth:`save_run`: a stale token raises :class:`LeaseLost`. The
        default is :meth:`save_checkpoint` for each, then :meth:`save_run`; a
        backend should override it to write them in one round trip and one
        transaction (all or nothing).
        """
        for checkpoint in checkpoints:
            await self.save_checkpoint(checkpoint)
        await self.save_run(run)

    async def prune_runs(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` finished runs older than ``before``, with their checkpoints.

        Finished: status neither ``pending`` nor ``running``; older: finished
        (or, never started, created) before ``before``. Returns how many runs
        went; a pruned run's idempotency key is free again. A backend that
        cannot prune raises :class:`NotImplementedError` (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support pruning runs")


class EventLog(Backend):
    """The ``"events"`` role: the event log, in one order across every process.

    The log assigns every event its id when it is appended: :func:`event_id` of
    a position that grows with every append, across every process and
    machine sharing the log. Positions are visible in order: a reader that
    has seen the event at position N never later sees a new event at a
    position below N (a log whose positions can commit out of order must hide
    an event until every position before it is settled). Replay
    (:meth:`read_events` after an id) therefore covers every process's events.
    """

    @abc.abstractmethod
    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append events, in order; return them as logged, each with the id the log gave it.

        Whatever ``id`` the given events carry is replaced.
        """

    async def append_event(self, event: Event) -> Event:
        """Append one event; return it with its id (see :meth:`append_events`)."""
        [logged] = await self.append_events([event])
        return logged

    @abc.abstractmethod
    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events appended after the event with id ``after``, oldest first; at most ``limit``.

        ``after`` is a position: events after it are returned whether or not
        the event with that id is still in the log (pruned). None, or an id
        that is not a log position, reads from the start.
        """

    @abc.abstractmethod
    async def last_event_id(self) -> str | None:
        """The id of the newest event in the log (None when it is empty)."""

    async def prune_events(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` of the oldest events whose ``time`` is before ``before``.

        A prefix of the log only, so replay after a kept event is unchanged.
        Returns how many went. The default raises :class:`NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support pruning events")


class AuditLog(Backend):
    """The ``"audit"`` role: audit records, append-only."""

    @abc.abstractmethod
    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records, in order, in one round trip if the backend can."""

    async def append_audit(self, record: AuditRecord) -> None:
        """Append an audit record (there is no update and no delete but pruning)."""
        await self.append_audits([record])

    @abc.abstractmethod
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
        """Audit records oldest first, filtered; ``since`` inclusive, ``until`` exclusive.

        Records with equal ``time`` come in append order.
        """

    async def prune_audit(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` audit records whose ``time`` is before ``before``; how many.

        The default raises :class:`NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support pruning audit")


class CredentialStore(Backend):
    """The ``"credentials"`` role: credentials the host issued, by the hash of their token."""

    @abc.abstractmethod
    async def put_credential(self, record: CredentialRecord) -> None:
        """Store a new credential; a used id or ``(kind, token_hash)``: :class:`AlreadyExists`."""

    @abc.abstractmethod
    async def get_credential(self, kind: str, token_hash: str) -> CredentialRecord | None:
        """The credential of that kind with that token hash (revoked or expired too), or None."""

    @abc.abstractmethod
    async def get_credential_by_id(self, credential_id: str) -> CredentialRecord | None:
        """The credential with that id (revoked or expired too), or None."""

    @abc.abstractmethod
    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
    ) -> list[CredentialRecord]:
        """Credentials oldest first (by ``created_at``, then id), filtered; revoked ones too."""

    @abc.abstractmethod
    async def revoke_credential(self, credential_id: str, *, at: float) -> bool:
        """Set ``revoked_at`` to ``at`` unless it is already revoked at or before ``at``.

        Returns whether the record changed (False for an unknown id). ``at`` may
        be in the future: a rotated key stays usable until then. Nothing else
        about a credential ever changes.
        """


class Cache(Backend):
    """The ``"cache"`` role: values with a TTL, and token buckets for rate limits."""

    @abc.abstractmethod
    async def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None if absent or expired."""

    @abc.abstractmethod
    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Set a value, expiring after ``ttl`` seconds (never if None)."""

    @abc.abstractmethod
    async def cache_delete(self, key: str) -> None:
        """Remove a value (no error if absent)."""

    @abc.abstractmethod
    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """Token bucket: take ``cost`` tokens from bucket ``key``.

        Returns 0.0 when taken, else the seconds to wait until enough tokens
        are back (nothing is taken then; ``math.inf`` when they never will
        be). A new bucket starts full. Atomic across concurrent callers (and
        processes, for shared backends): N callers sharing one bucket together
        take at most its capacity plus what refilled.
        """


class BlobStore(Backend):
    """The ``"blobs"`` role: bytes by key."""

    @abc.abstractmethod
    async def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` (replacing)."""

    @abc.abstractmethod
    async def get_blob(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""

    @abc.abstractmethod
    async def delete_blob(self, key: str) -> None:
        """Remove a blob (no error if absent)."""

    @abc.abstractmethod
    async def list_blobs(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (plain text, no patterns), sorted by code point."""

    async def iter_blob(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The bytes under ``key`` as chunks of at most ``chunk_size``; ``KeyError`` when absent.

        By default :meth:`get_blob` sliced; a backend that can stream (S3)
        overrides it so a large blob never sits in memory whole.

        .. versionadded:: 0.2
        """
        data = await self.get_blob(key)
        if data is None:
            raise KeyError(key)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]


class Storage(SessionStore, RunStore, EventLog, AuditLog, CredentialStore, Cache, BlobStore):
    """Every role in one backend (the memory and SQLite backends): subclass it to serve them all."""

    roles: ClassVar[frozenset[Role]] = frozenset(ROLES)

    async def log_writes(
        self, writes: Sequence[tuple[RunFinish | None, Sequence[Event]]]
    ) -> list[list[Event] | Exception]:
        """Several writes that append events, in order; each one's outcome, in order.

        Each write is an append of its events (``(None, events)``), or a run's
        final write with its events (``(RunFinish(run, checkpoints), events)``:
        :meth:`finish_run_logged`). Its outcome is the events as logged, or the
        exception it failed with (:class:`LeaseLost` when refused); a failing
        write does not stop the others. The event bus hands a queued batch
        over in one call. The default makes the calls one after the other; a
        backend that batches should override it to apply them all in one
        trip, in order (SQLite: one transaction, each write all or none).

        .. versionadded:: 0.3
        """
        outcomes: list[list[Event] | Exception] = []
        for finish, events in writes:
            try:
                if finish is None:
                    outcomes.append(await self.append_events(events))
                else:
                    run, checkpoints, audits = finish
                    outcomes.append(
                        await self.finish_run_logged(run, checkpoints, events, audits=audits)
                    )
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def finish_run_logged(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        *,
        audits: Sequence[AuditRecord] = (),
    ) -> list[Event]:
        """:meth:`finish_run`, :meth:`append_events`, :meth:`append_audits`: a run's last write.

        Returns the events as logged. The host finishes a durable run with it
        (see :meth:`~nexus_core.events.EventBus.publish_with`): ``events`` are
        the run's last events (``run.completed``...) and whatever the bus had
        queued before them, ``audits`` its audit record. When the final write
        is refused (:class:`LeaseLost`) or fails, nothing of ``events`` or
        ``audits`` is appended. The default makes the calls one after the
        other; a backend that can should override it to write them in one
        transaction, so that the run, its events and its audit record land
        together even if the process dies between them (SQLite and PostgreSQL
        do; the memory backend's calls never yield in between).

        .. versionadded:: 0.3
        """
        await self.finish_run(run, checkpoints)
        logged = await self.append_events(events)
        if audits:
            await self.append_audits(audits)
        return logged

    async def prune(self, before: float, *, limit: int = 500) -> int:
        """One batch of each of :meth:`prune_runs`, :meth:`prune_events`, :meth:`prune_audit`.

        Returns how many records went. The host calls this repeatedly, yielding
        between batches, until it returns 0 (see
        ``services.monitoring.retention_days``). Sessions expire on their own
        and credentials are kept. Raises
        :class:`NotImplementedError` when the backend prunes none of them.
        """
        total = 0
        unsupported = 0
        for step in (self.prune_runs, self.prune_events, self.prune_audit):
            try:
                total += await step(before, limit=limit)
            except NotImplementedError:
                unsupported += 1
        if unsupported == 3:
            raise NotImplementedError(f"{type(self).__name__} does not support pruning")
        return total
