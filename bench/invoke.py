"""What the one invoke path costs over a bare runtime call, and what a run writes to storage.

    python bench/invoke.py [--calls N] [--repeat R] [--json] [--instructions]

For a trivial one-node workflow (async, so no worker thread is involved) it
times, per call: ``Runtime.run`` alone (the floor), ``app.invoke`` on the
memory backend and on SQLite (a file in a temporary folder), ``app.invoke``
of the same workflow declared ``durable=False`` (the security layer,
validation, audit and events of an invoke, no run stored), and ``Runtime.run``
with the run's records stored by hand on the memory backend (what a durable
run cannot do without: its record before the call, then its checkpoint,
final state, four events and audit record in one ``finish_run_logged``). It
counts the storage calls one invocation makes, by kind. Medians of R
repetitions of N calls each; the machine is noisy, so read the medians, not
single runs.

``--instructions`` also counts the machine instructions of one call, for
each of those but ``Runtime.run`` alone, under valgrind's callgrind (Debian's
``valgrind``): 8 concurrent callers make N calls, and a run with none is subtracted. Every
thread is counted (SQLite's writer too). A count is not a time (no cache
misses, no waits), but it does not move with the machine's load: where two
timed runs of a change differ by less than the noise, the counts still tell.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import collections
import contextvars
import json
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from nexus_core import Nexus
from nexus_core.events import Event
from nexus_core.storage.base import AuditRecord, NodeCheckpoint, RunRecord
from nexus_core.storage.memory import MemoryStorage
from nexus_core.workflows import Runtime, Workflow
from nexus_core.workflows.runtime import new_run_id

WRITES = (
    "create_run",
    "save_run",
    "save_checkpoint",
    "finish_run",
    "finish_run_logged",
    "append_event",
    "append_events",
    "append_audit",
    "create_session",
    "save_session",
)


_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("inside", default=False)


class CountingStorage(MemoryStorage):
    """The memory backend, counting the calls a run makes (not the ones a call makes itself:
    the default ``finish_run_logged`` calls ``finish_run`` and ``append_events``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattribute__(self, name: str) -> Any:
        method = object.__getattribute__(self, name)
        if name not in WRITES and name not in ("get_run", "get_checkpoints", "read_events"):
            return method

        async def counted(*args: Any, **kwargs: Any) -> Any:
            if not _INSIDE.get():
                self.calls[name] += 1
            token = _INSIDE.set(True)  # per task: a concurrent caller is still counted
            try:
                return await method(*args, **kwargs)
            finally:
                _INSIDE.reset(token)

        return counted


def make_app(storage: Any) -> Nexus:
    app = Nexus("bench", storage=storage, autoload=False, env={})

    @app.workflow
    async def echo(text: str) -> str:
        return text

    @app.workflow(durable=False)
    async def echo_live(text: str) -> str:
        return text

    return app


_EVENTS = ("run.started", "node.started", "node.finished", "run.completed")


async def store_by_hand(runtime: Runtime, workflow: Workflow, storage: MemoryStorage) -> None:
    """``Runtime.run`` with the records of a durable run stored by hand, and nothing more."""
    now = time.time()
    record = RunRecord(
        id=new_run_id(),
        workflow=workflow.name,
        tenant="default",
        principal="anonymous",
        channel="python",
        inputs={"text": "hi"},
        status="running",
        created_at=now,
        started_at=now,
        input_hash="0" * 64,
        owner="bench",
    )
    await storage.create_run(record)
    result = await runtime.run(workflow, {"text": "hi"}, run_id=record.id)
    checkpoint = NodeCheckpoint(
        run_id=record.id, node_id="echo", status="completed", output=result.output
    )
    record.status, record.output, record.finished_at = result.status, result.output, time.time()
    audit = AuditRecord(
        id=secrets.token_hex(12),
        time=now,
        action="invoke",
        outcome=result.status,
        tenant="default",
        principal="anonymous",
        channel="python",
        workflow=workflow.name,
        run_id=record.id,
    )
    events = [Event(type=kind, run_id=record.id) for kind in _EVENTS]
    await storage.finish_run_logged(record, [checkpoint], events, audits=[audit])


async def per_call(fn: Any, calls: int) -> float:
    for _ in range(min(200, calls)):  # warm up
        await fn()
    start = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - start) / calls * 1e6


async def measure(calls: int, repeat: int, folder: Path) -> dict[str, Any]:
    runtime = Runtime()
    results: dict[str, list[float]] = {
        "runtime.run": [],
        "invoke memory": [],
        "invoke sqlite": [],
        "invoke ephemeral": [],
        "by hand memory": [],
    }
    for rep in range(repeat):
        bare = make_app("memory://")
        workflow = bare.workflows["echo"]
        results["runtime.run"].append(
            await per_call(lambda wf=workflow: runtime.run(wf, {"text": "hi"}), calls)
        )
        storage = MemoryStorage("memory://")
        results["by hand memory"].append(
            await per_call(lambda wf=workflow, to=storage: store_by_hand(runtime, wf, to), calls)
        )
        async with make_app("memory://") as app:
            results["invoke memory"].append(
                await per_call(lambda app=app: app.invoke("echo", {"text": "hi"}), calls)
            )
            results["invoke ephemeral"].append(
                await per_call(lambda app=app: app.invoke("echo_live", {"text": "hi"}), calls)
            )
        async with make_app(f"sqlite:///{folder / f'bench{rep}.db'}") as app:
            results["invoke sqlite"].append(
                await per_call(lambda app=app: app.invoke("echo", {"text": "hi"}), calls)
            )
    counting = CountingStorage("memory://")
    async with make_app(counting) as app:
        counting.calls.clear()
        await app.invoke("echo", {"text": "hi"})
        writes = {k: v for k, v in sorted(counting.calls.items()) if k in WRITES}
    medians = {name: statistics.median(values) for name, values in results.items()}
    return {
        "us_per_call": medians,
        "overhead_us": {
            "memory": medians["invoke memory"] - medians["runtime.run"],
            "sqlite": medians["invoke sqlite"] - medians["runtime.run"],
            "ephemeral": medians["invoke ephemeral"] - medians["runtime.run"],
            "by hand memory": medians["by hand memory"] - medians["runtime.run"],
        },
        "storage_writes_per_run": writes,
        "calls": calls,
        "repeat": repeat,
    }


#: Concurrent callers in the instruction count (so batches form as they do under load).
CALLERS = 8


#: What --instructions counts: the name it prints, and the backend a count child runs.
COUNTED = {
    "memory": "invoke memory",
    "sqlite": "invoke sqlite",
    "ephemeral": "invoke ephemeral",
    "by-hand": "by hand memory",
}


async def invoke_concurrently(backend: str, calls: int, folder: Path) -> None:
    """``calls`` calls from CALLERS tasks, after 40 each to warm up (what callgrind counts)."""
    url = "memory://" if backend != "sqlite" else f"sqlite:///{folder / 'count.db'}"
    async with make_app(url) as app:
        runtime, storage = Runtime(), MemoryStorage("memory://")

        async def caller(n: int) -> None:
            for _ in range(n):
                if backend == "ephemeral":
                    await app.invoke("echo_live", {"text": "hi"})
                elif backend == "by-hand":
                    await store_by_hand(runtime, app.workflows["echo"], storage)
                else:
                    await app.invoke("echo", {"text": "hi"})

        async with anyio.create_task_group() as tg:
            for _ in range(CALLERS):
                tg.start_soon(caller, 40 + calls // CALLERS)


def count_instructions(calls: int) -> dict[str, float] | str:
    """Instructions per call of each COUNTED row, or why they were not counted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return "valgrind is not installed (Debian: apt-get install valgrind)"
    calls -= calls % CALLERS
    per_invoke: dict[str, float] = {}
    for backend, row in COUNTED.items():
        totals = []
        for n in (0, calls):
            command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
            command += [sys.executable, __file__, "--count-child", backend, str(n)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                return f"callgrind failed ({done.returncode}): {done.stderr[-500:]}"
            totals.append(int(found.group(1)))
        per_invoke[row] = (totals[1] - totals[0]) / calls
    return per_invoke


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401 - what the API channel serves on when it is installed
    except ImportError:
        return {}
    return {"use_uvloop": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument(
        "--count-child", nargs=2, metavar=("BACKEND", "CALLS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.count_child:  # run under callgrind by count_instructions
        backend, calls = args.count_child
        with tempfile.TemporaryDirectory() as folder:
            anyio.run(
                invoke_concurrently,
                backend,
                int(calls),
                Path(folder),
                backend_options=_backend_options(),
            )
        return
    with tempfile.TemporaryDirectory() as folder:
        report = anyio.run(measure, args.calls, args.repeat, Path(folder))
    if args.instructions:
        report["instructions_per_invoke"] = count_instructions(args.calls)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"invoke path, {args.calls} calls x {args.repeat} repetitions (medians)")
    for name, value in report["us_per_call"].items():
        print(f"  {name:<17} {value:9.1f} us/call")
    for backend, value in report["overhead_us"].items():
        print(f"  overhead over runtime.run ({backend}): {value:.1f} us/call")
    writes = report["storage_writes_per_run"]
    print(f"  storage writes per run: {sum(writes.values())} {writes}")
    counted = report.get("instructions_per_invoke")
    if isinstance(counted, str):
        print(f"  instructions not counted: {counted}")
    elif counted:
        for row, value in counted.items():
            print(f"  instructions per call ({row}, {CALLERS} callers): {value:,.0f}")


if __name__ == "__main__":
    main()
