"""Events: what happened, on which channel, in which session and run.

An :class:`Event` is published on an :class:`EventBus`; subscribers receive the
events whose dotted ``type`` matches their patterns (``"run.*"``, ``"*"``,
``"node.finished"``). The in-process :class:`LocalEventBus` is the default; a
distributed bus (Redis) implements the same contract.

When the bus keeps a log (the host's event log role), every event is appended
to it before it is delivered, and the log gives it its id: a position in one
order shared by every process that logs there. A client that drops its
connection reconnects with the last id it saw and receives exactly what it
missed, whichever process logged it, then the live stream
(``subscribe(..., last_event_id=...)``). While anyone subscribes, the bus
also reads the log for events other processes logged, so live subscribers of
one process hear every process sharing the log, in log order.
"""

from __future__ import annotations

import abc
import enum
import fnmatch
import itertools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, cast

import anyio
import anyio.abc
import msgspec

from ._batching import Batcher, Waker
from .errors import NexusError

if TYPE_CHECKING:
    from .storage.base import RunFinish, Storage

_log = logging.getLogger("nexus.events")

__all__ = [
    "Event",
    "EventBus",
    "EventLog",
    "EventType",
    "LocalEventBus",
    "Overflow",
    "SubscriberLagged",
    "Subscription",
    "event_id",
    "event_seq",
    "new_event_id",
]

_counter = itertools.count()
_PROCESS = os.urandom(3).hex()


def new_event_id() -> str:
    """A provisional id for an event not yet logged (a bus without a log keeps it).

    Milliseconds since the epoch, then a per-process sequence, then a random
    process tag: ``"0001795671548102-000000000042-a1b2c3"``. The event log
    replaces it with the event's position (see
    :meth:`~nexus_core.storage.base.EventLog.append_events`).
    """
    return f"{time.time_ns() // 1_000_000:016d}-{next(_counter):012d}-{_PROCESS}"


def event_id(seq: int) -> str:
    """The event id of log position ``seq``: 16 digits, zero-padded, so ids also sort as text."""
    return f"{seq:016d}"


def event_seq(event_id: str | None) -> int:
    """The log position of an event id (0 for None or an id that is not a log position)."""
    if event_id and event_id.isdigit() and event_id.isascii():
        return int(event_id)
    return 0


class Event(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One thing that happened. ``type`` is dotted (``run.started``, ``node.finished``).

    Encoded, fields at their defaults are left out (``omit_defaults``): a
    decoder must fill them in (msgspec does), and a storage backend must give
    them back (an event without a run has ``run_id`` None).
    """

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
    """What a bus needs of the event log role (:class:`~nexus_core.storage.base.EventLog`)."""

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append in order; the events as logged, each with its id (its position)."""
        ...

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Up to ``limit`` events after position ``after`` (from the start if None)."""
        ...

    async def last_event_id(self) -> str | None:
        """The id of the newest event (None when the log is empty)."""
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

    @classmethod
    def usable(cls, app: Any) -> bool:
        """Whether this bus can serve ``app`` as it is configured. Default: True.

        The host takes the bus of highest priority that is usable. A bus that
        needs settings of its own (a broker's URL) or a particular event log
        says False without them, so installing its plugin never shadows a
        bus of lower priority that works (the in-process bus always does).

        .. versionadded:: 0.2
        """
        return True

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

    async def publish_with(
        self, events: Sequence[Event], finish: RunFinish, *, log: Storage
    ) -> None:
        """Publish a run's last ``events`` with its final write ``finish`` to storage ``log``.

        The host finishes a durable run this way, so that the run and its last
        events land together or not at all. ``log`` is the host's storage (a
        :class:`~nexus_core.storage.base.Storage`): a bus logging to it hands
        the write, with these events and the ones it queued before them, to
        :meth:`~nexus_core.storage.base.Storage.log_writes` (one transaction
        where the storage can), then delivers them. When the write is refused
        (:class:`~nexus_core.storage.base.LeaseLost`) or fails, this raises it
        and none of ``events`` is published. The host calls it under a
        cancellation shield: a run's final write is never cut short.

        The default, for a bus that logs elsewhere or not at all, writes the
        run and its audit records alone (``log.finish_run_logged(run,
        checkpoints, [], audits=audits)``), then calls :meth:`publish` for
        each event and :meth:`flush`.

        .. versionadded:: 0.3
        """
        await log.finish_run_logged(finish.run, finish.checkpoints, [], audits=finish.audits)
        for event in events:
            await self.publish(event)
        await self.flush()  # the run's caller hears its answer once they are delivered

    async def publish_live(self, event: Event) -> None:
        """Deliver ``event`` to matching subscribers without logging it.

        For the events of an ephemeral run (a workflow with ``durable=False``):
        they keep their provisional id (not a log position), are never
        replayed and never delay a durable event. The default logs them like
        :meth:`publish`, which loses nothing; a bus that can deliver without
        logging overrides it.

        .. versionadded:: 0.2
        """
        await self.publish(event)

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
    log is read. It reads pages until a short page; by then every event
    logged before it registered has been read, and every later one is in the
    live queue or on its way. Event ids are log positions, so going live is
    dropping what is at or below the last position read (the *floor*), now
    and whenever such an event arrives later. If the queue overflows while
    replaying, it is cleared (everything in it is in the log) and reading
    goes on.
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
        self._waker = Waker()  # the reader waits here for events
        self._closed = False
        self._error: BaseException | None = None
        self._last = last_event_id
        # Replay state.
        self._replaying = last_event_id is not None and bus.log is not None
        self._cursor = last_event_id
        self._buffer: deque[Event] = deque()
        self._resync = False
        #: Events at or below this log position were read from the log: never again live.
        self._floor = 0

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
        if self._floor and event_seq(event.id) <= self._floor:
            return  # read from the log during replay: already handed out
        if self._filter is not None:
            try:
                if not self._filter(event):
                    return
            except Exception as exc:  # a broken filter ends its own subscription only
                self._fail(exc)
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
        if self._waker.waiting:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._queue.clear()
        self._dropped = 0
        self._bus._remove(self)
        self._wake()

    def _wake(self) -> None:
        self._waker.wake()

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
            await self._park()

    async def _park(self) -> None:
        """Wait until :meth:`_wake` (a subscriber waits once per delivered batch: cheaply)."""
        await self._waker.wait()

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
        """Switch to the live queue, dropping what in it was already read from the log.

        Synchronous, right after the last read: no event is pushed meanwhile.
        """
        self._replaying = False
        self._floor = event_seq(self._cursor)
        floor = self._floor
        queue = self._queue
        while queue and event_seq(queue[0].id) <= floor:
            queue.popleft()

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


def _lease_lost() -> type[Exception]:
    from .storage.base import LeaseLost  # the storage package imports this module

    return LeaseLost


class _Finishing:
    """A run's final write with its last events, queued among a bus's events."""

    __slots__ = ("events", "finish")

    def __init__(self, finish: RunFinish, events: Sequence[Event]) -> None:
        self.finish = finish
        self.events = events


class LocalEventBus(EventBus):
    """The in-process bus: fan-out to bounded per-subscriber queues, in log order.

    ``log`` is the event log (the host's event log role); without one there is
    no replay, ``last_event_id`` is ignored and ids stay provisional.
    ``queue_size`` and ``overflow`` are the defaults for subscribers. Use it
    from the event loop (worker threads go through ``anyio.from_thread.run``).

    On its own, ``publish`` logs and delivers before it returns (publishers
    arriving meanwhile are logged together in the next batch). In a host,
    :meth:`run` logs and delivers in the background, and ``publish`` only
    queues; it also reads the log every ``poll_interval`` seconds while
    anyone subscribes, so events other processes logged reach this process's
    subscribers too. Every subscriber receives events in log order: before a
    batch of its own is delivered, the bus delivers whatever other processes
    logged ahead of it.
    """

    #: Events per ``read_events`` call while replaying or catching up.
    page_size: int = 500

    def __init__(
        self,
        log: EventLog | None = None,
        *,
        queue_size: int = 1000,
        overflow: Overflow = "drop_oldest",
        poll_interval: float = 0.1,
    ) -> None:
        if log is not None and not (hasattr(log, "append_events") and hasattr(log, "read_events")):
            raise TypeError(
                f"log must have append_events() and read_events(), got {type(log).__name__}"
            )
        _check_queue(queue_size, overflow)
        self.log = log
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self.poll_interval = poll_interval
        self._subs: dict[_LocalSubscription, None] = {}
        self._by_type: dict[str, tuple[_LocalSubscription, ...]] = {}
        #: The log position delivered up to: events at or below it were delivered
        #: (or logged while nobody subscribed).
        self._position = 0
        self._delivering = anyio.Lock()
        self._subscribed = 0  # subscriptions made so far (a change means: do not skip ahead)
        self._someone = anyio.Event()  # set while anyone subscribes
        # Group logging: events published while a batch is being appended go
        # in the next batch, appended in one storage call, then delivered in
        # log order. While run() runs (in the host), publish only queues and one
        # task logs and delivers; otherwise a publisher applies its batch.
        # No gathering yield of its own: the log batches what arrives while it
        # writes (SQLite group commit), and while one batch is written the next
        # gathers anyway.
        self._behind: Batcher[Event | _Finishing, BaseException | None] = Batcher(
            self._log_and_deliver, what="events", gather=False
        )

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """Build a bus logging to the host's event log, with the configured queues and polling."""
        settings = app.config.nexus.services.events
        return cls(
            getattr(app, "storage", None),
            queue_size=settings.queue_size,
            overflow=settings.overflow,
            poll_interval=settings.poll_interval,
        )

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subs)

    @property
    def position(self) -> int:
        """The log position this bus has delivered up to (0: none yet).

        .. versionadded:: 0.1
        """
        return self._position

    async def start(self) -> None:
        """Start delivering after the newest event already logged (by any process)."""
        last = getattr(self.log, "last_event_id", None)
        if last is not None:
            self._position = max(self._position, event_seq(await last()))

    async def stop(self) -> None:
        """End every subscription (their iterators stop)."""
        for sub in list(self._subs):
            sub.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Log and deliver in the background until cancelled; ``publish`` then only queues.

        Also reads the log for other processes' events while anyone
        subscribes. A batch whose append fails is logged as an error and not
        delivered (a subscriber never sees an event the log lacks).
        """
        if self.log is None:
            task_status.started()
            return
        async with anyio.create_task_group() as tg:
            await tg.start(self._behind.run)
            tg.start_soon(self._tail)
            task_status.started()

    async def wait_for_others(self) -> None:
        """Wait until the log may hold events other processes logged; the bus reads it then.

        The default sleeps ``poll_interval`` seconds (polling). A bus that is
        told when something is logged (PostgreSQL's LISTEN/NOTIFY) overrides it
        to return when told, so it reads the log only then.

        .. versionadded:: 0.1
        """
        await anyio.sleep(self.poll_interval)

    async def _tail(self) -> None:
        """Deliver what other processes log, whenever :meth:`wait_for_others` returns."""
        log = self.log
        assert log is not None
        last = getattr(log, "last_event_id", None)
        while True:
            await self.wait_for_others()
            if not self._subs:
                if last is None:
                    await self._someone.wait()
                    continue
                # Nobody listens: keep the position at the log's end (one cheap
                # read a poll), so the first subscriber is handed at most a poll
                # interval of what came before it. A subscription made during
                # the read keeps the position where it was: nothing skipped.
                seen = self._subscribed
                try:
                    head = event_seq(await last())
                except Exception as exc:  # the log is unreachable: try again at the next poll
                    _log.warning("reading the event log's end failed: %s", exc)
                    continue
                if not self._subs and seen == self._subscribed:
                    self._position = max(self._position, head)
                continue
            try:
                await self._catch_up(None)
            except Exception as exc:  # the log is unreachable: try again at the next poll
                _log.warning("reading the event log for other processes' events failed: %s", exc)

    async def _catch_up(self, upto: int | None) -> None:
        """Deliver logged events after the position (up to ``upto``), holding the delivery lock."""
        log = self.log
        assert log is not None
        async with self._delivering:
            while upto is None or self._position < upto:
                page = await log.read_events(after=event_id(self._position), limit=self.page_size)
                for event in page:
                    seq = event_seq(event.id)
                    if upto is not None and seq > upto:
                        return
                    self._deliver_at(event, seq)
                if len(page) < self.page_size:
                    return

    def _deliver_at(self, event: Event, seq: int) -> None:
        if seq <= self._position:
            return  # delivered already (by the tail, or by the publisher's own batch)
        self._position = seq
        for sub in self._targets(event.type):
            sub._push(event)

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
        # Inline: logged with the events published meanwhile, one batch per
        # call; a failing batch fails its own publishers only (the log's error).
        await self._behind.submit(event)

    async def publish_with(
        self, events: Sequence[Event], finish: RunFinish, *, log: Storage
    ) -> None:
        """See :meth:`EventBus.publish_with`: the write takes its place in this bus's queue.

        When ``log`` is this bus's log, the write is queued as one item of the
        write-behind queue: it appends the events of its run queued before it
        with its own, and the batch's writes go to ``log.log_writes`` in one
        call; a refused or failing write fails only its own caller.
        """
        if self.log is None or log is not self.log:
            await super().publish_with(events, finish, log=log)
            return
        # Raises what the write raised. Its caller is shielded (see above), so
        # a batch it applies needs no shield of its own.
        await self._behind.submit(_Finishing(finish, events), shielded=True)

    def on_logged(self, events: list[Event]) -> None:
        """Called with every batch of events this bus logged, in log order, before delivery.

        For a bus that also carries its events to other processes (a broker's
        stream): the events have their log ids. The default does nothing.

        .. versionadded:: 0.3
        """

    async def _log_and_deliver(
        self, batch: list[Event | _Finishing]
    ) -> list[BaseException | None] | None:
        """Append ``batch`` to the log, then deliver it in log order.

        Plain events go in one append; a batch holding runs' final writes
        goes to the log's ``log_writes`` (see :meth:`_writes`). Events other
        processes logged between are delivered first (read from the log), so
        every subscriber sees one order. The outcome of each item: None, or
        the error of its write.
        """
        log = self.log
        assert log is not None
        outcomes: list[BaseException | None] | None = None
        if not any(type(item) is _Finishing for item in batch):
            logged = await log.append_events(cast("list[Event]", batch))
        else:
            logged, outcomes = await self._writes(log, batch)
        if logged:
            self.on_logged(logged)
            try:
                await self._deliver_appended(logged)
            except Exception as exc:
                # Logged, so not lost, and the writes stand: the next read of the
                # log (the tail, the next batch's catch-up) delivers from the position.
                _log.warning("delivering %d logged events failed: %s", len(logged), exc)
        return outcomes

    async def _deliver_appended(self, logged: list[Event]) -> None:
        """Deliver what this bus appended (in log order), after what others logged before it."""
        first, last = event_seq(logged[0].id), event_seq(logged[-1].id)
        if last - first + 1 != len(logged):  # others' events between: read them from the log
            await self.deliver_logged(logged)
            return
        if not self._subs:
            self._position = max(self._position, last)
            return
        if first > self._position + 1:
            await self._catch_up(first - 1)
        await self._deliver_run([(each, event_seq(each.id)) for each in logged])

    async def _writes(
        self, log: Any, batch: list[Event | _Finishing]
    ) -> tuple[list[Event], list[BaseException | None]]:
        """Log a batch holding runs' final writes: one ``log_writes`` call, in queue order.

        Each final write appends its run's events queued before it with its
        own (refused, they go with it: a stale owner's); the other events
        queued before it are appended just before it.
        """
        writes: list[tuple[RunFinish | None, list[Event]]] = []
        items: list[list[int]] = []  # the batch's items in each write
        plain: list[tuple[int, Event]] = []
        for index, item in enumerate(batch):
            if not isinstance(item, _Finishing):
                plain.append((index, item))
                continue
            run = item.finish.run.id
            own: list[tuple[int, Event]] = []
            others: list[tuple[int, Event]] = []
            for pair in plain:
                (own if pair[1].run_id == run else others).append(pair)
            if others:
                writes.append((None, [event for _, event in others]))
                items.append([i for i, _ in others])
            writes.append((item.finish, [*(event for _, event in own), *item.events]))
            items.append([*(i for i, _ in own), index])
            plain = []
        if plain:
            writes.append((None, [event for _, event in plain]))
            items.append([i for i, _ in plain])
        results = await log.log_writes(writes)
        logged: list[Event] = []
        outcomes: list[BaseException | None] = [None] * len(batch)
        for (finish, events), indices, result in zip(writes, items, results, strict=True):
            if not isinstance(result, Exception):
                logged += result
            elif finish is None:
                for i in indices:
                    outcomes[i] = result
            else:
                outcomes[indices[-1]] = result
                before = events[: len(indices) - 1]
                if before and not isinstance(result, _lease_lost()):
                    # Failed, not refused: the events queued before it are its
                    # run's all the same (it resumes elsewhere later).
                    try:
                        logged += await log.append_events(before)
                    except Exception as exc:
                        for i in indices[:-1]:
                            outcomes[i] = exc
        return logged, outcomes

    async def publish_live(self, event: Event) -> None:
        """Hand ``event`` (not logged: an ephemeral run's) to matching subscribers at once."""
        if self._subs:
            for sub in self._targets(event.type):
                sub._push(event)

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to local subscribers without logging it.

        For a distributed bus fanning out events that another instance
        published and logged. With a log, an event at or below the position
        already delivered is dropped (delivered once).
        """
        seq = event_seq(event.id)
        if self.log is not None and seq:
            self._deliver_at(event, seq)
            return
        for sub in self._targets(event.type):
            sub._push(event)

    async def deliver_logged(self, events: Sequence[Event]) -> None:
        """Hand events other instances logged (ids are log positions) to local subscribers.

        For a distributed bus fanning out what it received from a broker: in
        log order, each event once, whatever order the broker brought them in.
        An event at or below the position already delivered is dropped; one
        beyond the next position first delivers the positions between, read
        from the log (which shows positions in order), so a subscriber never
        sees a gap. The events of one call are delivered under one hold of the
        delivery lock: a subscriber wakes once per call, not once per event.
        Without a log, or for events without a log position, this is
        :meth:`deliver`.

        .. versionadded:: 0.1
        """
        if self.log is None:
            for event in events:
                self.deliver(event)
            return
        if not self._subs:
            top = max((event_seq(event.id) for event in events), default=0)
            self._position = max(self._position, top)  # nobody to deliver to
            return
        run: list[tuple[Event, int]] = []
        for event in events:
            seq = event_seq(event.id)
            if not seq:
                self.deliver(event)
                continue
            ahead = max(self._position, run[-1][1]) if run else self._position
            if seq > ahead + 1:
                # Positions between are in the log, not (yet) here: deliver what
                # came so far, then those positions from the log.
                await self._deliver_run(run)
                run = []
                await self._catch_up(seq - 1)
            run.append((event, seq))
        await self._deliver_run(run)

    async def _deliver_run(self, run: list[tuple[Event, int]]) -> None:
        if not run:
            return
        if not self._delivering.locked():
            # Nobody is catching up: delivery has no await, so nothing can come
            # between (the lock's acquire and release were a tenth of a Redis
            # bus's receiving loop).
            for event, seq in run:
                self._deliver_at(event, seq)
            return
        async with self._delivering:
            for event, seq in run:
                self._deliver_at(event, seq)

    async def catch_up(self) -> None:
        """Deliver every logged event after the position delivered up to (any process's).

        What :meth:`run` does every ``poll_interval`` seconds while anyone
        subscribes; a distributed bus calls it when its broker is back after an
        outage. Does nothing without a log.

        .. versionadded:: 0.1
        """
        if self.log is not None:
            await self._catch_up(None)

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
        the live queue is absorbed by reading on from the log. Without
        ``last_event_id`` the stream is live: everything logged after the
        position this bus has delivered up to, which for other processes'
        events trails the log by up to ``poll_interval`` seconds (so a new
        subscriber may also get such events from just before it subscribed).
        """
        size = self.queue_size if queue_size is None else queue_size
        policy = self.overflow if overflow is None else overflow
        _check_queue(size, policy)
        pats = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        sub = _LocalSubscription(
            self, pats, _compile_patterns(pats), filter, size, policy, last_event_id
        )
        self._subs[sub] = None
        self._subscribed += 1
        self._someone.set()
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
            if not self._subs:
                self._someone = anyio.Event()


def _check_queue(queue_size: int, overflow: str) -> None:
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    if overflow not in _OVERFLOWS:
        raise ValueError(f"overflow must be one of {_OVERFLOWS}, got {overflow!r}")
