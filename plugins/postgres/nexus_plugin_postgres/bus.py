r"""The event bus on LISTEN/NOTIFY: live events across gateways with PostgreSQL alone.

Every append to the PostgreSQL event log sends ``NOTIFY`` on the log's channel
(:attr:`~nexus_plugin_postgres.storage.PostgresStorage.events_channel`) with
its last position and the appending storage object's origin, from the
statement that appends, so the notification is
delivered when the append commits, and appends commit in position order. This
bus is the core's :class:`~nexus_core.plugin.LocalEventBus` (which logs, delivers
in log order, replays from ``Last-Event-ID`` and reads the log for other
processes' events) with one change: instead of polling the log every
``poll_interval`` seconds it holds a connection that ``LISTEN``\\ s and reads the
log when another process appended (its own appends it delivers itself, as the
in-process bus does). Events themselves are always read from the log, never from the
notification, so an event of any size travels the same way (NOTIFY's 8000-byte
limit never applies), in one order, with no gap and no duplicate: a subscriber
on any gateway sees what every gateway published.

When the listening connection breaks, the bus polls every ``poll_interval``
seconds until it is back (reconnecting with a growing delay), then reads
whatever was logged meanwhile. When the host's event log is not PostgreSQL,
the bus is the plain in-process one.
"""

from __future__ import annotations

import logging
from typing import Any, Self

import anyio
import anyio.abc
import psycopg
from nexus_core.plugin import LocalEventBus
from psycopg import sql

from .storage import PostgresStorage

__all__ = ["PostgresEventBus"]

_log = logging.getLogger("nexus.postgres.bus")

#: While listening, the log is read at least this often anyway (belt and braces).
_SAFETY_INTERVAL = 5.0
_MAX_BACKOFF = 5.0


def _events_backend(storage: Any) -> PostgresStorage | None:
    """The PostgreSQL backend serving the host's event log, if that is what serves it."""
    if isinstance(storage, PostgresStorage):
        return storage
    backends = getattr(storage, "backends", None)  # a StorageRouter: a backend per role
    if isinstance(backends, dict):
        events = backends.get("events")
        if isinstance(events, PostgresStorage):
            return events
    return None


class PostgresEventBus(LocalEventBus):
    """:class:`~nexus_core.plugin.LocalEventBus` woken by PostgreSQL's NOTIFY instead of polling.

    ``backend`` is the PostgreSQL event log to listen to (None: poll, as the
    in-process bus does). Other arguments are the in-process bus's.
    """

    def __init__(self, log: Any = None, *, backend: PostgresStorage | None = None, **options: Any):
        super().__init__(log, **options)
        self.backend = backend
        #: Whether the LISTEN connection is up (otherwise the bus polls).
        self.listening = False
        #: Notifications received (each one a commit of some process's append).
        self.notifications = 0
        self._wake = anyio.Event()

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """The bus of a host: its event log, queue settings, and the log's PostgreSQL backend."""
        settings = app.config.nexus.services.events
        storage = getattr(app, "storage", None)
        return cls(
            storage,
            backend=_events_backend(storage),
            queue_size=settings.queue_size,
            overflow=settings.overflow,
            poll_interval=settings.poll_interval,
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for the log's notifications, and log and deliver as the in-process bus does."""
        if self.backend is None or self.log is None:
            await super().run(task_status=task_status)
            return
        async with anyio.create_task_group() as tg:
            await tg.start(self._listen)
            await tg.start(super().run)
            task_status.started()

    async def wait_for_others(self) -> None:
        """Return when a notification came (or, while not listening, after ``poll_interval``)."""
        timeout = _SAFETY_INTERVAL if self.listening else self.poll_interval
        with anyio.move_on_after(timeout):
            await self._wake.wait()
        self._wake = anyio.Event()

    def _own(self, payload: str) -> bool:
        """Whether a notification is of an append this bus delivers itself (nothing to read).

        The payload is ``"<last position> <origin>"``: an append of this bus's
        own storage object, or one at or below the position delivered already.
        """
        seq, _, origin = payload.partition(" ")
        if self.backend is not None and origin == self.backend.origin:
            return True
        return seq.isdigit() and int(seq) <= self.position

    async def _listen(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold a LISTEN connection, reconnecting with a growing delay; wake the reader."""
        backend = self.backend
        assert backend is not None
        started = False
        delay = 0.1
        while True:
            try:
                # TCP keepalives: a connection whose peer vanished without a word
                # (a partition) is noticed within half a minute, then replaced.
                conn = await psycopg.AsyncConnection.connect(
                    backend.conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
                async with conn:
                    listen = sql.SQL("LISTEN {}").format(sql.Identifier(backend.events_channel))
                    await conn.execute(listen)
                    self.listening = True
                    self._wake.set()  # read what was logged while nobody listened
                    if not started:
                        started = True
                        task_status.started()
                    if delay > 0.1:
                        _log.info("listening to %s again", backend.where)
                    delay = 0.1
                    async for note in conn.notifies():
                        self.notifications += 1
                        if not self._own(note.payload):
                            self._wake.set()
            except psycopg.Error as exc:
                self.listening = False
                _log.warning(
                    "listening for events on %s failed (%s); polling every %gs until it is back",
                    backend.where,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    self.poll_interval,
                )
            self.listening = False
            if not started:  # start anyway: the bus polls until the database is back
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
