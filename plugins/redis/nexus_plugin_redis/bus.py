"""``RedisEventBus``: live events of every instance reach subscribers on every instance.

**Design: the event log stays the record, the stream only carries it.** The
host's event log role (SQLite, PostgreSQL) assigns every event its global id
(its log position, :func:`~nexus_core.plugin.event_id`), so Last-Event-ID
means the same everywhere. The bus is the in-process bus
(:class:`~nexus_core.events.LocalEventBus`: per-subscriber bounded queues,
replay from the log, delivery in log order) plus a Redis Stream:

1. ``publish`` logs the event (in a batch) and delivers it to this process's
   subscribers at once, as the local bus does; the logged events (with their
   ids) are then added to the stream by a writer task (``XADD ... MAXLEN ~
   stream_maxlen``, or with ``stream_max_age`` set, ``MINID ~`` that many
   seconds ago plus ``XTRIM MAXLEN ~``), never on the publisher's path.
2. One reader task per process (``XREAD BLOCK``) hands the other instances'
   events to local subscribers through
   :meth:`~nexus_core.events.LocalEventBus.deliver_logged`: gap-free and
   duplicate-free by log position. An event at or below the position already
   delivered is dropped; an event beyond the next position (another
   instance's event reached the stream first, or one never reached it) first
   delivers what lies between, read from the log (whose positions are
   visible in order). One read's events are delivered together.
3. Replay (``subscribe(last_event_id=...)``) reads the durable log, then joins
   the live stream, deduplicated by log id: the local bus's own replay.

**Redis down.** Nothing accepted is lost: events are in the log before any
subscriber sees them. While the stream is unreachable the writer drops its
batches (they are in the log) and the bus reads the log every
``services.events.poll_interval`` seconds, exactly as without Redis; when
Redis is back it catches up from the log and resumes the stream. While the
stream is healthy the log is still read every ``fallback_poll_interval``
seconds, for events the stream did not carry. Reconnects back off (50 ms
doubling to 2 s).

Without a log (an application with none), events keep provisional ids, this
process's are delivered directly and other instances' as they arrive.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Any, Self

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
from nexus_core.events import Event, EventLog, LocalEventBus, Overflow
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from .connection import UNREACHABLE, Breaker, RedisSettings, RedisUnavailable, parse_url
from .plugin import redis_configured

__all__ = ["RedisEventBus"]

_log = logging.getLogger("nexus.redis")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Event).decode

#: Entries per XREAD and per pipelined XADD batch.
_BATCH = 500


class RedisEventBus(LocalEventBus):
    """The in-process bus plus a Redis Stream shared by every instance (see the module docstring).

    ``log`` is the host's event log; ``url`` the Redis server (None: the
    local bus alone). ``stream_maxlen`` bounds the stream (``MAXLEN ~``);
    ``stream_max_age`` (seconds, None: no age limit) also trims entries older
    than that (``MINID ~``, by this process's clock against the ids Redis
    gave the entries, so clock skew between them shifts it). ``block_ms`` is
    one read's wait. ``poll_interval`` is how often the log
    is read while the stream is down, ``fallback_poll_interval`` while it is up.
    """

    def __init__(
        self,
        log: EventLog | None = None,
        *,
        url: str | None = None,
        stream_maxlen: int = 10_000,
        stream_max_age: float | None = None,
        fallback_poll_interval: float = 1.0,
        block_ms: int = 1000,
        queue_size: int = 1000,
        overflow: Overflow = "drop_oldest",
        poll_interval: float = 0.1,
    ) -> None:
        self.settings: RedisSettings | None = parse_url(url) if url else None
        # The local bus's own log polling is the safety net while the stream
        # is up; while it is down, _poll_while_down reads the log every
        # poll_interval, as the local bus alone would.
        super().__init__(
            log,
            queue_size=queue_size,
            overflow=overflow,
            poll_interval=fallback_poll_interval if url else poll_interval,
        )
        if stream_max_age is not None and stream_max_age <= 0:
            raise ValueError(f"stream_max_age must be more than 0 seconds, got {stream_max_age}")
        self.stream_maxlen = stream_maxlen
        self.stream_max_age = stream_max_age
        self.block_ms = block_ms
        self.log_poll_interval = poll_interval
        self.fallback_poll_interval = fallback_poll_interval
        self.origin = os.urandom(8).hex()
        self.stream = self.settings.key("events", "stream") if self.settings else ""
        self._outbox: deque[Event] = deque()
        self._outbox_ready = anyio.Event()
        self._redis: Redis | None = None
        self._reading: AbstractConnection | None = None  # the reader's own connection
        self._origin = self.origin.encode()
        self._streaming = False  # the reader has connected (and not failed since)
        self._stopping = False  # stop() was called: errors from closing are not outages
        self._stream_down = anyio.Event()  # set while the stream is not in use
        self._stream_down.set()
        what = f"Redis event stream at {self.settings.shown}" if self.settings else "-"
        self.breaker = Breaker(what)
        #: Events added to the stream / received from other instances / dropped (Redis down).
        self.sent = 0
        self.received = 0
        self.unsent = 0

    @classmethod
    def usable(cls, app: Any) -> bool:
        """Only with a Redis URL (``[nexus.plugins.redis] url``).

        Installed alone, it leaves the host's bus to the next one (PostgreSQL's,
        or the in-process bus).
        """
        return redis_configured(app)

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """The bus for a host: ``[nexus.plugins.redis]`` and ``[nexus.services.events]``."""
        events = app.config.nexus.services.events
        settings = app.config.section("plugins.redis")
        return cls(
            getattr(app, "storage", None),
            url=settings.url,
            stream_maxlen=settings.stream_maxlen,
            stream_max_age=settings.stream_max_age,
            fallback_poll_interval=settings.fallback_poll_interval,
            block_ms=settings.block_ms,
            queue_size=events.queue_size,
            overflow=events.overflow,
            poll_interval=events.poll_interval,
        )

    @property
    def connected(self) -> bool:
        """Whether the stream is in use and was reachable at the last attempt."""
        return self._streaming and not self.breaker.down

    async def start(self) -> None:
        """Start after the log's newest event, and make the Redis client (no I/O yet)."""
        await super().start()
        if self.settings is not None and self._redis is None:
            # A read blocks up to block_ms: give it that much more socket time.
            self._redis = self.settings.client(socket_timeout=max(2.0, self.block_ms / 1000 + 2.0))

    async def stop(self) -> None:
        """End every subscription, send what is still queued (briefly), close the client."""
        await super().stop()
        self._stopping = True
        client, self._redis = self._redis, None
        if client is not None:
            with anyio.move_on_after(1.0, shield=True):
                await self._send_queued(client)
            reading, self._reading = self._reading, None
            if reading is not None:  # a read still blocked on it: its reply never comes now
                await reading.disconnect()
            await client.aclose()

    async def ping(self) -> bool:
        """Whether the stream's Redis answers (True when the bus has no Redis)."""
        client = self._redis
        if client is None:
            return self.settings is None
        try:
            await client.ping()
        except UNREACHABLE:
            return False
        return True

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Log and deliver (the local bus), write to and read from the stream, until cancelled."""
        if self.settings is None:
            await super().run(task_status=task_status)
            return
        async with anyio.create_task_group() as tg:
            await tg.start(super().run)
            tg.start_soon(self._writer)
            tg.start_soon(self._reader)
            tg.start_soon(self._poll_while_down)
            task_status.started()

    async def publish(self, event: Event) -> None:
        """Log and deliver locally (see :class:`LocalEventBus`); the stream follows behind."""
        await super().publish(event)
        if self.log is None and self.settings is not None:
            self._send([event])  # no log: nothing else carries it

    # -- writing ---------------------------------------------------------------

    def on_logged(self, events: list[Event]) -> None:
        """Every batch this process logged goes to the stream (behind, never waited for)."""
        self._send(events)

    def _send(self, logged: list[Event]) -> None:
        """Queue logged events for the stream (never waits)."""
        if not logged or self.settings is None:
            return
        self._outbox.extend(logged)
        self._outbox_ready.set()

    async def _writer(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = anyio.Event()
            client = self._redis
            if client is None:
                continue
            await self._send_queued(client)

    async def _send_queued(self, client: Redis) -> None:
        outbox = self._outbox
        while outbox:
            batch = [outbox.popleft() for _ in range(min(len(outbox), _BATCH))]
            if self.breaker.down:
                try:
                    self.breaker.check()
                except RedisUnavailable:
                    self.unsent += len(batch)  # in the log: other instances read it there
                    continue
            try:
                await self._add(client, batch)
            except Exception as exc:  # unreachable, or an error reply (a key of another type)
                self.unsent += len(batch)  # in the log: other instances read it there
                self._down(exc)
                continue
            self.sent += len(batch)

    async def _add(self, client: Redis, batch: list[Event]) -> None:
        """``XADD`` the batch, trimming as configured, in one round trip."""
        stream, maxlen = self.stream, self.stream_maxlen
        if self.stream_max_age is None:
            if len(batch) == 1:  # the usual case under steady traffic: no pipeline to build
                await client.xadd(stream, self._entry(batch[0]), maxlen=maxlen, approximate=True)
                return
            async with client.pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.xadd(stream, self._entry(event), maxlen=maxlen, approximate=True)
                await pipe.execute()
            return
        # One trim strategy per XADD: MINID on each, MAXLEN once per batch.
        oldest = max(0, int((time.time() - self.stream_max_age) * 1000))
        async with client.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd(stream, self._entry(event), minid=oldest, approximate=True)
            pipe.xtrim(stream, maxlen=maxlen, approximate=True)
            await pipe.execute()

    def _entry(self, event: Event) -> dict[Any, Any]:
        return {"o": self.origin, "e": _encode(event)}

    # -- reading ---------------------------------------------------------------

    async def _reader(self) -> None:
        cursor: str | None = None  # the stream id read up to (None: connect first)
        while True:
            client = self._redis
            if client is None:
                return
            try:
                if cursor is None:
                    cursor = await self._connect(client)
                replies = await self._read_stream(client, cursor)
            except Exception as exc:  # unreachable, an error reply, or the log failing
                if self._stopping:
                    return
                self._down(exc)
                cursor = None
                await anyio.sleep(self._backoff())
                continue
            if self.breaker.down:
                self.breaker.succeeded()
            if not replies:
                continue  # the wait ended with nothing new
            if isinstance(replies, dict):  # RESP3 (protocol=3 in the URL): {stream: entries}
                replies = list(replies.items())
            events: list[Event] = []
            for _stream, entries in replies:
                for entry_id, fields in entries:
                    cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    event = self._decode(fields)
                    if event is not None:
                        events.append(event)
            if events:
                try:
                    await self._received(events)
                except Exception as exc:  # the log failed during a catch-up: its poll retries
                    _log.warning("delivering from %s failed: %s", self.stream, exc)
                # Let the subscribers just woken run before the next XREAD: sending
                # it wakes redis-server, which on a busy machine can take the CPU
                # from this process inside the send (147 us a send on average,
                # measured with 100 subscribers), and they would wait for that.
                await anyio.lowlevel.checkpoint()

    async def _read_stream(self, client: Redis, cursor: str) -> Any:
        """One ``XREAD BLOCK`` on the reader's own connection: the raw reply, None when none came.

        Sent and read on the connection directly, not through the client's
        command path (its pool, retries and reply callbacks): a read per
        delivered batch costs about 40 µs instead of 70 here.
        """
        conn = self._reading
        if conn is None:
            conn = self._reading = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(
                "XREAD", "COUNT", _BATCH, "BLOCK", self.block_ms, "STREAMS", self.stream, cursor
            )
            return await conn.read_response()
        except BaseException:
            # A reply may be pending (a cancelled read): the connection is unusable.
            self._reading = None
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
                await client.connection_pool.release(conn)
            raise

    async def _connect(self, client: Redis) -> str:
        """Where to read the stream from, after catching up from the log (nothing in between)."""
        newest: Any = await client.xrevrange(self.stream, count=1)
        cursor = newest[0][0].decode() if newest else "0-0"
        await self.catch_up()  # what was logged while the stream was away
        self.breaker.succeeded()
        self._streaming = True
        if self._stream_down.is_set():
            self._stream_down = anyio.Event()
        return cursor

    def _down(self, exc: BaseException) -> None:
        """The stream failed: back off, and read the log often until it is back."""
        if self._stopping:
            return  # the client was closed under a blocked read: shutting down
        self.breaker.failed(exc)
        self._streaming = False
        self._stream_down.set()

    async def _poll_while_down(self) -> None:
        """While the stream is down, deliver other instances' events from the log."""
        while True:
            await self._stream_down.wait()
            while not self._streaming:
                await anyio.sleep(self.log_poll_interval)
                if self.subscriber_count:
                    try:
                        await self.catch_up()
                    except Exception as exc:  # the log is unreachable too: try again later
                        _log.warning("reading the event log failed: %s", exc)

    def _backoff(self) -> float:
        return min(2.0, max(0.05, self.breaker.delay))

    def _decode(self, fields: Any) -> Event | None:
        """The event of a stream entry; None for this process's own (delivered when logged).

        ``fields`` is the entry's raw field list (``[b"o", origin, b"e", event]``).
        """
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=False))
        if fields.get(b"o") == self._origin:
            return None
        try:
            return _decode(fields[b"e"])
        except (KeyError, TypeError, msgspec.DecodeError) as exc:
            _log.warning("ignoring a malformed entry on %s: %s", self.stream, exc)
            return None

    async def _received(self, events: list[Event]) -> None:
        """Deliver other instances' events: in log order, each once, gaps read from the log."""
        self.received += len(events)
        await self.deliver_logged(events)
