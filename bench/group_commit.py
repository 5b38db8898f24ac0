"""Throughput of concurrent writes to the SQLite backend (its group commit).

    python bench/group_commit.py [--writes N] [--tasks T] [--repeat R]

``T`` tasks share ``N`` writes (``append_audit``, then ``save_session``, then
``create_session``) on one file database, as a busy gateway's requests do, and
the script prints writes per second, the median of ``R`` passes, for each.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio

from nexus_core.storage.base import AuditRecord, SessionRecord
from nexus_core.storage.sqlite import SQLiteStorage


def _session(session_id: str) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        id=session_id, created_at=now, last_seen_at=now, expires_at=now + 3600, ttl=3600
    )


async def one_pass(path: Path, kind: str, writes: int, tasks: int) -> float:
    """Writes per second for ``writes`` writes of ``kind`` from ``tasks`` tasks."""
    storage = SQLiteStorage(f"sqlite:///{path}")
    await storage.open()
    try:
        ids = [secrets.token_hex(8) for _ in range(writes)]
        if kind == "save_session":
            for session_id in ids:
                await storage.create_session(_session(session_id))
        write: Callable[[int], Awaitable[None]]
        if kind == "append_audit":

            async def write(n: int) -> None:
                record = AuditRecord(id=ids[n], time=time.time(), action="invoke", outcome="ok")
                await storage.append_audit(record)

        elif kind == "save_session":

            async def write(n: int) -> None:
                await storage.save_session(_session(ids[n]))

        else:

            async def write(n: int) -> None:
                await storage.create_session(_session("new" + ids[n]))

        async def worker(first: int) -> None:
            for n in range(first, writes, tasks):
                await write(n)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for first in range(tasks):
                tg.start_soon(worker, first)
        return writes / (time.perf_counter() - started)
    finally:
        await storage.close()


async def main() -> None:
    """Parse the flags, run the passes, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for kind in ("append_audit", "save_session", "create_session"):
        rates = []
        for n in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                rates.append(await one_pass(Path(tmp) / f"{n}.db", kind, args.writes, args.tasks))
        print(
            f"{kind:15} {statistics.median(rates):9.0f} writes/s"
            f"  (median of {args.repeat}; min {min(rates):.0f}, max {max(rates):.0f})"
        )


if __name__ == "__main__":
    anyio.run(main)
