"""HTTP invoke throughput and CPU per request: Nexus REST vs bare Litestar, DBOS and Kailash.

The servers answer the same trivial function, ``greet(name, excited=False)``:

* ``nexus``: ``python -m nexus_plugin_api app.py`` (uvicorn, httptools, uvloop) with the
  default embedded storage on (``sqlite:///nexus.db`` in a scratch directory): every
  request goes through ``app.invoke`` (auth, session, validation, run record,
  checkpoint, events, audit, metrics). The function is ``async def``, run inline as
  the bare handler and Kailash run theirs. ``nexus-def`` is the same server and
  function written as a plain ``def``, which Nexus runs in a worker thread (the
  price of that safety, shown on its own line).
* ``nexus-memory``: the ``nexus`` server on ``NEXUS_STORAGE=memory://`` (bounded: see
  docs/how-to/configure.md), the cost of the invoke path without SQL.
* ``nexus-full``: the ``nexus`` server with ``?synchronous=full`` (a commit survives a
  power loss: an fsync per group commit), the price of that durability.
* ``nexus-ephemeral``: the same function declared ``durable=False`` on the default
  storage: no run record, events to live subscribers only, audit still written.
* ``litestar``: a bare Litestar handler (msgspec-validated body, call, JSON answer) on
  the same uvicorn settings and worker count.
* ``litestar-durable``: the same handler storing each run by hand as Nexus's SQLite
  backend does, and nothing more: the statements of ``bench/sqlite_floor.py`` (the
  backend's own SQL), the run record committed before the call and the final write
  (checkpoint, final state, audit record, four events) after it, both through one
  writer thread with group commit, answered once committed. What no durable server
  on SQLite can leave out, without security, event delivery, leases or recovery: the
  reachable floor the durable rows are compared with.
* ``dbos-sqlite``, ``dbos-postgres``: DBOS Transact (PyPI ``dbos``, installed by
  ``nox -s bench`` only), the closest peer for durable execution, behind the same bare
  Litestar handler: a workflow of one step (``@DBOS.workflow`` calling ``@DBOS.step``),
  awaited by the handler, its system database on SQLite (WAL, ``synchronous=NORMAL``,
  as Nexus sets them) or on PostgreSQL (``--postgres-url``, default
  ``$NEXUS_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``, in a schema
  of its own, ``nexus_bench_dbos``, dropped before and after the run). Left out, with a
  note, when ``dbos`` is not installed or PostgreSQL does not answer.
* ``kailash``: Kailash Nexus (``kailash-nexus`` from PyPI, run from its own venv,
  ``--kailash-python``, default ``$NEXUS_BENCH_KAILASH_PYTHON``, else the
  ``.nox/kailash-nexus`` venv that ``nox -s bench`` makes) serving the same function
  with ``@app.handler``; its own ``app.start()`` server; its per-minute rate limit
  switched off so it is measured, not throttled.

Load: ``wrk`` (Debian's package) with a Lua script that sends a different body on every
request (Kailash answers repeated identical bodies from a cache), 16 connections,
``--duration`` seconds per measurement, ``--rounds`` rounds in a rotating order so a
burst of load elsewhere on the machine hits every server alike. Non-2xx answers are
counted and reported. Also measured: the idle RSS of each server (before any load) and
of ``python -m nexus_plugin_api examples/hello.py``.

CPU per request: the utime + stime of each server's process tree (``/proc/<pid>/stat``)
before and after every round, divided by the requests answered in it (medians over the
rounds). For ``dbos-postgres`` the PostgreSQL backends serving it (found by their
``application_name``) are counted on their own line. Beside it, ``loop us``: the
share of the servers' main threads, where an asyncio server's event loop runs (the
rest is other threads: Nexus's SQLite writer and WAL checkpointer, worker threads).
Beside them, ``bench/sqlite_floor.py`` (the SQL of one durable run, no server) is
run once, so the floor argument can be rerun:
a durable run cannot cost less than bare Litestar's CPU plus that.

The ratios of issue #20 are printed: ``nexus`` (durable, SQLite) over bare Litestar in
req/s (target at least 0.30x), its CPU per request over bare Litestar's plus the SQLite
floor (target at most 1.25x), its req/s over DBOS on SQLite (target at least 15x);
``litestar-durable`` on the same CPU line (whether a hand-written server reaches it),
and ``nexus`` over ``litestar-durable`` (what Nexus adds to storing a run); and
the memory soak: a fresh ``nexus-memory`` server under ``--soak-runs`` consecutive
``--soak-duration`` runs (default five of 10 s, at ``--connections``), p99 and RSS after
each, the last run's p99 over the first's (target at most 1.5x).

    python bench/http.py                       # defaults: 16 connections, 10 s, 3 rounds
    python bench/http.py --workers 2 --duration 5 --rounds 2
    python bench/http.py --skip-kailash --json
    python bench/http.py --only nexus,litestar --duration 3 --rounds 1 --soak-runs 0

Needs ``wrk`` on PATH (``apt-get install wrk``) and nexus-plugin-api installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What `nox -s bench` makes (bench/requirements-kailash-nexus.txt).
KAILASH_VENV_PYTHON = ROOT / ".nox" / "kailash-nexus" / "bin" / "python"

#: The Nexus servers, each in a scratch folder of its own (its own default database).
NEXUS_SERVERS = (
    "nexus",
    "nexus-def",
    "nexus-memory",
    "nexus-full",
    "nexus-ephemeral",
    "nexus-soak",
)

NEXUS_APP = '''
from nexus_core import Nexus

app = Nexus("bench")


@app.workflow(read_only=True, idempotent=True)
async def greet(name: str, excited: bool = False) -> str:
    """Greet someone by name (inline on the event loop, as the peers run it)."""
    return f"Hello, {name}{'!' if excited else '.'}"


@app.workflow(read_only=True, idempotent=True, durable=False)
async def greet_ephemeral(name: str, excited: bool = False) -> str:
    """The same, ephemeral: no run record, events to live subscribers only."""
    return f"Hello, {name}{'!' if excited else '.'}"


@app.workflow(read_only=True, idempotent=True)
def greet_in_thread(name: str, excited: bool = False) -> str:
    """The same, as a plain ``def``: Nexus runs it in a worker thread."""
    return f"Hello, {name}{'!' if excited else '.'}"
'''

LITESTAR_APP = """
import msgspec
from litestar import Litestar, post


class GreetInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    excited: bool = False


def greet(name: str, excited: bool = False) -> str:
    return f"Hello, {name}{'!' if excited else '.'}"


@post("/workflows/greet/runs", status_code=200)
async def run(data: GreetInput) -> dict[str, str]:
    return {"output": greet(data.name, data.excited)}


app = Litestar([run], openapi_config=None, logging_config=None)
"""

#: ``litestar-durable`` (see the module doc): bare Litestar storing each run by hand.
LITESTAR_DURABLE_APP = """
import asyncio
import importlib.util
import os
import queue
import sqlite3
import threading

import msgspec
from litestar import Litestar, post

from nexus_core.storage import sqlite as backend

# The statements of bench/sqlite_floor.py, loaded from its file (bench/ holds an
# http.py that must not shadow the stdlib's).
spec = importlib.util.spec_from_file_location("sqlite_floor", os.environ["NEXUS_BENCH_FLOOR"])
floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(floor)

PATH = "durable.db"


class GreetInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    excited: bool = False


def greet(name: str, excited: bool = False) -> str:
    return f"Hello, {name}{'!' if excited else '.'}"


class Writer:
    \"\"\"One thread; every write queued while a transaction runs goes in the next one.\"\"\"

    def __init__(self) -> None:
        self.jobs = queue.SimpleQueue()

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self.work, daemon=True).start()

    def work(self) -> None:
        conn = sqlite3.connect(PATH, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # as the backend sets them
        while True:
            batch = [self.jobs.get()]
            while not self.jobs.empty():
                batch.append(self.jobs.get_nowait())
            error = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statements, _ in batch:
                    for statement in statements:
                        conn.execute(*statement)
                conn.execute("COMMIT")
            except Exception as exc:
                error = exc
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self.loop.call_soon_threadsafe(settle, [f for _, f in batch], error)

    def write(self, statements):
        future = self.loop.create_future()
        self.jobs.put((statements, future))
        return future


def settle(futures, error) -> None:
    for future in futures:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


writer = Writer()


@post("/workflows/greet/runs", status_code=200)
async def run(data: GreetInput) -> dict[str, str]:
    record, insert = floor.new_run({"name": data.name, "excited": data.excited})
    await writer.write([insert])  # stored before it runs: a kill -9 leaves it to resume
    output = greet(data.name, data.excited)
    await writer.write(floor.final_write(record, output))
    return {"output": output}


async def open_database() -> None:
    storage = backend.SQLiteStorage(f"sqlite:///{PATH}")  # the backend's own schema
    await storage.open()
    await storage.close()
    writer.start()


app = Litestar([run], on_startup=[open_database], openapi_config=None, logging_config=None)
"""

DBOS_APP = """
import os

import msgspec
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig
from litestar import Litestar, post

URL = os.environ["NEXUS_BENCH_DBOS_URL"]
config: DBOSConfig = {"name": "nexus-bench", "system_database_url": URL, "log_level": "WARNING"}
if URL.startswith("sqlite"):
    # As Nexus's SQLite backend: WAL, synchronous=NORMAL (DBOS's own engine keeps the defaults).
    engine = sa.create_engine(URL)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = "IMMEDIATE"  # as DBOS's own SQLite engine
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    config["system_database_engine"] = engine
else:
    config["dbos_system_schema"] = "nexus_bench_dbos"
    config["db_engine_kwargs"] = {"connect_args": {"application_name": "nexus-bench-dbos"}}

DBOS(config=config)


class GreetInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    excited: bool = False


@DBOS.step()
async def greet(name: str, excited: bool) -> str:
    return f"Hello, {name}{'!' if excited else '.'}"


@DBOS.workflow()
async def greet_workflow(name: str, excited: bool) -> str:
    return await greet(name, excited)


@post("/workflows/greet/runs", status_code=200)
async def run(data: GreetInput) -> dict[str, str]:
    return {"output": await greet_workflow(data.name, data.excited)}


app = Litestar([run], on_startup=[DBOS.launch], openapi_config=None, logging_config=None)
"""

#: What DBOS's PostgreSQL connections call themselves (their backends' CPU is counted).
DBOS_PG_APPLICATION = "nexus-bench-dbos"
#: The schema DBOS keeps its tables in on PostgreSQL (dropped before and after a run).
DBOS_PG_SCHEMA = "nexus_bench_dbos"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

KAILASH_APP = """
import sys

from nexus import Nexus

app = Nexus(api_port=int(sys.argv[1]), mcp_port=int(sys.argv[2]), rate_limit=None)


@app.handler("greet", description="Greet someone by name.")
async def greet(name: str, excited: bool = False) -> dict:
    return {"result": f"Hello, {name}{'!' if excited else '.'}"}


app.start()
"""

LUA = """
local counter = 0
local path = "{path}"
local headers = {{["Content-Type"] = "application/json"}}
math.randomseed(os.time() + {seed})
request = function()
  counter = counter + 1
  local excited = "false"
  if counter % 2 == 0 then excited = "true" end
  local inputs = string.format('{{"name":"user-%d-%d","excited":%s}}',
                               math.random(1, 1000000000), counter, excited)
  return wrk.format("POST", path, headers, {wrap})
end
"""


@dataclass
class Target:
    name: str
    command: list[str]
    path: str
    wrap: str  # Lua expression of the body, given `inputs`
    port: int
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    idle_rss_mb: float | None = None
    results: list[dict[str, float]] = field(default_factory=list)
    #: A PostgreSQL URL whose backends (``application_name`` DBOS_PG_APPLICATION) serve it.
    postgres_url: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants, in MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _tree_pids(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(entry))
        except (OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_of(pids: list[int], *, main_thread: bool = False) -> dict[int, float]:
    """utime + stime of each live process of ``pids``, in seconds (children reaped count too).

    With ``main_thread``: of each process's main thread alone, where an asyncio
    server's event loop runs (its other threads, Nexus's SQLite writer and
    checkpointer or worker threads, are the rest of the process's CPU).
    """
    seconds = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 11-14 after the name
        # (a thread's own: utime and stime).
        seconds[pid] = sum(int(v) for v in fields[11 : 13 if main_thread else 15]) / _TICK
    return seconds


def postgres_backends(url: str) -> list[int]:
    """The pids of the PostgreSQL backends of DBOS's connections (empty if unknown)."""
    try:
        import psycopg
    except ImportError:
        return []
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (DBOS_PG_APPLICATION,),
            ).fetchall()
    except Exception:
        return []
    return [int(row[0]) for row in rows]


def postgres_answers(url: str) -> str | None:
    """None if PostgreSQL at ``url`` answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def drop_dbos_schema(url: str) -> None:
    """Drop DBOS's schema of earlier runs, so every run starts from empty tables as SQLite does."""
    try:
        import psycopg
    except ImportError:
        return
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {DBOS_PG_SCHEMA} CASCADE")


class CpuMeter:
    """CPU seconds a server (its process tree, plus its PostgreSQL backends) spends."""

    def __init__(self, target: Target) -> None:
        assert target.process is not None
        self.target = target
        pids = _tree_pids(target.process.pid)
        self.server = cpu_of(pids)
        self.loops = cpu_of(pids, main_thread=True)
        self.postgres = self._postgres()

    def _postgres(self) -> dict[int, float]:
        url = self.target.postgres_url
        return cpu_of(postgres_backends(url)) if url else {}

    def spent(self) -> tuple[float, float, float | None]:
        """Seconds since this meter was made: the server's, its main threads' (its event
        loops), and its PostgreSQL backends'."""
        assert self.target.process is not None
        pids = _tree_pids(self.target.process.pid)
        server = _since(self.server, cpu_of(pids))
        loops = _since(self.loops, cpu_of(pids, main_thread=True))
        if self.target.postgres_url is None:
            return server, loops, None
        return server, loops, _since(self.postgres, self._postgres())


def _since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings of the same processes."""
    return sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)


def sqlite_floor_us() -> float | None:
    """``bench/sqlite_floor.py``'s median microseconds per run (None if it fails)."""
    script = Path(__file__).resolve().parent / "sqlite_floor.py"
    done = subprocess.run(
        [sys.executable, str(script), "--repeat", "3"], capture_output=True, text=True
    )
    match = re.search(r"median (\d+) us of CPU per run", done.stdout)
    if done.returncode != 0 or match is None:
        print(f"bench/sqlite_floor.py failed: {done.stderr[-500:]}", file=sys.stderr)
        return None
    return float(match.group(1))


def _standard_http() -> None:
    """This file is named http.py: keep its folder off sys.path so ``http`` is the stdlib's."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def wait_ready(target: Target, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    body = json.dumps({"name": "warm"}).encode()
    if target.name == "kailash":
        body = json.dumps({"inputs": {"name": "warm"}}).encode()
    url = f"http://127.0.0.1:{target.port}{target.path}"
    while time.monotonic() < deadline:
        assert target.process is not None
        if target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}")
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"{target.name} did not answer on port {target.port}")


@contextlib.contextmanager
def running(target: Target) -> Iterator[Target]:
    log = open(target.cwd / f"{target.name}.log", "wb")  # noqa: SIM115 - closed below
    target.process = subprocess.Popen(
        target.command,
        cwd=target.cwd,
        env={**os.environ, **target.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(target)
        time.sleep(1.0)
        target.idle_rss_mb = tree_rss_mb(target.process.pid)
        yield target
    finally:
        if target.process.poll() is None:
            os.killpg(target.process.pid, signal.SIGTERM)
            try:
                target.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(target.process.pid, signal.SIGKILL)
                target.process.wait()
        log.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot read a latency from {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    target: Target, lua: Path, connections: int, duration: float, threads: int
) -> dict[str, float]:
    url = f"http://127.0.0.1:{target.port}"
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": socket_errors,
    }


def idle_rss_of_example(scratch: Path, env: dict[str, str], label: str) -> float:
    """Idle RSS of ``python -m nexus_plugin_api examples/hello.py`` (one process)."""
    port = free_port()
    target = Target(
        name=f"hello-{label}",
        command=[
            sys.executable,
            "-m",
            "nexus_plugin_api",
            str(ROOT / "examples" / "hello.py"),
            "--port",
            str(port),
        ],
        path="/workflows/greet/runs",
        wrap="inputs",
        port=port,
        cwd=scratch / f"hello-{label}",
        env=env,
    )
    target.cwd.mkdir()
    with running(target):
        time.sleep(2)
        assert target.process is not None
        return tree_rss_mb(target.process.pid)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="server processes (nexus, litestar)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of untimed load first")
    parser.add_argument(
        "--kailash-python",
        default=os.environ.get("NEXUS_BENCH_KAILASH_PYTHON", str(KAILASH_VENV_PYTHON)),
        help="a Python with kailash-nexus installed (never the project's venv)",
    )
    parser.add_argument("--skip-kailash", action="store_true")
    parser.add_argument("--skip-dbos", action="store_true", help="leave DBOS Transact out")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("NEXUS_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="PostgreSQL for dbos-postgres (default $NEXUS_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated servers to run (default: every one)"
    )
    parser.add_argument(
        "--soak-runs", type=int, default=5, help="consecutive runs on memory:// (0: none)"
    )
    parser.add_argument("--soak-duration", type=float, default=10.0, help="seconds per soak run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    _standard_http()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    only = {name.strip() for name in args.only.split(",") if name.strip()}

    scratch = Path(tempfile.mkdtemp(prefix="nexus-bench-http-"))
    for name in NEXUS_SERVERS:
        (scratch / name).mkdir()
        (scratch / name / "app.py").write_text(textwrap.dedent(NEXUS_APP))
    (scratch / "litestar").mkdir()
    (scratch / "litestar" / "bare.py").write_text(textwrap.dedent(LITESTAR_APP))
    (scratch / "litestar-durable").mkdir()
    (scratch / "litestar-durable" / "durable.py").write_text(textwrap.dedent(LITESTAR_DURABLE_APP))
    (scratch / "kailash").mkdir()
    (scratch / "kailash" / "kserve.py").write_text(textwrap.dedent(KAILASH_APP))
    for name in ("dbos-sqlite", "dbos-postgres"):
        (scratch / name).mkdir()
        (scratch / name / "dbos_app.py").write_text(textwrap.dedent(DBOS_APP))
    clean_env = {"NEXUS_DISABLE_PLUGINS": "nexus-plugin-mcp"}  # HTTP only, like the others
    memory_env = {**clean_env, "NEXUS_STORAGE": "memory://"}
    # Power-loss durability: an fsync of the WAL per (group) commit.
    full_env = {**clean_env, "NEXUS_STORAGE": "sqlite:///.nexus/bench.db?synchronous=full"}
    uvicorn = [sys.executable, "-m", "uvicorn"]
    uvicorn_options = [
        "--port",
        "{port}",
        "--workers",
        str(args.workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]

    def nexus_target(name: str, workflow: str, env: dict[str, str]) -> Target:
        command = [sys.executable, "-m", "nexus_plugin_api", "app.py"]
        return Target(
            name=name,
            command=[*command, "--port", "{port}", "--workers", str(args.workers)],
            path=f"/workflows/{workflow}/runs",
            wrap="inputs",
            port=0,
            cwd=scratch / name,
            env=env,
        )

    def litestar_target(name: str, app: str, env: dict[str, str] | None = None) -> Target:
        return Target(
            name=name,
            command=[*uvicorn, app, *uvicorn_options],
            path="/workflows/greet/runs",
            wrap="inputs",
            port=0,
            cwd=scratch / name,
            env=env or {},
        )

    def dbos_target(name: str, url: str, postgres_url: str | None = None) -> Target:
        return Target(
            name=name,
            command=[*uvicorn, "dbos_app:app", *uvicorn_options],
            path="/workflows/greet/runs",
            wrap="inputs",
            port=0,
            cwd=scratch / name,
            env={"NEXUS_BENCH_DBOS_URL": url},
            postgres_url=postgres_url,
        )

    targets = [
        nexus_target("nexus", "greet", clean_env),
        nexus_target("nexus-def", "greet_in_thread", clean_env),
        nexus_target("nexus-memory", "greet", memory_env),
        nexus_target("nexus-full", "greet", full_env),
        nexus_target("nexus-ephemeral", "greet_ephemeral", clean_env),
        litestar_target("litestar", "bare:app"),
        litestar_target(
            "litestar-durable",
            "durable:app",
            {"NEXUS_BENCH_FLOOR": str(Path(__file__).resolve().parent / "sqlite_floor.py")},
        ),
    ]
    notes: list[str] = []
    if not args.skip_dbos:
        if importlib.util.find_spec("dbos") is None:
            notes.append("DBOS NOT MEASURED: `dbos` is not installed (bench/requirements.txt)")
        else:
            sqlite_url = f"sqlite:///{scratch / 'dbos-sqlite' / 'dbos.sqlite'}"
            targets.append(dbos_target("dbos-sqlite", sqlite_url))
            why = postgres_answers(args.postgres_url)
            if why is None:
                drop_dbos_schema(args.postgres_url)
                targets.append(dbos_target("dbos-postgres", args.postgres_url, args.postgres_url))
            else:
                notes.append(f"DBOS ON POSTGRESQL NOT MEASURED: {args.postgres_url}: {why}")
    if not args.skip_kailash:
        if Path(args.kailash_python).exists():
            targets.append(
                Target(
                    name="kailash",
                    command=[args.kailash_python, "kserve.py", "{port}", str(free_port())],
                    path="/workflows/greet/execute",
                    wrap="'{\"inputs\":' .. inputs .. '}'",
                    port=0,
                    cwd=scratch / "kailash",
                )
            )
        else:
            notes.append(f"KAILASH NOT MEASURED: no {args.kailash_python}")
    if only:
        unknown = only - {t.name for t in targets}
        if unknown:
            print(f"--only: no server named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        targets = [t for t in targets if t.name in only]
    for note in notes:
        print(note, file=sys.stderr)

    for index, target in enumerate(targets):
        target.port = free_port()
        target.command = [part.replace("{port}", str(target.port)) for part in target.command]
        lua = scratch / f"{target.name}.lua"
        lua.write_text(LUA.format(path=target.path, wrap=target.wrap, seed=index))

    floor_us = sqlite_floor_us()
    load_before = load_average()
    with contextlib.ExitStack() as stack:
        for target in targets:
            print(f"starting {target.name} on port {target.port}...", file=sys.stderr)
            stack.enter_context(running(target))
            print(f"  idle RSS {target.idle_rss_mb:.0f} MB", file=sys.stderr)
        for target in targets:
            run_wrk(
                target, scratch / f"{target.name}.lua", args.connections, args.warmup, args.threads
            )
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                meter = CpuMeter(target)
                result = run_wrk(
                    target,
                    scratch / f"{target.name}.lua",
                    args.connections,
                    args.duration,
                    args.threads,
                )
                server_s, loops_s, postgres_s = meter.spent()
                answered = max(1, int(result["requests"]))
                result["cpu_us"] = server_s * 1e6 / answered
                result["loop_cpu_us"] = loops_s * 1e6 / answered
                if postgres_s is not None:
                    result["postgres_cpu_us"] = postgres_s * 1e6 / answered
                target.results.append(result)
                print(
                    f"round {round_ + 1} {target.name:16} {result['rps']:9.0f} req/s "
                    f"p50 {result['p50_ms']:7.2f} ms p99 {result['p99_ms']:7.2f} ms "
                    f"CPU {result['cpu_us']:6.0f} us/req non-2xx {result['non_2xx']}",
                    file=sys.stderr,
                )
    soak: list[dict[str, float]] = []
    if args.soak_runs > 0 and (not only or "nexus-memory" in only):
        soaker = nexus_target("nexus-soak", "greet", memory_env)
        soaker.port = free_port()
        soaker.command = [part.replace("{port}", str(soaker.port)) for part in soaker.command]
        lua = scratch / "nexus-soak.lua"
        lua.write_text(LUA.format(path=soaker.path, wrap=soaker.wrap, seed=99))
        with running(soaker):
            assert soaker.process is not None
            for run in range(args.soak_runs):
                meter = CpuMeter(soaker)
                result = run_wrk(soaker, lua, args.connections, args.soak_duration, args.threads)
                result["cpu_us"] = meter.spent()[0] * 1e6 / max(1, int(result["requests"]))
                result["rss_mb"] = tree_rss_mb(soaker.process.pid)
                soak.append(result)
                print(
                    f"soak {run + 1} memory:// {result['rps']:9.0f} req/s "
                    f"p99 {result['p99_ms']:7.2f} ms CPU {result['cpu_us']:6.0f} us/req "
                    f"RSS {result['rss_mb']:6.0f} MB",
                    file=sys.stderr,
                )
    load_after = load_average()
    if any(t.postgres_url for t in targets):
        drop_dbos_schema(args.postgres_url)
    hello_rss = idle_rss_of_example(scratch, clean_env, "api-only")
    hello_rss_all = idle_rss_of_example(scratch, {}, "all-plugins")

    summary: dict[str, dict[str, object]] = {}
    for target in targets:
        rs = target.results
        row: dict[str, object] = {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "cpu_us": statistics.median(r["cpu_us"] for r in rs),
            "loop_cpu_us": statistics.median(r["loop_cpu_us"] for r in rs),
            "non_2xx": sum(int(r["non_2xx"]) for r in rs),
            "socket_errors": sum(int(r["socket_errors"]) for r in rs),
            "idle_rss_mb": target.idle_rss_mb,
            "rounds": rs,
        }
        if all("postgres_cpu_us" in r for r in rs):
            row["postgres_cpu_us"] = statistics.median(r["postgres_cpu_us"] for r in rs)
        summary[target.name] = row

    def value(name: str, key: str) -> float | None:
        got = summary.get(name, {}).get(key)
        return float(got) if isinstance(got, (int, float)) and got else None

    ratios: dict[str, float] = {}
    checks: list[tuple[str, float, str, float]] = []  # label, value, "min"/"max", target

    def ratio(label: str, top: float | None, bottom: float | None) -> float | None:
        if top is None or bottom is None:
            return None
        ratios[label] = top / bottom
        return ratios[label]

    nexus_rps, nexus_cpu = value("nexus", "rps"), value("nexus", "cpu_us")
    litestar_cpu = value("litestar", "cpu_us")
    got = ratio("nexus / litestar (req/s)", nexus_rps, value("litestar", "rps"))
    if got is not None:
        checks.append(("durable SQLite req/s over bare Litestar", got, "min", 0.30))
    floor = None if litestar_cpu is None or floor_us is None else litestar_cpu + floor_us
    got = ratio("nexus CPU / (litestar CPU + SQLite floor)", nexus_cpu, floor)
    if got is not None:
        checks.append(("durable SQLite CPU over bare Litestar + floor", got, "max", 1.25))
    # The same line for the hand-written durable server: can anything reach it here?
    ratio(
        "litestar-durable CPU / (litestar CPU + floor)", value("litestar-durable", "cpu_us"), floor
    )
    ratio("nexus / litestar-durable (req/s)", nexus_rps, value("litestar-durable", "rps"))
    ratio("nexus CPU / litestar-durable CPU", nexus_cpu, value("litestar-durable", "cpu_us"))
    got = ratio("nexus / dbos-sqlite (req/s)", nexus_rps, value("dbos-sqlite", "rps"))
    if got is not None:
        checks.append(("durable SQLite req/s over DBOS on SQLite", got, "min", 15.0))
    ratio("nexus / dbos-postgres (req/s)", nexus_rps, value("dbos-postgres", "rps"))
    ratio("nexus-memory / litestar (req/s)", value("nexus-memory", "rps"), value("litestar", "rps"))
    ratio("nexus-full / nexus (req/s)", value("nexus-full", "rps"), nexus_rps)
    got = ratio(
        "nexus-ephemeral / litestar (req/s)",
        value("nexus-ephemeral", "rps"),
        value("litestar", "rps"),
    )
    if got is not None:
        checks.append(("ephemeral req/s over bare Litestar", got, "min", 0.70))
    ratio("nexus / kailash (req/s)", nexus_rps, value("kailash", "rps"))
    ratio("nexus-def / kailash (req/s)", value("nexus-def", "rps"), value("kailash", "rps"))
    if len(soak) >= 2:
        got = ratio("memory:// soak p99 last / first", soak[-1]["p99_ms"], soak[0]["p99_ms"])
        if got is not None:
            checks.append((f"memory:// p99 of run {len(soak)} over run 1", got, "max", 1.5))

    report = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "load_before": load_before,
        "load_after": load_after,
        "sqlite_floor_us": floor_us,
        "idle_rss_hello_example_mb": hello_rss,
        "idle_rss_hello_example_all_plugins_mb": hello_rss_all,
        "servers": summary,
        "soak": soak,
        "ratios": ratios,
        "targets": [
            {"what": label, "value": got, "bound": bound, "target": target, "met": met}
            for label, got, bound, target in checks
            for met in [got >= target if bound == "min" else got <= target]
        ],
        "note": "; ".join(notes),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print()
    print(
        f"HTTP invoke of a trivial function: {args.connections} connections, "
        f"{args.duration:g} s x {args.rounds} rounds (medians), {args.workers} worker(s); "
        f"load {load_before} -> {load_after} (2 cores, shared: a busy machine moves every row)"
    )
    for note in notes:
        print(note)
    print(
        f"{'server':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} "
        f"{'loop us':>8} {'non-2xx':>8} {'idle RSS':>9}"
    )
    for name, row in summary.items():
        cpu_text = f"{row['cpu_us']:.0f}"
        if "postgres_cpu_us" in row:
            cpu_text += f" +{row['postgres_cpu_us']:.0f} pg"
        print(
            f"{name:16} {row['rps']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{cpu_text:>11} {row['loop_cpu_us']:8.0f} {row['non_2xx']:8d} "
            f"{row['idle_rss_mb']:7.0f}MB"
        )
    if floor_us is not None:
        print(f"SQLite floor (bench/sqlite_floor.py): {floor_us:.0f} us of CPU per durable run")
    for label, got in ratios.items():
        print(f"{label:45} {got:6.2f}x")
    if soak:
        print(
            f"memory:// soak, {len(soak)} consecutive {args.soak_duration:g}-s runs: p99 "
            + " -> ".join(f"{r['p99_ms']:.1f}" for r in soak)
            + " ms; CPU "
            + " -> ".join(f"{r['cpu_us']:.0f}" for r in soak)
            + " us/req; RSS "
            + " -> ".join(f"{r['rss_mb']:.0f}" for r in soak)
            + " MB (a p99 that rises while CPU per request and RSS stay flat is the machine)"
        )
    for label, got, bound, target in checks:
        met = got >= target if bound == "min" else got <= target
        sign = ">=" if bound == "min" else "<="
        print(f"target {label} {sign} {target:g}x: {'met' if met else 'MISSED'} ({got:.2f}x)")
    print(
        f"idle RSS of `python -m nexus_plugin_api examples/hello.py`: {hello_rss:.0f} MB "
        f"(every installed plugin loaded: {hello_rss_all:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
