#!/usr/bin/env python
"""Per-node overhead of Nexus's runtime against Kailash's ``LocalRuntime``, in one run.

Two workflow shapes, each node doing trivial integer work:

* chain:   N nodes, each adds 1 to its input and passes it on (x -> x + N);
* fan-out: one source node (x -> x + 1) feeding N independent nodes (each -> x + 2).

Implementations timed side by side:

* ``python loop``        the same work as plain function calls: the floor;
* ``nexus async``        a ``Node`` subclass with ``async def run``;
* ``nexus sync inline``  a sync ``run`` with ``blocking = False`` (called on the loop);
* ``nexus sync thread``  a sync ``run`` with the default ``blocking = True``
                         (every call goes through ``anyio.to_thread.run_sync``);
* ``kailash fn``         ``PythonCodeNode`` given ``{"function": inc}``: Kailash's
                         fastest form of a Python-code node;
* ``kailash code``       ``PythonCodeNode`` given ``{"code": "result = value + 1"}``:
                         the code-string form (slower; ``--skip-kailash-code``).

The per-node figure is the wall time of one run divided by the number of nodes
the run executed (N for the chain, N + 1 for the fan-out). Building the workflow
is timed apart. Every repetition builds a fresh workflow and feeds it a new
input, and its result is checked before its time counts, so no runtime can win
by caching or skipping work. Repetitions are interleaved round-robin across all
implementations, so a burst of load from elsewhere on the machine hits them
alike; medians are reported.

    python bench/runtime.py [--nodes 1000] [--repeat 7] [--kailash-repeat 3] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import msgspec

from nexus_core.workflows import Node, Runtime, Workflow, WorkflowBuilder

SHAPES = ("chain", "fanout")

# --------------------------------------------------------------------------- the work


def inc(value: int) -> int:
    """What every node does (also the body of the Kailash function node)."""
    return value + 1


def node_count(shape: str, n: int) -> int:
    return n if shape == "chain" else n + 1


def expected(shape: str, n: int, x: int) -> Any:
    """chain: the last node's value; fan-out: (number of leaves, sum of leaf values)."""
    return x + n if shape == "chain" else (n, n * (x + 2))


# --------------------------------------------------------------------------- nexus nodes


class _Inc(Node):
    class Inputs(msgspec.Struct):
        value: int

    class Outputs(msgspec.Struct):
        result: int


class IncAsync(_Inc):
    async def run(self, inputs: _Inc.Inputs) -> _Inc.Outputs:
        return _Inc.Outputs(result=inputs.value + 1)


class IncSyncInline(_Inc):
    blocking = False

    def run(self, inputs: _Inc.Inputs) -> _Inc.Outputs:
        return _Inc.Outputs(result=inputs.value + 1)


class IncSyncThread(_Inc):
    # blocking = True (the default): the runtime calls run() in a worker thread.
    def run(self, inputs: _Inc.Inputs) -> _Inc.Outputs:
        return _Inc.Outputs(result=inputs.value + 1)


NEXUS_VARIANTS: dict[str, type[Node]] = {
    "nexus async": IncAsync,
    "nexus sync inline": IncSyncInline,
    "nexus sync thread": IncSyncThread,
}


def nexus_build(cls: type[Node], shape: str, n: int) -> Workflow:
    wb = WorkflowBuilder(f"bench_{shape}")
    if shape == "chain":
        for i in range(n):
            wb.add_node(cls, f"n{i}", {})
            if i:
                wb.add_connection(f"n{i - 1}", "result", f"n{i}", "value")
        wb.add_workflow_inputs("n0", {"value": "value"})
    else:
        wb.add_node(cls, "src", {})
        wb.add_workflow_inputs("src", {"value": "value"})
        for i in range(n):
            wb.add_node(cls, f"l{i}", {})
            wb.add_connection("src", "result", f"l{i}", "value")
    return wb.build()


def nexus_result(shape: str, n: int, result: Any) -> Any:
    assert result.ok, result.error
    if shape == "chain":
        return result.output
    assert len(result.output) == n  # the workflow's output holds every sink
    leaves = [result.nodes[f"l{i}"].output.result for i in range(n)]
    return (len(leaves), sum(leaves))


# --------------------------------------------------------------------------- kailash


def load_kailash() -> tuple[Any, Any, str] | str:
    """(WorkflowBuilder, LocalRuntime, version), or why Kailash cannot be used."""
    # Kailash logs a spurious "Unknown parameter(s)" warning for every function
    # node on every run; raising its loggers' level skips formatting and I/O
    # (in Kailash's favour).
    logging.getLogger("kailash").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from kailash.runtime.local import LocalRuntime
            from kailash.workflow.builder import WorkflowBuilder as KailashBuilder
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    try:
        version = importlib.metadata.version("kailash")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return KailashBuilder, LocalRuntime, version


def kailash_params(form: str) -> dict[str, Any]:
    return {"function": inc} if form == "fn" else {"code": "result = value + 1"}


def kailash_build(builder_cls: Any, form: str, shape: str, n: int) -> tuple[Any, str]:
    """A built Kailash workflow and the id of the node that takes the input."""
    wb = builder_cls()
    if shape == "chain":
        for i in range(n):
            wb.add_node("PythonCodeNode", f"n{i}", kailash_params(form))
            if i:
                wb.add_connection(f"n{i - 1}", "result", f"n{i}", "value")
        return wb.build(), "n0"
    wb.add_node("PythonCodeNode", "src", kailash_params(form))
    for i in range(n):
        wb.add_node("PythonCodeNode", f"l{i}", kailash_params(form))
        wb.add_connection("src", "result", f"l{i}", "value")
    return wb.build(), "src"


def kailash_result(shape: str, n: int, results: dict[str, Any]) -> Any:
    if shape == "chain":
        return results[f"n{n - 1}"]["result"]
    leaves = [results[f"l{i}"]["result"] for i in range(n)]
    return (len(leaves), sum(leaves))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Kailash's warnings ignored, its prints sent to stderr (stdout stays clean for --json)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


def check_no_caching(builder_cls: Any, runtime: Any) -> None:
    """The same built workflow run twice on different inputs gives different results."""
    with quiet():
        workflow, entry = kailash_build(builder_cls, "fn", "chain", 5)
        a, _ = runtime.execute(workflow, parameters={entry: {"value": 1}})
        b, _ = runtime.execute(workflow, parameters={entry: {"value": 2}})
    got = (a["n4"]["result"], b["n4"]["result"])
    assert got == (6, 7), f"Kailash returned a stale result: {got}"


# --------------------------------------------------------------------------- cases


class Case:
    """One implementation on one shape: warm up once, then time one repetition at a time."""

    impl = ""

    def __init__(self, shape: str, n: int, repeat: int) -> None:
        self.shape = shape
        self.n = n
        self.repeat = repeat
        self.runs: list[float] = []  # µs per node
        self.builds: list[float] = []  # µs per node

    @property
    def nodes(self) -> int:
        return node_count(self.shape, self.n)

    def warm_up(self) -> None:
        """Run once untimed: lazy imports, caches, worker threads."""

    def once(self, x: int) -> None:
        """Build (timed apart), run on input ``x`` (timed), check the result."""
        raise NotImplementedError

    def record(self, build_s: float | None, run_s: float) -> None:
        if build_s is not None:
            self.builds.append(build_s * 1e6 / self.nodes)
        self.runs.append(run_s * 1e6 / self.nodes)


class FloorCase(Case):
    impl = "python loop"

    def once(self, x: int) -> None:
        n = self.n
        gc.collect()
        t0 = time.perf_counter()
        if self.shape == "chain":
            v = x
            for _ in range(n):
                v = inc(v)
            got: Any = v
        else:
            s = inc(x)
            leaves = [inc(s) for _ in range(n)]
            got = (len(leaves), sum(leaves))
        t1 = time.perf_counter()
        assert got == expected(self.shape, n, x), (self.impl, self.shape, got)
        self.record(None, t1 - t0)


class NexusCase(Case):
    def __init__(
        self, impl: str, cls: type[Node], portal: Any, shape: str, n: int, repeat: int
    ) -> None:
        super().__init__(shape, n, repeat)
        self.impl = impl
        self.cls = cls
        self.portal = portal  # one event loop for the whole bench (worker threads persist)
        self.runtime = Runtime()

    async def _timed_run(self, workflow: Workflow, x: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = await self.runtime.run(workflow, {"value": x})
        return result, time.perf_counter() - t0

    def warm_up(self) -> None:
        workflow = nexus_build(self.cls, self.shape, self.n)
        result, _ = self.portal.call(self._timed_run, workflow, 0)
        assert nexus_result(self.shape, self.n, result) == expected(self.shape, self.n, 0)

    def once(self, x: int) -> None:
        gc.collect()
        t0 = time.perf_counter()
        workflow = nexus_build(self.cls, self.shape, self.n)
        build_s = time.perf_counter() - t0
        gc.collect()
        result, run_s = self.portal.call(self._timed_run, workflow, x)
        got = nexus_result(self.shape, self.n, result)
        assert got == expected(self.shape, self.n, x), (self.impl, self.shape, got)
        self.record(build_s, run_s)


class KailashCase(Case):
    def __init__(
        self, form: str, builder_cls: Any, runtime: Any, shape: str, n: int, repeat: int
    ) -> None:
        super().__init__(shape, n, repeat)
        self.impl = f"kailash {form}"
        self.form = form
        self.builder_cls = builder_cls
        self.runtime = runtime  # one LocalRuntime for the whole bench

    def warm_up(self) -> None:
        # The first execute() imports a great deal lazily (~1 s); a small run pays it.
        with quiet():
            workflow, entry = kailash_build(self.builder_cls, self.form, self.shape, 20)
            results, _ = self.runtime.execute(workflow, parameters={entry: {"value": 0}})
        assert kailash_result(self.shape, 20, results) == expected(self.shape, 20, 0)

    def once(self, x: int) -> None:
        with quiet():
            gc.collect()
            t0 = time.perf_counter()
            workflow, entry = kailash_build(self.builder_cls, self.form, self.shape, self.n)
            build_s = time.perf_counter() - t0
            gc.collect()
            t0 = time.perf_counter()
            results, _ = self.runtime.execute(workflow, parameters={entry: {"value": x}})
            run_s = time.perf_counter() - t0
        got = kailash_result(self.shape, self.n, results)
        assert got == expected(self.shape, self.n, x), (self.impl, self.shape, got)
        self.record(build_s, run_s)


def run_rounds(cases: list[Case]) -> None:
    """Repetitions round-robin across cases (rotating the order), so load noise is shared."""
    for case in cases:
        log(f"warm-up  {case.impl} {case.shape}")
        case.warm_up()
    rounds = max(case.repeat for case in cases)
    for r in range(rounds):
        active = [case for case in cases if r < case.repeat]
        k = r % len(active)
        for case in active[k:] + active[:k]:
            case.once(1000 * (r + 1))  # a new input every round
        log(f"round {r + 1}/{rounds} done ({len(active)} cases)")


# --------------------------------------------------------------------------- report


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(cases: list[Case], n: int, header_lines: list[str]) -> str:
    by = {(c.impl, c.shape): c for c in cases}
    impls = list(dict.fromkeys(c.impl for c in cases))
    floor = {s: median(by[("python loop", s)].runs) for s in SHAPES}
    lines = [*header_lines, ""]

    head = (
        f"{'run, µs/node':<19} {'chain':>9} {'[min-max]':>17} {'- floor':>9}   "
        f"{'fan-out':>9} {'[min-max]':>17} {'- floor':>9} {'reps':>5}"
    )
    lines += [head, "-" * len(head)]
    for impl in impls:
        row = [f"{impl:<19}"]
        for shape in SHAPES:
            c = by[(impl, shape)]
            spread = f"[{fmt(min(c.runs))}-{fmt(max(c.runs))}]"
            over = "" if impl == "python loop" else fmt(median(c.runs) - floor[shape])
            row.append(f"{fmt(median(c.runs)):>9} {spread:>17} {over:>9}")
        row.append(f"{len(by[(impl, 'chain')].runs):>5}")
        lines.append(" ".join(row[:2]) + "   " + " ".join(row[2:]))

    kailash = [i for i in impls if i.startswith("kailash")]
    nexus = [i for i in impls if i.startswith("nexus")]
    if kailash:
        lines += ["", "ratio Kailash / Nexus (medians; higher = Nexus faster)", ""]
        cols = [(k, s) for k in kailash for s in SHAPES]
        head = f"{'':<19} " + " ".join(f"{k + ' ' + s:>21}" for k, s in cols)
        lines += [head, "-" * len(head)]
        for impl in nexus:
            cells = [f"{impl:<19}"]
            for k, s in cols:
                ratio = median(by[(k, s)].runs) / median(by[(impl, s)].runs)
                cells.append(f"{fmt(ratio) + 'x':>21}")
            lines.append(" ".join(cells))

    lines += ["", "build, µs/node (WorkflowBuilder + build(), not in the run figures above)", ""]
    head = f"{'':<19} {'chain':>9} {'fan-out':>9}"
    lines += [head, "-" * len(head)]
    for impl in impls:
        if impl == "python loop":
            continue
        lines.append(
            f"{impl:<19} {fmt(median(by[(impl, 'chain')].builds)):>9} "
            f"{fmt(median(by[(impl, 'fanout')].builds)):>9}"
        )
    return "\n".join(lines)


def to_json(cases: list[Case], meta: dict[str, Any]) -> dict[str, Any]:
    by = {(c.impl, c.shape): c for c in cases}
    floor = {s: median(by[("python loop", s)].runs) for s in SHAPES}
    return {
        **meta,
        "results": [
            {
                "impl": c.impl,
                "shape": c.shape,
                "nodes_executed": c.nodes,
                "repetitions": len(c.runs),
                "median_us_per_node": median(c.runs),
                "overhead_us_per_node": median(c.runs) - floor[c.shape],
                "samples_us_per_node": c.runs,
                "build_median_us_per_node": median(c.builds) if c.builds else None,
                "build_samples_us_per_node": c.builds,
            }
            for c in cases
        ],
        "ratio_kailash_over_nexus": {
            f"{k.impl} / {c.impl} / {c.shape}": median(k.runs) / median(c.runs)
            for k in cases
            if k.impl.startswith("kailash")
            for c in cases
            if c.impl.startswith("nexus") and c.shape == k.shape
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="nodes per workflow (1000)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions for Nexus (7)")
    parser.add_argument(
        "--kailash-repeat",
        type=int,
        default=None,
        help="repetitions for Kailash (default: min(3, --repeat))",
    )
    parser.add_argument("--skip-kailash", action="store_true", help="time Nexus only")
    parser.add_argument(
        "--skip-kailash-code",
        action="store_true",
        help="skip the slow code-string PythonCodeNode form",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    n, repeat = args.nodes, args.repeat
    k_repeat = args.kailash_repeat if args.kailash_repeat is not None else min(3, repeat)
    if n < 1 or repeat < 1 or k_repeat < 1:
        parser.error("--nodes, --repeat and --kailash-repeat must be >= 1")

    load_before = os.getloadavg()[0]
    kailash_version: str | None = None
    kailash_error: str | None = None
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        cases: list[Case] = [FloorCase(shape, n, repeat) for shape in SHAPES]
        cases += [
            NexusCase(name, cls, portal, shape, n, repeat)
            for name, cls in NEXUS_VARIANTS.items()
            for shape in SHAPES
        ]
        loaded = "skipped (--skip-kailash)" if args.skip_kailash else load_kailash()
        if isinstance(loaded, str):
            kailash_error = loaded
            log(f"Kailash not measured: {loaded}. Reporting Nexus figures only.")
        else:
            builder_cls, runtime_cls, kailash_version = loaded
            with quiet():
                runtime = stack.enter_context(runtime_cls())
            check_no_caching(builder_cls, runtime)
            forms = ["fn"] if args.skip_kailash_code else ["fn", "code"]
            cases += [
                KailashCase(form, builder_cls, runtime, shape, n, k_repeat)
                for form in forms
                for shape in SHAPES
            ]
        run_rounds(cases)
    load_after = os.getloadavg()[0]

    meta = {
        "nodes": n,
        "repeat": repeat,
        "kailash_repeat": k_repeat if kailash_version else None,
        "python": platform.python_version(),
        "nexus_core": importlib.metadata.version("nexus-core"),
        "anyio": importlib.metadata.version("anyio"),
        "msgspec": importlib.metadata.version("msgspec"),
        "kailash": kailash_version,
        "kailash_error": kailash_error,
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(to_json(cases, meta), indent=2))
        return 0
    header = [
        f"Nexus runtime vs Kailash LocalRuntime: chain of {n} nodes; fan-out of 1 source "
        f"+ {n} leaves. Median wall time of one run / nodes executed.",
        f"Python {meta['python']}, nexus-core {meta['nexus_core']}, anyio {meta['anyio']}, "
        f"msgspec {meta['msgspec']}; {meta['cpus']} CPUs, 1-min load "
        f"{load_before:.2f} before / {load_after:.2f} after.",
    ]
    if kailash_version:
        header.append(
            f"Kailash {kailash_version}, LocalRuntime() defaults, PythonCodeNode. Results "
            "checked equal to the expected values on every repetition for every runtime."
        )
    else:
        header.append(f"KAILASH NOT MEASURED: {kailash_error}")
    print(table(cases, n, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
