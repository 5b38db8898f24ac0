"""Event bus across two processes: in-process (log polling) vs Redis Streams vs PostgreSQL NOTIFY.

One process publishes, another subscribes (1, 10 and 100 subscribers); both
share one event log, as two gateways do: a SQLite file for the in-process and
Redis buses, a PostgreSQL schema of its own (dropped after) for the
PostgreSQL LISTEN/NOTIFY bus, which needs its log there. For each bus and
subscriber count:

* **latency**: events published at a steady ``--rate`` (default 1,000/s) for
  ``--events`` events; publish-to-deliver time of every delivery (publisher's
  clock before ``publish`` to the subscriber's clock on receipt, one machine,
  one clock), p50 and p99;
* **throughput**: ``--events`` events published as fast as the bus takes them;
  events delivered per second to one subscriber, first publish to last delivery.

The in-process bus reaches another process by reading the log every
``services.events.poll_interval`` (0.1 s); the Redis bus carries logged
events over a stream; the PostgreSQL bus is woken by the log's NOTIFY (small
batches ride in the notification). A bus whose server or plugin is missing is
left out, saying why. Target: Redis p99 under 5 ms at 1,000 events/s.

    python bench/bus.py   # NEXUS_REDIS_URL, NEXUS_POSTGRES_URL (default: the local servers)
    python bench/bus.py --events 1000 --subscribers 1,10 --repeat 1 --json
    python bench/bus.py --bus redis --paced-only   # the Redis rows' latency alone

Both processes move every object alive once they are set up out of the
collector's reach (``gc.freeze()``), as a serving host does once its channels
are up (:func:`nexus_core.serving.serve_host`): the collector's full passes
(20-70 ms in the publishing process here, under load) then look at the
objects made since. ``--no-gc-freeze`` measures without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from typing import Any

import anyio

from nexus_core.events import Event, LocalEventBus
from nexus_core.plugin import SQLiteStorage

REDIS_URL = os.environ.get("NEXUS_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: The event loop a gateway runs on: uvloop under ``nexus serve`` (uvicorn), when installed.
try:
    import uvloop  # noqa: F401 - only whether it is installed

    LOOP: dict[str, Any] = {"use_uvloop": True}
except ImportError:
    LOOP = {}


def open_storage(kind: str, db: str) -> Any:
    """The event log of ``kind``'s runs: ``db`` is a SQLite file, or for postgres a URL."""
    if kind == "postgres":
        from nexus_plugin_postgres.storage import PostgresStorage

        return PostgresStorage(db)
    return SQLiteStorage(f"sqlite:///{db}")


def make_bus(kind: str, storage: Any, redis_url: str) -> LocalEventBus:
    """The bus of ``kind`` over ``storage``'s event log, as a host would build it."""
    if kind == "local":
        return LocalEventBus(storage, queue_size=100_000, poll_interval=0.1)
    if kind == "postgres":
        from nexus_plugin_postgres.bus import PostgresEventBus

        return PostgresEventBus(storage, backend=storage, queue_size=100_000, poll_interval=0.1)
    from nexus_plugin_redis.bus import RedisEventBus

    return RedisEventBus(storage, url=redis_url, queue_size=100_000, poll_interval=0.1)


async def wait_connected(kind: str, bus: Any) -> None:
    """Wait until a distributed bus has its connection (its stream, its LISTEN)."""
    if kind == "local":
        return
    with anyio.fail_after(10):
        while not (bus.listening if kind == "postgres" else bus.connected):  # noqa: ASYNC110
            await anyio.sleep(0.01)


def freeze_gc() -> None:
    """Leave what is alive now out of the collector's passes (``--gc-freeze``)."""
    gc.collect()
    gc.freeze()


async def subscriber_main(
    kind: str, db: str, redis_url: str, count: int, expect: int, freeze: bool = False
) -> None:
    """The subscribing process: ``count`` subscribers, each reads ``expect`` events."""
    storage = open_storage(kind, db)
    await storage.open()
    bus = make_bus(kind, storage, redis_url)
    await bus.start()
    latencies: list[float] = []
    finished: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        await wait_connected(kind, bus)
        subs = [bus.subscribe(["bench.*"]) for _ in range(count)]
        if freeze:
            freeze_gc()

        async def read(sub: Any) -> None:
            got = 0
            async for event in sub:
                now = time.time_ns()
                if event.type.startswith("bench."):
                    latencies.append((now - event.data["t"]) / 1e6)
                    got += 1
                    if got >= expect:
                        finished.append(now / 1e9)
                        return

        async with anyio.create_task_group() as readers:
            for sub in subs:
                readers.start_soon(read, sub)
            print("ready", flush=True)
        tg.cancel_scope.cancel()
    await bus.stop()
    await storage.close()
    print(json.dumps({"latencies": latencies, "finished": max(finished)}), flush=True)


async def publish(
    kind: str, db: str, redis_url: str, events: int, rate: float | None, freeze: bool = False
) -> float:
    """Publish ``events`` events (at ``rate`` a second, or flat out); the first publish time."""
    storage = open_storage(kind, db)
    await storage.open()
    bus = make_bus(kind, storage, redis_url)
    await bus.start()
    first = time.time()
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        await wait_connected(kind, bus)
        if freeze:
            freeze_gc()
        start = time.perf_counter()
        first = time.time()
        for i in range(events):
            if rate is not None:
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
            await bus.publish(Event(type="bench.tick", data={"i": i, "t": time.time_ns()}))
        await bus.flush()
        if kind == "redis":
            with anyio.fail_after(30):  # the stream writer is behind the log: let it finish
                while bus.sent < events:  # type: ignore[attr-defined]  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    await bus.stop()
    await storage.close()
    return first


def one(
    kind: str, subscribers: int, events: int, rate: float | None, freeze: bool = False
) -> dict[str, float]:
    """One measurement: a subscriber process, this process publishing."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    redis_url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={prefix}"
    schema = f"bench_bus_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "events.db")
        if kind == "postgres":
            db = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
        child = subprocess.Popen(
            [sys.executable, __file__, "--role", "subscriber", "--kind", kind, "--db", db,
             "--redis", redis_url, "--subscribers", str(subscribers), "--events", str(events),
             *(["--gc-freeze"] if freeze else [])],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the subscriber process did not start: {line!r}")
        try:
            first = anyio.run(
                publish, kind, db, redis_url, events, rate, freeze, backend_options=LOOP
            )
            out, _ = child.communicate(timeout=120)
        finally:
            if freeze:
                gc.unfreeze()  # this process publishes the next run too
            if child.poll() is None:
                child.kill()
                child.wait()
            if kind == "redis":
                _forget(redis_url, prefix)
            if kind == "postgres":
                _drop_schema(schema)
        if child.returncode:
            raise RuntimeError(f"the subscriber process failed ({child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    latencies = sorted(result["latencies"])
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "events_per_s": events / max(1e-9, result["finished"] - first),
    }


def _forget(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url.partition("?")[0])
    try:
        for key in client.scan_iter(match=f"{{{prefix}:*"):
            client.delete(key)
    finally:
        client.close()


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers and the plugin is installed, else why not."""
    try:
        import nexus_plugin_postgres  # noqa: F401 - only whether it is installed
        import psycopg
    except ImportError as exc:
        return f"not installed: {exc.name}"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            pass
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {str(exc).strip()}"
    return None


def redis_reachable() -> str | None:
    """None when Redis answers and the plugin is installed, else why not."""
    try:
        import nexus_plugin_redis  # noqa: F401 - only whether it is installed
        import redis
    except ImportError as exc:
        return f"not installed: {exc.name}"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {REDIS_URL} is not reachable: {exc}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--subscribers", default="1,10,100")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; medians are shown")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--bus", default="local,redis,postgres", help="buses to measure (default: all three)"
    )
    parser.add_argument(
        "--paced-only", action="store_true", help="latency only (no flat-out throughput runs)"
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gc.freeze() in both processes once set up, as a serving host does (default: on)",
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--redis", default=REDIS_URL, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "subscriber":
        count = int(args.subscribers)
        anyio.run(
            subscriber_main,
            args.kind,
            args.db,
            args.redis,
            count,
            args.events,
            args.gc_freeze,
            backend_options=LOOP,
        )
        return 0
    wanted = {kind.strip() for kind in args.bus.split(",")}
    kinds = ["local"] if "local" in wanted else []
    why = redis_reachable() if "redis" in wanted else None
    if "redis" in wanted and why is None:
        kinds.append("redis")
    elif why is not None:
        print(f"Redis bus not measured: {why}", file=sys.stderr)
    why = postgres_reachable() if "postgres" in wanted else None
    if "postgres" in wanted and why is None:
        kinds.append("postgres")
    elif why is not None:
        print(f"PostgreSQL LISTEN/NOTIFY bus not measured: {why}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for subscribers in [int(n) for n in args.subscribers.split(",")]:
        for kind in kinds:
            print(f"{kind}, {subscribers} subscriber(s)...", file=sys.stderr)
            freeze = args.gc_freeze
            paced = [
                one(kind, subscribers, args.events, args.rate, freeze) for _ in range(args.repeat)
            ]
            flat = [
                one(kind, subscribers, args.events, None, freeze)
                for _ in range(0 if args.paced_only else args.repeat)
            ]
            rows.append(
                {
                    "bus": kind,
                    "subscribers": subscribers,
                    "p50_ms": statistics.median(r["p50_ms"] for r in paced),
                    "p99_ms": statistics.median(r["p99_ms"] for r in paced),
                    "events_per_s": (
                        statistics.median(r["events_per_s"] for r in flat) if flat else 0.0
                    ),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"publish-to-deliver across two processes, {args.events} events at "
        f"{args.rate:g}/s (latency) and flat out (throughput); event log: SQLite "
        f"(PostgreSQL for the postgres bus); "
        f"{'uvloop' if LOOP else 'asyncio'}; medians of {args.repeat} runs; "
        f"{'gc.freeze() after set-up; ' if args.gc_freeze else ''}"
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'bus':<10}{'subs':>6}{'p50 ms':>10}{'p99 ms':>10}{'events/s':>12}{'p99 vs local':>14}")
    local = {r["subscribers"]: r for r in rows if r["bus"] == "local"}
    for row in rows:
        base = local.get(row["subscribers"])
        ratio = f"{row['p99_ms'] / base['p99_ms']:.2f}x" if base and row is not base else ""
        rate = f"{row['events_per_s']:.0f}" if row["events_per_s"] else "-"
        print(
            f"{row['bus']:<10}{row['subscribers']:>6}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{rate:>12}{ratio:>14}"
        )
    redis_rows = [r for r in rows if r["bus"] == "redis"]
    if redis_rows:
        worst = max(r["p99_ms"] for r in redis_rows)
        verdict = "met" if worst < 5 else "NOT met"
        print(f"target Redis p99 < 5 ms at {args.rate:g} events/s: {verdict} (worst {worst:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
