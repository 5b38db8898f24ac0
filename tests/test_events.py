"""The event bus: patterns, ordering, bounded queues, replay from a log."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core import EventBusSpec, Nexus, hookimpl
from nexus_core.events import (
    Event,
    EventBus,
    EventType,
    LocalEventBus,
    SubscriberLagged,
    Subscription,
    event_id,
    event_seq,
)
from nexus_core.storage.base import LeaseLost, RunFinish, RunRecord, Storage
from nexus_core.storage.memory import MemoryStorage
from nexus_core.storage.sqlite import SQLiteStorage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- test doubles of the Storage event log -------------------------------------


class ListLog:
    """The event log role over a list: ids are positions, given on append.

    ``mode`` decides where the methods yield to the loop:
    ``"instant"`` never; ``"yield"`` before touching the list; ``"visible_early"``
    after appending (a reader sees the event before the publisher's append
    returns, as with a database committing in a worker thread); ``"stale"``
    reads return a snapshot taken a few loop turns earlier (a query answered
    by a thread or over the network).
    """

    def __init__(self, mode: str = "instant") -> None:
        self.mode = mode
        self.events: list[Event] = []
        self.reads = 0

    async def append_events(self, events: list[Event]) -> list[Event]:
        if self.mode == "yield":
            await anyio.lowlevel.checkpoint()
        logged = []
        for event in events:
            logged.append(msgspec.structs.replace(event, id=event_id(len(self.events) + 1)))
            self.events.append(logged[-1])
        if self.mode == "visible_early":
            await anyio.lowlevel.checkpoint()
        return logged

    async def append_event(self, event: Event) -> Event:
        [logged] = await self.append_events([event])
        return logged

    async def last_event_id(self) -> str | None:
        return self.events[-1].id if self.events else None

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        self.reads += 1
        if self.mode in ("yield", "visible_early"):
            await anyio.lowlevel.checkpoint()
        start = event_seq(after)
        out = [e for e in self.events[start:] if run_id is None or e.run_id == run_id]
        if self.mode == "stale":
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        return out[:limit]

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


def _memory_storage() -> object | None:
    try:
        module = importlib.import_module("nexus_core.storage.memory")
    except ImportError:
        return None
    return module.MemoryStorage("memory://")


def make_log(kind: str) -> ListLog | object:
    if kind == "memory":
        storage = _memory_storage()
        if storage is None:
            pytest.skip("nexus_core.storage.memory is not there yet")
        return storage
    return ListLog(kind)


async def log_ids(log: object) -> list[str]:
    return [e.id for e in await log.read_events(limit=10**9)]  # type: ignore[attr-defined]


LOG_KINDS = ["instant", "yield", "visible_early", "stale", "memory"]


async def take(sub: Subscription, n: int, seconds: float = 2.0) -> list[Event]:
    out: list[Event] = []
    with anyio.fail_after(seconds):
        async for event in sub:
            out.append(event)
            if len(out) == n:
                break
    return out


async def available(sub: Subscription) -> list[Event]:
    """Everything the subscription can hand out without waiting for a publisher."""
    out: list[Event] = []
    while True:
        with anyio.move_on_after(0):
            out.append(await sub.__anext__())
            continue
        return out


# -- basics --------------------------------------------------------------------


def test_event_types_are_the_documented_strings() -> None:
    assert EventType.RUN_STARTED == "run.started"
    assert EventType.SUBSCRIPTION_LAGGED == "subscription.lagged"
    assert {e.value for e in EventType} >= {
        "workflow.registered",
        "session.created",
        "session.expired",
        "run.started",
        "node.started",
        "node.finished",
        "node.failed",
        "run.completed",
        "run.failed",
        "run.cancelled",
    }


def test_local_bus_is_an_event_bus() -> None:
    assert isinstance(LocalEventBus(), EventBus)
    with pytest.raises(TypeError, match="append_event"):
        LocalEventBus(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overflow"):
        LocalEventBus(overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size"):
        LocalEventBus().subscribe(queue_size=0)


def test_from_app_uses_the_host_storage_and_config() -> None:
    from nexus_core import Nexus

    app = Nexus(
        autoload=False,
        env={},
        config={"services": {"events": {"queue_size": 7, "overflow": "disconnect"}}},
    )
    app.storage = ListLog()  # type: ignore[assignment]
    bus = LocalEventBus.from_app(app)
    assert bus.log is app.storage
    assert (bus.queue_size, bus.overflow) == (7, "disconnect")


@pytest.mark.anyio
async def test_patterns() -> None:
    bus = LocalEventBus()
    subs = {
        "*": bus.subscribe(),
        "run.*": bus.subscribe(["run.*"]),
        "node.finished": bus.subscribe(["node.finished"]),
        "both": bus.subscribe(["run.started", "node.*"]),
        "one-string": bus.subscribe("session.*"),
    }
    types = ["run.started", "node.started", "node.finished", "run.completed", "session.created"]
    for t in types:
        await bus.publish(Event(type=t))
    got = {name: [e.type for e in await available(sub)] for name, sub in subs.items()}
    assert got == {
        "*": types,
        "run.*": ["run.started", "run.completed"],
        "node.finished": ["node.finished"],
        "both": ["run.started", "node.started", "node.finished"],
        "one-string": ["session.created"],
    }


@pytest.mark.anyio
async def test_has_subscribers_and_wants() -> None:
    bus = LocalEventBus()
    assert not bus.has_subscribers("run.started")
    assert not bus.wants("run.started")
    async with bus.subscribe(["run.*"]):
        assert bus.has_subscribers("run.started")
        assert not bus.has_subscribers("node.started")
    assert not bus.has_subscribers("run.started")
    assert bus.subscriber_count == 0
    assert LocalEventBus(ListLog()).wants("node.started")  # logged even with no subscriber


@pytest.mark.anyio
async def test_filter_selects_events_and_a_broken_filter_ends_only_its_subscription() -> None:
    bus = LocalEventBus()
    mine = bus.subscribe(filter=lambda e: e.run_id == "r1")
    broken = bus.subscribe(filter=lambda e: 1 / 0 > 0)
    await bus.publish(Event(type="run.started", run_id="r1"))
    await bus.publish(Event(type="run.started", run_id="r2"))
    assert [e.run_id for e in await available(mine)] == ["r1"]
    with pytest.raises(ZeroDivisionError):
        await broken.__anext__()
    assert bus.subscriber_count == 1


@pytest.mark.anyio
async def test_close_ends_iteration_and_stop_ends_every_subscription() -> None:
    bus = LocalEventBus()
    sub = bus.subscribe()
    await bus.publish(Event(type="run.started"))
    async with sub:
        pass
    assert [e async for e in sub] == []
    await bus.publish(Event(type="run.started"))  # nobody left: nothing to do

    waiting = bus.subscribe()
    got: list[Event] = []

    async def consume() -> None:
        got.extend([e async for e in waiting])

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await bus.stop()
    assert got == []
    assert bus.subscriber_count == 0


@pytest.mark.anyio
async def test_a_reader_cancelled_while_waiting_leaves_the_subscription_whole() -> None:
    # A waiting reader parks on a future; cancelling it must not lose the next
    # event nor break the wake-up of the reader after it.
    bus = LocalEventBus()
    sub = bus.subscribe(["t.*"])
    with anyio.move_on_after(0.05) as scope:
        await sub.__anext__()
    assert scope.cancelled_caught
    await bus.publish(Event(type="t.one"))  # wakes nobody: the parked reader is gone
    assert (await sub.__anext__()).type == "t.one"
    got: list[str] = []

    async def read() -> None:
        got.append((await sub.__anext__()).type)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()  # the reader is parked
            await bus.publish(Event(type="t.two"))
    assert got == ["t.two"]


# -- ordering ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bus_mode(bus: LocalEventBus, background: bool) -> AsyncIterator[None]:
    """Use ``bus`` on its own (publish logs and delivers) or as a host does: with
    :meth:`LocalEventBus.run` logging and delivering behind, flushed at the end."""
    if not background:
        yield
        return
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        yield
        await bus.flush()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True], ids=["inline", "behind"])
@pytest.mark.parametrize("log_kind", [None, *LOG_KINDS])
async def test_concurrent_publishers_every_subscriber_gets_every_event_once_in_order(
    log_kind: str | None, background: bool
) -> None:
    log = make_log(log_kind) if log_kind else None
    bus = LocalEventBus(log, queue_size=10_000)
    publishers, per_publisher = 5, 200
    subs = [bus.subscribe(), bus.subscribe(["run.*"]), bus.subscribe()]
    received: list[list[Event]] = [[] for _ in subs]

    async def publish(p: int) -> None:
        for i in range(per_publisher):
            kind = "run.started" if i % 2 else "node.finished"
            await bus.publish(Event(type=kind, data={"p": p, "i": i}))
            await anyio.lowlevel.checkpoint()

    async def consume(k: int, sub: Subscription, n: int) -> None:
        received[k] = await take(sub, n, seconds=10)

    total = publishers * per_publisher
    with anyio.fail_after(20):
        async with bus_mode(bus, background), anyio.create_task_group() as tg:
            for k, (sub, n) in enumerate(zip(subs, [total, total // 2, total], strict=True)):
                tg.start_soon(consume, k, sub, n)
            for p in range(publishers):
                tg.start_soon(publish, p)

    everything, runs, again = ([e.id for e in r] for r in received)
    assert everything == again  # one order, the same for every subscriber
    assert len(set(everything)) == total  # each event once
    for p in range(publishers):  # each publisher's events in its own order
        mine = [e.data["i"] for e in received[0] if e.data["p"] == p]
        assert mine == list(range(per_publisher))
    by_id = {e.id: e for e in received[0]}
    assert runs == [i for i in everything if by_id[i].type == "run.started"]
    if log is not None:
        assert await log_ids(log) == everything  # delivery order is log order


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True], ids=["inline", "behind"])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_final_writes_among_plain_publishers_keep_one_order_and_lose_nobody_elses(
    kind: str, background: bool, tmp_path: Path
) -> None:
    """``publish_with`` among plain publishers: a run's final write appends its
    events with what was queued before it; a refused one (a lost lease) publishes
    none of its own and loses none of the others'; every subscriber sees the log's
    order, and every completed run is stored finished."""
    storage: Storage = (
        MemoryStorage("memory://")
        if kind == "memory"
        else SQLiteStorage(f"sqlite:///{tmp_path}/e.db")
    )
    await storage.open()
    bus = LocalEventBus(storage, queue_size=10_000)
    publishers, runs_each = 4, 12
    refused: set[str] = set()

    async def publish(p: int) -> None:
        for k in range(runs_each):
            run_id = f"p{p}-{k}"
            await storage.create_run(RunRecord(id=run_id, workflow="w", created_at=1.0))
            record = await storage.claim_run(run_id, "me", lease=30.0, now=10.0)
            assert record is not None
            if k % 4 == 3:  # another process took it over: this final write is refused
                await storage.renew_leases("me", {run_id: record.fence}, until=0)
                assert await storage.claim_run(run_id, "other", lease=30.0, now=10.0)
                refused.add(run_id)
            for i in range(3):
                await bus.publish(Event(type="node.finished", run_id=run_id, data={"i": i}))
                await bus.publish(Event(type="note", data={"p": p, "k": k, "i": i}))
            done = msgspec.structs.replace(record, status="completed", finished_at=20.0)
            completed = Event(type="run.completed", run_id=run_id, data={"i": 3})
            try:
                await bus.publish_with([completed], RunFinish(done), log=storage)
            except LeaseLost:
                assert run_id in refused
            else:
                assert run_id not in refused
            await anyio.lowlevel.checkpoint()

    sub = bus.subscribe()
    try:
        with anyio.fail_after(30):
            async with bus_mode(bus, background), anyio.create_task_group() as tg:
                for p in range(publishers):
                    tg.start_soon(publish, p)
        received = await available(sub)
        log = await storage.read_events(limit=100_000)
        runs = {r.id: r for r in await storage.list_runs(limit=1000)}
    finally:
        await storage.close()
    assert [e.id for e in received] == [e.id for e in log]  # delivery order is log order
    assert len({e.id for e in received}) == len(received)  # each once
    notes = [(e.data["p"], e.data["k"], e.data["i"]) for e in received if e.type == "note"]
    assert sorted(notes) == [  # nobody else's event is lost
        (p, k, i) for p in range(publishers) for k in range(runs_each) for i in range(3)
    ]
    for p in range(publishers):  # each publisher's notes in its own order
        assert [n for n in notes if n[0] == p] == sorted(n for n in notes if n[0] == p)
    ends = [e.run_id for e in received if e.type == "run.completed"]
    assert sorted(ends) == sorted(set(runs) - refused)  # once per run stored finished
    for run_id, run in runs.items():
        assert run.status == ("pending" if run_id in refused else "completed")
        mine = [e.data["i"] for e in received if e.run_id == run_id]
        if run_id not in refused:
            assert mine == [0, 1, 2, 3]  # its events in order, the completion last


@pytest.mark.anyio
async def test_a_bus_logging_elsewhere_writes_first_then_publishes() -> None:
    """``publish_with`` for a log that is not the bus's: the run's write, then ``publish``."""
    bus = LocalEventBus(ListLog())
    other = MemoryStorage("memory://")
    await other.create_run(RunRecord(id="r1", workflow="w", created_at=1.0))
    done = RunRecord(id="r1", workflow="w", created_at=1.0, status="completed")
    sub = bus.subscribe()
    await bus.publish_with([Event(type="run.completed", run_id="r1")], RunFinish(done), log=other)
    assert [e.type for e in await available(sub)] == ["run.completed"]
    assert await other.read_events() == []  # published on the bus's own log
    stored = await other.get_run("r1")
    assert stored is not None and stored.status == "completed"


# -- bounded queues --------------------------------------------------------------


@pytest.mark.anyio
async def test_drop_oldest_delivers_a_lagged_marker_before_the_next_real_event() -> None:
    bus = LocalEventBus(queue_size=3)
    sub = bus.subscribe()
    events = [Event(type="run.started", data={"n": n}) for n in range(10)]
    await bus.publish(events[0])
    assert (await take(sub, 1))[0].id == events[0].id
    for event in events[1:]:
        await bus.publish(event)  # never blocks, though nobody reads
    got = await available(sub)
    assert got[0].type == EventType.SUBSCRIPTION_LAGGED
    assert got[0].data == {"dropped": 6, "last_delivered": events[0].id}
    assert [e.id for e in got[1:]] == [e.id for e in events[7:]]
    assert sub.last_event_id == events[-1].id
    # Lag again: the count starts over.
    for n in range(5):
        await bus.publish(Event(type="run.started", data={"n": n}))
    again = await available(sub)
    assert again[0].data == {"dropped": 2, "last_delivered": events[-1].id}
    assert len(again) == 4


@pytest.mark.anyio
async def test_deliver_logged_fills_gaps_from_the_log_in_order_and_once() -> None:
    """What a distributed bus receives, in any order, reaches subscribers in log order, once."""
    log = ListLog()
    bus = LocalEventBus(log)
    sub = bus.subscribe()
    # Logged by another instance; only some of it reaches this one, out of order.
    logged = await log.append_events([Event(type="n", data={"n": n}) for n in range(6)])
    await bus.deliver_logged([logged[2]])  # 1 and 2 come from the log first
    await bus.deliver_logged([logged[1], logged[2]])  # delivered already: dropped
    await bus.deliver_logged([logged[4], logged[3]])  # 4 first: 4 fills in before it
    await bus.deliver_logged([logged[5]])
    assert [e.data["n"] for e in await available(sub)] == [0, 1, 2, 3, 4, 5]
    assert log.reads == 2  # one log read per gap, none when the order is right


@pytest.mark.anyio
async def test_deliver_logged_with_nobody_listening_moves_the_position_on() -> None:
    log = ListLog()
    bus = LocalEventBus(log)
    logged = await log.append_events([Event(type="n", data={"n": n}) for n in range(3)])
    await bus.deliver_logged([logged[1]])  # nobody subscribes: nothing to read
    sub = bus.subscribe()
    await bus.deliver_logged([logged[2]])
    assert [e.data["n"] for e in await available(sub)] == [2]
    assert log.reads == 0


@pytest.mark.anyio
async def test_catch_up_delivers_what_others_logged() -> None:
    log = ListLog()
    bus = LocalEventBus(log)
    sub = bus.subscribe()
    await log.append_events([Event(type="n", data={"n": n}) for n in range(3)])
    assert await available(sub) == []
    await bus.catch_up()
    await bus.catch_up()  # again: nothing new, nothing twice
    assert [e.data["n"] for e in await available(sub)] == [0, 1, 2]
    assert await available(sub) == []
    await LocalEventBus().catch_up()  # without a log: nothing to do


@pytest.mark.anyio
async def test_lagged_subscriber_can_catch_up_from_the_log() -> None:
    log = ListLog()
    bus = LocalEventBus(log, queue_size=2)
    sub = bus.subscribe()
    for n in range(6):
        await bus.publish(Event(type="node.finished", data={"n": n}))
    marker = (await take(sub, 1))[0]
    assert marker.type == "subscription.lagged"
    assert marker.data["dropped"] == 4
    await sub.aclose()
    caught_up = bus.subscribe(last_event_id=marker.data["last_delivered"] or "")
    assert [e.id for e in await available(caught_up)] == log.ids()


@pytest.mark.anyio
async def test_disconnect_policy_raises_subscriber_lagged() -> None:
    bus = LocalEventBus()
    slow = bus.subscribe(queue_size=2, overflow="disconnect")
    other = bus.subscribe()
    first = Event(type="run.started")
    await bus.publish(first)
    assert (await take(slow, 1))[0].id == first.id
    for _ in range(3):
        await bus.publish(Event(type="run.started"))
    assert bus.subscriber_count == 1
    with pytest.raises(SubscriberLagged) as info:
        await slow.__anext__()
    assert info.value.last_event_id == first.id
    assert info.value.code == "subscriber_lagged"
    assert [e async for e in slow] == []  # ended
    assert len(await available(other)) == 4


# -- replay ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("log_kind", LOG_KINDS)
async def test_replay_gives_the_missed_events_then_live_ones(log_kind: str) -> None:
    log = make_log(log_kind)
    bus = LocalEventBus(log)
    bus.page_size = 2
    for n in range(7):
        await bus.publish(Event(type="run.started" if n % 3 else "node.started", data={"n": n}))
    logged = await log.read_events(limit=100)  # type: ignore[attr-defined]
    assert [e.data["n"] for e in logged] == list(range(7))
    assert [e.id for e in logged] == [event_id(n) for n in range(1, 8)]  # positions
    sub = bus.subscribe(["run.*"], last_event_id=logged[1].id)
    assert sub.last_event_id == logged[1].id
    await bus.publish(Event(type="run.completed", data={"live": True}))
    await bus.publish(Event(type="node.finished"))
    want = [e.id for e in logged[2:] if e.type.startswith("run.")] + [event_id(8)]
    got = await take(sub, len(want))
    assert [e.id for e in got] == want
    assert got[-1].data == {"live": True}


@pytest.mark.anyio
async def test_replay_from_an_unknown_id_reads_the_whole_log() -> None:
    log = ListLog()
    bus = LocalEventBus(log)
    for _ in range(3):
        await bus.publish(Event(type="run.started"))
    sub = bus.subscribe(last_event_id="not-an-id")
    assert [e.id for e in await available(sub)] == log.ids()


@pytest.mark.anyio
async def test_without_a_log_last_event_id_means_live_only() -> None:
    bus = LocalEventBus()
    await bus.publish(Event(type="run.started"))
    sub = bus.subscribe(last_event_id="whatever")
    event = Event(type="run.started")
    await bus.publish(event)
    assert [e.id for e in await available(sub)] == [event.id]


@pytest.mark.anyio
async def test_event_read_while_its_publisher_is_between_append_and_delivery_is_not_repeated() -> (
    None
):
    gate = anyio.Event()

    class GateLog(ListLog):
        async def append_events(self, events: list[Event]) -> list[Event]:
            logged = await super().append_events(events)  # visible to readers at once
            if any(e.data.get("gated") for e in events):
                await gate.wait()
            return logged

    log = GateLog()
    bus = LocalEventBus(log)
    await bus.publish(Event(type="run.started"))
    gated = Event(type="run.started", data={"gated": True})
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.publish, gated)
            await anyio.wait_all_tasks_blocked()  # appended, not yet delivered
            sub = bus.subscribe(last_event_id=log.ids()[0])
            replayed = await available(sub)
            assert [e.id for e in replayed] == log.ids()[1:]
            assert replayed[0].data == {"gated": True}
            gate.set()
        await bus.publish(Event(type="run.started", data={"after": True}))
        got = await available(sub)
        assert [e.id for e in got] == log.ids()[2:]
        assert got[0].data == {"after": True}


@pytest.mark.anyio
async def test_queue_overflow_during_a_slow_read_makes_replay_read_on() -> None:
    """The read's snapshot predates events that then overflow the live queue:
    they are neither in that page nor in the queue, so replay must read again."""
    gate = anyio.Event()

    class SlowLog(ListLog):
        async def read_events(
            self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
        ) -> list[Event]:
            page = await super().read_events(after=after, limit=limit, run_id=run_id)
            if self.reads == 1:
                await gate.wait()
            return page

    log = SlowLog()
    bus = LocalEventBus(log, queue_size=2)
    await bus.publish(Event(type="run.started"))
    sub = bus.subscribe(last_event_id=log.ids()[0])
    got: list[Event] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                got.extend(await take(sub, 3))

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()  # the first read has its (empty) snapshot
            for _ in range(3):
                await bus.publish(Event(type="run.started"))  # the third overflows
            gate.set()
    assert [e.id for e in got] == log.ids()[1:]
    await bus.publish(Event(type="run.started"))
    assert [e.id for e in await available(sub)] == log.ids()[4:]


@pytest.mark.anyio
@pytest.mark.parametrize("background", [False, True], ids=["inline", "behind"])
@pytest.mark.parametrize("log_kind", LOG_KINDS)
@pytest.mark.parametrize("overflow", ["drop_oldest", "disconnect"])
async def test_replay_while_publishing_has_no_gap_and_no_duplicate(
    log_kind: str, overflow: str, background: bool
) -> None:
    """A small queue and small pages force every path: paging, overflow during replay
    (read on from the log), live lag (reconnect from the last id)."""
    async with bus_mode(bus := _replay_bus(log := make_log(log_kind), overflow), background):
        await _replay_while_publishing(bus, log)


def _replay_bus(log: object, overflow: str) -> LocalEventBus:
    bus = LocalEventBus(log, queue_size=4, overflow=overflow)  # type: ignore[arg-type]
    bus.page_size = 3
    return bus


async def _replay_while_publishing(bus: LocalEventBus, log: object) -> None:
    for n in range(50):
        await bus.publish(Event(type="run.started" if n % 2 else "node.started"))
    await bus.flush()
    start = (await log_ids(log))[10]
    end = Event(type="run.completed", data={"end": True})
    got: list[str] = []
    lagged_at: list[tuple[str | None, str]] = []

    async def publisher() -> None:
        for n in range(600):
            await bus.publish(Event(type="run.started" if n % 3 else "node.started"))
            if n % 4 == 0:
                await anyio.lowlevel.checkpoint()
        await bus.publish(end)

    async def subscriber() -> None:
        cursor = start
        while True:
            async with bus.subscribe(["run.*"], last_event_id=cursor) as sub:
                try:
                    async for event in sub:
                        if event.type == "subscription.lagged":
                            assert event.data["last_delivered"] == cursor
                            break
                        got.append(event.id)
                        cursor = event.id
                        if event.data.get("end"):
                            return
                        if len(got) % 7 == 0:
                            await anyio.lowlevel.checkpoint()
                except SubscriberLagged as exc:
                    lagged_at.append((exc.last_event_id, cursor))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber)
            tg.start_soon(publisher)

    await bus.flush()
    ids = await log_ids(log)
    everything = await log.read_events(after=start, limit=10**9)  # type: ignore[attr-defined]
    want = [e.id for e in everything if e.type.startswith("run.")]
    assert len(ids) == 651
    assert ids == [event_id(n) for n in range(1, 652)]
    assert got == want
    assert all(said == seen for said, seen in lagged_at)
    assert bus.subscriber_count == 0


# -- property: random publish / subscribe / disconnect / reconnect ----------------

TYPES = ["run.started", "run.completed", "node.started", "node.finished", "session.created"]
PATTERNS = ["*", "run.*", "node.*", "run.started", "node.finished", "r?n.*", "*.started"]


@dataclass
class Client:
    pattern: str
    queue_size: int
    overflow: str
    cursor: str  # last event id received, or where it started ("" = start of log)
    first: int  # log length when it first subscribed
    sub: Subscription | None = None
    got: list[str] = field(default_factory=list)


op = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(TYPES), st.integers(1, 5)),
    st.tuples(
        st.just("subscribe"),
        st.sampled_from(PATTERNS),
        st.sampled_from([2, 1000]),
        st.sampled_from(["drop_oldest", "disconnect"]),
    ),
    st.tuples(st.just("disconnect"), st.integers(0, 7)),
    st.tuples(st.just("reconnect"), st.integers(0, 7)),
    st.tuples(st.just("drain"), st.integers(0, 7)),
)


async def drain(bus: LocalEventBus, client: Client) -> None:
    """Take what is available; on lag, reconnect from the last id received."""
    while client.sub is not None:
        try:
            events = await available(client.sub)
        except SubscriberLagged:
            events = [Event(type="subscription.lagged")]
        for event in events:
            if event.type == "subscription.lagged":
                await client.sub.aclose()
                client.sub = connect(bus, client)
                break
            client.got.append(event.id)
            client.cursor = event.id
        else:
            return


def connect(bus: LocalEventBus, client: Client) -> Subscription:
    return bus.subscribe(
        [client.pattern],
        last_event_id=client.cursor,
        queue_size=client.queue_size,
        overflow=client.overflow,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, max_size=40),
    log_kind=st.sampled_from(["instant", "memory"]),
    page_size=st.sampled_from([1, 2, 500]),
)
async def test_each_subscriber_sees_the_log_filtered_by_pattern_after_its_cursor(
    ops: list[tuple], log_kind: str, page_size: int
) -> None:
    log = make_log(log_kind)
    bus = LocalEventBus(log)
    bus.page_size = page_size
    clients: list[Client] = []

    def pick(i: int) -> Client | None:
        return clients[i % len(clients)] if clients else None

    for step in ops:
        kind = step[0]
        if kind == "publish":
            for _ in range(step[2]):
                await bus.publish(Event(type=step[1]))
        elif kind == "subscribe":
            ids = await log_ids(log)
            client = Client(
                step[1], step[2], step[3], cursor=ids[-1] if ids else "", first=len(ids)
            )
            client.sub = bus.subscribe([client.pattern], queue_size=step[2], overflow=step[3])
            clients.append(client)
        elif (client := pick(step[1])) is not None:
            if kind == "disconnect" and client.sub is not None:
                await client.sub.aclose()
                client.sub = None
            elif kind == "reconnect" and client.sub is None:
                client.sub = connect(bus, client)
            elif kind == "drain":
                await drain(bus, client)

    events = await log.read_events(limit=10**9)  # type: ignore[attr-defined]
    for client in clients:
        if client.sub is None:
            client.sub = connect(bus, client)
        await drain(bus, client)
        match: Callable[[str], bool] = lambda t, p=client.pattern: fnmatch.fnmatchcase(t, p)  # noqa: E731
        want = [e.id for e in events[client.first :] if match(e.type)]
        assert client.got == want, client
        await client.sub.aclose()
    assert bus.subscriber_count == 0


def test_event_round_trips_through_json() -> None:
    event = Event(type=EventType.RUN_STARTED, run_id="r1", data={"x": 1})
    back = msgspec.json.decode(msgspec.json.encode(event), type=Event)
    assert back == event


@pytest.mark.anyio
async def test_a_failing_log_fails_every_publisher_of_its_batch() -> None:
    class BrokenLog(ListLog):
        async def append_events(self, events: list[Event]) -> list[Event]:
            await anyio.sleep(0.01)
            raise OSError("disk full")

    bus = LocalEventBus(BrokenLog())
    outcomes: list[str] = []

    async def publish(n: int) -> None:
        try:
            await bus.publish(Event(type="run.started", data={"n": n}))
        except (OSError, RuntimeError) as exc:
            outcomes.append(type(exc).__name__)

    with anyio.fail_after(5):  # nobody is left waiting forever
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(publish, n)
    assert len(outcomes) == 5
    assert outcomes.count("OSError") >= 1


# -- written behind (as in a host) -------------------------------------------------


@pytest.mark.anyio
async def test_behind_subscribe_then_read_the_log_leaves_no_gap() -> None:
    # The pattern of a stream of one run's history and then its live events:
    # an event published before the subscription but not yet logged when the
    # log is read still arrives live.
    log = ListLog("yield")
    bus = LocalEventBus(log)
    async with bus_mode(bus, background=True):
        await bus.publish(Event(type="run.started"))  # queued, not yet logged or delivered
        sub = bus.subscribe()
        history = [e.id for e in await log.read_events()]
        await bus.publish(Event(type="run.completed"))
        await bus.flush()
        # flush: logged and delivered
        assert [e.type for e in log.events] == ["run.started", "run.completed"]
        live = [e.id for e in await available(sub)]
        assert [*history, *(i for i in live if i not in history)] == log.ids()


@pytest.mark.anyio
async def test_behind_a_failing_log_loses_its_batch_and_the_bus_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FlakyLog(ListLog):
        broken = True

        async def append_events(self, events: list[Event]) -> list[Event]:
            if self.broken:
                raise OSError("disk full")
            return await super().append_events(events)

    log = FlakyLog("instant")
    bus = LocalEventBus(log)
    sub = bus.subscribe()
    async with bus_mode(bus, background=True):
        await bus.publish(Event(type="run.started"))  # the publisher is not failed: it did not wait
        await bus.flush()
        assert bus._behind.failed == 1
        assert "writing 1 queued events failed" in caplog.text
        log.broken = False
        await bus.publish(Event(type="run.completed"))
        await bus.flush()
    # Never delivered what the log lacks; delivered what it has.
    assert [e.type for e in log.events] == ["run.completed"]
    assert [e.id for e in await available(sub)] == log.ids() == [event_id(1)]


class _PickyBus(LocalEventBus):
    """A bus that serves only hosts whose title says so."""

    @classmethod
    def usable(cls, app: Any) -> bool:
        return bool(app.title.startswith("picky"))


class _PickyPlugin:
    @hookimpl
    def nexus_event_buses(self) -> list[EventBusSpec]:
        return [EventBusSpec(name="picky", factory=f"{__name__}:_PickyBus", priority=50)]


@pytest.mark.anyio
@pytest.mark.parametrize(("title", "picked"), [("picky one", True), ("plain", False)])
async def test_the_host_takes_the_usable_bus_of_highest_priority(title: str, picked: bool) -> None:
    app = Nexus(title, storage="memory://", plugins=[_PickyPlugin()], autoload=False, env={})
    async with app:
        bus = app._services().events
        assert isinstance(bus, _PickyBus) is picked
        assert isinstance(bus, LocalEventBus)  # declined: the in-process bus serves


class _HeavyBusPlugin:
    """A bus whose spec declines before its module (one that cannot even import) is loaded."""

    @hookimpl
    def nexus_event_buses(self) -> list[EventBusSpec]:
        return [
            EventBusSpec(
                name="heavy",
                factory="no_such_broker_client.bus:HeavyBus",
                usable=lambda app: False,
                priority=60,
            ),
            EventBusSpec(
                name="picky",
                factory=f"{__name__}:_PickyBus",
                usable=f"{__name__}:_picky_title",
                priority=50,
            ),
        ]


def _picky_title(app: Any) -> bool:
    return bool(app.title.startswith("picky"))


@pytest.mark.anyio
@pytest.mark.parametrize(("title", "picked"), [("picky one", True), ("plain", False)])
async def test_a_spec_that_declines_is_never_imported(title: str, picked: bool) -> None:
    app = Nexus(title, storage="memory://", plugins=[_HeavyBusPlugin()], autoload=False, env={})
    async with app:  # the heavy bus's module would fail to import: it was never asked to
        assert isinstance(app._services().events, _PickyBus) is picked
