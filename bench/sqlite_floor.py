"""The floor under a durable run on SQLite: its statements alone, with no server and no loop.

    python bench/sqlite_floor.py [--runs N] [--batch B] [--repeat R]

A one-node run stores its record, then in its final write (``finish_run_logged``)
its checkpoint, its final state, its audit record and its four events (one
statement), each fenced by the run's token. This executes exactly those
statements, with the SQLite backend's own schema, pragmas and SQL,
straight through ``sqlite3`` on one thread, ``B`` runs per transaction (the
group commit a busy gateway gets), and prints microseconds of CPU per run (process
time, so load elsewhere on the machine does not move it; wall time beside it). Whatever a
served request costs on top of this is Python, HTTP and the thread hop; this
part no server design can remove while every run is stored.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import secrets
import sqlite3
import statistics
import tempfile
import time
from typing import Any

import anyio

from nexus_core.events import Event
from nexus_core.storage import sqlite as backend
from nexus_core.storage.base import AuditRecord, NodeCheckpoint, RunRecord
from nexus_core.workflows.runtime import new_run_id

_EVENTS = ("run.started", "node.started", "node.finished", "run.completed")


async def make_database(path: Path) -> None:
    """The backend's own schema, created by opening it once."""
    storage = backend.SQLiteStorage(f"sqlite:///{path}")
    await storage.open()
    await storage.close()


#: One SQL statement and its parameters.
Statement = tuple[str, Any]


def new_run(inputs: dict[str, Any]) -> tuple[RunRecord, Statement]:
    """A new running run of ``greet`` (its id time-ordered, as a served run's) and its INSERT."""
    now = time.time()
    run = RunRecord(
        id=new_run_id(),
        workflow="greet",
        tenant="default",
        principal="anonymous",
        channel="api",
        inputs=inputs,
        status="running",
        created_at=now,
        started_at=now,
        input_hash="0" * 64,
        owner="bench",
    )
    return run, (backend._INSERT_RUN, backend._run_params(run))


def final_write(run: RunRecord, output: str) -> list[Statement]:
    """``finish_run_logged``'s statements: checkpoint, final state, audit, four events.

    Every statement is fenced by the run's token; the caller runs them in one
    transaction.
    """
    checkpoint = NodeCheckpoint(
        run_id=run.id, node_id="greet", status="completed", output={"result": output}
    )
    fences = [(run.id, run.fence)]
    statements = [backend._upsert_checkpoint(checkpoint, fences)]
    run.status, run.output, run.finished_at = "completed", output, time.time()
    statements.append(backend._update_run(run, fences))
    audit = AuditRecord(
        id=secrets.token_hex(12),
        time=run.created_at,
        action="invoke",
        outcome="completed",
        tenant=run.tenant,
        principal=run.principal,
        channel=run.channel,
        workflow=run.workflow,
        run_id=run.id,
    )
    statements.append(backend._insert_audit(audit, fences))
    events = [Event(type=kind, run_id=run.id) for kind in _EVENTS]
    statements += [(op.sql, op.params) for op in backend._append_ops(events, fences)]
    return statements


def one_pass(conn: sqlite3.Connection, runs: int, batch: int) -> tuple[float, float]:
    """CPU and wall seconds per run for ``runs`` runs, ``batch`` per transaction."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    for _ in range(runs // batch):
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            run, insert = new_run({"name": "user-12345"})
            conn.execute(*insert)
            for statement in final_write(run, "Hello."):
                conn.execute(*statement)
        conn.execute("COMMIT")
    done = runs // batch * batch
    return (time.process_time() - cpu_started) / done, (time.perf_counter() - started) / done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-sqlite-") as scratch:
        path = Path(scratch) / "floor.db"
        anyio.run(make_database, path)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # as the backend sets them
        one_pass(conn, args.batch * 10, args.batch)  # warm up
        passes = [one_pass(conn, args.runs, args.batch) for _ in range(args.repeat)]
        conn.close()
    cpu = [p[0] * 1e6 for p in passes]
    wall = [p[1] * 1e6 for p in passes]
    print(
        f"SQLite statements of one durable one-node run (5 statements, {args.batch} runs per "
        f"transaction): median {statistics.median(cpu):.0f} us of CPU per run "
        f"(min {min(cpu):.0f}, max {max(cpu):.0f}; wall {statistics.median(wall):.0f} us; "
        f"{args.repeat} x {args.runs} runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
