"""Which PostgreSQL driver for the run store: psycopg 3 (+ psycopg-pool) against asyncpg.

    python bench/postgres_driver.py [--runs N] [--tasks T] [--repeat R]

``T`` tasks share ``N`` runs; each run is what the run store writes for a
one-node run: insert the run row (JSON in ``bytea``), upsert its checkpoint
fenced on the run's token, and the fenced final update, three statements on a
pooled connection (pool of 10), as PostgresStorage issues them. Both drivers
use prepared statements (asyncpg always; psycopg after a statement's fifth
use). Prints runs per second and per-run p50/p99 latency, medians of ``R``
passes, and the ratio. ``NEXUS_POSTGRES_URL`` names the server (default
``postgresql://postgres@127.0.0.1:5432/test``); each pass uses a schema of its
own, dropped after.
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
from collections.abc import Awaitable, Callable

import anyio

URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATA = b'{"name":"Ada","tags":["a","b"],"note":"' + b"x" * 200 + b'"}'

SCHEMA = """
CREATE TABLE runs (id text PRIMARY KEY, workflow text NOT NULL, status text NOT NULL,
    inputs bytea NOT NULL, output bytea, created_at float8 NOT NULL, fence bigint NOT NULL);
CREATE TABLE checkpoints (run_id text, node_id text, data bytea NOT NULL,
    PRIMARY KEY (run_id, node_id));
"""
INSERT = "INSERT INTO runs VALUES ({0}, 'w', 'running', {1}, NULL, {2}, 1)"
CHECKPOINT = (
    "INSERT INTO checkpoints SELECT {0}, 'n1', {1}"
    " WHERE (SELECT fence FROM runs WHERE id = {0} FOR SHARE) = 1"
    " ON CONFLICT (run_id, node_id) DO UPDATE SET data = excluded.data"
)
FINISH = "UPDATE runs SET status = 'completed', output = {1} WHERE id = {0} AND fence = 1"


def marks(style: str, sql: str) -> str:
    """``sql`` with ``%s`` (psycopg) or ``$n`` (asyncpg) placeholders."""
    if style == "psycopg":
        return sql.format("%s", "%s", "%s")
    return sql.format("$1", "$2", "$3")


async def psycopg_pass(schema: str, runs: int, tasks: int) -> list[float]:
    from psycopg_pool import AsyncConnectionPool

    conninfo = f"{URL}?options=-csearch_path%3D{schema}"
    pool = AsyncConnectionPool(
        conninfo, min_size=10, max_size=10, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    insert, checkpoint, finish = (marks("psycopg", s) for s in (INSERT, CHECKPOINT, FINISH))

    async def one(run_id: str) -> None:
        async with pool.connection() as conn:
            await conn.execute(insert, (run_id, DATA, time.time()))
        async with pool.connection() as conn:
            await conn.execute(checkpoint, (run_id, DATA, run_id))
        async with pool.connection() as conn:
            await conn.execute(finish, (DATA, run_id))

    try:
        return await drive(one, runs, tasks)
    finally:
        await pool.close()


async def asyncpg_pass(schema: str, runs: int, tasks: int) -> list[float]:
    import asyncpg

    pool = await asyncpg.create_pool(
        URL, min_size=10, max_size=10, server_settings={"search_path": schema}
    )
    insert, checkpoint, finish = (marks("asyncpg", s) for s in (INSERT, CHECKPOINT, FINISH))

    async def one(run_id: str) -> None:
        async with pool.acquire() as conn:
            await conn.execute(insert, run_id, DATA, time.time())
        async with pool.acquire() as conn:
            await conn.execute(checkpoint, run_id, DATA)
        async with pool.acquire() as conn:
            await conn.execute(finish, run_id, DATA)

    try:
        return await drive(one, runs, tasks)
    finally:
        await pool.close()


async def drive(one: Callable[[str], Awaitable[None]], runs: int, tasks: int) -> list[float]:
    """Run ``runs`` runs from ``tasks`` tasks; each run's latency (seconds), then the wall time."""
    latencies: list[float] = []
    ids = iter(range(runs))

    async def worker() -> None:
        for n in ids:
            start = time.perf_counter()
            await one(f"r{n}")
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    latencies.append(time.perf_counter() - start)
    return latencies


async def one_pass(driver: str, runs: int, tasks: int) -> dict[str, float]:
    import psycopg

    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
    try:
        run = psycopg_pass if driver == "psycopg" else asyncpg_pass
        measured = await run(schema, runs, tasks)
    finally:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    wall = measured.pop()
    ordered = sorted(measured)
    return {
        "runs_per_s": runs / wall,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        print("postgres_driver: asyncpg is not installed (bench/requirements.txt); skipped")
        return
    results: dict[str, dict[str, float]] = {}
    for driver in ("psycopg", "asyncpg"):
        passes = [anyio.run(one_pass, driver, args.runs, args.tasks) for _ in range(args.repeat)]
        results[driver] = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
    print(
        f"PostgreSQL driver, run-store writes ({args.runs} runs x 3 statements,"
        f" {args.tasks} tasks, pool 10; medians of {args.repeat}):"
    )
    for driver, r in results.items():
        print(
            f"  {driver:8} {r['runs_per_s']:8.0f} runs/s   p50 {r['p50_ms']:6.2f} ms"
            f"   p99 {r['p99_ms']:6.2f} ms"
        )
    ratio = results["psycopg"]["runs_per_s"] / results["asyncpg"]["runs_per_s"]
    print(f"  psycopg / asyncpg throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
