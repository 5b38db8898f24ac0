"""Runs under leases, seen from the host: two hosts on one SQLite file stand for two processes.

Each host has its own storage object, connections and event bus, as two
processes would; what they share is the database file. Real process kills are
in tests/multiprocess; the storage side of the protocol is in the contract
suites (``RunStoreContract``, ``lease_state_machine``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_core import Nexus, WorkflowBuilder
from nexus_core.workflows import FunctionNode

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Gate:
    """Nodes that record each execution and may wait for the test to open a gate."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []  # (host title, node)
        self.entered = anyio.Event()
        self.open = anyio.Event()


def make_host(
    path: Path, title: str, gate: Gate, *, recover: str = "never", lease: float = 30.0
) -> Nexus:
    runs = {"lease": lease, "heartbeat": lease / 4, "recover": recover}
    app = Nexus(
        title,
        storage=f"sqlite:///{path}",
        autoload=False,
        env={},
        config={"services": {"runs": runs, "events": {"poll_interval": 0.02}}},
    )

    def first(x: int) -> int:
        gate.ran.append((title, "first"))
        return x + 1

    async def second(y: int) -> int:
        gate.ran.append((title, "second"))
        gate.entered.set()
        await gate.open.wait()
        return y * 2

    def third(z: int) -> int:
        gate.ran.append((title, "third"))
        return z + 100

    wb = WorkflowBuilder("pipeline")
    wb.add_node(FunctionNode, "first", {"function": first})
    wb.add_node(FunctionNode, "second", {"function": second})
    wb.add_node(FunctionNode, "third", {"function": third})
    wb.add_connection("first", "result", "second", "y")
    wb.add_connection("second", "result", "third", "z")
    wb.add_workflow_inputs("first", {"x": "x"})
    wb.set_output("third", "result")
    app.register(wb)
    return app


async def test_a_stale_owner_cannot_overwrite_the_new_owners_work(tmp_path: Path) -> None:
    gate = Gate()
    db = tmp_path / "runs.db"
    a = make_host(db, "a", gate)
    async with a:
        started = await a.invoke("pipeline", {"x": 1}, wait=False)
        with anyio.fail_after(10):
            await gate.entered.wait()
        assert a.executes_here(started.run_id)
        active = a.engine.active[started.run_id]
        # Another process takes the run over (as if a's lease had expired meanwhile).
        storage = a.storage
        assert storage is not None
        taken = await storage.claim_run(
            started.run_id, "intruder", lease=3600, now=time.time() + 3600
        )
        assert taken is not None and taken.fence == 2
        gate.open.set()  # a's node finishes; its checkpoint carries token 1
        with anyio.fail_after(10):
            assert (await active.result()).status == "running"  # stopped here, unfinished
        assert active.lost and not a.executes_here(started.run_id)
        record = await storage.get_run(started.run_id)
        assert record is not None
        # Nothing a wrote after losing the run landed: no checkpoint of "second",
        # no final state; the run is the intruder's, as it claimed it.
        assert (record.status, record.owner, record.fence) == ("running", "intruder", 2)
        assert set(await storage.get_checkpoints(started.run_id)) == {"first"}
        assert ("a", "third") not in gate.ran
        # The audit trail says what a did with the run: it never finished it here.
        outcomes = [r.outcome for r in await a.security.query_audit(workflow="pipeline")]
        assert "completed" not in outcomes


async def test_a_refused_final_write_leaves_its_refusal_and_nothing_of_its_outcome(
    tmp_path: Path,
) -> None:
    """Taken over during its last node: the final write is refused whole. Neither the
    run's outcome nor its ``run.completed`` is written; the audit trail says lease_lost."""
    gate = Gate()
    runs = {"lease": 3600, "heartbeat": 900}
    app = Nexus(
        "a",
        storage=f"sqlite:///{tmp_path / 'runs.db'}",
        autoload=False,
        env={},
        config={"services": {"runs": runs}},
    )

    @app.workflow
    async def only(x: int) -> int:
        gate.entered.set()
        await gate.open.wait()
        return x + 1

    async with app:
        started = await app.invoke("only", {"x": 1}, wait=False)
        with anyio.fail_after(10):
            await gate.entered.wait()
        active = app.engine.active[started.run_id]
        storage = app.storage
        assert storage is not None
        assert await storage.claim_run(started.run_id, "intruder", lease=60, now=time.time() + 3600)
        gate.open.set()  # the node ends: its checkpoint goes with the (refused) final write
        with anyio.fail_after(10):
            assert (await active.result()).status == "running"
        record = await storage.get_run(started.run_id)
        assert record is not None
        assert (record.status, record.owner) == ("running", "intruder")
        assert await storage.get_checkpoints(started.run_id) == {}
        kinds = [e.type for e in await storage.read_events(run_id=started.run_id)]
        assert "run.completed" not in kinds
        outcomes = [r.outcome for r in await app.security.query_audit(workflow="only")]
        assert outcomes == ["lease_lost"]


async def test_a_lost_lease_stops_the_run_at_the_next_heartbeat(tmp_path: Path) -> None:
    gate = Gate()
    a = make_host(tmp_path / "runs.db", "a", gate, lease=0.4)
    async with a:
        started = await a.invoke("pipeline", {"x": 1}, wait=False)
        with anyio.fail_after(10):
            await gate.entered.wait()
        assert a.storage is not None
        active = a.engine.active[started.run_id]
        await a.storage.claim_run(started.run_id, "intruder", lease=3600, now=time.time() + 3600)
        # The heartbeat finds the lease gone and cancels the node that still runs here.
        with anyio.fail_after(10):
            assert (await active.result()).status == "running"
        assert active.lost and not a.executes_here(started.run_id)
        assert not gate.open.is_set()
        record = await a.storage.get_run(started.run_id)
        assert record is not None and record.status == "running" and record.owner == "intruder"


async def test_only_recovering_hosts_take_over_and_attempts_count_every_execution(
    tmp_path: Path,
) -> None:
    gate = Gate()
    db = tmp_path / "runs.db"
    a = make_host(db, "a", gate, lease=0.6)
    async with a:
        started = await a.invoke("pipeline", {"x": 1}, wait=False)
        with anyio.fail_after(10):
            await gate.entered.wait()
        # a stops without finishing: shutdown_grace is over, so it cancels the node
        # and releases the lease (claimable at once).
        a.config.nexus.services.runs.shutdown_grace = 0
    reader = make_host(db, "reader", gate)  # an admin script: never takes runs over
    async with reader:
        with anyio.move_on_after(0.5):
            await reader.wait(started.run_id)
        assert (await reader.get_run(started.run_id)).status == "running"
        assert not reader.executes_here(started.run_id)
    gate.open.set()
    b = make_host(db, "b", gate, recover="always")
    async with b:
        with anyio.fail_after(15):
            result = await b.wait(started.run_id)
    assert result.status == "completed" and result.output == 104
    assert gate.ran == [("a", "first"), ("a", "second"), ("b", "second"), ("b", "third")]
    assert {n: r.attempts for n, r in result.nodes.items()} == {
        "first": 1,
        "second": 2,  # a's execution and b's
        "third": 1,
    }


async def test_claims_that_started_nothing_count_no_attempt(tmp_path: Path) -> None:
    """Owners a, b and c execute "second" (a and b stop during it); between them two
    processes claim the run and die before starting anything. Attempts count the
    three executions, not the five claims."""
    gate = Gate()
    db = tmp_path / "runs.db"

    async def stop_during_second(host: Nexus, run_id: str | None = None) -> str:
        gate.entered = anyio.Event()
        async with host:
            if run_id is None:
                run_id = (await host.invoke("pipeline", {"x": 1}, wait=False)).run_id
            with anyio.fail_after(15):
                await gate.entered.wait()
            # It stops without finishing: the node is cancelled, the lease released.
            host.config.nexus.services.runs.shutdown_grace = 0
        return run_id

    async def claim_and_die(run_id: str, who: str) -> None:
        async with make_host(db, "reader", gate) as reader:
            assert reader.storage is not None
            claimed = await reader.storage.claim_run(run_id, who, lease=0.0, now=time.time())
            assert claimed is not None and claimed.owner == who

    run_id = await stop_during_second(make_host(db, "a", gate))
    await claim_and_die(run_id, "dead/1")
    await stop_during_second(make_host(db, "b", gate, recover="always"), run_id)
    await claim_and_die(run_id, "dead/2")
    gate.open.set()
    c = make_host(db, "c", gate, recover="always")
    async with c:
        with anyio.fail_after(15):
            result = await c.wait(run_id)
        assert c.storage is not None
        record = await c.storage.get_run(run_id)
    assert result.status == "completed" and result.output == 104
    assert gate.ran == [
        ("a", "first"),
        ("a", "second"),
        ("b", "second"),
        ("c", "second"),
        ("c", "third"),
    ]
    assert record is not None and record.fence == 5  # a, dead/1, b, dead/2, c
    assert {n: r.attempts for n, r in result.nodes.items()} == {
        "first": 1,
        "second": 3,
        "third": 1,
    }


async def test_waiting_and_cancelling_reach_the_process_that_executes_the_run(
    tmp_path: Path,
) -> None:
    gate = Gate()
    db = tmp_path / "runs.db"
    a = make_host(db, "a", gate)
    b = make_host(db, "b", gate)
    results: dict[str, Any] = {}
    heard = anyio.Event()
    async with a, b, anyio.create_task_group() as tg:
        first = await a.invoke("pipeline", {"x": 1}, wait=False)

        async def wait_in_b(run_id: str) -> None:
            results[run_id] = await b.wait(run_id)
            heard.set()

        tg.start_soon(wait_in_b, first.run_id)
        with anyio.fail_after(10):
            await gate.entered.wait()
        gate.open.set()
        with anyio.fail_after(10):  # b hears a's run.completed through the shared log
            await heard.wait()
        assert results[first.run_id].output == 104

        gate.entered, gate.open = anyio.Event(), anyio.Event()
        second = await a.invoke("pipeline", {"x": 2}, wait=False)
        with anyio.fail_after(10):
            await gate.entered.wait()
        assert not b.executes_here(second.run_id)
        assert await b.cancel(second.run_id)  # a cancel request, carried by the log to a
        with anyio.fail_after(10):
            cancelled = await b.wait(second.run_id)
    assert cancelled.status == "cancelled"
    assert ("a", "third") not in gate.ran[3:]


async def test_a_renewal_racing_the_final_write_does_not_call_the_run_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The heartbeat's renewal can reach storage just after a run's final
    # write (the run is finished, so its lease is not renewed): the run is
    # finished, not lost to another process.
    from nexus_core.storage.memory import MemoryStorage

    class RenewAfterFinish(MemoryStorage):
        engine: Any = None
        renewals: list[int] = []

        async def finish_run(self, run: Any, checkpoints: Any = ()) -> None:
            await super().finish_run(run, checkpoints)
            before = len(self.engine.active)
            await self.engine.renew()  # the heartbeat, between the write and the run's end
            self.renewals.append(before)

    storage = RenewAfterFinish("memory://")
    app = Nexus("race", storage=storage, autoload=False, env={})

    @app.workflow
    async def echo(text: str) -> str:
        return text

    storage.engine = app.engine
    async with app:
        result = await app.invoke("echo", {"text": "hi"})
    assert storage.renewals == [1]  # the renewal ran while the run was still active here
    assert result.status == "completed" and result.output == "hi"
    assert "lease lost" not in caplog.text
