"""The LISTEN/NOTIFY bus: every process's events reach every subscriber, once, in order.

Each bus stands for a gateway process: a :class:`PostgresStorage` of its own
(its own pool and LISTEN connection) on one schema. Polling is set to a minute,
so an event that arrives within the test's deadline was delivered because of
a notification, not a poll.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import psycopg
import pytest
from nexus_core import Nexus
from nexus_core.plugin import Event, PluginHost, Subscription, event_seq
from pg_support import POSTGRES_URL, Schemas

from nexus_plugin_postgres.bus import PostgresEventBus
from nexus_plugin_postgres.plugin import BUS_PRIORITY
from nexus_plugin_postgres.storage import PostgresStorage

pytestmark = pytest.mark.anyio

SLOW_POLL = 60.0  # seconds: far beyond every deadline here


@contextlib.asynccontextmanager
async def gateways(url: str, count: int) -> AsyncIterator[list[PostgresEventBus]]:
    """``count`` buses on one schema, each with its own storage, started as a host starts them."""
    stores = [PostgresStorage(url) for _ in range(count)]
    buses = [PostgresEventBus(s, backend=s, poll_interval=SLOW_POLL) for s in stores]
    for store in stores:
        await store.open()
    try:
        async with anyio.create_task_group() as tg:
            for bus in buses:
                await bus.start()
                await tg.start(bus.run)
            yield buses
            for bus in buses:
                await bus.flush()
                await bus.stop()
            tg.cancel_scope.cancel()
    finally:
        for store in stores:
            await store.close()


async def take(sub: Subscription, count: int, within: float = 15.0) -> list[Event]:
    """The next ``count`` events of ``sub`` (fails after ``within`` seconds)."""
    got: list[Event] = []
    with anyio.fail_after(within):
        while len(got) < count:
            got.append(await sub.__anext__())
    return got


async def until(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Poll ``predicate`` until true, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.01)


def test_the_bus_sits_above_the_in_process_one_and_below_redis() -> None:
    specs = PluginHost(env={}).event_buses()
    assert specs["postgres"].priority == BUS_PRIORITY
    assert 0 < BUS_PRIORITY < 10  # the in-process bus is 0, nexus-plugin-redis registers 10


async def test_every_gateway_hears_every_gateway_once_in_log_order(schemas: Schemas) -> None:
    """A and B publish concurrently (one event far over NOTIFY's 8000 bytes); a subscriber
    on C receives all of them once, in the log's order, woken by NOTIFY."""
    async with gateways(schemas.url(), 3) as (a, b, c):
        sub = c.subscribe(("*",))
        big = "x" * 20_000

        async def publish(bus: PostgresEventBus, name: str) -> None:
            for i in range(100):
                data = {"i": i, "big": big} if (name, i) == ("a", 50) else {"i": i}
                await bus.publish(Event(type=f"{name}.event", data=data))
                if i % 10 == 0:
                    await bus.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish, a, "a")
            tg.start_soon(publish, b, "b")
        got = await take(sub, 200)
        log = await a.log.read_events(limit=1000)  # type: ignore[union-attr]
        assert [e.id for e in got] == [e.id for e in log]  # every event once, in log order
        assert [event_seq(e.id) for e in got] == list(range(1, 201))
        assert any(e.data.get("big") == big for e in got)
        assert c.listening and c.notifications > 0
        await sub.aclose()


async def test_resume_from_last_event_id_on_another_gateway(schemas: Schemas) -> None:
    """A subscriber on A drops after 30 events and resumes on B with Last-Event-ID."""
    async with gateways(schemas.url(), 2) as (a, b):
        first = a.subscribe(("*",))
        for i in range(60):
            await a.publish(Event(type="tick", data={"i": i}))
        seen = await take(first, 30)
        await first.aclose()
        resumed = b.subscribe(("*",), last_event_id=seen[-1].id)
        for i in range(60, 80):
            await b.publish(Event(type="tick", data={"i": i}))
        rest = await take(resumed, 50)
        assert [e.data["i"] for e in seen + rest] == list(range(80))
        await resumed.aclose()


async def test_a_broken_listen_connection_reconnects_and_misses_nothing(
    schemas: Schemas,
) -> None:
    """pg_terminate_backend on the LISTEN connection: events published meanwhile arrive."""
    name = f"t_bus_{secrets.token_hex(4)}"
    url = schemas.url(application_name=name)
    async with gateways(url, 2) as (a, b):
        sub = b.subscribe(("*",))
        await a.publish(Event(type="before"))
        assert [e.type for e in await take(sub, 1)] == ["before"]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND query ILIKE 'LISTEN%%'",
                (name,),
            )
        await until(lambda: not b.listening, "the LISTEN connection to break")
        await a.publish(Event(type="during"))
        await a.publish(Event(type="after"))
        assert [e.type for e in await take(sub, 2)] == ["during", "after"]
        assert b.listening
        await sub.aclose()


async def test_two_hosts_on_one_database_share_live_runs(schemas: Schemas) -> None:
    """Two Nexus hosts on one schema: a subscriber of B sees A's run, every event in order."""
    url = schemas.url()
    config = {"nexus": {"services": {"events": {"poll_interval": SLOW_POLL}}}}

    def build() -> Nexus:
        app = Nexus("pgbus", storage=url, config=config)

        @app.workflow
        async def greet(name: str) -> str:
            return f"hello {name}"

        return app

    a, b = build(), build()
    async with a, b:
        sub = b.subscribe(["run.*"])
        started = time.monotonic()
        result = await a.invoke("greet", {"name": "Ada"})
        events = await take(sub, 2)
        assert [e.type for e in events] == ["run.started", "run.completed"]
        assert {e.run_id for e in events} == {result.run_id}
        assert time.monotonic() - started < SLOW_POLL / 2  # NOTIFY, not the poll
        await sub.aclose()


async def test_small_batches_ride_in_the_notification_large_ones_are_read(
    schemas: Schemas,
) -> None:
    """B delivers A's small events from NOTIFY (no read of the log), a 20 kB one by position."""
    async with gateways(schemas.url(), 2) as (a, b):
        store = b.backend
        assert store is not None
        reads: list[str | None] = []
        read = store.read_events

        async def counting(**options: Any) -> list[Event]:
            reads.append(options.get("after"))
            return await read(**options)

        store.read_events = counting  # type: ignore[method-assign]
        sub = b.subscribe(("*",))
        for i in range(20):
            await a.publish(Event(type="small", data={"i": i}))
            await a.flush()
        small = await take(sub, 20)
        assert [e.data["i"] for e in small] == list(range(20))
        assert reads == []  # every one came in its notification
        await a.publish(Event(type="large", data={"blob": "y" * 20_000}))
        [large] = await take(sub, 1)
        assert large.data["blob"] == "y" * 20_000
        assert reads == [small[-1].id]  # read from the log, after the last one delivered
        await sub.aclose()
