"""Durable runs per second, p50 and p99: Nexus (SQLite, PostgreSQL, Procrastinate workers) vs DBOS.

Every server answers ``POST`` with ``{"x": N}`` by running a one-step durable
workflow (``step(x) -> x * 2``) and answering its result, behind Litestar on
uvicorn (one process):

* ``nexus-sqlite``: ``python -m nexus_plugin_api app.py``, storage a SQLite file
  (the default tier): run record, checkpoint, events, audit per request.
* ``nexus-postgres``: the same on PostgreSQL (nexus-plugin-postgres), inline executor.
* ``nexus-procrastinate``: the same gateway with ``executor = "procrastinate"``
  and one ``nexus worker app.py --concurrency 32``: each run is stored and
  enqueued in one transaction, executed by the worker, answered through the
  event log.
* ``dbos-sqlite`` / ``dbos-postgres``: DBOS Transact (PyPI ``dbos``, installed
  by ``bench/requirements.txt`` only) in a Litestar handler: ``@DBOS.workflow``
  calling one ``@DBOS.step``, its system database a SQLite file / PostgreSQL.

Load: ``wrk`` (``--latency``) with a Lua script sending a different ``x`` on
every request, ``--connections`` connections (default 16), ``--duration``
seconds per measurement, ``--rounds`` rounds in rotating order; medians of the
rounds are reported, with each target's ratio to ``nexus-*`` on the same
database. Each PostgreSQL target gets a fresh database on
``NEXUS_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).

    python bench/durable.py                         # 16 connections, 10 s, 3 rounds
    python bench/durable.py --duration 5 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# bench/http.py would shadow the standard library's http package (httpx imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx

POSTGRES_URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

NEXUS_APP = '''
from nexus_core import Nexus

app = Nexus("durable")


@app.workflow
async def step(x: int) -> int:
    """The one durable step."""
    return x * 2
'''

NEXUS_TOML = """
[nexus]
storage = "{storage}"

[nexus.services.runs]
executor = "{executor}"
"""

DBOS_APP = """
import msgspec
from dbos import DBOS
from litestar import Litestar, post


class Inputs(msgspec.Struct):
    x: int


DBOS(config={{"name": "durable", "system_database_url": "{url}", "run_admin_server": False}})


@DBOS.step()
async def step(x: int) -> int:
    return x * 2


@DBOS.workflow()
async def workflow(x: int) -> int:
    return await step(x)


@post("/run", status_code=200)
async def run(data: Inputs) -> dict[str, int]:
    return {{"output": await workflow(data.x)}}


app = Litestar([run], on_startup=[DBOS.launch], on_shutdown=[DBOS.destroy])
"""

LUA = """
local counter = 0
local headers = {{["Content-Type"] = "application/json"}}
math.randomseed(os.time() + {seed})
request = function()
  counter = counter + 1
  local body = string.format('{{"x":%d}}', math.random(1, 1000000) * 1000 + counter % 1000)
  return wrk.format("POST", "{path}", headers, body)
end
"""


@dataclass
class Target:
    """One server under test."""

    name: str
    database: str  # "sqlite" or "postgres": what its ratio compares against
    path: str
    folder: Path
    commands: list[list[str]]  # "{port}" is the port of this start
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    results: list[dict[str, float]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards."""
    import psycopg

    name = f"nexus_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def nexus_target(name: str, scratch: Path, storage: str, executor: str, db: str) -> Target:
    folder = scratch / name
    folder.mkdir()
    (folder / "app.py").write_text(NEXUS_APP)
    (folder / "nexus.toml").write_text(NEXUS_TOML.format(storage=storage, executor=executor))
    commands = [[sys.executable, "-m", "nexus_plugin_api", "app.py", "--port", "{port}"]]
    if executor == "procrastinate":
        nexus = str(Path(sys.executable).with_name("nexus"))
        commands.append([nexus, "worker", "app.py", "--concurrency", "32"])
    return Target(name, db, "/workflows/step/runs", folder, commands)


def dbos_target(name: str, scratch: Path, url: str, db: str) -> Target:
    folder = scratch / name
    folder.mkdir()
    (folder / "dbos_app.py").write_text(DBOS_APP.format(url=url))
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "dbos_app:app",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    return Target(name, db, "/run", folder, [command])


def start(target: Target, env: dict[str, str], round_: int) -> None:
    """Start the target's processes: a new port and new logs each round."""
    # A port is free only for a moment: another process on the machine may take it
    # between two rounds.
    target.port = free_port()
    target.processes = []  # the last round's processes are gone (see stop())
    for index, command in enumerate(target.commands):
        log = (target.folder / f"round-{round_}-process-{index}.log").open("wb")
        target.processes.append(
            subprocess.Popen(
                [part.replace("{port}", str(target.port)) for part in command],
                cwd=target.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        if index == 0 and len(target.commands) > 1:
            wait_live(target)  # the gateway migrates the fresh database before the worker starts
    wait_answering(target)


def _check_alive(target: Target) -> None:
    for process in target.processes:
        if process.poll() is not None:
            raise SystemExit(
                f"{target.name} exited ({process.args[0]}, code {process.returncode}):\n"
                f"{logs(target)}"
            )


def wait_live(target: Target, timeout: float = 60) -> None:
    """Wait until the gateway answers ``/health/live``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(target)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{target.port}/health/live", timeout=1).is_success:
                return
        time.sleep(0.1)
    raise SystemExit(f"{target.name} did not start within {timeout:g}s:\n{logs(target)}")


def wait_answering(target: Target, timeout: float = 60) -> None:
    """Wait until the server answers one real request with 2xx."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{target.port}{target.path}"
    while time.monotonic() < deadline:
        _check_alive(target)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url, json={"x": 1}, timeout=1).status_code < 300:
                return
        time.sleep(0.2)
    raise SystemExit(f"{target.name} did not answer within {timeout:g}s:\n{logs(target)}")


def logs(target: Target) -> str:
    """The end of every log of the target's processes, newest round last."""
    found = sorted(target.folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in found)


def stop(target: Target) -> None:
    for process in reversed(target.processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("m"):
        return value * 60000
    return value * 1000  # seconds


def run_wrk(target: Target, lua: Path, connections: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            f"http://127.0.0.1:{target.port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(bad.group(1)) if bad else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    # Not measured here. nexus-plugin-redis: its bus outranks the PostgreSQL one even with no
    # Redis URL, and then polls the log every 0.1 s.
    env["NEXUS_DISABLE_PLUGINS"] = "nexus-plugin-mcp,nexus-plugin-redis"
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="durable-")))
        pg = [stack.enter_context(fresh_database()) for _ in range(3)]
        targets = [
            nexus_target("nexus-sqlite", scratch, f"sqlite:///{scratch}/n.db", "inline", "sqlite"),
            nexus_target("nexus-postgres", scratch, pg[0], "inline", "postgres"),
            nexus_target("nexus-procrastinate", scratch, pg[1], "procrastinate", "postgres"),
            dbos_target("dbos-sqlite", scratch, f"sqlite:///{scratch}/dbos.db", "sqlite"),
            dbos_target("dbos-postgres", scratch, pg[2], "postgres"),
        ]
        if args.only:
            wanted = set(args.only.split(","))
            targets = [t for t in targets if t.name in wanted]
        for index, target in enumerate(targets):
            lua = scratch / f"{target.name}.lua"
            lua.write_text(LUA.format(path=target.path, seed=index))
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                # One server at a time: nothing else competes for the two cores.
                start(target, env, round_)
                try:
                    lua = scratch / f"{target.name}.lua"
                    run_wrk(target, lua, args.connections, args.warmup)
                    result = run_wrk(target, lua, args.connections, args.duration)
                finally:
                    stop(target)
                target.results.append(result)
                print(f"round {round_ + 1} {target.name}: {result}", file=sys.stderr)
    report = {}
    for target in targets:
        report[target.name] = {
            key: statistics.median(r[key] for r in target.results)
            for key in ("rps", "p50_ms", "p99_ms", "non_2xx")
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"durable one-step workflow over HTTP: {args.connections} connections, "
        f"{args.duration:g}s x {args.rounds} rounds (medians)"
    )
    print(f"{'target':22} {'runs/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8}")
    for name, row in report.items():
        print(
            f"{name:22} {row['rps']:9.0f} {row['p50_ms']:9.1f} {row['p99_ms']:9.1f} "
            f"{row['non_2xx']:8.0f}"
        )
    for db in ("sqlite", "postgres"):
        ours = report.get(f"nexus-{db}")
        theirs = report.get(f"dbos-{db}")
        if ours and theirs:
            print(
                f"{db}: nexus / dbos runs/s = {ours['rps'] / theirs['rps']:.2f}x, "
                f"p50 {theirs['p50_ms'] / ours['p50_ms']:.2f}x lower, "
                f"p99 {theirs['p99_ms'] / ours['p99_ms']:.2f}x lower"
            )
    queued, dbos_pg = report.get("nexus-procrastinate"), report.get("dbos-postgres")
    if queued and dbos_pg:
        print(
            f"postgres: nexus-procrastinate / dbos runs/s = {queued['rps'] / dbos_pg['rps']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
