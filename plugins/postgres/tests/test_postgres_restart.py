"""PostgreSQL restarted mid-load: every accepted run completes once, every event arrives once.

The test starts a PostgreSQL server of its own (``initdb`` in a temporary
folder, a free port) so that restarting it hits nobody else, and stops it
immediately (``pg_ctl stop -m immediate``: a crash, then recovery), for longer than a
run's lease, while two
hosts (two gateways) execute runs. A subscriber on the second gateway must
receive every event of the log exactly once, in order, across the restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from nexus_core import Nexus, WorkflowBuilder
from nexus_core.plugin import Event, Subscription, event_id
from nexus_core.workflows import FunctionNode

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(180)]

BIN = Path("/usr/lib/postgresql")
SLOW = 0.3


def _bin(name: str) -> str | None:
    found = sorted(BIN.glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


def _as_postgres(*command: str) -> list[str]:
    """Run as the postgres user when this is root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@pytest.fixture
def own_server() -> Iterator[tuple[str, Callable[[], None]]]:
    """A PostgreSQL server of this test's own: (its URL, restart it by crashing it)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("initdb/pg_ctl (PostgreSQL server binaries) are not installed here")
    folder = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=50"
    subprocess.run(
        _as_postgres(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"),
        check=True,
        capture_output=True,
    )

    def start() -> None:
        subprocess.run(
            _as_postgres(
                pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"
            ),
            check=True,
            capture_output=True,
        )

    def stop() -> None:
        subprocess.run(
            _as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"),
            capture_output=True,
        )

    def restart() -> None:
        stop()
        time.sleep(2.5)  # down for more than two leases (not a wait for a condition)
        start()

    start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", restart
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)


def build(url: str) -> Nexus:
    config = {"nexus": {"services": {"runs": {"lease": 1.0, "heartbeat": 0.25}}}}
    app = Nexus("restart", storage=f"{url}?pool_timeout=1", config=config, env={})

    async def n1(x: int) -> int:
        return x + 1

    async def n2(y: int) -> int:
        await anyio.sleep(SLOW)
        return y * 2

    async def n3(z: int) -> int:
        return z + 100

    wb = WorkflowBuilder("pipeline")
    wb.add_node(FunctionNode, "n1", {"function": n1})
    wb.add_node(FunctionNode, "n2", {"function": n2})
    wb.add_node(FunctionNode, "n3", {"function": n3})
    wb.add_connection("n1", "result", "n2", "y")
    wb.add_connection("n2", "result", "n3", "z")
    wb.add_workflow_inputs("n1", {"x": "x"})
    wb.set_output("n3", "result")
    app.register(wb)
    return app


async def test_a_restart_mid_load_loses_and_repeats_nothing(
    own_server: tuple[str, Callable[[], None]],
) -> None:
    url, restart = own_server
    a, b = build(url), build(url)
    answers: dict[int, object] = {}
    heard: list[Event] = []

    async def call(x: int) -> None:
        try:
            result = await a.invoke("pipeline", {"x": x})
            answers[x] = result.status
        except Exception as exc:  # refused while the server was away: never accepted
            answers[x] = exc

    changed = [anyio.Event()]  # set whenever the subscriber hears something

    async def listen(subscription: Subscription) -> None:
        async for event in subscription:
            heard.append(event)
            changed[0].set()

    async with (
        a.running(recover=True),
        b.running(recover=True),
        anyio.create_task_group() as listeners,
    ):
        # From the log's start (position 0): what the hosts logged while starting too.
        listeners.start_soon(listen, b.subscribe(["*"], last_event_id=event_id(0)))
        async with anyio.create_task_group() as calls:
            for x in range(30):
                calls.start_soon(call, x)
                await anyio.sleep(0.02)
                if x == 15:  # runs are in flight: crash the server and bring it back
                    await anyio.to_thread.run_sync(restart)
        deadline = time.monotonic() + 90
        while True:
            try:
                runs = await a.list_runs(limit=100)
            except Exception:  # the pool is still reconnecting
                runs = []
            if runs and all(r.status == "completed" for r in runs):
                break
            assert time.monotonic() < deadline, [(r.id, r.status) for r in runs]
            await anyio.sleep(0.1)
        log = await a.storage.read_events(limit=10_000)  # type: ignore[union-attr]
        with anyio.move_on_after(30):
            while len(heard) < len(log):
                changed[0] = anyio.Event()
                await changed[0].wait()
        listeners.cancel_scope.cancel()
    assert len(answers) == 30
    accepted = {r.inputs["x"] for r in runs}
    # Every run the store accepted completed, with its right output.
    for run in runs:
        assert run.output == (run.inputs["x"] + 1) * 2 + 100
    # An answer of "completed" means the run is stored completed.
    assert {x for x, s in answers.items() if s == "completed"} <= accepted
    # One run.completed per run, and the subscriber on the other gateway heard the whole
    # log once, in order, across the restart.
    ends = sorted(e.run_id or "" for e in log if e.type == "run.completed")
    assert ends == sorted(r.id for r in runs)
    missing = sorted({e.id for e in log} - {e.id for e in heard})
    assert [e.id for e in heard] == [e.id for e in log], (len(heard), len(log), missing[:10])
