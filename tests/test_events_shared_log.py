"""Buses of several processes sharing one event log: one order, every process heard.

Each :class:`LocalEventBus` stands in for a process (a ``--workers`` worker, a
second server, an admin script); they share one log object (a list, or one
SQLite file opened twice). A subscriber of one process receives every
process's events live, each once, in log order; one that reconnects with the
last id it saw, to any process, misses nothing and repeats nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_events import ListLog

from nexus_core.events import (
    Event,
    EventLog,
    LocalEventBus,
    Overflow,
    SubscriberLagged,
    Subscription,
    event_id,
)

TYPES = ["run.started", "node.finished", "run.completed"]
PATTERNS = ["*", "run.*", "node.finished"]
MODES = ["instant", "yield", "visible_early", "stale"]
POLL = 0.01


def process_bus(log: EventLog, **options: object) -> LocalEventBus:
    """A bus as a serving process has it: polling the shared log quickly."""
    return LocalEventBus(log, poll_interval=POLL, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(*buses: LocalEventBus) -> AsyncIterator[None]:
    """Run ``buses`` as hosts do (start, then run in the background); flush them at the end."""
    async with anyio.create_task_group() as tg:
        for bus in buses:
            await bus.start()
            await tg.start(bus.run)
        yield
        for bus in buses:
            await bus.flush()
        tg.cancel_scope.cancel()


class Collector:
    """Iterates a subscription in a task, keeping what it receives; waits for a condition."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.got: list[Event] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for event in self.sub:
            self.got.append(event)
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, done: Callable[[list[Event]], bool], seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not done(self.got):
                await self._changed.wait()


def matches(pattern: str) -> Callable[[Event], bool]:
    return lambda e: fnmatch.fnmatchcase(e.type, pattern)


async def everything(log: EventLog, after: str | None = None) -> list[Event]:
    return await log.read_events(after=after, limit=10**9)


# -- (a) live: a subscriber of one process hears every process -------------------

op = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from("ABC"), st.integers(1, 6)),
    st.tuples(st.just("subscribe"), st.sampled_from("AB"), st.sampled_from(PATTERNS)),
    st.tuples(st.just("turns"), st.integers(0, 4)),
)


@pytest.mark.anyio
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=30), mode=st.sampled_from(MODES))
async def test_live_subscribers_hear_every_process_once_in_log_order(
    ops: list[tuple], mode: str
) -> None:
    """A and B serve (log behind, tail the log); C publishes inline (an admin script).

    Each subscriber receives events of the log (filtered by its pattern) in
    log order, each once, and at least every event published after it
    subscribed, whichever process published it (of those published before,
    a live-only subscriber may get some: the bus reads the log behind).
    """
    log = ListLog(mode)
    buses = {
        "A": process_bus(log, queue_size=10_000),
        "B": process_bus(log, queue_size=10_000),
        "C": LocalEventBus(log),
    }
    published = 0  # the tag of the next event
    watchers: list[tuple[Collector, str, int]] = []  # (collector, pattern, first tag after it)

    async def publish(name: str) -> None:
        nonlocal published
        k, published = published, published + 1
        await buses[name].publish(Event(type=TYPES[k % 3], data={"bus": name, "k": k}))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, serving(buses["A"], buses["B"]):
            for step in ops:
                if step[0] == "publish":
                    for _ in range(step[2]):
                        await publish(step[1])
                elif step[0] == "subscribe":
                    collector = Collector(buses[step[1]].subscribe([step[2]]))
                    tg.start_soon(collector.run)
                    watchers.append((collector, step[2], published))
                else:
                    for _ in range(step[1]):
                        await anyio.lowlevel.checkpoint()
            for name in "ABC" * 3:  # something for every pattern, after every subscriber
                await publish(name)
            for name in "AB":
                await buses[name].flush()
            logged = await everything(log)
            for collector, pattern, _ in watchers:
                last = [e for e in logged if matches(pattern)(e)][-1]
                await collector.wait_for(lambda got, last=last: bool(got) and got[-1] == last)
                await collector.sub.aclose()

    assert sorted(e.data["k"] for e in logged) == list(range(published))  # each logged once
    assert [e.id for e in logged] == [event_id(n) for n in range(1, len(logged) + 1)]
    for collector, pattern, first in watchers:
        mine = [e for e in logged if matches(pattern)(e)]
        got = collector.got
        ids = [e.id for e in got]
        assert ids == sorted(set(ids)), ids  # log order, each once
        by_id = {e.id: e for e in mine}
        assert got == [by_id[i] for i in ids]  # the logged events, field for field
        # Nothing published after it subscribed is missing. (Write-behind may log an
        # event published before it after one published after: not a suffix, a subset.)
        after = {e.id for e in mine if e.data["k"] >= first}
        assert after <= set(ids), (ids, pattern, first)


# -- (b) replay: reconnecting with Last-Event-ID, to any process ------------------


async def reconnecting_subscriber(
    buses: dict[str, LocalEventBus],
    start: str,
    hops: list[tuple[int, str]],
    total: int,
    got: list[Event],
    queue_size: int,
    overflow: Overflow,
) -> int:
    """Receive ``total`` events from ``start`` on, reconnecting after each hop's count.

    Hop ``(n, "B")``: subscribe on bus B with the last id seen, take ``n``
    events, disconnect. A lag (marker or :class:`SubscriberLagged`) also
    reconnects, from the last id seen. Returns how many connections it made.
    """
    cursor = start
    for connections, (take, where) in enumerate(itertools.cycle(hops), 1):
        sub = buses[where].subscribe(last_event_id=cursor, queue_size=queue_size, overflow=overflow)
        async with sub:
            assert sub.last_event_id == cursor
            try:
                async for event in sub:
                    if event.type == "subscription.lagged":
                        assert event.data["last_delivered"] == cursor
                        break
                    got.append(event)
                    cursor = event.id
                    if len(got) == total:
                        return connections
                    take -= 1
                    if take == 0:
                        break
            except SubscriberLagged as exc:
                said = exc.last_event_id
            else:
                said = cursor
            assert said == cursor  # a lagged subscriber says where to resume
    raise AssertionError("unreachable")


async def publish_many(bus: LocalEventBus, name: str, count: int) -> None:
    for n in range(count):
        await bus.publish(Event(type=TYPES[n % 3], data={"bus": name, "n": n}))
        if n % 3 == 0:
            await anyio.lowlevel.checkpoint()


def check_each_once_in_order(got: list[Event], want: list[Event], counts: dict[str, int]) -> None:
    assert [e.id for e in got] == [e.id for e in want]
    assert got == want  # the same events, field for field
    for name, count in counts.items():  # each publisher's events, once, in its order
        assert [e.data["n"] for e in got if e.data["bus"] == name] == list(range(count))


@pytest.mark.anyio
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.tuples(st.integers(0, 80), st.integers(0, 80), st.integers(0, 6)),
    hops=st.lists(st.tuples(st.integers(1, 25), st.sampled_from("AAB")), min_size=1, max_size=8),
    queue=st.sampled_from([(2, "drop_oldest"), (2, "disconnect"), (1000, "drop_oldest")]),
    mode=st.sampled_from(MODES),
    page_size=st.sampled_from([1, 3, 500]),
    preload=st.integers(0, 5),
)
async def test_reconnecting_with_the_last_id_misses_nothing_of_any_process(
    counts: tuple[int, int, int],
    hops: list[tuple[int, str]],
    queue: tuple[int, Overflow],
    mode: str,
    page_size: int,
    preload: int,
) -> None:
    """While A, B (serving) and C (inline) publish, a client reconnects again and again,
    mostly to A, sometimes to B, with the last id it saw: it receives every event
    logged after its first id, once each, in log order."""
    log = ListLog(mode)
    buses = {"A": process_bus(log), "B": process_bus(log), "C": LocalEventBus(log)}
    for bus in buses.values():
        bus.page_size = page_size
    await publish_many(buses["C"], "before", preload)
    start = event_id(min(preload, 2))  # "0000000000000000": from the start
    got: list[Event] = []
    total = preload - min(preload, 2) + sum(counts)
    if total == 0:
        return

    with anyio.fail_after(30):
        async with serving(buses["A"], buses["B"]), anyio.create_task_group() as tg:
            tg.start_soon(
                reconnecting_subscriber, buses, start, hops, total, got, queue[0], queue[1]
            )
            for name, count in zip("ABC", counts, strict=True):
                tg.start_soon(publish_many, buses[name], name, count)

    want = await everything(log, after=start)
    counts_by_bus = dict(zip("ABC", counts, strict=True))
    counts_by_bus["before"] = preload
    check_each_once_in_order(got, want, {k: v for k, v in counts_by_bus.items() if k != "before"})
    assert len(want) == total
    assert buses["A"].subscriber_count == buses["B"].subscriber_count == 0


# -- (c) the same on one SQLite file opened by two storages -------------------------


def _sqlite_has_the_new_log() -> bool:
    from nexus_core.storage.sqlite import SQLiteStorage

    return hasattr(SQLiteStorage, "last_event_id")


@contextlib.asynccontextmanager
async def two_storages(tmp_path: Path) -> AsyncIterator[tuple[EventLog, EventLog]]:
    """Two SQLite storages on one file: two processes' views of one log."""
    if not _sqlite_has_the_new_log():
        pytest.skip("SQLiteStorage does not have last_event_id yet")
    from nexus_core.storage.sqlite import SQLiteStorage

    url = f"sqlite:///{tmp_path / 'nexus.db'}"
    first, second = SQLiteStorage(url), SQLiteStorage(url)
    await first.open()
    try:
        await second.open()
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


@pytest.mark.anyio
async def test_sqlite_live_subscribers_of_each_process_hear_both(tmp_path: Path) -> None:
    async with two_storages(tmp_path) as (one, two):
        a, b = process_bus(one, queue_size=10_000), process_bus(two, queue_size=10_000)
        counts = {"A": 150, "B": 150}
        async with serving(a, b), anyio.create_task_group() as tg:
            on_a = Collector(a.subscribe())
            on_b = Collector(b.subscribe(["run.*"]))
            tg.start_soon(on_a.run)
            tg.start_soon(on_b.run)
            async with anyio.create_task_group() as publishers:
                publishers.start_soon(publish_many, a, "A", counts["A"])
                publishers.start_soon(publish_many, b, "B", counts["B"])
            await a.flush()
            await b.flush()
            logged = await everything(one)
            assert logged == await everything(two)  # one log, one order
            runs = [e for e in logged if e.type.startswith("run.")]
            await on_a.wait_for(lambda got: len(got) == len(logged))
            await on_b.wait_for(lambda got: len(got) == len(runs))
            await on_a.sub.aclose()
            await on_b.sub.aclose()
    assert [e.id for e in logged] == [event_id(n) for n in range(1, 301)]
    check_each_once_in_order(on_a.got, logged, counts)
    assert on_b.got == runs


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(4))
async def test_sqlite_reconnecting_with_the_last_id_misses_nothing(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    hops = [(rng.randint(1, 40), rng.choice("AAB")) for _ in range(rng.randint(1, 8))]
    queue_size, overflow = rng.choice(
        [(2, "drop_oldest"), (2, "disconnect"), (1000, "drop_oldest")]
    )
    async with two_storages(tmp_path) as (one, two):
        a, b = process_bus(one), process_bus(two)
        a.page_size = b.page_size = rng.choice([1, 7, 500])
        script = LocalEventBus(two)  # an admin script beside the servers: publishes inline
        await publish_many(script, "before", 5)
        start = event_id(2)
        counts = {"A": 200, "B": 200, "C": 10}
        total = 3 + sum(counts.values())
        got: list[Event] = []
        with anyio.fail_after(60):
            async with serving(a, b), anyio.create_task_group() as tg:
                tg.start_soon(
                    reconnecting_subscriber,
                    {"A": a, "B": b},
                    start,
                    hops,
                    total,
                    got,
                    queue_size,
                    overflow,
                )
                for name, bus in zip("ABC", (a, b, script), strict=True):
                    tg.start_soon(publish_many, bus, name, counts[name])
        want = await everything(one, after=start)
    assert len(want) == total
    check_each_once_in_order(got, want, counts)


# -- an idle process ---------------------------------------------------------------


class HeadCountingLog(ListLog):
    """Counts reads of the log's head (what a bus with nobody subscribed reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.head_reads = 0
        self._head_read = anyio.Event()

    async def last_event_id(self) -> str | None:
        self.head_reads += 1
        self._head_read.set()
        self._head_read = anyio.Event()
        return await super().last_event_id()

    async def next_head_read(self) -> bool:
        """Wait (at most 2 s) for the next read of the head; whether there was one."""
        seen = self.head_reads
        with anyio.move_on_after(2):
            while self.head_reads == seen:
                await self._head_read.wait()
        return self.head_reads > seen


@pytest.mark.anyio
async def test_a_new_live_subscriber_is_not_handed_what_others_logged_while_nobody_listened() -> (
    None
):
    """Process A serves with nobody subscribed while B logs; A's first live subscriber
    after A's next look at the log's end receives what is logged after it, not B's
    backlog (at most a poll interval of it: A reads the end every poll)."""
    log = HeadCountingLog()
    a, b = process_bus(log), LocalEventBus(log)
    async with serving(a):
        assert await log.next_head_read()  # A is idle: it keeps its place at the head
        for n in range(20):
            await b.publish(Event(type="run.started", data={"old": n}))
        assert await log.next_head_read()  # and moves it past B's backlog at the next poll
        sub = a.subscribe()
        await b.publish(Event(type="run.completed", data={"new": True}))
        with anyio.fail_after(5):
            first = await sub.__anext__()
        await sub.aclose()
    assert first.data == {"new": True}


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["built before", "stamped by its source"])
async def test_an_event_published_by_another_process_after_subscribing_is_received(
    when: str,
) -> None:
    """``subscribe`` promises the events published afterwards, whatever their ``time``:
    an event built before (and published after) or carrying its source's timestamp
    (a webhook's, or a clock a little behind on another host)."""
    log = ListLog()
    a, b = process_bus(log), process_bus(log)
    async with serving(a, b):
        event = Event(type="run.started", data={"when": when})
        if when == "stamped by its source":
            event = Event(type="run.started", data={"when": when}, time=1.0)
        sub = a.subscribe()
        await b.publish(event)  # after A's subscriber subscribed
        await b.flush()
        with anyio.fail_after(2):
            got = await sub.__anext__()
        await sub.aclose()
    assert got.data == {"when": when}
