"""Connections cut mid-run: every accepted run still completes, each node's work kept once.

A host on PostgreSQL executes three-node runs while this test terminates the
host's database connections again and again (``pg_terminate_backend``, found by
``application_name``). A call may fail with a clear error (the run was not
accepted, or its answer was lost); every run the store accepted ends
``completed`` with its right output, by its first owner or by the takeover of
an expired lease.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator

import anyio
import msgspec
import psycopg
import pytest
from nexus_core import Nexus, WorkflowBuilder
from nexus_core.plugin import Event, LeaseLost, RunFinish, RunRecord
from nexus_core.workflows import FunctionNode
from pg_support import (
    POSTGRES_URL,
    Schemas,
    answer_cutter,
    drop_schema,
    server_url,
    with_params,
)
from psycopg import sql

from nexus_plugin_postgres.storage import DatabaseUnavailable, PostgresStorage, parse_url

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

SLOW = 0.3  # the middle node, seconds: runs are in flight when the database goes


def admin(statement: sql.Composable | str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(statement, params)  # type: ignore[arg-type]


@pytest.fixture
def outage_role(schemas: Schemas) -> Iterator[tuple[str, str]]:
    """A login role of this test's own, owning a new schema: (its URL, its name)."""
    server_url()
    role = f"t_role_{secrets.token_hex(4)}"
    admin(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    admin(sql.SQL("GRANT CREATE ON DATABASE test TO {}").format(sql.Identifier(role)))
    url = with_params(
        schemas.url(pool_timeout="0.5").replace("postgres@", f"{role}@", 1),
        application_name=role,
    )
    try:
        yield url, role
    finally:
        admin(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        drop_schema(str(parse_url(url).schema))
        admin(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def build(url: str) -> Nexus:
    config = {"nexus": {"services": {"runs": {"lease": 1.0, "heartbeat": 0.25}}}}
    app = Nexus("outage", storage=url, config=config)

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


async def test_runs_survive_connections_cut_mid_run(schemas: Schemas) -> None:
    name = f"t_cut_{secrets.token_hex(4)}"
    app = build(schemas.url(application_name=name, pool_max="4"))
    outcomes: dict[int, object] = {}

    async def call(x: int) -> None:
        try:
            result = await app.invoke("pipeline", {"x": x})
            # "running": it stopped here when a write failed; a takeover finishes it.
            outcomes[x] = result.output if result.status == "completed" else result.status
        except Exception as exc:  # refused, or its answer lost: checked below
            outcomes[x] = exc

    async def cut(stop: anyio.Event) -> int:
        cuts = 0
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            while not stop.is_set():
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                )
                cuts += 1
                await anyio.sleep(0.15)
        return cuts

    async with app.running(recover=True):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut, stop)
            async with anyio.create_task_group() as calls:
                for x in range(60):
                    calls.start_soon(call, x)
                    await anyio.sleep(0.01)
            stop.set()
        # Every run the store accepted completes (a takeover finishes what was cut).
        deadline = time.monotonic() + 60
        while True:
            runs = await app.list_runs(limit=500)
            if runs and all(r.status == "completed" for r in runs):
                break
            assert time.monotonic() < deadline, [(r.id, r.status, r.error) for r in runs]
            await anyio.sleep(0.1)
    assert len(outcomes) == 60
    for out in outcomes.values():  # an error, if any, names the database and what happened
        if isinstance(out, Exception):
            assert isinstance(out, DatabaseUnavailable), repr(out)
            assert "PostgreSQL at 127.0.0.1:5432/test" in str(out)
    answered = {x: out for x, out in outcomes.items() if isinstance(out, int)}
    assert all(out == "running" for out in outcomes.values() if isinstance(out, str))
    assert answered, "no call got through at all"
    for x, out in answered.items():
        assert out == (x + 1) * 2 + 100
    by_input = {r.inputs["x"]: r for r in runs}
    for x in answered:
        assert by_input[x].output == (x + 1) * 2 + 100  # each answered run is stored, right
    for run in runs:
        assert run.output == (run.inputs["x"] + 1) * 2 + 100


async def test_runs_whose_lease_expires_during_an_outage_complete_after_it(
    outage_role: tuple[str, str],
) -> None:
    """The database refuses this host for three leases' time while runs are in flight:
    their writes fail, their leases expire, and once it is back every accepted run
    is taken over (a higher fence) and completes; no run completes twice."""
    url, role = outage_role
    app = build(url)
    outcomes: dict[int, object] = {}

    async def call(x: int) -> None:
        try:
            outcomes[x] = (await app.invoke("pipeline", {"x": x})).output
        except Exception as exc:  # the outage, said clearly (possibly wrapped by the engine)
            outcomes[x] = exc

    async with app.running(recover=True):
        async with anyio.create_task_group() as tg:
            for x in range(12):
                tg.start_soon(call, x)
            await anyio.sleep(SLOW / 2)  # the runs are in their slow node now
            admin(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (role,),
            )
            await anyio.sleep(3.0)  # three leases: every lease of the runs in flight expires
            admin(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = await app.list_runs(limit=100)
            except DatabaseUnavailable:
                runs = []
            if runs and all(r.status == "completed" for r in runs):
                break
            assert time.monotonic() < deadline, [(r.id, r.status, r.fence, r.error) for r in runs]
            await anyio.sleep(0.1)
        events = await app.storage.read_events(limit=10_000)  # type: ignore[union-attr]

    assert len(outcomes) == 12
    for run in runs:
        assert run.output == (run.inputs["x"] + 1) * 2 + 100
    assert any(run.fence > 1 for run in runs), "no run was taken over: the outage missed them"
    ends = [e.run_id for e in events if e.type == "run.completed"]
    assert sorted(ends) == sorted({r.id for r in runs})  # each run completed exactly once


async def test_a_final_write_whose_answer_is_lost_after_it_committed_is_kept_and_announced(
    schemas: Schemas,
) -> None:
    """The server goes away right after the run's final write committed and before its
    answer reached the host. Nobody else can finish the run (a finished run cannot be
    claimed), so the host itself must learn that the write landed: once the server is
    back, the run's caller hears "completed" and ``run.completed`` is logged once."""
    url = schemas.url(pool_timeout="0.5")
    schema = str(parse_url(url).schema)
    async with answer_cutter(url) as cutter:
        config = {"nexus": {"services": {"runs": {"lease": 1.0, "heartbeat": 0.25}}}}
        app = Nexus("answer-lost", storage=cutter.url(url), config=config, env={})

        @app.workflow
        async def last(x: int) -> str:
            return f"output {x} of the last node"  # only the final write carries it

        answers: list[object] = []
        # The host has given its write up for lost (answered), or says that it
        # waits for the server to learn whether the write landed.
        settled = anyio.Event()

        async def call() -> None:
            try:
                answers.append(await app.invoke("last", {"x": 7}))
            except Exception as exc:  # what the caller would see instead of the answer
                answers.append(exc)
            settled.set()

        class Waiting(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "final write" in record.getMessage():
                    settled.set()

        waiting = Waiting()
        logging.getLogger("nexus.postgres").addHandler(waiting)

        async with app.running(recover=True), anyio.create_task_group() as tg:
            cutter.arm(b"output 7 of the last node")
            tg.start_soon(call)
            with anyio.fail_after(30):
                await cutter.cut.wait()
            # The write committed before its answer was lost (read past the proxy).
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                table = sql.SQL("SELECT status FROM {}.runs").format(sql.Identifier(schema))
                assert conn.execute(table).fetchall() == [("completed",)]
            with anyio.fail_after(30):
                await settled.wait()  # the server stays away until then
            logging.getLogger("nexus.postgres").removeHandler(waiting)
            cutter.restore()
        [answer] = answers
        assert not isinstance(answer, Exception), repr(answer)
        assert answer.status == "completed"  # type: ignore[attr-defined]
        async with app.running():
            events = await app.storage.read_events(limit=1000)  # type: ignore[union-attr]
    ends = [e.run_id for e in events if e.type == "run.completed"]
    assert ends == [answer.run_id]  # type: ignore[attr-defined]


async def test_a_batch_of_final_writes_whose_answer_is_lost_after_it_committed_lands_once(
    schemas: Schemas,
) -> None:
    """``log_writes`` sends a batch as one transaction: the server goes away right after
    it committed, before its answer arrived. Once the server is back, the storage finds
    that the batch landed: every write's events are returned with the positions they were
    logged at, none is written twice, and the refused write is still refused."""
    url = schemas.url(pool_timeout="0.5")
    async with answer_cutter(url) as cutter:
        storage = PostgresStorage(cutter.url(url))
        await storage.open()
        try:
            claimed = []
            for run_id in ("r1", "r2", "r3"):
                await storage.create_run(
                    RunRecord(id=run_id, workflow="w", created_at=1.0, status="running")
                )
                record = await storage.claim_run(run_id, "o1", lease=60.0, now=time.time())
                assert record is not None
                claimed.append(record)
            r1, r2 = (msgspec.structs.replace(r, status="completed") for r in claimed[:2])
            stale = msgspec.structs.replace(claimed[2], status="failed", fence=0)
            writes: list[tuple[RunFinish | None, list[Event]]] = [
                (None, [Event(type="step", run_id="r1")]),
                (RunFinish(r1), [Event(type="run.completed", run_id="r1")]),
                (RunFinish(stale), [Event(type="run.failed", run_id="r3")]),
                (RunFinish(r2), [Event(type="run.completed", run_id="r2", data={"m": "cut"})]),
            ]
            outcomes: list[list[list[Event] | Exception]] = []
            async with anyio.create_task_group() as tg:
                cutter.arm(b'"m":"cut"')

                async def write() -> None:
                    outcomes.append(await storage.log_writes(writes))

                tg.start_soon(write)
                with anyio.fail_after(30):
                    await cutter.cut.wait()
                # The batch committed before its answer was lost (read past the proxy).
                with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                    table = sql.SQL("SELECT id, status FROM {}.runs ORDER BY id").format(
                        sql.Identifier(str(parse_url(url).schema))
                    )
                    assert conn.execute(table).fetchall() == [
                        ("r1", "completed"),
                        ("r2", "completed"),
                        ("r3", "running"),
                    ]
                cutter.restore()
        finally:
            await storage.close()
    [outcome] = outcomes
    assert isinstance(outcome[2], LeaseLost)
    landed = [e for each in outcome if not isinstance(each, Exception) for e in each]
    assert [(e.type, e.run_id) for e in landed] == [
        ("step", "r1"),
        ("run.completed", "r1"),
        ("run.completed", "r2"),
    ]
    reader = PostgresStorage(url)
    await reader.open()
    try:
        assert await reader.read_events(limit=100) == landed  # each once, at its position
    finally:
        await reader.close()
