"""Sessions: created on any channel, resumed by token from any other.

A workflow that declares a ``session: Session`` parameter gets the caller's
session injected (the parameter is not part of its input schema) and may read
and write ``session.state``; the host saves the state when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import SessionNotFound
from .storage.base import SessionRecord, Storage
from .workflows.runtime import new_token
from .workflows.schema import Injectable

__all__ = ["Session", "SessionManager"]


class Session(Injectable):
    """The session of the current invocation, as a workflow sees it.

    ``state`` is a plain dict of JSON-ready values shared by every run in the
    session, whichever channel started it.
    """

    __slots__ = ("_record", "state")

    def __init__(self, record: SessionRecord) -> None:
        self._record = record
        self.state: dict[str, Any] = record.state

    @property
    def id(self) -> str:
        """The session token."""
        return self._record.id

    @property
    def channels(self) -> list[str]:
        """Every channel that has used this session, in first-use order."""
        return list(self._record.channels)

    @property
    def principal(self) -> str | None:
        """Who owns the session (None for anonymous sessions)."""
        return self._record.principal

    @property
    def record(self) -> SessionRecord:
        """The stored record behind this view."""
        return self._record

    def __repr__(self) -> str:
        return f"<Session {self.id[:6]}… channels={self.channels}>"


class SessionManager:
    """Creates, resumes, touches (sliding expiry) and expires sessions in storage."""

    def __init__(
        self,
        storage: Storage,
        *,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.ttl = ttl
        self.clock = clock

    async def create(
        self,
        *,
        channel: str | None = None,
        tenant: str = "default",
        principal: str | None = None,
        ttl: float | None = None,
        state: dict[str, Any] | None = None,
    ) -> Session:
        """A new session with an unguessable token (192 random bits)."""
        now = self.clock()
        ttl = self.ttl if ttl is None else ttl
        record = SessionRecord(
            id=new_token(24),
            tenant=tenant,
            principal=principal,
            created_at=now,
            last_seen_at=now,
            expires_at=now + ttl,
            ttl=ttl,
            channels=[channel] if channel else [],
            state=dict(state or {}),
        )
        await self.storage.create_session(record)
        return Session(record)

    async def get(self, session_id: str, *, tenant: str | None = None) -> Session:
        """The live session, or :class:`SessionNotFound` (unknown, expired or another tenant's)."""
        record = await self.storage.get_session(session_id, tenant=tenant)
        if record is None or record.expires_at <= self.clock():
            raise SessionNotFound("unknown or expired session")
        return Session(record)

    async def resume(
        self, session_id: str, *, channel: str | None = None, tenant: str | None = None
    ) -> Session:
        """Get a session, record the channel using it and slide its expiry forward."""
        session = await self.get(session_id, tenant=tenant)
        record = session.record
        now = self.clock()
        record.last_seen_at = now
        record.expires_at = now + record.ttl
        if channel and channel not in record.channels:
            record.channels.append(channel)
        await self.storage.save_session(record)
        return session

    async def save(self, session: Session) -> None:
        """Persist the session's state (after a run changed it)."""
        record = session.record
        record.state = msgspec.to_builtins(session.state)
        await self.storage.save_session(record)

    async def expire(self) -> list[str]:
        """Delete every expired session; return their ids."""
        return await self.storage.expire_sessions(self.clock())

    async def count(self) -> int:
        """How many sessions are live now."""
        return await self.storage.count_sessions(self.clock())
