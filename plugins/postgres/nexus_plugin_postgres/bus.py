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
in-process bus does). A small batch rides in its notification and is
delivered from it when it follows what was delivered directly; a larger one
(NOTIFY carries 8000 bytes at most), or one after a gap, is read from the log
by its position. Either way every subscriber gets events in one order, with
no gap and no duplicate: a subscriber
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
import msgspec
import psycopg
from nexus_core.plugin import Event, LocalEventBus, event_id
from psycopg import sql

from .storage import PostgresStorage

__all__ = ["PostgresEventBus"]

_log = logging.getLogger("nexus.postgres.bus")

_decode_event = msgspec.json.Decoder(Event).decode

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
    def usable(cls, app: Any) -> bool:
        """Only when PostgreSQL serves the host's event log (NOTIFY comes from its appends)."""
        return _events_backend(getattr(app, "storage", None)) is not None

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

    def _heard(self, payload: str) -> bool:
        """Act on a notification; whether the log must be read for it.

        The payload is ``"<last position> <origin>"``, then, for a small
        batch, one line of JSON per event. Nothing to read for an append of
        this bus's own storage object (it delivers those itself) or one at or
        below the position delivered already. A batch that follows the
        delivered position directly is delivered from the notification; any
        other (a gap before it, or no events in it) is read from the log, so
        events always arrive in log order, each once.
        """
        head, *lines = payload.split("\n")
        seq_text, _, origin = head.partition(" ")
        if not seq_text.isdigit():
            return True
        last = int(seq_text)
        if (self.backend is not None and origin == self.backend.origin) or last <= self.position:
            return False
        first = last - len(lines) + 1
        if not lines or first != self.position + 1:
            return True
        try:
            events = [_decode_event(line) for line in lines]
        except msgspec.DecodeError:
            return True
        for offset, event in enumerate(events):
            self.deliver(msgspec.structs.replace(event, id=event_id(first + offset)))
        return False

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
                        if self._heard(note.payload):
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
