"""Live events across gateways on PostgreSQL: the LISTEN/NOTIFY bus against polling the log.

    python bench/postgres_bus.py [--events N]

Two buses stand for two gateways, each with its own PostgresStorage on one
schema. An event published on A is timed until a subscriber on B receives it,
one event at a time, for: nexus-plugin-postgres's bus with small events
(delivered from the notification), the same with 9 kB events (read from the
log by position), and the core's in-process bus on the same log, which polls
it every ``services.events.poll_interval`` (0.1 s, the default; one event at
a time, each one published just after a poll, so polling shows its whole
interval: under steady traffic it averages half). Prints p50 and p99 and the
ratio of medians. ``NEXUS_POSTGRES_URL`` names the server
(default ``postgresql://postgres@127.0.0.1:5432/test``); a schema of its own is
dropped after.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import os
import secrets
import statistics
import time

import anyio

URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def one_kind(kind: str, events: int, schema: str) -> list[float]:
    """Seconds from publish on A to receipt on B, per event."""
    from nexus_plugin_postgres.bus import PostgresEventBus
    from nexus_plugin_postgres.storage import PostgresStorage

    from nexus_core.plugin import Event, LocalEventBus

    url = f"{URL}?schema={schema}"
    stores = [PostgresStorage(url), PostgresStorage(url)]
    for store in stores:
        await store.open()
    if kind == "polling":
        buses = [LocalEventBus(s, poll_interval=0.1) for s in stores]
    else:
        buses = [PostgresEventBus(s, backend=s, poll_interval=60.0) for s in stores]
    pad = "p" * (9000 if kind == "notify, 9 kB" else 100)
    latencies: list[float] = []
    try:
        async with anyio.create_task_group() as tg:
            for bus in buses:
                await bus.start()
                await tg.start(bus.run)
            sub = buses[1].subscribe(("*",))
            for i in range(events):
                start = time.perf_counter()
                await buses[0].publish(Event(type="bench", data={"i": i, "pad": pad}))
                await sub.__anext__()
                latencies.append(time.perf_counter() - start)
            tg.cancel_scope.cancel()
    finally:
        for store in stores:
            await store.close()
    return sorted(latencies)


def main() -> None:
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    schema = f"bench_{secrets.token_hex(4)}"
    results: dict[str, list[float]] = {}
    try:
        for kind in ("notify, small", "notify, 9 kB", "polling"):
            results[kind] = anyio.run(one_kind, kind, args.events, schema)
    finally:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    print(f"An event published on gateway A, received on gateway B ({args.events} events):")
    for kind, values in results.items():
        p50 = statistics.median(values) * 1000
        p99 = values[int(len(values) * 0.99) - 1] * 1000
        print(f"  {kind:14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    ratio = statistics.median(results["polling"]) / statistics.median(results["notify, small"])
    print(f"  polling / notify (small) median latency: {ratio:.0f}x")


if __name__ == "__main__":
    main()
