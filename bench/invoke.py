"""What the one invoke path costs over a bare runtime call, and what a run writes to storage.

    python bench/invoke.py [--calls N] [--repeat R] [--json] [--instructions]

For a trivial one-node workflow (async, so no worker thread is involved) it
times, per call:

* ``Runtime.run`` alone, the bare call every other row is measured against;
* ``app.invoke`` on the memory backend and on SQLite (a file in a temporary
  folder);
* ``app.invoke`` of the same workflow declared ``durable=False``: the security
  layer, validation, audit and events of an invoke, with no run stored;
* :func:`invoke_by_hand` on memory: the steps a durable invoke cannot leave
  out, called one after the other with no engine, bus or lease. This is the
  floor under the in-process target.

It counts the storage calls one invocation makes, by kind. Medians of R
repetitions of N calls each; the machine is noisy, so read the medians, not
single runs.

``--instructions`` also counts the machine instructions of one call, for
each of those rows, under valgrind's callgrind (Debian's ``valgrind``): 8
concurrent callers make N calls, and a run with none is subtracted. Every
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
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from nexus_core import Nexus
from nexus_core.events import Event
from nexus_core.security.policy import ANY_INPUTS
from nexus_core.security.principal import hash_inputs
from nexus_core.storage.base import NodeCheckpoint, RunRecord
from nexus_core.storage.memory import MemoryStorage
from nexus_core.workflows import RunResult, Runtime
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


async def invoke_by_hand(app: Nexus, workflow: str, inputs: dict[str, Any]) -> RunResult:
    """The steps a durable invoke cannot leave out, called by hand on a running host.

    What :meth:`Nexus.invoke` does for an anonymous in-process caller, with no
    engine, bus, batcher, lease or session: authenticate, input limits,
    validation, authorization (before and on the values), rate limit, the
    input hash, the run record stored before the call, ``Runtime.run_validated``,
    then its checkpoint, final state, four events and audit record in one
    ``finish_run_logged``, and the request's metrics.
    """
    started = time.perf_counter()
    security, storage = app.security, app.storage
    assert storage is not None
    who = await security.authenticate(None, "python")
    wf = app.get_workflow(workflow)
    action = f"workflow:{wf.name}:execute"
    await security.authorize(who, action, workflow=wf, channel="python", inputs=ANY_INPUTS)
    security.check_input_limits(inputs)
    values = wf.validate(inputs)
    plain = msgspec.to_builtins(values)
    await security.authorize(who, action, workflow=wf, channel="python", inputs=plain)
    await security.rate_limit(who, "python", wf.name, None)
    now = time.time()
    record = RunRecord(
        id=new_run_id(),
        workflow=wf.name,
        tenant=who.tenant,
        principal=who.id,
        channel="python",
        inputs=plain,
        status="running",
        created_at=now,
        started_at=now,
        input_hash=hash_inputs(plain),
        owner="bench",
    )
    await storage.create_run(record)
    app.metrics.record_execution(wf.name, "python")
    result = await app.runtime.run_validated(wf, values, run_id=record.id)
    checkpoints = [
        NodeCheckpoint(run_id=record.id, node_id=node_id, status=node.status, output=node.output)
        for node_id, node in result.nodes.items()
    ]
    record.status, record.output = result.status, msgspec.to_builtins(result.output)
    record.finished_at = result.finished_at
    audit = security.audit_record(
        action="invoke",
        outcome=result.status,
        principal=who,
        channel="python",
        workflow=wf.name,
        run_id=record.id,
        input_hash=record.input_hash,
    )
    events = [Event(type=kind, run_id=record.id, data={"workflow": wf.name}) for kind in _EVENTS]
    await storage.finish_run_logged(
        record, checkpoints, events, audits=() if audit is None else (audit,)
    )
    app.metrics.record_request("python", wf.name, result.status, time.perf_counter() - started)
    return result


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
        async with make_app("memory://") as app:
            results["by hand memory"].append(
                await per_call(lambda app=app: invoke_by_hand(app, "echo", {"text": "hi"}), calls)
            )
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


#: What --instructions counts: the backend a count child runs -> the row it is printed as.
COUNTED = {
    "runtime": "runtime.run",
    "memory": "invoke memory",
    "sqlite": "invoke sqlite",
    "ephemeral": "invoke ephemeral",
    "by-hand": "by hand memory",
}


async def invoke_concurrently(backend: str, calls: int, folder: Path) -> None:
    """``calls`` calls from CALLERS tasks, after 40 each to warm up (what callgrind counts)."""
    url = "memory://" if backend != "sqlite" else f"sqlite:///{folder / 'count.db'}"
    async with make_app(url) as app:

        async def caller(n: int) -> None:
            for _ in range(n):
                if backend == "runtime":
                    await app.runtime.run(app.workflows["echo"], {"text": "hi"})
                elif backend == "ephemeral":
                    await app.invoke("echo_live", {"text": "hi"})
                elif backend == "by-hand":
                    await invoke_by_hand(app, "echo", {"text": "hi"})
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
