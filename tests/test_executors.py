"""The ``workers`` executor: gateways queue runs in the run store, ``nexus worker`` executes them.

The first tests run a gateway host and a worker host in this process, on one
SQLite file. The ``slow`` ones start real processes on one SQLite file: an
``async with app:`` script as the gateway, ``nexus worker`` subprocesses as
workers. Every node appends ``run_id node_id pid`` to a shared node log as it
starts, so executions are counted exactly, whichever process ran them. Waits
are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_core import Nexus
from nexus_core.config import ConfigError
from nexus_core.executors import RUN_SUBMITTED, InlineExecutor, WorkerQueueExecutor
from nexus_core.storage.sqlite import SQLiteStorage

LEASE = 1.5
HEARTBEAT = 0.3

# -- in process: a gateway host and a worker host on one file --------------------------------


def make_app(url: str, executor: str = "workers", **runs: Any) -> Nexus:
    config = {"services": {"runs": {"executor": executor, "lease": LEASE, "heartbeat": HEARTBEAT}}}
    config["services"]["runs"].update(runs)
    app = Nexus("wq", storage=url, autoload=False, config=config, env={})

    @app.workflow
    async def double(x: int) -> int:
        return x * 2

    @app.workflow
    async def shout(text: str) -> str:
        return text.upper()

    return app


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


def test_the_core_registers_the_workers_executor(db_url: str) -> None:
    app = make_app(db_url)
    assert app.host.executors()["workers"].load() is WorkerQueueExecutor
    executor = app.engine.executor
    assert isinstance(executor, WorkerQueueExecutor)
    assert executor.needs_workers and not executor.inline
    assert not InlineExecutor.needs_workers


@pytest.mark.anyio
async def test_a_gateway_gets_its_result_from_a_worker(db_url: str) -> None:
    gateway, worker = make_app(db_url), make_app(db_url)
    async with gateway, worker:
        submitted = gateway.subscribe((RUN_SUBMITTED,))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.engine.executor.work, worker.engine)
            with anyio.fail_after(30):
                result = await gateway.invoke("double", {"x": 21})
            tg.cancel_scope.cancel()
        async with submitted:
            with anyio.fail_after(10):
                event = await submitted.__anext__()
    assert result.status == "completed" and result.output == 42
    assert event.run_id == result.run_id and event.data == {"workflow": "double"}
    async with make_app(db_url) as reader:
        record = await reader.storage.get_run(result.run_id)  # type: ignore[union-attr]
    assert record is not None and record.fence == 1  # claimed once, by the worker
    assert record.owner == worker.engine.owner_id


@pytest.mark.anyio
async def test_a_claim_that_never_started_the_run_is_not_counted_as_an_attempt(
    db_url: str,
) -> None:
    """A process claimed a queued run and died before starting it: its claim ran nothing.

    The next owner's attempts must count only its own execution, and its
    ``run.started`` does not call the run resumed.
    """
    gateway, worker = make_app(db_url), make_app(db_url)
    async with gateway, worker:
        accepted = await gateway.invoke("double", {"x": 4}, wait=False)
        storage = gateway.storage
        assert storage is not None
        # The dead claimant: its lease (fence 1) ends at once, and it never started.
        claimed = await storage.claim_run(accepted.run_id, "dead/1/x", lease=0.0, now=time.time())
        assert claimed is not None and claimed.fence == 1 and claimed.started_at is None
        started = gateway.subscribe(("run.started",))
        async with started, anyio.create_task_group() as tg:
            tg.start_soon(worker.engine.executor.work, worker.engine)
            with anyio.fail_after(30):
                result = await gateway.wait(accepted.run_id)
                event = await started.__anext__()
            tg.cancel_scope.cancel()
    assert result.status == "completed" and result.output == 8
    assert result.nodes["double"].attempts == 1  # not 2: the dead claim ran nothing
    assert event.data["resumed"] is False
    async with make_app(db_url) as reader:
        record = await reader.storage.get_run(accepted.run_id)  # type: ignore[union-attr]
    assert record is not None and record.fence == 2


@pytest.mark.anyio
async def test_a_serving_gateway_never_claims_queued_runs(db_url: str) -> None:
    async with make_app(db_url) as first:
        queued = await first.invoke("double", {"x": 1}, wait=False)
    assert queued.status == "pending"
    # A gateway that recovers (as `nexus serve` does) leaves queued runs to the workers.
    gateway, worker = make_app(db_url), make_app(db_url)
    async with gateway.running(recover=True), worker:
        assert gateway.engine.recovering
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.engine.executor.work, worker.engine)
            with anyio.fail_after(30):
                result = await gateway.wait(queued.run_id)
            tg.cancel_scope.cancel()
        record = await gateway.storage.get_run(queued.run_id)  # type: ignore[union-attr]
    assert result.status == "completed" and result.output == 2
    assert record is not None and record.fence == 1  # the worker's claim was the only one


@pytest.mark.anyio
async def test_queues_name_the_workflows_a_worker_executes(db_url: str) -> None:
    gateway, worker = make_app(db_url), make_app(db_url)
    async with gateway, worker:
        first = await gateway.invoke("double", {"x": 2}, wait=False)
        second = await gateway.invoke("shout", {"text": "hey"}, wait=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: worker.engine.executor.work(worker.engine, queues=("shout",)))
            with anyio.fail_after(30):
                shouted = await gateway.wait(second.run_id)
            tg.cancel_scope.cancel()
        # The older run was seen first, and left alone: not this worker's queue.
        doubled = await gateway.storage.get_run(first.run_id)  # type: ignore[union-attr]
    assert shouted.output == "HEY"
    assert doubled is not None and doubled.status == "pending" and doubled.fence == 0


@pytest.mark.anyio
async def test_cancelling_a_queued_run_records_it_cancelled(db_url: str) -> None:
    async with make_app(db_url) as gateway:
        queued = await gateway.invoke("double", {"x": 3}, wait=False)
        assert await gateway.cancel(queued.run_id)
        result = await gateway.get_run(queued.run_id)
    assert result.status == "cancelled"


@pytest.mark.anyio
async def test_the_inline_executor_refuses_to_work(db_url: str) -> None:
    app = make_app(db_url, executor="inline")
    with pytest.raises(ConfigError, match="needs an executor that uses workers"):
        await app.engine.executor.work(app.engine)


@pytest.mark.anyio
async def test_concurrency_must_be_positive(db_url: str) -> None:
    app = make_app(db_url)
    with pytest.raises(ValueError, match="at least 1"):
        await app.engine.executor.work(app.engine, concurrency=0)


# -- real processes: an `async with app:` gateway script, `nexus worker` subprocesses ---------

APP = '''
"""The worker test app: every node logs its execution; `gated` waits for a file."""

import os

import anyio

from nexus_core import Nexus
from nexus_core.workflows.node import current_context

NODE_LOG = {node_log!r}
GATE = {gate!r}

app = Nexus("wq")


def record() -> None:
    """One line per execution, one write (O_APPEND): run_id node_id pid."""
    context = current_context()
    line = f"{{context.run_id}} {{context.node_id}} {{os.getpid()}}\\n"
    fd = os.open(NODE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.workflow
async def quick(x: int) -> int:
    record()
    return x + 1


@app.workflow
async def gated(x: int) -> int:
    record()
    while not os.path.exists(GATE):
        await anyio.sleep(0.05)
    return x * 2
'''

CLIENT = '''
"""The gateway: `invoke WF JSON` (waits), `submit WF JSON N`, `cancel-live WF JSON`."""

import json
import os
import sys

import anyio

from app import NODE_LOG, app


async def main(command: str, workflow: str, inputs: str, count: str = "1") -> None:
    async with app:
        values = json.loads(inputs)
        if command == "invoke":
            result = await app.invoke(workflow, values)
            print(json.dumps({{"run_id": result.run_id, "status": result.status,
                              "output": result.output}}), flush=True)
        elif command == "submit":
            for _ in range(int(count)):
                print((await app.invoke(workflow, values, wait=False)).run_id, flush=True)
        elif command == "cancel-live":
            run = await app.invoke(workflow, values, wait=False)
            print(run.run_id, flush=True)
            with anyio.fail_after(60):  # until a worker executes its node
                while run.run_id not in open(NODE_LOG).read():
                    await anyio.sleep(0.05)
            cancelled = await app.cancel(run.run_id)
            with anyio.fail_after(60):
                result = await app.wait(run.run_id)
            print(json.dumps({{"cancelled": cancelled, "status": result.status}}), flush=True)


anyio.run(main, *sys.argv[1:])
'''


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``predicate`` until it is truthy (returned) or ``timeout`` seconds pass (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def nexus_command() -> list[str]:
    """The ``nexus`` console script next to this Python, else ``python -m nexus_plugin_cli``.

    Skips the calling test when nexus-plugin-cli is not installed (``nox -s core_alone``).
    """
    pytest.importorskip("nexus_plugin_cli", reason="nexus worker comes from nexus-plugin-cli")
    script = Path(sys.executable).parent / "nexus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nexus_plugin_cli"]


class Worker:
    """A ``nexus worker app.py`` subprocess, its output in a log file."""

    def __init__(self, project: Project, *args: str) -> None:
        self.project = project
        project.count += 1
        self.log = project.root / f"worker-{project.count}.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [*nexus_command(), "worker", "app.py", *args],
                cwd=project.appdir,
                env=project.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        """The worker's process id (the one the node log names)."""
        return self.process.pid

    def output(self) -> str:
        """What the worker printed so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> Worker:
        """Wait for its "worker ready" line."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"nexus worker exited:\n{self.output()}")
            return "worker ready: executor workers" in self.output()

        wait_until(ready, "nexus worker to be ready")
        return self

    def stop(self) -> int:
        """SIGTERM, then its exit code (killed if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Project:
    """A folder with the app, its ``nexus.toml`` (executor ``workers``), node log and gate."""

    def __init__(self, root: Path, executor: str = "workers") -> None:
        self.root = root
        self.appdir = root / "app"
        self.appdir.mkdir()
        self.node_log = root / "nodes.log"
        self.node_log.touch()
        self.gate = root / "gate"
        self.db = root / "queue.db"
        (self.appdir / "app.py").write_text(
            APP.format(node_log=str(self.node_log), gate=str(self.gate)).lstrip()
        )
        (self.appdir / "client.py").write_text(textwrap.dedent(CLIENT.format()).lstrip())
        (self.appdir / "nexus.toml").write_text(
            f'[nexus]\nstorage = "sqlite:///{self.db}"\n\n'
            f'[nexus.services.runs]\nexecutor = "{executor}"\n'
            f"lease = {LEASE}\nheartbeat = {HEARTBEAT}\nshutdown_grace = 1\n"
        )
        self.count = 0
        self.workers: list[Worker] = []

    def env(self) -> dict[str, str]:
        """A clean environment: no NEXUS_* or XDG settings of the caller."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("NEXUS_", "XDG_")) and key != "COVERAGE_PROCESS_START"
        }
        env.update(
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_CACHE_HOME=str(self.root / "cache"),
            NEXUS_DISABLE_PLUGINS="nexus-plugin-mcp,nexus-plugin-voice",
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
        )
        return env

    def worker(self, *args: str) -> Worker:
        """Start a ``nexus worker`` and wait until it is ready."""
        worker = Worker(self, *args)
        self.workers.append(worker)
        return worker.wait_ready()

    def client(self, *args: str, timeout: float = 120) -> list[str]:
        """Run the gateway script to its end; its output lines."""
        done = subprocess.run(
            [sys.executable, "client.py", *args],
            cwd=self.appdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def client_popen(self, *args: str) -> subprocess.Popen[str]:
        """Start the gateway script."""
        return subprocess.Popen(
            [sys.executable, "client.py", *args],
            cwd=self.appdir,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def executions(self) -> list[tuple[str, str, int]]:
        """Every line of the node log: (run id, node id, pid)."""
        found = []
        for line in self.node_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                found.append((parts[0], parts[1], int(parts[2])))
        return found

    def read(self, reader: Callable[[SQLiteStorage], Any]) -> Any:
        """Read the shared database (``reader`` is an async function of the storage)."""

        async def read() -> Any:
            storage = SQLiteStorage(f"sqlite:///{self.db}")
            await storage.open()
            try:
                return await reader(storage)
            finally:
                await storage.close()

        return anyio.run(read)

    def statuses(self, run_ids: list[str]) -> dict[str, str]:
        """The stored status of each run."""

        async def reader(storage: SQLiteStorage) -> dict[str, str]:
            out: dict[str, str] = {}
            for run_id in run_ids:
                record = await storage.get_run(run_id)
                out[run_id] = record.status if record else "unknown"
            return out

        return self.read(reader)

    def events(self) -> list[Any]:
        """Every event of the shared log."""

        async def reader(storage: SQLiteStorage) -> list[Any]:
            return await storage.read_events(limit=100_000)

        return self.read(reader)

    def checkpoints(self, run_id: str) -> dict[str, Any]:
        """The run's node checkpoints."""

        async def reader(storage: SQLiteStorage) -> dict[str, Any]:
            return await storage.get_checkpoints(run_id)

        return self.read(reader)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    pytest.importorskip("nexus_plugin_cli", reason="nexus worker comes from nexus-plugin-cli")
    project = Project(tmp_path)
    try:
        yield project
    finally:
        for worker in project.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


@pytest.mark.slow
def test_a_gateway_script_gets_its_result_from_nexus_worker(project: Project) -> None:
    worker = project.worker("--concurrency", "2")
    (line,) = project.client("invoke", "quick", '{"x": 41}')
    result = json.loads(line)
    assert result["status"] == "completed" and result["output"] == 42
    assert project.executions() == [(result["run_id"], "quick", worker.pid)]
    assert worker.stop() == 0
    assert "worker stopped" in worker.output() and "Traceback" not in worker.output()


@pytest.mark.slow
def test_two_workers_share_the_runs_and_execute_each_once(project: Project) -> None:
    first = project.worker("--concurrency", "1")
    second = project.worker("--concurrency", "1")
    run_ids = project.client("submit", "gated", '{"x": 1}', "6")
    # Each worker holds one gated run (concurrency 1): the second run is the other's.
    wait_until(lambda: len(project.executions()) >= 2, "both workers to start a run")
    project.gate.touch()
    wait_until(
        lambda: set(project.statuses(run_ids).values()) == {"completed"}, "every run to complete"
    )
    executions = project.executions()
    assert sorted(run for run, _, _ in executions) == sorted(run_ids)  # each run once
    assert {pid for _, _, pid in executions} == {first.pid, second.pid}
    ends = Counter(e.run_id for e in project.events() if e.type == "run.completed")
    assert ends == dict.fromkeys(run_ids, 1)


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_it_to_another_after_the_lease(project: Project) -> None:
    doomed = project.worker()
    client = project.client_popen("invoke", "gated", '{"x": 5}')
    wait_until(lambda: project.executions(), "the first worker to start the run")
    survivor = project.worker()  # ready while the run is leased to the first one
    doomed.process.kill()  # SIGKILL: its lease is left to expire
    doomed.process.wait()
    project.gate.touch()
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "completed" and result["output"] == 10
    executions = project.executions()
    assert executions == [
        (result["run_id"], "gated", doomed.pid),
        (result["run_id"], "gated", survivor.pid),
    ]
    assert project.checkpoints(result["run_id"])["gated"].attempts == 2  # both executions
    ends = [e for e in project.events() if e.type.startswith("run.") and e.run_id]
    assert [e.type for e in ends if e.type == "run.completed"] == ["run.completed"]


@pytest.mark.slow
def test_a_paused_worker_that_lost_its_run_cannot_overwrite_it(project: Project) -> None:
    stale = project.worker()
    (run_id,) = project.client("submit", "gated", '{"x": 7}')
    wait_until(lambda: project.executions(), "the first worker to start the run")
    stale.process.send_signal(signal.SIGSTOP)  # alive but silent: no heartbeat
    try:
        fresh = project.worker()
        wait_until(lambda: len(project.executions()) == 2, "the second worker to take it over")
        project.gate.touch()
        wait_until(lambda: project.statuses([run_id])[run_id] == "completed", "the run to end")
    finally:
        stale.process.send_signal(signal.SIGCONT)
    # The first worker wakes up with its node done too: its writes are refused (fencing).
    assert stale.stop() == 0 and fresh.stop() == 0
    assert [pid for _, _, pid in project.executions()] == [stale.pid, fresh.pid]
    completed = [e for e in project.events() if e.type == "run.completed"]
    assert len(completed) == 1 and completed[0].data["output"] == 14
    assert project.checkpoints(run_id)["gated"].attempts == 2


@pytest.mark.slow
def test_cancelling_from_the_gateway_stops_the_run_in_the_worker(project: Project) -> None:
    worker = project.worker()
    run_id, line = project.client("cancel-live", "gated", '{"x": 1}')
    assert json.loads(line) == {"cancelled": True, "status": "cancelled"}
    assert project.statuses([run_id]) == {run_id: "cancelled"}
    assert [(run, pid) for run, _, pid in project.executions()] == [(run_id, worker.pid)]
    kinds = [e.type for e in project.events() if e.run_id == run_id]
    assert "run.cancel_requested" in kinds and kinds[-1] == "run.cancelled"


@pytest.mark.slow
def test_nexus_worker_with_the_inline_executor_exits_2(tmp_path: Path) -> None:
    project = Project(tmp_path, executor="inline")
    done = subprocess.run(
        [*nexus_command(), "worker", "app.py"],
        cwd=project.appdir,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "'nexus worker' needs an executor that uses workers" in done.stderr
    assert "worker ready" not in done.stderr
