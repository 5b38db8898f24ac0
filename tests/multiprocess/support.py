"""The multi-process proof harness: real processes on one SQLite file, counted exactly.

Each scenario writes a test application to a folder of its own (``app.py`` and
its ``nexus.toml``), starts real processes on one SQLite file (``nexus serve``
with ``--workers``, two servers, an admin script, ``nexus run``), puts them
under load, kills one with ``SIGKILL`` mid-load, and then measures:

* **runs lost**: run ids a client got back (202 from ``POST
  /workflows/pipeline/runs`` with ``Prefer: respond-async``, or ``nexus run``'s
  answer) that are not ``completed`` once every lease had time to expire;
* **runs duplicated**: runs that reached their end more than once (two
  ``run.*`` end events in the log, or their last node executed twice);
* **executions of a live run by a second process**: a node of run R executed
  by process B while a process A that had executed a node of R was still alive;
* **attempts undercounted**: node executions (from the node log below) that
  the checkpoints' ``attempts`` (``GET /runs/{id}``) do not count;
* **attempts overcounted beyond the engine's bound**: ``attempts`` above the
  executions by more than one per earlier owner that had started the run (a
  ``run.started`` event marked ``resumed``). An owner killed in the instant
  between storing a node's start (its parent's checkpoint, or a ``running``
  one) and entering the node leaves one count for an execution that never
  began; no record written before user code runs can tell the two apart
  (see :mod:`nexus_core.engine`). Those are counted too, but not a problem;
* **events missed / duplicated / out of order / unknown** for a subscriber of
  ``GET /events`` (SSE) that reconnects with ``Last-Event-ID`` every ~2 s,
  compared with the event log read from storage at the end.

Every node of the test app appends one line ``run_id node_id pid time`` to a
shared node-execution log (``O_APPEND``, one ``write`` per line) as it starts,
so executions are counted exactly, whichever process ran them. The workflow
``pipeline`` is ``n1 -> n2 -> n3`` with a slow middle node (``SLOW`` seconds),
so runs are live when a process is killed.

Waits are on conditions with deadlines, never fixed sleeps. Lease settings
(``services.runs.lease`` / ``heartbeat``) are written to ``nexus.toml`` only
when the imported core knows them (:func:`lease_supported`), so the same
harness measures the code from before leases.

``python -m tests.multiprocess.support a|b|c [--json]`` runs one scenario and
prints its figures (what ``/work/notes/figures13.md`` records).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "HEARTBEAT",
    "LEASE",
    "SLOW",
    "Execution",
    "Figures",
    "Load",
    "Project",
    "Server",
    "Subscriber",
    "lease_supported",
    "scenario_admin_beside_server",
    "scenario_two_servers",
    "scenario_workers",
    "wait_until",
]

#: Lease length and heartbeat the tests configure (seconds).
LEASE = 2.0
HEARTBEAT = 0.5
#: How long the middle node of ``pipeline`` takes (seconds).
SLOW = 1.0
#: How long an accepted run may take to finish after the load stops: a few leases.
SETTLE = 60.0
_TERMINAL = frozenset({"completed", "failed", "cancelled"})
_END_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
_LAST_NODE = "n3"

APP = '''
"""The multi-process test app: every node logs its execution, the middle one is slow."""

import os
import time

import anyio

from nexus_core import Nexus, WorkflowBuilder
from nexus_core.workflows import FunctionNode
from nexus_core.workflows.node import current_context

NODE_LOG = {node_log!r}
SLOW = {slow!r}

app = Nexus("mp")


def record() -> None:
    """One line per execution, one write (O_APPEND): run_id node_id pid time."""
    context = current_context()
    line = f"{{context.run_id}} {{context.node_id}} {{os.getpid()}} {{time.time():.6f}}\\n"
    fd = os.open(NODE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def n1(x: int) -> int:
    record()
    return x + 1


async def n2(y: int) -> int:
    record()
    await anyio.sleep(SLOW)
    return y * 2


async def n3(z: int) -> int:
    record()
    return z + 100


wb = WorkflowBuilder("pipeline")
wb.add_node(FunctionNode, "n1", {{"function": n1}})
wb.add_node(FunctionNode, "n2", {{"function": n2}})
wb.add_node(FunctionNode, "n3", {{"function": n3}})
wb.add_connection("n1", "result", "n2", "y")
wb.add_connection("n2", "result", "n3", "z")
wb.add_workflow_inputs("n1", {{"x": "x"}})
wb.set_output("n3", "result")
app.register(wb)
'''

ADMIN = '''
"""An admin script beside a live server (the docs' rotate.py kind): it only reads."""

import anyio

from app import app


async def main() -> None:
    async with app:
        runs = await app.list_runs(limit=50)
        print(len(runs), flush=True)


anyio.run(main)
'''


# -- waiting ------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` every ``interval`` s until truthy (returned) or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def lease_supported() -> bool:
    """Whether the imported core has run leases (``services.runs.lease``)."""
    from nexus_core.config import RunsConfig

    return "lease" in RunsConfig.__struct_fields__


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nexus_command() -> list[str]:
    """The ``nexus`` console script next to this Python, else ``python -m nexus_plugin_cli``."""
    script = Path(sys.executable).parent / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexus_plugin_cli"]


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``) that are workers, not helpers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            if parent != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        if b"resource_tracker" not in cmdline:
            found.append(int(entry))
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the project: app, config, node log, processes ----------------------------------------


@dataclass(frozen=True)
class Execution:
    """One line of the node-execution log."""

    run_id: str
    node_id: str
    pid: int
    time: float


class Project:
    """A folder with the test app, its ``nexus.toml`` and the shared node log and database."""

    def __init__(self, root: Path, *, lease: bool | None = None) -> None:
        self.root = root
        self.appdir = root / "app"
        self.appdir.mkdir(parents=True, exist_ok=True)
        self.node_log = root / "nodes.log"
        self.db = root / "mp.db"
        self.db_url = f"sqlite:///{self.db}"
        self.lease = lease_supported() if lease is None else lease
        self.app = self.appdir / "app.py"
        self.app.write_text(APP.format(node_log=str(self.node_log), slow=SLOW).lstrip())
        (self.appdir / "admin.py").write_text(textwrap.dedent(ADMIN).lstrip())
        config = f'[nexus]\nstorage = "{self.db_url}"\n'
        if self.lease:
            config += f"\n[nexus.services.runs]\nlease = {LEASE}\nheartbeat = {HEARTBEAT}\n"
        (self.appdir / "nexus.toml").write_text(config)
        self.node_log.touch()
        #: When each process this harness killed or saw exit was last alive (wall clock).
        self.ended: dict[int, float] = {}
        self._logs = 0

    def env(self) -> dict[str, str]:
        """A clean environment: no NEXUS_* or XDG settings of the caller; HTTP only."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("NEXUS_", "XDG_")) and key != "COVERAGE_PROCESS_START"
        }
        home = self.root / "home"
        env.update(
            NEXUS_CONFIG_HOME=str(home / "config" / "nexus"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_CACHE_HOME=str(home / "cache"),
            NEXUS_DISABLE_PLUGINS="nexus-plugin-mcp,nexus-plugin-voice",
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
        )
        return env

    def log_path(self, name: str) -> Path:
        """A fresh log file for a process."""
        self._logs += 1
        return self.root / f"{self._logs:02d}-{name}.log"

    def serve(self, *, workers: int = 1, port: int | None = None) -> Server:
        """Start ``nexus serve app.py`` (not waiting for it: see :meth:`Server.wait_ready`)."""
        return Server(self, workers=workers, port=port or free_port())

    def run_script(self, args: Sequence[str], name: str, timeout: float = 90) -> Done:
        """Run a process in the app folder to its end; remember when it ended."""
        log = self.log_path(name)
        with log.open("wb") as sink:
            process = subprocess.Popen(
                list(args),
                cwd=self.appdir,
                env=self.env(),
                stdout=subprocess.PIPE,
                stderr=sink,
            )
            try:
                out, _ = process.communicate(timeout=timeout)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                self.ended[process.pid] = time.time()
        return Done(process.pid, process.returncode, out.decode(errors="replace"), log)

    def executions(self) -> list[Execution]:
        """Every line of the node log so far (a torn last line is left for later)."""
        found = []
        for line in self.node_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                found.append(Execution(parts[0], parts[1], int(parts[2]), float(parts[3])))
        return found

    def live_runs(self, now: float | None = None) -> dict[int, set[str]]:
        """By pid: runs whose latest node started there is n1 or n2, started recently."""
        now = time.time() if now is None else now
        latest: dict[str, Execution] = {}
        for execution in self.executions():
            latest[execution.run_id] = execution
        live: dict[int, set[str]] = defaultdict(set)
        for run_id, execution in latest.items():
            if execution.node_id != _LAST_NODE and now - execution.time < SLOW * 0.8:
                live[execution.pid].add(run_id)
        return live

    def storage(self) -> Any:
        """The (unopened) storage holding the shared event log."""
        from nexus_core.storage.sqlite import SQLiteStorage

        return SQLiteStorage(self.db_url)

    def read_log(self) -> list[Any]:
        """Every event of the shared event log, in log order (read from storage)."""
        import anyio

        async def read() -> list[Any]:
            storage = self.storage()
            await storage.open()
            try:
                events: list[Any] = []
                after = None
                while True:
                    page = await storage.read_events(after=after, limit=1000)
                    events.extend(page)
                    if len(page) < 1000:
                        return events
                    after = page[-1].id
            finally:
                await storage.close()

        return anyio.run(read)


@dataclass
class Done:
    """A process run to its end."""

    pid: int
    code: int | None
    stdout: str
    log: Path


class Server:
    """A ``nexus serve app.py`` process (with its supervised workers when ``workers > 1``)."""

    def __init__(self, project: Project, *, workers: int, port: int) -> None:
        self.project = project
        self.workers = workers
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = project.log_path(f"serve-{port}")
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [
                    *nexus_command(),
                    "serve",
                    "app.py",
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ],
                cwd=project.appdir,
                env=project.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        """The ``nexus serve`` process (the supervisor when there are several workers)."""
        return self.process.pid

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace")

    def ready_count(self) -> int:
        """How many hosts (workers) said they serve so far."""
        return self.output().count("serving channels")

    def worker_pids(self) -> list[int]:
        """The processes running the host: the workers, or the server itself."""
        if self.workers == 1:
            return [self.pid]
        return [pid for pid in children(self.pid) if alive(pid)]

    def wait_ready(self, hosts: int | None = None, timeout: float = 60) -> None:
        """Wait until ``hosts`` hosts (default: every worker) serve and the socket answers."""
        hosts = self.workers if hosts is None else hosts

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"nexus serve exited:\n{self.output()}")
            if self.ready_count() < hosts:
                return False
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200
            return False

        wait_until(ready, timeout, f"{hosts} host(s) of {self.url} to serve")

    def kill(self, pid: int | None = None) -> int:
        """``SIGKILL`` ``pid`` (default: the server itself); return it once it is gone."""
        pid = self.pid if pid is None else pid
        self.project.ended[pid] = time.time()
        os.kill(pid, signal.SIGKILL)
        if pid == self.pid:
            self.process.wait(10)
        else:
            wait_until(lambda: not alive(pid), 10, f"worker {pid} to die")
        return pid

    def stop(self, timeout: float = 30) -> None:
        """``SIGTERM`` and wait (``SIGKILL`` the group after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        now = time.time()
        for pid in [self.pid, *children(self.pid)]:
            self.project.ended.setdefault(pid, now)


# -- clients -------------------------------------------------------------------------------


class Load:
    """Client threads posting runs (``Prefer: respond-async``) and following each to its end.

    Each thread posts to the next URL of :attr:`urls` (a fresh connection per
    request, so the workers of one socket share the load), records the run id
    it got back as accepted, and polls ``GET /runs/{id}`` until the run ends
    (or ``follow`` seconds pass) before posting the next.
    """

    def __init__(self, urls: Sequence[str], clients: int = 6, follow: float = 10.0) -> None:
        self.urls = list(urls)
        self.clients = clients
        self.follow = follow
        self.accepted: dict[str, str] = {}  # run id -> URL that accepted it
        self.accepted_at: dict[str, float] = {}
        self.refused = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._turn = 0
        self._threads = [
            threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]

    def start(self) -> Load:
        """Start the client threads."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop posting; wait for the threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def count(self) -> int:
        """Runs accepted so far."""
        return len(self.accepted)

    def accepted_since(self, moment: float) -> int:
        """Runs accepted after ``moment`` (wall clock)."""
        with self._lock:
            return sum(1 for t in self.accepted_at.values() if t > moment)

    def use(self, urls: Sequence[str]) -> None:
        """Post to ``urls`` from now on."""
        with self._lock:
            self.urls = list(urls)

    def _next_url(self) -> str:
        with self._lock:
            self._turn += 1
            return self.urls[self._turn % len(self.urls)]

    def _client(self) -> None:
        x = 0
        while not self._stop.is_set():
            url = self._next_url()
            x += 1
            try:
                answer = httpx.post(
                    f"{url}/workflows/pipeline/runs",
                    json={"x": x},
                    headers={"Prefer": "respond-async"},
                    timeout=10,
                )
            except httpx.HTTPError:
                self.errors += 1  # killed mid-request: no run id came back, nothing accepted
                self._stop.wait(0.1)
                continue
            if answer.status_code not in (200, 202):
                self.refused += 1
                self._stop.wait(0.1)
                continue
            run_id = answer.json()["run_id"]
            with self._lock:
                self.accepted[run_id] = url
                self.accepted_at[run_id] = time.time()
            self._follow(run_id, url)

    def _follow(self, run_id: str, url: str) -> None:
        deadline = time.monotonic() + self.follow
        while time.monotonic() < deadline and not self._stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                answer = httpx.get(f"{self._next_url()}/runs/{run_id}", timeout=5)
                if answer.status_code == 200 and answer.json()["status"] in _TERMINAL:
                    return
            self._stop.wait(0.1)


@dataclass
class Received:
    """One SSE frame with an id."""

    id: str
    type: str
    run_id: str | None


class Subscriber(threading.Thread):
    """``GET /events?types=run.*,node.*`` over SSE, reconnecting with ``Last-Event-ID``.

    It reconnects every ``every`` seconds (and whenever the stream breaks or
    stays silent for ``every / 4`` seconds), resuming after the last id it
    received; it starts after ``after`` (the log's head when it was created).
    """

    def __init__(self, urls: Sequence[str], after: str | None, every: float = 2.0) -> None:
        super().__init__(name="sse-subscriber", daemon=True)
        self.urls = list(urls)
        self.after = after
        self.cursor = after
        self.every = every
        self.received: list[Received] = []
        self.lagged = 0
        self.connections = 0
        self.failures = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        """The ids received so far, in arrival order."""
        with self._lock:
            return [r.id for r in self.received]

    def stop(self, timeout: float = 15) -> None:
        """Stop reconnecting; wait for the thread."""
        self._halt.set()
        self.join(timeout)

    def run(self) -> None:
        turn = 0
        while not self._halt.is_set():
            url = self.urls[turn % len(self.urls)]
            try:
                self._connect(url)
            except httpx.HTTPError:
                self.failures += 1
                turn += 1  # that server may be gone: try the next one
                self._halt.wait(0.1)

    def _connect(self, url: str) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.cursor is not None:
            headers["Last-Event-ID"] = self.cursor
        timeout = httpx.Timeout(5.0, read=self.every / 4)
        opened = time.monotonic()
        with httpx.stream(
            "GET",
            f"{url}/events",
            params={"types": "run.*,node.*"},
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                raise httpx.HTTPStatusError("refused", request=response.request, response=response)
            self.connections += 1
            frame: dict[str, str] = {}
            try:
                for line in response.iter_lines():
                    if line == "":
                        self._frame(frame)
                        frame = {}
                        if time.monotonic() - opened >= self.every or self._halt.is_set():
                            return
                        continue
                    if line.startswith(":"):
                        continue
                    key, _, value = line.partition(":")
                    frame[key] = value[1:] if value.startswith(" ") else value
            except httpx.ReadTimeout:
                return  # silent for a while: reconnect from the cursor

    def _frame(self, frame: dict[str, str]) -> None:
        if "data" not in frame:
            return
        if "id" not in frame:
            if frame.get("event") == "subscription.lagged":
                self.lagged += 1
            return
        data = json.loads(frame["data"])
        with self._lock:
            self.received.append(Received(frame["id"], data.get("type", ""), data.get("run_id")))
            self.cursor = frame["id"]


# -- figures -------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured (the assertions are on these)."""

    scenario: str
    lease: bool
    accepted: int = 0
    post_errors: int = 0
    runs_lost: int = 0
    lost_statuses: dict[str, int] = field(default_factory=dict)
    runs_duplicated: int = 0
    executions: int = 0
    second_process_executions: int = 0
    runs_run_by_a_second_process: int = 0
    attempts_undercounted: int = 0
    attempts_overcounted: int = 0
    attempts_overcounted_beyond_bound: int = 0
    events_expected: int = 0
    events_received: int = 0
    events_missed: int = 0
    run_end_events_missed: int = 0
    missed_types: dict[str, int] = field(default_factory=dict)
    events_duplicated: int = 0
    events_out_of_order: int = 0
    events_unknown: int = 0
    lagged_markers: int = 0
    sse_connections: int = 0
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every figure that breaks the issue's guarantees, as readable lines."""
        checks = {
            "accepted runs lost": self.runs_lost,
            "runs duplicated": self.runs_duplicated,
            "node executions of a live run by a second process": self.second_process_executions,
            "node executions not counted in attempts": self.attempts_undercounted,
            "attempts counting executions that did not happen, beyond one per owner lost": (
                self.attempts_overcounted_beyond_bound
            ),
            "events missed by the Last-Event-ID subscriber": self.events_missed,
            "events received twice": self.events_duplicated,
            "events received out of log order": self.events_out_of_order,
            "events received that the log does not hold": self.events_unknown,
        }
        return [f"{name}: {value}" for name, value in checks.items() if value]

    def report(self) -> str:
        """The figures as indented JSON, for assertion messages."""
        return json.dumps(asdict(self), indent=2)


def measure(
    figures: Figures,
    project: Project,
    load: Load,
    extra_accepted: Sequence[str],
    subscriber: Subscriber,
    urls: Sequence[str],
) -> Figures:
    """Wait for every accepted run to end, then count everything into ``figures``.

    ``urls`` must still serve (``GET /runs/{id}``); the subscriber is stopped here.
    """
    accepted = [*load.accepted, *extra_accepted]
    figures.accepted = len(accepted)
    figures.post_errors = load.errors
    statuses: dict[str, str] = {}

    def fetch(run_id: str) -> dict[str, Any] | None:
        for url in urls:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                answer = httpx.get(f"{url}/runs/{run_id}", timeout=5)
                if answer.status_code == 200:
                    return dict(answer.json())
                if answer.status_code == 404:
                    return None
        return None

    bodies: dict[str, dict[str, Any] | None] = {}

    def all_ended() -> bool:
        for run_id in accepted:
            if statuses.get(run_id) in _TERMINAL:
                continue
            body = bodies[run_id] = fetch(run_id)
            statuses[run_id] = body["status"] if body else "missing"
            if statuses[run_id] not in _TERMINAL:
                return False
        return True

    with contextlib.suppress(AssertionError):
        wait_until(all_ended, SETTLE, "every accepted run to end", 0.2)
    for run_id in accepted:  # what the storage says once the wait is over
        if statuses.get(run_id) not in _TERMINAL:
            body = bodies[run_id] = fetch(run_id)
            statuses[run_id] = body["status"] if body else "missing"
    lost = [r for r in accepted if statuses.get(r) != "completed"]
    figures.runs_lost = len(lost)
    figures.lost_statuses = dict(Counter(statuses[r] for r in lost))
    if lost:
        figures.notes.append(f"lost runs (first 5): {', '.join(lost[:5])}")

    # The subscriber catches up with the log (or a deadline passes), then stops.
    def caught_up() -> bool:
        expected = {e.id for e in _after(project.read_log(), subscriber.after) if _watched(e)}
        return expected <= set(subscriber.ids())

    with contextlib.suppress(AssertionError):
        wait_until(caught_up, 3 * LEASE + 10, "the subscriber to receive the whole log", 0.5)
    subscriber.stop()
    log = project.read_log()

    # Node executions, per run and node, from the node log.
    executions = project.executions()
    figures.executions = len(executions)
    by_run: dict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        by_run[execution.run_id].append(execution)
    second = set()
    for run_executions in by_run.values():
        run_executions.sort(key=lambda e: e.time)
        for index, later in enumerate(run_executions):
            for earlier in run_executions[:index]:
                if earlier.pid != later.pid and project.ended.get(earlier.pid, float("inf")) > (
                    later.time
                ):
                    second.add(later)
                    break
    figures.second_process_executions = len(second)
    figures.runs_run_by_a_second_process = len({e.run_id for e in second})

    # Attempts: every execution counted in the checkpoints, and at most one more
    # per owner that started the run and lost it (each resume says so).
    counts = Counter((e.run_id, e.node_id) for e in executions)
    owners_lost = Counter(
        e.run_id for e in log if e.type == "run.started" and (e.data or {}).get("resumed")
    )
    for run_id in accepted:
        body = bodies.get(run_id) or fetch(run_id)
        if not body:
            continue
        for node_id, node in (body.get("nodes") or {}).items():
            ran = counts.get((run_id, node_id), 0)
            attempts = int(node.get("attempts") or 0)
            figures.attempts_undercounted += max(0, ran - attempts)
            overcounted = max(0, attempts - ran)
            figures.attempts_overcounted += overcounted
            figures.attempts_overcounted_beyond_bound += max(0, overcounted - owners_lost[run_id])

    # Runs that ended more than once.
    ends = Counter(e.run_id for e in log if e.type in _END_EVENTS)
    last_nodes = Counter(e.run_id for e in executions if e.node_id == _LAST_NODE)
    figures.runs_duplicated = len(
        {r for r, n in ends.items() if n > 1} | {r for r, n in last_nodes.items() if n > 1}
    )

    # The subscriber against the log.
    expected = [e for e in _after(log, subscriber.after) if _watched(e)]
    position = {e.id: index for index, e in enumerate(log)}
    received = subscriber.ids()
    received_set = set(received)
    figures.events_expected = len(expected)
    figures.events_received = len(received)
    figures.events_missed = sum(1 for e in expected if e.id not in received_set)
    figures.run_end_events_missed = sum(
        1 for e in expected if e.type in _END_EVENTS and e.id not in received_set
    )
    figures.missed_types = dict(Counter(e.type for e in expected if e.id not in received_set))
    figures.events_duplicated = len(received) - len(received_set)
    figures.events_unknown = sum(1 for i in received_set if i not in position)
    highest = -1
    for event_id in received:
        where = position.get(event_id)
        if where is None:
            continue
        if where < highest:
            figures.events_out_of_order += 1
        highest = max(highest, where)
    figures.lagged_markers = subscriber.lagged
    figures.sse_connections = subscriber.connections
    return figures


def _watched(event: Any) -> bool:
    return str(event.type).startswith(("run.", "node."))


def _after(log: list[Any], after: str | None) -> list[Any]:
    if after is None:
        return log
    for index, event in enumerate(log):
        if event.id == after:
            return log[index + 1 :]
    return log


def _head(project: Project) -> str | None:
    log = project.read_log()
    return log[-1].id if log else None


@contextlib.contextmanager
def _servers(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


# -- scenarios -------------------------------------------------------------------------------


def scenario_workers(root: Path, *, clients: int = 6) -> Figures:
    """(a) ``nexus serve --workers 2`` under load; a worker killed -9 (and restarted)."""
    project = Project(root)
    figures = Figures("a: --workers 2, one worker killed -9", project.lease)
    server = project.serve(workers=2)
    with _servers(server):
        server.wait_ready()
        subscriber = Subscriber([server.url], _head(project))
        subscriber.start()
        load = Load([server.url], clients=clients).start()
        try:
            # Both workers execute runs, and the victim has been up long enough that the
            # supervisor restarts it (it gives up on a worker that dies within 5 s).
            def victim() -> int | None:
                pids = server.worker_pids()
                live = project.live_runs()
                if len(pids) < 2 or time.monotonic() - server.started < 6:
                    return None
                busy = [p for p in pids if len(live.get(p, ())) >= 2]
                others = [p for p in pids if live.get(p)]
                if busy and len(others) >= 2:
                    return busy[0]
                return None

            pid = wait_until(victim, 60, "both workers to execute runs")
            before = set(server.worker_pids())
            server.kill(pid)
            killed_at = time.time()
            wait_until(
                lambda: (
                    len(set(server.worker_pids()) - before) == 1 and len(server.worker_pids()) == 2
                ),
                30,
                "the supervisor to restart the killed worker",
            )
            server.wait_ready(hosts=3)
            figures.notes.append(f"killed worker {pid}; the supervisor restarted it")
            wait_until(
                lambda: load.accepted_since(killed_at) >= 3 * clients,
                60,
                "runs accepted after the restart",
            )
        finally:
            load.stop()
        return measure(figures, project, load, [], subscriber, [server.url])


def scenario_admin_beside_server(root: Path, *, clients: int = 4) -> Figures:
    """(b) an admin script (``async with app:``, a read) and ``nexus run`` beside a live server."""
    project = Project(root)
    figures = Figures("b: admin script and nexus run beside a live server", project.lease)
    server = project.serve(workers=1)
    extra: list[str] = []
    with _servers(server):
        server.wait_ready()
        subscriber = Subscriber([server.url], _head(project))
        subscriber.start()
        load = Load([server.url], clients=clients).start()
        try:
            live = lambda: len(project.live_runs().get(server.pid, ())) >= 2  # noqa: E731
            wait_until(live, 60, "runs live on the server")
            admin = project.run_script([sys.executable, "admin.py"], "admin")
            figures.notes.append(f"admin script: exit {admin.code}, printed {admin.stdout.strip()}")
            wait_until(live, 60, "runs live on the server again")
            run = project.run_script(
                [*nexus_command(), "--app", "app.py", "-o", "json", "run", "pipeline", "--x", "7"],
                "nexus-run",
            )
            figures.notes.append(f"nexus run: exit {run.code}")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                extra.append(json.loads(run.stdout)["run_id"])
            figures.notes.append(f"nexus run's run: {extra[-1] if extra else run.stdout[:200]}")
        finally:
            load.stop()
        return measure(figures, project, load, extra, subscriber, [server.url])


def scenario_two_servers(root: Path, *, clients: int = 6) -> Figures:
    """(c) two ``nexus serve`` on one database under load; one killed -9 and restarted."""
    project = Project(root)
    figures = Figures("c: two servers on one file, one killed -9 and restarted", project.lease)
    first = project.serve()
    second = project.serve()
    restarted: Server | None = None
    try:
        first.wait_ready()
        second.wait_ready()
        subscriber = Subscriber([first.url], _head(project))
        subscriber.start()
        load = Load([first.url, second.url], clients=clients).start()
        try:

            def both_busy() -> bool:
                live = project.live_runs()
                return len(live.get(first.pid, ())) >= 2 and len(live.get(second.pid, ())) >= 2

            wait_until(both_busy, 60, "runs live on both servers")
            load.use([first.url])  # the clients of the second server move to the first
            second.kill()
            killed_at = time.time()
            restarted = project.serve()
            restarted.wait_ready()
            load.use([first.url, restarted.url])
            figures.notes.append(f"killed server {second.pid}; restarted as {restarted.pid}")
            wait_until(
                lambda: load.accepted_since(killed_at) >= 3 * clients,
                60,
                "runs accepted after the restart",
            )
        finally:
            load.stop()
        return measure(figures, project, load, [], subscriber, [first.url, restarted.url])
    finally:
        for server in (first, second, restarted):
            if server is not None:
                server.stop()


SCENARIOS: dict[str, Callable[[Path], Figures]] = {
    "a": scenario_workers,
    "b": scenario_admin_beside_server,
    "c": scenario_two_servers,
}


def main(argv: list[str] | None = None) -> int:
    """Run scenarios in scratch folders and print their figures."""
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("scenarios", nargs="*", default=sorted(SCENARIOS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import nexus_core

    print(f"nexus_core from {nexus_core.__file__}; leases: {lease_supported()}", file=sys.stderr)
    results = []
    for name in args.scenarios:
        root = Path(tempfile.mkdtemp(prefix=f"nexus-mp-{name}-"))
        figures = SCENARIOS[name](root)
        results.append(asdict(figures))
        print(figures.report() if args.json else _table(figures), flush=True)
        print(f"(files in {root})", file=sys.stderr)
    return 0


def _table(figures: Figures) -> str:
    rows = [f"{figures.scenario} (leases: {figures.lease})"]
    for key, value in asdict(figures).items():
        if key not in ("scenario", "lease"):
            rows.append(f"  {key:34} {value}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
