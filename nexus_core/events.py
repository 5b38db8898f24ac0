"""Events: what happened, on which channel, in which session and run.

An :class:`Event` is published on an :class:`EventBus`; subscribers receive the
events whose dotted ``type`` matches their patterns (``"run.*"``, ``"*"``,
``"node.finished"``). The in-process :class:`LocalEventBus` is the default; a
distributed bus (Redis) implements the same contract.

When the bus keeps a log (the host's :class:`~nexus_core.storage.base.Storage`),
every event is appended to it before it is delivered, so a client that drops
its connection reconnects with the last id it saw and receives exactly what it
missed, then the live stream (``subscribe(..., last_event_id=...)``).
"""

from __future__ import annotations

import abc
import enum
import fnmatch
import itertools
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, Self

import anyio
import anyio.abc
import msgspec

from ._batching import Batcher
from .errors import NexusError

__all__ = [
    "Event",
    "EventBus",
    "EventLog",
    "EventType",
    "LocalEventBus",
    "Overflow",
    "SubscriberLagged",
    "Subscription",
    "new_event_id",
]

_counter = itertools.count()
_PROCESS = os.urandom(3).hex()


def new_event_id() -> str:
    """A new event id that sorts in emission order within a process.

    Milliseconds since the epoch, then a per-process sequence, then a random
    process tag (so two gateway instances never mint the same id):
    ``"0001795671548102-000000000042-a1b2c3"``.
    """
    return f"{time.time_ns() // 1_000_000:016d}-{next(_counter):012d}-{_PROCESS}"


class Event(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One thing that happened. ``type`` is dotted (``run.started``, ``node.finished``)."""

    type: str
    id: str = msgspec.field(default_factory=new_event_id)
    time: float = msgspec.field(default_factory=time.time)
    channel: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    tenant: str | None = None
    data: dict[str, Any] = {}


class EventType(enum.StrEnum):
    """The event types Nexus itself emits (plugins may publish others)."""

    WORKFLOW_REGISTERED = "workflow.registered"
    SESSION_CREATED = "session.created"
    SESSION_EXPIRED = "session.expired"
    RUN_STARTED = "run.started"
    NODE_STARTED = "node.started"
    NODE_FINISHED = "node.finished"
    NODE_FAILED = "node.failed"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    #: Synthetic, per subscriber: ``data = {"dropped": n, "last_delivered": id}``.
    SUBSCRIPTION_LAGGED = "subscription.lagged"


#: What a full subscriber queue does: drop its oldest events and tell the
#: subscriber (``subscription.lagged``), or end the subscription
#: (:class:`SubscriberLagged`).
Overflow = Literal["drop_oldest", "disconnect"]
_OVERFLOWS = ("drop_oldest", "disconnect")


class SubscriberLagged(NexusError):
    """A subscriber with ``overflow="disconnect"`` fell a full queue behind and was dropped.

    ``last_event_id`` is the last event it received: subscribe again with it to
    replay what was missed (when the bus keeps a log).
    """

    code = "subscriber_lagged"

    def __init__(self, message: str, last_event_id: str | None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


class EventLog(Protocol):
    """The part of :class:`~nexus_core.storage.base.Storage` a bus needs to keep a log."""

    async def append_event(self, event: Event) -> None:
        """Append to the log; the order of appends is the order of replay."""
        ...

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Up to ``limit`` events after id ``after`` (from the start if None or unknown)."""
        ...


class Subscription(abc.ABC):
    """A stream of events: an async context manager and an async iterator.

    Use it as ``async with bus.subscribe(["run.*"]) as sub: async for event in sub:``.
    Leaving the ``async with`` block (or :meth:`aclose`) unregisters it; the
    iterator then ends. One task iterates a subscription at a time.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event:
        """Return the next event; raise :class:`SubscriberLagged` if dropped for lagging."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop receiving; iteration ends. Idempotent."""

    @property
    @abc.abstractmethod
    def last_event_id(self) -> str | None:
        """Id of the last real event handed out (the resume point), or the one it started from."""


class EventBus(abc.ABC):
    """Delivers published events to matching subscribers: the contract every bus keeps.

    Guarantees a bus implementation must give:

    - ``publish`` never blocks on a slow subscriber: each subscriber has a
      bounded queue and an overflow policy (``"drop_oldest"`` then a
      ``subscription.lagged`` marker before the next real event, or
      ``"disconnect"`` with :class:`SubscriberLagged`).
    - A subscriber receives each matching event at most once, in publish order
      (for one publisher; concurrent publishers are serialized in some order
      that is the same for every subscriber and for the log).
    - Patterns are fnmatch-style over the dotted type: ``"run.*"``,
      ``"node.finished"``, ``"*"``.
    - With a log, an event is in the log before any subscriber sees it, and
      ``subscribe(last_event_id=X)`` yields every matching event after ``X``
      and then the live events, with no gap and no duplicate.
    """

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """Build the bus for a host (the ``EventBusSpec`` factory). Default: ``cls()``."""
        return cls()

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Connect (a distributed bus). Called once by the host at start-up."""

    async def stop(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Disconnect and end every subscription. Called once at shutdown."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The bus's background work, run by the host in its task group until shutdown.

        A bus may log and deliver in the background here (so ``publish`` only
        queues) or read a broker. The default has nothing to do: it reports
        started and returns. The host calls :meth:`flush` before cancelling it.

        .. versionadded:: 0.1
        """
        task_status.started()

    async def flush(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Wait until every event published before this call is logged and delivered.

        The host awaits it before a run answers its caller and at shutdown. The
        default has nothing queued to wait for.

        .. versionadded:: 0.1
        """

    @abc.abstractmethod
    async def publish(self, event: Event) -> None:
        """Log (when the bus keeps a log) and deliver ``event`` to every matching subscriber."""

    @abc.abstractmethod
    def subscribe(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        last_event_id: str | None = None,
        queue_size: int | None = None,
        overflow: Overflow | None = None,
        filter: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        """Subscribe to events whose type matches any of ``patterns``.

        The subscription is registered when this returns, so events published
        afterwards are received. A bus that logs behind (:meth:`run`) also
        delivers the events published before but not yet logged: reading the
        log after subscribing, then taking live events not already read (by
        id), leaves no gap. ``last_event_id`` replays the log after that
        id first; ``queue_size`` and ``overflow`` override the bus defaults;
        ``filter`` further selects events (e.g. by ``run_id`` or ``tenant``).
        """

    def has_subscribers(self, event_type: str) -> bool:
        """Whether any subscriber's patterns match ``event_type`` (True when unknown)."""
        return True

    def wants(self, event_type: str) -> bool:
        """Whether publishing an event of this type has any effect (logged or delivered).

        A publisher may skip building an event when this is False.
        """
        return True


def _compile_patterns(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Build a predicate over event types for fnmatch-style ``patterns`` (case-sensitive)."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    pats = tuple(patterns)
    if not pats:
        raise ValueError("subscribe() needs at least one pattern")
    if "*" in pats:
        return lambda _type: True
    exact = frozenset(p for p in pats if not any(c in p for c in "*?["))
    globs = tuple(re.compile(fnmatch.translate(p)).match for p in pats if p not in exact)
    if not globs:
        return exact.__contains__
    return lambda t: t in exact or any(g(t) for g in globs)


class _LocalSubscription(Subscription):
    """A subscriber of :class:`LocalEventBus`: a bounded deque plus a wake-up event.

    Replay: the subscription is registered (its live queue fills) before the
    log is read. It reads pages until a short page; then the live queue holds
    every matching event not yet read, and its prefix up to the last event read
    from the log is the overlap, which is dropped. If the queue overflows while
    replaying, it is cleared (everything in it is in the log) and reading
    continues. See :meth:`_read_page`.
    """

    def __init__(
        self,
        bus: LocalEventBus,
        patterns: tuple[str, ...],
        match: Callable[[str], bool],
        filter: Callable[[Event], bool] | None,
        queue_size: int,
        overflow: Overflow,
        last_event_id: str | None,
    ) -> None:
        self.patterns = patterns
        self._bus = bus
        self._match = match
        self._filter = filter
        self._size = queue_size
        self._disconnect = overflow == "disconnect"
        self._queue: deque[Event] = deque()
        self._dropped = 0
        self._waiter: anyio.Event | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._last = last_event_id
        # Replay state.
        self._replaying = last_event_id is not None and bus.log is not None
        self._cursor = last_event_id
        self._buffer: deque[Event] = deque()
        self._resync = False
        self._last_read: str | None = None
        self._skip: set[str] = set()

    @property
    def last_event_id(self) -> str | None:
        """Id of the last real event handed out (the resume point)."""
        return self._last

    @property
    def replaying(self) -> bool:
        """Whether it is still reading the log (before the live stream)."""
        return self._replaying

    # -- producer side (called by the bus, synchronously) ----------------------

    def _push(self, event: Event) -> None:
        if self._filter is not None:
            try:
                if not self._filter(event):
                    return
            except Exception as exc:  # a broken filter ends its own subscription only
                self._fail(exc)
                return
        if self._skip and event.id in self._skip:
            # Read from the log during replay while its batch was between
            # append and delivery: already handed out.
            self._skip.discard(event.id)
            return
        queue = self._queue
        if len(queue) >= self._size:
            if self._replaying:
                queue.clear()  # all of it is in the log; replay reads on
                self._resync = True
            elif self._disconnect:
                self._fail(
                    SubscriberLagged(
                        f"subscriber fell {self._size} events behind and was disconnected",
                        self._last,
                    )
                )
                return
            else:
                queue.popleft()
                self._dropped += 1
        queue.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._queue.clear()
        self._dropped = 0
        self._bus._remove(self)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    # -- consumer side ---------------------------------------------------------

    async def __anext__(self) -> Event:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                event = self._buffer.popleft()
                self._last = event.id
                return event
            if self._replaying:
                await self._read_page()
                continue
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return Event(
                    type=EventType.SUBSCRIPTION_LAGGED.value,
                    data={"dropped": dropped, "last_delivered": self._last},
                )
            if self._queue:
                event = self._queue.popleft()
                self._last = event.id
                return event
            if self._error is not None:
                error, self._error = self._error, None
                self._closed = True
                raise error
            waiter = self._waiter = anyio.Event()
            await waiter.wait()

    async def _read_page(self) -> None:
        log = self._bus.log
        assert log is not None
        limit = self._bus.page_size
        page = await log.read_events(after=self._cursor, limit=limit)
        if self._closed:
            return
        match, keep = self._match, self._filter
        for event in page:
            if match(event.type) and (keep is None or keep(event)):
                self._buffer.append(event)
                self._last_read = event.id
        if page:
            self._cursor = page[-1].id
        if len(page) >= limit:
            return
        if self._resync:
            # The live queue overflowed (and was cleared) since the last check:
            # what it lost is in the log, after the cursor. Read on.
            self._resync = False
            return
        self._go_live()

    def _go_live(self) -> None:
        """Switch to the live queue, dropping the events in it already read from the log.

        Synchronous, right after the last read: no event is pushed meanwhile.
        Everything appended before registration (or the last clear of the
        queue) has been read; everything appended since is in the queue, in log
        order, except the bus's in-flight event (appended, not yet delivered),
        which readers may already see. With ``L`` the last matching event read:
        if ``L`` is queued, the overlap is the queue up to ``L``; if ``L`` is the
        in-flight event, it is the whole queue, and ``L`` is skipped when it
        arrives; otherwise nothing queued was read.
        """
        self._replaying = False
        last_read = self._last_read
        if last_read is None:
            return
        queue = self._queue
        for index, event in enumerate(queue):
            if event.id == last_read:
                for _ in range(index + 1):
                    queue.popleft()
                return
        inflight = self._bus._inflight
        if last_read in inflight:
            queue.clear()
            self._skip = set(inflight[: inflight.index(last_read) + 1])

    async def aclose(self) -> None:
        """Stop receiving; iteration ends. Idempotent."""
        self.close()

    def close(self) -> None:
        """Stop receiving (synchronous form of :meth:`aclose`)."""
        if self._closed:
            return
        self._closed = True
        self._replaying = False
        self._queue.clear()
        self._buffer.clear()
        self._bus._remove(self)
        self._wake()

    def __repr__(self) -> str:
        return f"<Subscription {list(self.patterns)} queued={len(self._queue)}>"


class _Batch:
    """Publishers waiting for the batch their events went into."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self._error = error

    def release(self) -> None:
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise RuntimeError(f"the event log refused the batch: {self._error}") from self._error


class LocalEventBus(EventBus):
    """The in-process bus: fan-out to bounded per-subscriber queues.

    ``log`` is anything with ``append_event``/``read_events`` (the host's
    :class:`~nexus_core.storage.base.Storage`); without one there is no replay
    and ``last_event_id`` is ignored. ``queue_size`` and ``overflow`` are the
    defaults for subscribers. Use it from the event loop (worker threads go
    through ``anyio.from_thread.run``).

    On its own, ``publish`` logs and delivers before it returns (publishers
    arriving meanwhile are logged together in the next batch). In a host,
    :meth:`run` logs and delivers in the background, and ``publish`` only queues.
    """

    #: Events per ``read_events`` call while replaying.
    page_size: int = 500

    def __init__(
        self,
        log: EventLog | None = None,
        *,
        queue_size: int = 1000,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        if log is not None and not (hasattr(log, "append_event") and hasattr(log, "read_events")):
            raise TypeError(
                f"log must have append_event() and read_events(), got {type(log).__name__}"
            )
        _check_queue(queue_size, overflow)
        self.log = log
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self._subs: dict[_LocalSubscription, None] = {}
        self._by_type: dict[str, tuple[_LocalSubscription, ...]] = {}
        # Group logging: events published while a batch is being appended go
        # in the next batch, appended in one storage call, then delivered in
        # the same order. Log order is delivery order; publishers never wait
        # on one another's round trips one by one.
        self._pending: list[Event] = []
        self._next_batch: _Batch | None = None  # made when someone has to wait for it
        self._flushing = False
        #: Ids of the batch appended but not yet delivered (see _go_live).
        self._inflight: list[str] = []
        # While run() runs (in the host), publish only queues: one task logs
        # and delivers in batches and no publisher waits for a round trip.
        self._behind: Batcher[Event, None] = Batcher(self._log_and_deliver, what="events")

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """Build a bus logging to the host's storage, with the configured queue size and policy."""
        settings = app.config.nexus.services.events
        return cls(
            getattr(app, "storage", None),
            queue_size=settings.queue_size,
            overflow=settings.overflow,
        )

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subs)

    async def stop(self) -> None:
        """End every subscription (their iterators stop)."""
        for sub in list(self._subs):
            sub.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Log and deliver in the background until cancelled; ``publish`` then only queues.

        A batch whose append fails is logged as an error and not delivered (a
        subscriber never sees an event the log lacks).
        """
        if self.log is None:
            task_status.started()
            return
        await self._behind.run(task_status=task_status)

    async def flush(self) -> None:
        """Wait until every event published before this call is logged and delivered."""
        await self._behind.flush()

    async def publish(self, event: Event) -> None:
        """Append ``event`` to the log (if any), then hand it to every matching subscriber.

        Never waits for a subscriber. With a log, publishes are serialized so
        that log order is delivery order, and append plus delivery are shielded
        from cancellation (an event logged is an event delivered). While
        :meth:`run` runs, this only queues the event (see :meth:`flush`).
        """
        log = self.log
        if log is None:
            if self._subs:
                for sub in self._targets(event.type):
                    sub._push(event)
            return
        if self._behind.running:
            self._behind.put(event)
            return
        self._pending.append(event)
        if self._flushing:
            # The flushing publisher logs and delivers it with the next batch.
            if self._next_batch is None:
                self._next_batch = _Batch()
            await self._next_batch.wait()
            return
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):  # an event logged is an event delivered
                while self._pending:
                    batch, self._pending = self._pending, []
                    waiters, self._next_batch = self._next_batch, None
                    try:
                        await self._log_and_deliver(batch)
                    except BaseException as exc:
                        if waiters is not None:
                            waiters.fail(exc)
                        raise
                    finally:
                        if waiters is not None:
                            waiters.release()
        except BaseException as exc:
            # Events queued behind a failed batch were not logged: say so to their publishers.
            self._pending = []
            if self._next_batch is not None:
                self._next_batch.fail(exc)
                self._next_batch.release()
                self._next_batch = None
            raise
        finally:
            self._flushing = False

    async def _log_and_deliver(self, batch: list[Event]) -> None:
        """Append ``batch`` to the log in one call, then hand each event to its subscribers."""
        log = self.log
        assert log is not None
        self._inflight = [each.id for each in batch]
        try:
            append_many = getattr(log, "append_events", None)
            if append_many is not None:
                await append_many(batch)
            else:
                for each in batch:
                    await log.append_event(each)
            for each in batch:
                for sub in self._targets(each.type):
                    sub._push(each)
        finally:
            self._inflight = []

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to local subscribers without logging it.

        For a distributed bus fanning out events that another instance
        published and logged.
        """
        for sub in self._targets(event.type):
            sub._push(event)

    def subscribe(
        self,
        patterns: Sequence[str] = ("*",),
        *,
        last_event_id: str | None = None,
        queue_size: int | None = None,
        overflow: Overflow | None = None,
        filter: Callable[[Event], bool] | None = None,
    ) -> Subscription:
        """Subscribe to events whose type matches any of ``patterns`` (see :class:`EventBus`).

        With a log and ``last_event_id``, iteration first yields every matching
        logged event after that id (an unknown id replays the whole log), then
        live events, with no gap and no duplicate. While replaying, overflow of
        the live queue is absorbed by reading on from the log.
        """
        size = self.queue_size if queue_size is None else queue_size
        policy = self.overflow if overflow is None else overflow
        _check_queue(size, policy)
        pats = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        sub = _LocalSubscription(
            self, pats, _compile_patterns(pats), filter, size, policy, last_event_id
        )
        self._subs[sub] = None
        self._by_type.clear()
        return sub

    def has_subscribers(self, event_type: str) -> bool:
        """Whether any subscriber's patterns match ``event_type`` (filters not consulted)."""
        return bool(self._subs) and bool(self._targets(event_type))

    def wants(self, event_type: str) -> bool:
        """Whether an event of this type would be logged or delivered."""
        return self.log is not None or self.has_subscribers(event_type)

    def _targets(self, event_type: str) -> tuple[_LocalSubscription, ...]:
        subs = self._by_type.get(event_type)
        if subs is None:
            subs = tuple(s for s in self._subs if s._match(event_type))
            if len(self._by_type) >= 4096:  # event types are open-ended: bound the cache
                self._by_type.clear()
            self._by_type[event_type] = subs
        return subs

    def _remove(self, sub: _LocalSubscription) -> None:
        if sub in self._subs:
            del self._subs[sub]
            self._by_type.clear()


def _check_queue(queue_size: int, overflow: str) -> None:
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    if overflow not in _OVERFLOWS:
        raise ValueError(f"overflow must be one of {_OVERFLOWS}, got {overflow!r}")
