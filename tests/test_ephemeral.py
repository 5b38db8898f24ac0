"""Ephemeral workflows (``durable=False``): no run record, live events only, audit kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core import Nexus, ValidationError, WorkflowBuilder
from nexus_core.errors import RunNotFound
from nexus_core.events import Event
from nexus_core.sessions import Session
from nexus_core.workflows import FunctionNode, WorkflowMeta

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'nexus.db'}"


def make_app(storage_url: str) -> Nexus:
    app = Nexus("test", storage=storage_url, autoload=False, env={})

    @app.workflow(durable=False)
    async def shout(text: str) -> str:
        """Upper-case the text: nothing worth keeping."""
        return text.upper()

    @app.workflow
    async def shout_durably(text: str) -> str:
        return text.upper()

    @app.workflow(durable=False)
    def fail(reason: str) -> None:
        raise RuntimeError(reason)

    @app.workflow(durable=False)
    async def hang(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "woke"

    @app.workflow(durable=False)
    def count_visits(session: Session) -> int:
        session.state["visits"] = session.state.get("visits", 0) + 1
        return int(session.state["visits"])

    return app


async def _stored_events(app: Nexus) -> list[Event]:
    assert app.storage is not None
    return await app.storage.read_events()


async def test_an_ephemeral_run_answers_and_stores_no_run_and_no_event(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        before = await _stored_events(app)
        result = await app.invoke("shout", {"text": "hi"})
        assert (result.status, result.output) == ("completed", "HI")
        assert result.nodes["shout"].status == "completed"
        with pytest.raises(RunNotFound):
            await app.get_run(result.run_id)
        assert app.storage is not None
        assert await app.storage.list_runs() == []
        assert await app.storage.get_checkpoints(result.run_id) == {}
        after = await _stored_events(app)
        assert [e for e in after if e.run_id == result.run_id] == []
        assert len(after) == len(before)
        # The durable twin of the same function is recorded as before.
        durable = await app.invoke("shout_durably", {"text": "hi"})
        assert (await app.get_run(durable.run_id)).output == "HI"


async def test_live_subscribers_get_the_run_events_in_order(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        sub = app.subscribe(["run.*", "node.*"])
        async with sub:
            result = await app.invoke("shout", {"text": "hey"})
            got: list[Event] = []
            with anyio.fail_after(10):
                async for event in sub:
                    if event.run_id == result.run_id:
                        got.append(event)
                    if event.type == "run.completed":
                        break
        assert [e.type for e in got] == [
            "run.started",
            "node.started",
            "node.finished",
            "run.completed",
        ]
        assert got[-1].data["output"] == "HEY"
        assert all(not e.id.isdigit() for e in got)  # not log positions: never replayed


async def test_a_subscriber_that_comes_mid_run_gets_its_final_event(storage_url: str) -> None:
    app = make_app(storage_url)
    entered, release = anyio.Event(), anyio.Event()

    @app.workflow(durable=False)
    async def held() -> str:
        entered.set()
        await release.wait()
        return "released"

    async with app:
        started = await app.invoke("held", {}, wait=False)
        with anyio.fail_after(10):
            await entered.wait()  # executing, and nobody listened when it started
        sub = app.subscribe(["run.*", "node.*"])
        async with sub:
            release.set()
            got: list[Event] = []
            with anyio.fail_after(10):
                async for event in sub:
                    if event.run_id == started.run_id:
                        got.append(event)
                        break
        assert [(e.type, e.data["output"]) for e in got] == [("run.completed", "released")]


async def test_its_audit_record_is_written(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        ok = await app.invoke("shout", {"text": "a"})
        failed = await app.invoke("fail", {"reason": "boom"})
        assert failed.status == "failed"
        assert failed.error is not None and "boom" in failed.error.message
        await app.security.flush_audit()
        assert app.storage is not None
        records = await app.storage.query_audit(limit=100)
        outcomes = {r.run_id: r.outcome for r in records if r.action == "invoke"}
        assert outcomes[ok.run_id] == "completed"
        assert outcomes[failed.run_id] == "failed"
        assert await app.storage.list_runs() == []


async def test_a_cancelled_caller_cancels_the_run_and_it_is_audited(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        sub = app.subscribe(["run.started"])
        async with sub, anyio.create_task_group() as tg:
            tg.start_soon(app.invoke, "hang", {"seconds": 60})
            with anyio.fail_after(10):
                started = await sub.__anext__()
            tg.cancel_scope.cancel()
        await app.security.flush_audit()
        assert app.storage is not None
        records = await app.storage.query_audit(limit=100)
        [record] = [r for r in records if r.run_id == started.run_id]
        assert record.outcome == "cancelled"
        assert await app.storage.list_runs() == []


async def test_an_idempotency_key_is_refused_naming_it(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        with pytest.raises(ValidationError) as error:
            await app.invoke("shout", {"text": "a"}, idempotency_key="k1")
        assert [e.path for e in error.value.errors] == ["idempotency_key"]
        assert "durable=False" in error.value.errors[0].reason


async def test_sessions_still_work(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        session = await app.create_session()
        first = await app.invoke("count_visits", session=session.id)
        second = await app.invoke("count_visits", session=session.id)
        assert (first.output, second.output) == (1, 2)


async def test_without_waiting_it_runs_in_the_host(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        sub = app.subscribe(["run.completed"])
        async with sub:
            accepted = await app.invoke("shout", {"text": "later"}, wait=False)
            assert accepted.status == "running"
            with anyio.fail_after(10):
                done = await sub.__anext__()
        assert (done.run_id, done.data["output"]) == (accepted.run_id, "LATER")


async def test_a_builder_workflow_can_be_ephemeral(tmp_path: Path) -> None:
    app = Nexus("test", storage=f"sqlite:///{tmp_path / 'n.db'}", autoload=False, env={})

    def double(x: int) -> int:
        return 2 * x

    def plus_one(y: int) -> int:
        return y + 1

    builder = WorkflowBuilder("twice", meta=WorkflowMeta(durable=False))
    builder.add_node(FunctionNode, "double", {"function": double})
    builder.add_node(FunctionNode, "plus_one", {"function": plus_one})
    builder.add_connection("double", "result", "plus_one", "y")
    builder.add_workflow_inputs("double", {"x": "x"})
    builder.set_output("plus_one", "result")
    app.register(builder)
    assert not app.get_workflow("twice").meta.durable
    async with app:
        result = await app.invoke("twice", {"x": 4})
        assert (result.status, result.output) == ("completed", 9)
        assert set(result.nodes) == {"double", "plus_one"}
        assert app.storage is not None
        assert await app.storage.list_runs() == []


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=50))
async def test_ephemeral_and_durable_answer_alike(text: str) -> None:
    app = make_app("memory://")
    async with app:
        live: Any = await app.invoke("shout", {"text": text})
        kept: Any = await app.invoke("shout_durably", {"text": text})
        assert (live.status, live.output) == (kept.status, kept.output)
