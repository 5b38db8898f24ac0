"""The storage contract: what Nexus keeps, and the one interface every backend implements.

A backend is a subclass of :class:`Storage` registered through the
``nexus_storage_backends`` hook with the URL schemes it serves. The host opens
it at start-up and closes it at shutdown. Every method is async and safe to
call concurrently from many tasks (and, for shared backends, from many
gateway instances).

Records are msgspec Structs; values inside them (inputs, outputs, session
state) are JSON-ready builtins. ``nexus_core.testing.storage`` is the contract
suite: a backend passes it or it is not done.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from ..events import Event

__all__ = [
    "AuditRecord",
    "CredentialRecord",
    "NodeCheckpoint",
    "RunRecord",
    "RunStatus",
    "SessionRecord",
    "Storage",
]

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
    #: The gateway instance executing it (for resuming after a crash).
    owner: str | None = None


class NodeCheckpoint(msgspec.Struct, kw_only=True):
    """A finished node of a run: written before the next node starts."""

    run_id: str
    node_id: str
    status: str
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    duration_ms: float | None = None
    attempts: int = 0


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


class Storage(abc.ABC):
    """Everything Nexus persists. Subclass it and implement every abstract method.

    ``url`` is the URL the backend was chosen by. Lookups that take a
    ``tenant`` return ``None``/nothing for records of another tenant, exactly
    as for records that do not exist.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Connect, create or migrate the schema. Called once by the host at start-up."""

    async def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release connections. Called once at shutdown."""

    async def ping(self) -> bool:
        """Whether the backend answers now (readiness)."""
        return True

    @property
    def persistent(self) -> bool:
        """Whether data survives a restart (production refuses a store that does not)."""
        return True

    # -- sessions --------------------------------------------------------------

    @abc.abstractmethod
    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session."""

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

    # -- runs ------------------------------------------------------------------

    @abc.abstractmethod
    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run; returns (record, created).

        When ``run.idempotency_key`` is set and a run with the same key,
        tenant and principal exists, nothing is written and ``(existing,
        False)`` is returned. A key is its principal's own: the same key of
        another principal (or tenant) is a different key. A run without a
        principal keys as principal ``""``.
        This must be atomic: two concurrent calls with one key create one run.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""

    @abc.abstractmethod
    async def save_run(self, run: RunRecord) -> None:
        """Replace a run's mutable fields (status, output, error, started/finished, owner).

        Everything else is kept as stored. An unknown id does nothing.
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

        The order is by ``(created_at, id)`` descending, so paging is stable
        when times tie. An unknown ``before`` (or one of another tenant, when
        ``tenant`` is given) returns an empty list.
        """

    @abc.abstractmethod
    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still ``pending`` or ``running`` (to resume or fail after a crash), oldest first."""

    @abc.abstractmethod
    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node of a run (replacing an earlier record of that node)."""

    @abc.abstractmethod
    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """Record the run's last nodes, then its final state: the host's last write of a run.

        The default is :meth:`save_checkpoint` for each, then :meth:`save_run`;
        a backend should override it to write them in one round trip (and, if it
        can, one transaction).

        .. versionadded:: 0.1
        """
        for checkpoint in checkpoints:
            await self.save_checkpoint(checkpoint)
        await self.save_run(run)

    # -- events ----------------------------------------------------------------

    @abc.abstractmethod
    async def append_event(self, event: Event) -> None:
        """Append to the event log. Order of appends is the order of replay.

        Appending an event whose id is already in the log does nothing (so a
        redelivered event is logged once).
        """

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append several events, in order (the bus logs a burst in one call).

        The default appends one by one; a backend should override it to write
        them in one round trip.
        """
        for event in events:
            await self.append_event(event)

    @abc.abstractmethod
    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events appended after the event with id ``after`` (all if None), oldest first.

        An ``after`` id that is not in the log reads from the start.
        """

    # -- audit -----------------------------------------------------------------

    @abc.abstractmethod
    async def append_audit(self, record: AuditRecord) -> None:
        """Append an audit record (there is no update and no delete)."""

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append several audit records, in order (the host writes them behind, in bursts).

        The default appends one by one; a backend should override it to write
        them in one round trip.

        .. versionadded:: 0.1
        """
        for record in records:
            await self.append_audit(record)

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

    # -- credentials -----------------------------------------------------------

    @abc.abstractmethod
    async def put_credential(self, record: CredentialRecord) -> None:
        """Store a new credential; an id or ``(kind, token_hash)`` in use raises ``ValueError``."""

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

    # -- cache -----------------------------------------------------------------

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
        are back (nothing is taken then). A new bucket starts full. Atomic
        across concurrent callers (and instances, for shared backends).
        """

    # -- blobs -----------------------------------------------------------------

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
        """Keys starting with ``prefix``, sorted."""

    # -- retention -------------------------------------------------------------

    async def prune(self, before: float, *, limit: int = 500) -> int:
        """Delete one batch of records older than ``before`` (a Unix time); how many went.

        At most ``limit`` of each kind: finished runs (status neither
        ``pending`` nor ``running``) that finished (or, never started, were
        created) before ``before``, with their checkpoints; the oldest events
        of the log whose ``time`` is before it (a prefix of the log, so replay
        after a kept event is unchanged); audit records whose ``time`` is
        before it. Sessions expire on their own and credentials are kept.
        The host calls this repeatedly, yielding between batches, until it
        returns 0 (see ``services.monitoring.retention_days``). A backend that
        cannot prune raises :class:`NotImplementedError` (the default) and the
        host says so once.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")
