"""Storage failing mid-run stops that run in this process, never the host.

A database outage (the production tier's storage is across a network) makes a
checkpoint or the final write fail. The host keeps serving; the run keeps its
checkpoints and is resumed from them once its lease runs out (here: by the
same host, which recovers). Storage is SQLite whose writes fail while a
switch is on, standing in for a database that is away.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from nexus_core import Nexus, WorkflowBuilder
from nexus_core.storage.base import NodeCheckpoint, RunRecord
from nexus_core.storage.sqlite import SQLiteStorage
from nexus_core.workflows import FunctionNode

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyStorage(SQLiteStorage):
    """SQLite whose checkpoint and final writes raise OSError while ``down`` is set."""

    down = False

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        if self.down:
            raise OSError("the database is away")
        await super().save_checkpoint(checkpoint)

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        if self.down:
            raise OSError("the database is away")
        await super().finish_run(run, checkpoints)


def build(storage: FlakyStorage, ran: list[str]) -> Nexus:
    runs = {"lease": 0.6, "heartbeat": 0.15, "recover": "always"}
    app = Nexus(
        "flaky", storage=storage, autoload=False, env={}, config={"services": {"runs": runs}}
    )

    def first(x: int) -> int:
        ran.append("first")
        if ran.count("first") == 1:
            storage.down = True  # the database goes away while the run is in flight
        return x + 1

    def second(y: int) -> int:
        ran.append("second")
        return y * 2

    wb = WorkflowBuilder("pair")
    wb.add_node(FunctionNode, "first", {"function": first})
    wb.add_node(FunctionNode, "second", {"function": second})
    wb.add_connection("first", "result", "second", "y")
    wb.add_workflow_inputs("first", {"x": "x"})
    wb.set_output("second", "result")
    app.register(wb)

    @app.workflow
    def ping() -> str:
        return "pong"

    return app


async def test_a_storage_failure_mid_run_stops_the_run_not_the_host(tmp_path: Path) -> None:
    storage = FlakyStorage(f"sqlite:///{tmp_path / 'nexus.db'}")
    ran: list[str] = []
    app = build(storage, ran)
    async with app.running(recover=True):
        result = await app.invoke("pair", {"x": 1})
        assert result.status == "running"  # stopped here, not lost, not failed
        storage.down = False
        assert (await app.invoke("ping")).output == "pong"  # the host carries on
        deadline = time.monotonic() + 30
        while (run := await app.get_run(result.run_id)) is None or run.status != "completed":
            assert time.monotonic() < deadline, run
            await anyio.sleep(0.05)
        record = await storage.get_run(result.run_id)
    assert run.output == 4
    assert (
        record is not None and record.fence == 2
    )  # taken over (its lease released, or run out) once
    # "first"'s checkpoint never landed: executed again by the takeover, then "second" once.
    assert ran == ["first", "first", "second"]
