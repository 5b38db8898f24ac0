"""Round-trip latency of one MCP ``tools/call`` of a trivial workflow, side by side.

Three servers run as subprocesses on 127.0.0.1, each exposing one tool that
echoes its ``text`` argument (a synchronous function, so each runs it in a
worker thread):

* ``nexus``: this checkout's nexus-plugin-mcp, standalone streamable HTTP
  (``python -m nexus_plugin_mcp APP --http``), storage ``memory://`` by default.
  Every call takes the host's whole request path: authenticate, authorize,
  validate, record the run, run it, audit, events.
* ``plain``: the ``mcp`` package's own ``MCPServer`` with an ``@mcp.tool()``,
  served by uvicorn on ``streamable_http_app()``: the floor for streamable HTTP.
* ``kailash``: Kailash Nexus's MCP channel (kailash-nexus 2.16 with
  kailash-mcp 0.6), a WebSocket JSON-RPC server on its ``mcp_port``. It needs
  ``mcp`` 1.x, so it runs from a separate interpreter: ``--kailash-python``
  (default ``$NEXUS_BENCH_KAILASH_PYTHON``, else the ``.nox/kailash-nexus`` venv
  that ``nox -s bench`` makes from ``bench/requirements-kailash-nexus.txt``).

``nexus`` and ``plain`` are called with the ``mcp`` package's clients over
streamable HTTP in both protocol eras: ``ClientSession`` (2025-11-25, an
``Mcp-Session-Id`` session) and ``mcp.Client`` in auto mode (2026-07-28, every
POST self-contained), and with a raw client (one JSON POST per call, the
2026-07-28 envelope, no ``mcp`` client code). Kailash's channel speaks only
WebSocket, so it is called with a raw JSON-RPC WebSocket client; compare it
with the raw rows. The ``mcp`` clients and the raw HTTP client run in this
process; Kailash's client runs in a process of its own (its interpreter).

Calls run in rounds, round-robin over the implementations in a new random
order each round, so a burst of load elsewhere on the machine hits all of them
alike. Every call sends a new ``text`` and its result is checked. Medians and
p99 in milliseconds; the load average is shown before and after. ``x plain``
divides a median by the plain server's with the same client; ``x/round`` is
the median of that ratio taken within each round, steadier on a busy machine.

    python bench/mcp.py                 # 300 calls each
    python bench/mcp.py --calls 600 --json
    python bench/mcp.py --skip-kailash
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

#: What `nox -s bench` makes (bench/requirements-kailash-nexus.txt).
KAILASH_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".nox/kailash-nexus/bin/python"

NEXUS_APP = '''
from nexus_core import Nexus

app = Nexus("bench")


@app.workflow(read_only=True, idempotent=True)
def echo(text: str) -> str:
    """Echo the text."""
    return text
'''

PLAIN_SERVER = '''
import sys

import uvicorn
from mcp.server import MCPServer

mcp = MCPServer("plain")


@mcp.tool()
def echo(text: str) -> str:
    """Echo the text."""
    return text


print("READY", flush=True)
uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False)
'''

KAILASH_SERVER = """
import logging
import sys

logging.disable(logging.WARNING)
from kailash.workflow.builder import WorkflowBuilder
from nexus import Nexus

app = Nexus(api_port=int(sys.argv[1]), mcp_port=int(sys.argv[2]), enable_durability=False)
wb = WorkflowBuilder()
wb.add_node("PythonCodeNode", "echo", {"code": "result = text"})
app.register("echo", wb.build())
app.start()
"""

# Runs in the Kailash interpreter: connect, then answer "N\\n" on stdin with N
# timed calls (a JSON list of seconds) on stdout.
KAILASH_CLIENT = """
import asyncio
import json
import sys
import time

import websockets


async def main(url):
    for _ in range(200):
        try:
            ws = await websockets.connect(url, max_size=None)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"cannot connect to {url}")
    ids = iter(range(1, 10**9))

    async def rpc(method, params):
        request_id = next(ids)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                  "params": params}))
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == request_id:
                return reply

    await rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "bench", "version": "0"}})
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    tools = await rpc("tools/list", {})
    print(json.dumps({"ready": True, "tools": tools["result"]["tools"]}), flush=True)
    counter = 0
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        timings = []
        for _ in range(int(line)):
            counter += 1
            text = f"k-{counter}"
            started = time.perf_counter()
            reply = await rpc("tools/call", {"name": "echo", "arguments": {"text": text}})
            timings.append(time.perf_counter() - started)
            body = reply["result"]["content"][0]["text"]
            if text not in body or reply["result"].get("isError"):
                raise SystemExit(f"wrong result for {text!r}: {reply}")
        print(json.dumps(timings), flush=True)
    await ws.close()


asyncio.run(main(sys.argv[1]))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


async def _read_until(stream: anyio.abc.ByteReceiveStream, marker: str, limit: float) -> str:
    seen = ""
    with anyio.fail_after(limit):
        async for chunk in TextReceiveStream(stream):
            seen += chunk
            if marker in seen:
                return seen
    raise RuntimeError(f"process ended before printing {marker!r}: {seen}")


@asynccontextmanager
async def _process(
    command: list[str], env: dict[str, str] | None = None
) -> AsyncIterator[anyio.abc.Process]:
    process = await anyio.open_process(command, env={**os.environ, **(env or {})})
    try:
        yield process
    finally:
        process.terminate()
        with anyio.move_on_after(10) as scope:
            await process.wait()
        if scope.cancelled_caught:
            process.kill()


Caller = Callable[[str], Awaitable[str]]


class Impl:
    """One implementation and protocol: something that times N calls."""

    def __init__(self, name: str, protocol: str, run: Callable[[int], Awaitable[list[float]]]):
        self.name = name
        self.protocol = protocol
        self.run = run
        self.timings: list[float] = []
        self.round_medians: list[float] = []


def _timed(call: Caller, prefix: str) -> Callable[[int], Awaitable[list[float]]]:
    counter = 0

    async def run(count: int) -> list[float]:
        nonlocal counter
        timings = []
        for _ in range(count):
            counter += 1
            text = f"{prefix}-{counter}"
            started = time.perf_counter()
            answer = await call(text)
            timings.append(time.perf_counter() - started)
            if answer != text:
                raise RuntimeError(f"{prefix}: wrong result {answer!r} for {text!r}")
        return timings

    return run


async def _mcp_callers(
    stack: AsyncExitStack, url: str, label: str
) -> list[tuple[str, Callable[[int], Awaitable[list[float]]]]]:
    from mcp import Client, ClientSession
    from mcp.client.streamable_http import streamable_http_client

    read, write = await stack.enter_async_context(streamable_http_client(url))
    session = await stack.enter_async_context(ClientSession(read, write))
    init = await session.initialize()
    client = await stack.enter_async_context(Client(url))

    def caller(target: Any) -> Caller:
        async def call(text: str) -> str:
            result = await target.call_tool("echo", {"text": text})
            if result.is_error:
                raise RuntimeError(f"{label}: tool error {result.content}")
            return str((result.structured_content or {}).get("result"))

        return call

    return [
        (init.protocol_version, _timed(caller(session), f"{label}-legacy")),
        (client.protocol_version, _timed(caller(client), f"{label}-modern")),
    ]


async def _raw_caller(
    stack: AsyncExitStack, url: str, label: str
) -> Callable[[int], Awaitable[list[float]]]:
    """A minimal 2026-07-28 client: one JSON POST per call (as light as Kailash's WS client)."""
    import httpx
    from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

    http = await stack.enter_async_context(httpx.AsyncClient(timeout=60))
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    meta = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    ids = iter(range(1, 10**9))

    async def call(text: str) -> str:
        body = {
            "jsonrpc": "2.0",
            "id": next(ids),
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text}, "_meta": meta},
        }
        response = await http.post(url, json=body, headers=headers)
        result = response.json()["result"]
        if result.get("isError"):
            raise RuntimeError(f"{label}: tool error {result}")
        return str(result["structuredContent"]["result"])

    return _timed(call, f"{label}-raw")


async def _start_nexus(stack: AsyncExitStack, workdir: Path, storage: str) -> str:
    app = workdir / "bench_app.py"
    app.write_text(NEXUS_APP)
    command = [sys.executable, "-m", "nexus_plugin_mcp", str(app), "--http", "--port", "0"]
    process = await stack.enter_async_context(_process(command, {"NEXUS_STORAGE": storage}))
    assert process.stderr is not None
    text = await _read_until(process.stderr, "/mcp", 60)
    return text.split("MCP endpoint:")[1].split()[0]


async def _start_plain(stack: AsyncExitStack, workdir: Path) -> str:
    script = workdir / "plain_server.py"
    script.write_text(PLAIN_SERVER)
    port = _free_port()
    process = await stack.enter_async_context(_process([sys.executable, str(script), str(port)]))
    assert process.stdout is not None
    await _read_until(process.stdout, "READY", 60)
    url = f"http://127.0.0.1:{port}/mcp"
    await _wait_http(url)
    return url


async def _wait_http(url: str) -> None:
    import httpx

    with anyio.fail_after(60):
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    await http.get(url)
                    return
                except httpx.TransportError:
                    await anyio.sleep(0.1)


async def _start_kailash(
    stack: AsyncExitStack, workdir: Path, python: str
) -> Callable[[int], Awaitable[list[float]]]:
    server, client = workdir / "kailash_server.py", workdir / "kailash_client.py"
    server.write_text(KAILASH_SERVER)
    client.write_text(KAILASH_CLIENT)
    api_port, mcp_port = _free_port(), _free_port()
    await stack.enter_async_context(_process([python, str(server), str(api_port), str(mcp_port)]))
    worker = await stack.enter_async_context(
        _process([python, str(client), f"ws://127.0.0.1:{mcp_port}"])
    )
    assert worker.stdout is not None
    assert worker.stdin is not None
    lines = TextReceiveStream(worker.stdout)
    buffer = ""

    async def line() -> str:
        nonlocal buffer
        with anyio.fail_after(120):
            while "\n" not in buffer:
                buffer += await lines.receive()
        head, _, buffer = buffer.partition("\n")
        return head

    hello = json.loads(await line())
    schema = hello["tools"][0]["inputSchema"]
    print(f"kailash: tool 'echo' input schema {json.dumps(schema)}", file=sys.stderr)

    async def run(count: int) -> list[float]:
        assert worker.stdin is not None
        await worker.stdin.send(f"{count}\n".encode())
        return [float(v) for v in json.loads(await line())]

    return run


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = _load()
    impls: list[Impl] = []
    kailash_note = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with AsyncExitStack() as stack:
            nexus_url = await _start_nexus(stack, workdir, args.storage)
            plain_url = await _start_plain(stack, workdir)
            for protocol, run in await _mcp_callers(stack, nexus_url, "nexus"):
                impls.append(Impl("nexus-plugin-mcp", protocol, run))
            for protocol, run in await _mcp_callers(stack, plain_url, "plain"):
                impls.append(Impl("mcp MCPServer (plain)", protocol, run))
            raw = await _raw_caller(stack, nexus_url, "nexus")
            impls.append(Impl("nexus-plugin-mcp", "2026-07-28 raw", raw))
            raw = await _raw_caller(stack, plain_url, "plain")
            impls.append(Impl("mcp MCPServer (plain)", "2026-07-28 raw", raw))
            python = args.kailash_python
            if args.skip_kailash:
                kailash_note = "skipped (--skip-kailash)"
            elif not python or not os.path.exists(python):  # noqa: ASYNC240 - once, at start
                kailash_note = f"no interpreter with kailash-nexus at {python!r}"
            else:
                try:
                    run = await _start_kailash(stack, workdir, python)
                    impls.append(Impl("Kailash Nexus MCP channel", "ws 2025-06-18", run))
                except Exception as exc:
                    kailash_note = f"not reachable: {type(exc).__name__}: {exc}"
            if kailash_note:
                print(f"KAILASH NOT MEASURED: {kailash_note}", file=sys.stderr)

            for impl in impls:  # warm-up, untimed
                await impl.run(args.warmup)
            rounds = max(1, args.rounds)
            per_round = [args.calls // rounds + (i < args.calls % rounds) for i in range(rounds)]
            rng = random.Random(7)
            for count in per_round:
                order = impls[:]
                rng.shuffle(order)
                for impl in order:
                    timings = await impl.run(count)
                    impl.timings.extend(timings)
                    impl.round_medians.append(statistics.median(timings))
    plain = {i.protocol: i for i in impls if "plain" in i.name}
    rows = []
    for impl in impls:
        median = statistics.median(impl.timings)
        base = plain.get(impl.protocol) or plain.get("2026-07-28 raw")
        per_round = (
            statistics.median(
                mine / theirs
                for mine, theirs in zip(impl.round_medians, base.round_medians, strict=True)
            )
            if base
            else None
        )
        rows.append(
            {
                "implementation": impl.name,
                "protocol": impl.protocol,
                "calls": len(impl.timings),
                "median_ms": median * 1000,
                "p99_ms": _p99(impl.timings) * 1000,
                "vs_plain": median / statistics.median(base.timings) if base else None,
                "vs_plain_per_round": per_round,
            }
        )
    return {
        "calls": args.calls,
        "warmup": args.warmup,
        "storage": args.storage,
        "load_before": load_before,
        "load_after": _load(),
        "kailash": kailash_note or "measured",
        "rows": rows,
    }


def _print(report: dict[str, Any]) -> None:
    print(
        f"MCP tools/call round trip: {report['calls']} calls each after {report['warmup']} "
        f"warm-up, 127.0.0.1, Nexus storage {report['storage']}"
    )
    print(f"load average before: {report['load_before']}  after: {report['load_after']}")
    if report["kailash"] != "measured":
        print(f"KAILASH NOT MEASURED: {report['kailash']}")
    header = (
        f"{'implementation':<28} {'protocol':<15} {'median ms':>10} {'p99 ms':>9} "
        f"{'x plain':>8} {'x/round':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        ratio = f"{row['vs_plain']:.2f}" if row["vs_plain"] else "-"
        per_round = f"{row['vs_plain_per_round']:.2f}" if row["vs_plain_per_round"] else "-"
        print(
            f"{row['implementation']:<28} {row['protocol']:<15} {row['median_ms']:>10.3f} "
            f"{row['p99_ms']:>9.3f} {ratio:>8} {per_round:>8}"
        )
    print(
        textwrap.dedent(
            """
            x plain: median over the plain mcp MCPServer's median with the same client.
            x/round: the median, over rounds, of the same ratio within one round (both
            ran back to back), which load drift between rounds disturbs less.
            "raw": one JSON POST per call, no mcp client; Kailash's row (a raw WebSocket
            client) is divided by the plain server's raw median, the closest client.
            """
        ).strip()
    )


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first")
    parser.add_argument("--rounds", type=int, default=20, help="round-robin rounds")
    parser.add_argument("--storage", default="memory://", help="Nexus storage URL")
    parser.add_argument(
        "--kailash-python",
        default=os.environ.get("NEXUS_BENCH_KAILASH_PYTHON", str(KAILASH_VENV_PYTHON)),
        help="interpreter with kailash-nexus and kailash-mcp installed",
    )
    parser.add_argument("--skip-kailash", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # This file is named like the package it measures: keep bench/ off the import path.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    options = _parse()
    result = anyio.run(main, options)
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
