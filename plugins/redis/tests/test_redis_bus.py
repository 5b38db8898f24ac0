"""The Redis event bus: two buses (as two instances) on one SQLite event log and one Redis.

The buses' log polling is slowed to a minute, so an event reaching the other
instance within the test's deadline came over the stream, not the log
(except in the tests of a Redis outage, where the log is the way).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nexus_core.events import Event, Subscription
from nexus_core.plugin import SQLiteStorage
from redis_support import delete_prefix, new_prefix, own_redis, with_prefix

from nexus_plugin_redis.bus import RedisEventBus

pytestmark = pytest.mark.anyio

SLOW_POLL = 60.0


@asynccontextmanager
async def running_bus(
    log_path: Path, url: str | None, **options: float
) -> AsyncIterator[RedisEventBus]:
    """A bus over its own connection to the SQLite log at ``log_path``, running."""
    storage = SQLiteStorage(f"sqlite:///{log_path}")
    await storage.open()
    bus = RedisEventBus(
        storage,
        url=url,
        poll_interval=options.get("poll_interval", SLOW_POLL),
        fallback_poll_interval=options.get("fallback_poll_interval", SLOW_POLL),
        block_ms=int(options.get("block_ms", 200)),
    )
    try:
        await bus.start()
        async with anyio.create_task_group() as tg:
            await tg.start(bus.run)
            try:
                yield bus
            finally:
                await bus.flush()
                tg.cancel_scope.cancel()
    finally:
        await bus.stop()
        await storage.close()


async def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.005)


async def collect(sub: Subscription, into: list[Event], count: int) -> None:
    """Read ``count`` events (lag markers included) from ``sub`` into ``into``."""
    async for event in sub:
        into.append(event)
        if len(into) >= count:
            return


async def wait_connected(*buses: RedisEventBus) -> None:
    """Wait until every bus's stream reader has connected."""
    await wait_for(lambda: all(b.connected for b in buses), "the stream readers")


@pytest.fixture
def url(redis_base: str, prefix: str) -> str:
    return with_prefix(redis_base, prefix)


async def test_events_of_one_instance_reach_subscribers_of_the_other(
    tmp_path: Path, url: str
) -> None:
    """Published on A, received on B at once (the log is polled once a minute): once, in order."""
    log = tmp_path / "events.db"
    async with running_bus(log, url) as a, running_bus(log, url) as b:
        await wait_connected(a, b)
        got_b: list[Event] = []
        got_a: list[Event] = []
        async with (
            b.subscribe(["run.*"]) as sub_b,
            a.subscribe(["run.*"]) as sub_a,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(collect, sub_b, got_b, 20)
            tg.start_soon(collect, sub_a, got_a, 20)
            for i in range(20):
                await a.publish(Event(type="run.started", data={"i": i}))
                await a.publish(Event(type="other.thing", data={"i": i}))
            await wait_for(lambda: len(got_b) >= 20, "B's subscriber")
        assert [e.data["i"] for e in got_b] == list(range(20))
        assert [e.id for e in got_b] == [e.id for e in got_a]
        assert all(e.id.isdigit() for e in got_b)  # log positions, the same on every instance
        assert a.sent >= 40
        assert b.received >= 20


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spread=st.lists(st.booleans(), min_size=1, max_size=60))
async def test_both_instances_publishing_every_subscriber_sees_the_log_order(
    tmp_path_factory: pytest.TempPathFactory, redis_base: str, spread: list[bool]
) -> None:
    """A and B publish concurrently; both subscribers see every event once, in log order."""
    prefix = new_prefix()
    url = with_prefix(redis_base, prefix)
    log = tmp_path_factory.mktemp("bus") / "events.db"
    try:
        async with running_bus(log, url) as a, running_bus(log, url) as b:
            await wait_connected(a, b)
            seen: dict[str, list[Event]] = {"a": [], "b": []}
            async with (
                a.subscribe() as sub_a,
                b.subscribe() as sub_b,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(collect, sub_a, seen["a"], len(spread))
                tg.start_soon(collect, sub_b, seen["b"], len(spread))
                async with anyio.create_task_group() as publishers:
                    for i, on_a in enumerate(spread):
                        bus = a if on_a else b
                        publishers.start_soon(bus.publish, Event(type="n", data={"i": i}))
            storage = SQLiteStorage(f"sqlite:///{log}")
            await storage.open()
            try:
                logged = await storage.read_events()
            finally:
                await storage.close()
        assert len(logged) == len(spread)
        assert [e.id for e in seen["a"]] == [e.id for e in logged]
        assert [e.id for e in seen["b"]] == [e.id for e in logged]
    finally:
        delete_prefix(redis_base, prefix)


async def test_last_event_id_replays_from_the_log_then_goes_live(tmp_path: Path, url: str) -> None:
    """B resumes after an id A's events carry: the rest from the log, then live, no dup."""
    log = tmp_path / "events.db"
    async with running_bus(log, url) as a, running_bus(log, url) as b:
        await wait_connected(a, b)
        for i in range(10):
            await a.publish(Event(type="n", data={"i": i}))
        await a.flush()
        storage = SQLiteStorage(f"sqlite:///{log}")
        await storage.open()
        try:
            resume = (await storage.read_events())[4].id
        finally:
            await storage.close()
        got: list[Event] = []
        async with b.subscribe(last_event_id=resume) as sub, anyio.create_task_group() as tg:
            tg.start_soon(collect, sub, got, 15)
            await wait_for(lambda: len(got) >= 5, "the replay")
            for i in range(10, 20):
                await a.publish(Event(type="n", data={"i": i}))
        assert [e.data["i"] for e in got] == list(range(5, 20))


@pytest.mark.parametrize("max_age", [None, 3600.0], ids=["maxlen", "maxlen-and-max-age"])
async def test_the_stream_is_bounded(tmp_path: Path, url: str, max_age: float | None) -> None:
    """MAXLEN ~ keeps the stream near stream_maxlen (with an age limit too); the log keeps all."""
    log = tmp_path / "events.db"
    storage = SQLiteStorage(f"sqlite:///{log}")
    await storage.open()
    bus = RedisEventBus(
        storage, url=url, stream_maxlen=100, stream_max_age=max_age, poll_interval=SLOW_POLL
    )
    await bus.start()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(bus.run)
            for i in range(1500):
                await bus.publish(Event(type="n", data={"i": i}))
            await bus.flush()
            await wait_for(lambda: bus.sent == 1500, "the stream writer")
            tg.cancel_scope.cancel()
        assert bus._redis is not None
        length = await bus._redis.xlen(bus.stream)
        assert 100 <= length < 1500 // 2
        assert len(await storage.read_events(limit=5000)) == 1500
    finally:
        await bus.stop()
        await storage.close()


async def test_entries_older_than_stream_max_age_are_trimmed(tmp_path: Path, url: str) -> None:
    """MINID ~: entries an hour old go with a one-minute age limit, recent ones stay."""
    log = tmp_path / "events.db"
    storage = SQLiteStorage(f"sqlite:///{log}")
    await storage.open()
    bus = RedisEventBus(
        storage, url=url, stream_maxlen=100_000, stream_max_age=60.0, poll_interval=SLOW_POLL
    )
    await bus.start()
    client = bus._redis
    assert client is not None
    try:
        hour_ago = int((time.time() - 3600) * 1000)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(1000):  # ten of Redis's 100-entry nodes: whole ones can go
                pipe.xadd(bus.stream, {"o": "old", "e": b"{}"}, id=f"{hour_ago}-{i + 1}")
            await pipe.execute()
        async with anyio.create_task_group() as tg:
            await tg.start(bus.run)
            for i in range(50):
                await bus.publish(Event(type="n", data={"i": i}))
            await bus.flush()
            await wait_for(lambda: bus.sent == 50, "the stream writer")
            tg.cancel_scope.cancel()
        entries = await client.xrange(bus.stream)
        origins = [fields[b"o"] for _id, fields in entries]
        assert origins.count(bus.origin.encode()) == 50  # every recent one kept
        assert origins.count(b"old") < 100  # at most a partly old node is left (~)
        assert len(await storage.read_events(limit=5000)) == 50
    finally:
        await bus.stop()
        await storage.close()


async def test_redis_down_loses_nothing_and_the_stream_resumes(tmp_path: Path) -> None:
    """Redis stopped mid-stream: B hears A's events from the log; restarted, the stream again."""
    log = tmp_path / "events.db"
    with own_redis(tmp_path) as server:
        fast = {"poll_interval": 0.1, "fallback_poll_interval": SLOW_POLL, "block_ms": 100}
        async with (
            running_bus(log, server.url, **fast) as a,
            running_bus(log, server.url, **fast) as b,
        ):
            await wait_connected(a, b)
            got: list[Event] = []
            async with b.subscribe() as sub, anyio.create_task_group() as tg:
                tg.start_soon(collect, sub, got, 30)
                for i in range(10):
                    await a.publish(Event(type="n", data={"i": i}))
                await wait_for(lambda: len(got) >= 10, "events over the stream")
                server.stop()
                await wait_for(lambda: a.breaker.down and b.breaker.down, "the outage seen")
                for i in range(10, 20):
                    await a.publish(Event(type="n", data={"i": i}))
                # Over the log, polled every 0.1 s while the stream is down.
                await wait_for(lambda: len(got) >= 20, "events over the log")
                assert b.received == 10
                server.start()
                await wait_connected(a, b)  # reconnected, with backoff
                for i in range(20, 30):
                    await a.publish(Event(type="n", data={"i": i}))
        assert [e.data["i"] for e in got] == list(range(30))
        assert len({e.id for e in got}) == 30


async def test_without_a_url_it_is_the_local_bus(tmp_path: Path) -> None:
    """No [nexus.plugins.redis] url: the in-process bus with its log polling, nothing else."""
    async with running_bus(tmp_path / "events.db", None, poll_interval=0.05) as bus:
        assert bus.settings is None
        assert not bus.connected
        got: list[Event] = []
        async with bus.subscribe() as sub, anyio.create_task_group() as tg:
            tg.start_soon(collect, sub, got, 3)
            for i in range(3):
                await bus.publish(Event(type="n", data={"i": i}))
        assert [e.data["i"] for e in got] == [0, 1, 2]


async def test_installed_it_takes_over_the_host_s_bus(
    tmp_path: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook's priority beats the in-process bus; start and stop are quiet."""
    from nexus_core import Nexus

    app = Nexus(
        "bus",
        autoload=False,
        plugins=["nexus_plugin_redis.plugin"],
        config={
            "storage": f"sqlite:///{tmp_path / 'n.db'}",
            "plugins": {"redis": {"url": url, "stream_maxlen": 500, "stream_max_age": 90}},
        },
        env={},
    )

    @app.workflow
    def greet(name: str) -> str:
        return f"Hello, {name}."

    with caplog.at_level("WARNING", logger="nexus.redis"):
        async with app:
            bus = app._services().events  # no public accessor: the host's own bus
            assert isinstance(bus, RedisEventBus)
            assert bus.stream_maxlen == 500
            assert bus.stream_max_age == 90
            await wait_connected(bus)
            result = await app.invoke("greet", {"name": "Ada"})
            assert result.output == "Hello, Ada."
            await bus.flush()
            await wait_for(lambda: bus.sent >= 2, "the run's events on the stream")
    assert not [r for r in caplog.records if r.name == "nexus.redis"], caplog.text


@pytest.mark.parametrize("with_postgres", [False, True], ids=["alone", "with-postgres"])
async def test_without_a_url_it_leaves_the_bus_to_the_next_plugin(
    tmp_path: Path, with_postgres: bool
) -> None:
    """Installed for the cache or sessions only: the host's bus is what it would be without it."""
    from nexus_core import Nexus
    from nexus_core.events import LocalEventBus

    plugins = ["nexus_plugin_redis.plugin"]
    if with_postgres:
        pytest.importorskip("nexus_plugin_postgres", reason="nexus-plugin-postgres not installed")
        plugins.append("nexus_plugin_postgres.plugin")
    app = Nexus(
        "bus",
        autoload=False,
        plugins=plugins,
        config={"storage": f"sqlite:///{tmp_path / 'n.db'}"},
        env={},
    )
    async with app:
        bus = app._services().events  # no public accessor: the host's own bus
        # Neither the Redis bus (no URL) nor PostgreSQL's (the log is SQLite's)
        # can serve this host: the in-process bus does.
        assert type(bus) is LocalEventBus


async def test_an_event_missing_from_the_stream_is_read_from_the_log_in_its_place(
    tmp_path: Path, url: str
) -> None:
    """An event logged but never streamed (its publisher lost Redis) still comes, in order."""
    log = tmp_path / "events.db"
    async with running_bus(log, url) as a, running_bus(log, url) as b:
        await wait_connected(a, b)
        got: list[Event] = []
        async with b.subscribe() as sub, anyio.create_task_group() as tg:
            tg.start_soon(collect, sub, got, 3)
            await a.publish(Event(type="n", data={"i": 0}))
            await wait_for(lambda: len(got) == 1, "the first event")
            # Logged by a process whose stream is down: in the log, not on the stream.
            other = SQLiteStorage(f"sqlite:///{log}")
            await other.open()
            try:
                await other.append_events([Event(type="n", data={"i": 1})])
            finally:
                await other.close()
            await a.publish(Event(type="n", data={"i": 2}))
            # The log is polled once a minute here: only the gap check can fill it in.
            await wait_for(lambda: len(got) == 3, "the gap filled from the log")
        assert [e.data["i"] for e in got] == [0, 1, 2]
        assert [int(e.id) for e in got] == sorted(int(e.id) for e in got)


async def test_a_broken_stream_key_degrades_to_the_log_and_kills_nothing(
    tmp_path: Path, url: str, redis_base: str, prefix: str
) -> None:
    """The stream's key holds a string (WRONGTYPE on every call): events come over the log."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_base)
    await client.set(f"{{{prefix}:events}}:stream", b"not a stream")
    await client.aclose()
    log = tmp_path / "events.db"
    fast = {"poll_interval": 0.1, "fallback_poll_interval": SLOW_POLL, "block_ms": 100}
    async with running_bus(log, url, **fast) as a, running_bus(log, url, **fast) as b:
        got: list[Event] = []
        async with b.subscribe() as sub, anyio.create_task_group() as tg:
            tg.start_soon(collect, sub, got, 5)
            for i in range(5):
                await a.publish(Event(type="n", data={"i": i}))
            await wait_for(lambda: len(got) == 5, "events over the log")
        assert not a.connected and not b.connected
        assert "WRONGTYPE" in (b.breaker.last_error or "")
    assert [e.data["i"] for e in got] == list(range(5))
