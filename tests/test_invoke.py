"""The one invoke path: sessions, durable runs, idempotency, events, audit and metrics."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_core import (
    AuthenticationError,
    Nexus,
    PermissionDenied,
    ValidationError,
    WorkflowNotFound,
)
from nexus_core.config import ConfigError
from nexus_core.errors import IdempotencyConflict, RunNotFound, SessionNotFound
from nexus_core.security import Credentials, Principal
from nexus_core.sessions import Session
from nexus_core.storage.memory import MemoryStorage

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'nexus.db'}"


def make_app(storage_url: str, **config: Any) -> Nexus:
    app = Nexus("test", storage=storage_url, autoload=False, config=config or None, env={})

    @app.workflow
    def greet(name: str, excited: bool = False) -> str:
        """Greet someone."""
        return f"Hello, {name}{'!' if excited else '.'}"

    @app.workflow
    def visit(session: Session, page: str) -> list[str]:
        """Remember every page seen in this session."""
        seen = [*session.state.get("pages", []), page]
        session.state["pages"] = seen
        return seen

    @app.workflow
    async def nap(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "rested"

    @app.workflow
    def explode() -> None:
        raise RuntimeError("kaboom")

    return app


async def test_invoke_runs_records_and_reports(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("greet", {"name": "Ada", "excited": True}, channel="test")
        assert result.status == "completed"
        assert result.output == "Hello, Ada!"
        stored = await app.get_run(result.run_id)
        assert stored.status == "completed"
        assert stored.output == "Hello, Ada!"
        assert stored.nodes["greet"].status == "completed"
        assert stored.nodes["greet"].output == {"result": "Hello, Ada!"}
        [record] = await app.list_runs(workflow="greet")
        assert record.channel == "test"
        assert record.inputs == {"name": "Ada", "excited": True}


async def test_bad_input_is_rejected_before_anything_runs(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        with pytest.raises(ValidationError) as err:
            await app.invoke("greet", {"name": 42})
        assert err.value.errors[0].path == "name"
        with pytest.raises(WorkflowNotFound, match="did you mean 'greet'"):
            await app.invoke("gret", {})
        assert await app.list_runs() == []
        text = app.metrics.render()[0].decode()
        assert 'nexus_errors_total{channel="python",type="validation_error"} 1.0' in text


async def test_a_failing_workflow_is_a_result_not_an_exception(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("explode", {})
        assert result.status == "failed"
        assert (result.error.node, result.error.message) == ("explode", "kaboom")
        stored = await app.get_run(result.run_id)
        assert stored.error.message == "kaboom"
        assert stored.nodes["explode"].status == "failed"


async def test_events_of_a_run_arrive_in_order(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        async with app.subscribe(["run.*", "node.*"]) as events:
            result = await app.invoke("greet", {"name": "Ada"})
            seen = []
            with anyio.fail_after(5):
                async for event in events:
                    seen.append(event)
                    if event.type == "run.completed":
                        break
        assert [e.type for e in seen] == [
            "run.started",
            "node.started",
            "node.finished",
            "run.completed",
        ]
        assert {e.run_id for e in seen} == {result.run_id}
        assert seen[-1].data["output"] == "Hello, Ada."


async def test_a_reconnecting_subscriber_misses_nothing(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        async with app.subscribe(["run.completed"]) as events:
            await app.invoke("greet", {"name": "one"})
            with anyio.fail_after(5):
                first = await events.__anext__()
        # Disconnected: three runs happen meanwhile.
        for name in ("two", "three", "four"):
            await app.invoke("greet", {"name": name})
        async with app.subscribe(["run.completed"], last_event_id=first.id) as events:
            missed = []
            with anyio.fail_after(5):
                async for event in events:
                    missed.append(event.data["output"])
                    if len(missed) == 3:
                        break
        assert missed == ["Hello, two.", "Hello, three.", "Hello, four."]


async def test_async_invocation_returns_a_run_id_at_once(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        pending = await app.invoke("nap", {"seconds": 0.05}, wait=False)
        assert pending.status == "running"
        assert pending.output is None
        result = await app.wait(pending.run_id)
        assert result.status == "completed"
        assert result.output == "rested"
        assert (await app.get_run(pending.run_id)).status == "completed"


async def test_a_run_can_be_cancelled_from_the_host(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        async with (
            app.subscribe(["run.cancelled"]) as events,
            app.subscribe(["node.started"]) as started,
        ):
            pending = await app.invoke("nap", {"seconds": 60}, wait=False)
            with anyio.fail_after(5):  # cancelled while it runs, not before it began
                assert (await started.__anext__()).run_id == pending.run_id
            assert await app.cancel(pending.run_id)
            with anyio.fail_after(5):
                result = await app.wait(pending.run_id)
                event = await events.__anext__()
        assert result.status == "cancelled"
        assert event.run_id == pending.run_id
        assert (await app.get_run(pending.run_id)).status == "cancelled"


async def test_idempotency_key_returns_the_same_run(storage_url: str) -> None:
    app = make_app(storage_url)
    calls: list[int] = []

    @app.workflow
    def charge(amount: int) -> int:
        calls.append(amount)
        return amount

    async with app:
        results = []

        async def pay() -> None:
            results.append(await app.invoke("charge", {"amount": 5}, idempotency_key="order-1"))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(pay)
        assert calls == [5]
        assert len({r.run_id for r in results}) == 1
        assert {r.output for r in results} == {5}
        # One call started the run; the others only found it (and must not cancel it).
        assert sorted(r.replayed for r in results) == [False] + [True] * 4
        with pytest.raises(IdempotencyConflict):
            await app.invoke("charge", {"amount": 6}, idempotency_key="order-1")
        again = await app.invoke("charge", {"amount": 5}, idempotency_key="order-1")
        assert again.run_id == results[0].run_id and again.replayed
        assert calls == [5]


async def test_session_state_carries_across_invocations_and_channels(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        first = await app.invoke("visit", {"page": "home"}, channel="api")
        assert first.output == ["home"]
        assert first.session_id is not None
        second = await app.invoke(
            "visit", {"page": "cart"}, channel="mcp", session=first.session_id
        )
        assert second.output == ["home", "cart"]
        assert second.session_id == first.session_id
        session = await app.get_session(first.session_id)
        assert session.state == {"pages": ["home", "cart"]}
        assert session.channels == ["api", "mcp"]
        assert "session" not in app.workflows["visit"].input_schema["properties"]
        with pytest.raises(SessionNotFound):
            await app.invoke("visit", {"page": "x"}, session="not-a-real-session")


async def test_sessions_expire_and_slide(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        manager = app.sessions_manager()
        # The manager's clock, moved by hand: a busy machine cannot stretch a wait past the TTL.
        now = [time.time()]
        manager.clock = lambda: now[0]
        manager.ttl = 0.3
        session = await app.create_session(channel="cli")
        now[0] += 0.2
        await manager.resume(session.id, channel="api")  # slides the expiry forward
        now[0] += 0.2
        assert (await app.get_session(session.id)).channels == ["cli", "api"]
        async with app.subscribe(["session.expired"]) as events:
            now[0] += 0.35
            with pytest.raises(SessionNotFound):
                await app.get_session(session.id)
            assert await app.expire_sessions() == [session.id]
            assert await app.expire_sessions() == []
            with anyio.fail_after(5):
                event = await events.__anext__()
        assert event.session_id == session.id


async def test_a_session_store_down_does_not_stop_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Expiry runs every second here; its store failing across ticks is one warning, no crash."""
    from nexus_core.plugin import MemoryStorage

    class Flaky(MemoryStorage):
        down = False
        failures = 0

        async def expire_sessions(self, now: float) -> list[str]:
            if self.down:
                self.failures += 1
                raise ConnectionError("session store unreachable")
            return await super().expire_sessions(now)

    store = Flaky("memory://")
    app = Nexus("test", storage=store, autoload=False, env={})
    app.config.nexus.services.security.session_timeout = 10.0  # an expiry tick a second

    @app.workflow
    def greet(name: str) -> str:
        return f"Hello, {name}."

    with caplog.at_level("WARNING", logger="nexus"):
        async with app:
            store.down = True
            with anyio.fail_after(10):
                while store.failures < 3:  # noqa: ASYNC110 - three ticks fail in a row
                    await anyio.sleep(0.05)
            store.down = False
            assert (await app.invoke("greet", {"name": "Ada"})).output == "Hello, Ada."
    assert caplog.text.count("expiring sessions failed (ConnectionError") == 1


async def test_every_invocation_is_audited(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        for i in range(7):
            await app.invoke("greet", {"name": f"n{i}"}, channel="cli")
        await app.invoke("explode", {})
        records = await app.storage.query_audit(workflow="greet")
        assert len(records) == 7
        assert {r.outcome for r in records} == {"completed"}
        assert {r.channel for r in records} == {"cli"}
        assert all(r.input_hash and len(r.input_hash) == 64 for r in records)
        assert all("n1" not in (r.reason or "") for r in records)  # no raw inputs
        [failed] = await app.storage.query_audit(workflow="explode")
        assert failed.outcome == "failed"


async def test_metrics_count_invocations(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        for _ in range(3):
            await app.invoke("greet", {"name": "x"}, channel="api")
        body, content_type = app.metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'nexus_requests_total{channel="api",outcome="completed",workflow="greet"} 3.0' in text
    assert 'nexus_workflow_executions_total{channel="api",workflow="greet"} 3.0' in text
    assert 'nexus_node_duration_seconds_count{node_type="PythonFunction"} 3.0' in text


async def test_readiness_checks_storage(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        report = await app.readiness()
    assert report.status == "ok"
    assert [c.name for c in report.checks] == ["storage"]


async def test_readiness_runs_the_executors_checks(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus_core.executors import InlineExecutor

    async def queue() -> str:
        return "2 workers"

    def down() -> bool:
        raise ConnectionError("queue unreachable")

    monkeypatch.setattr(InlineExecutor, "checks", lambda self: {"queue": queue, "other": down})
    app = make_app(storage_url)
    async with app:
        report = await app.readiness()
    assert [(c.name, c.ok, c.detail) for c in report.checks] == [
        ("storage", True, None),
        ("queue", True, "2 workers"),
        ("other", False, "ConnectionError: queue unreachable"),
    ]
    assert report.status == "fail"


async def test_the_host_must_be_running_to_invoke() -> None:
    app = make_app("memory://")
    with pytest.raises(RuntimeError, match="async with app"):
        await app.invoke("greet", {"name": "x"})


async def test_production_refuses_a_store_that_forgets_and_no_auth() -> None:
    app = make_app("memory://", environment="production")
    with pytest.raises(ConfigError) as err:
        async with app:
            pass
    assert "does not persist" in str(err.value)
    assert "no authentication" in str(err.value)


# -- durable runs across a real crash ---------------------------------------------

DURABLE_APP = """
import json, os, sys
import anyio
from nexus_core import Nexus, WorkflowBuilder
from nexus_core.workflows import FunctionNode

LOG = os.environ["NODE_LOG"]
# Short leases, so the restarted host takes the killed one's run over quickly; the
# restart recovers although it serves no channel.
app = Nexus("durable", storage=os.environ["DB_URL"], autoload=False,
            config={"services": {"runs": {"on_restart": os.environ.get("ON_RESTART", "resume"),
                                          "lease": 1.0, "heartbeat": 0.25,
                                          "recover": "always"}}})

def log(name):
    with open(LOG, "a") as fh:
        fh.write(name + "\\n")

def first(x: int) -> int:
    log("first")
    return x + 1

async def second(y: int) -> int:
    log("second")
    if os.environ.get("HANG"):
        await anyio.sleep(3600)
    return y * 2

def third(z: int) -> int:
    log("third")
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

async def main():
    async with app:
        if sys.argv[1] == "start":
            pending = await app.invoke("pipeline", {"x": 1}, wait=False, channel="cli")
            print(pending.run_id, flush=True)
            await anyio.sleep_forever()
        else:
            result = await app.wait(sys.argv[2])
            print(json.dumps({"status": result.status, "output": result.output,
                              "error": result.error and result.error.message}), flush=True)

anyio.run(main)
"""


@pytest.mark.slow  # a host process killed mid-run, then restarted
@pytest.mark.parametrize("policy", ["resume", "fail"])
def test_a_killed_host_resumes_from_the_last_finished_node(tmp_path: Path, policy: str) -> None:
    script = tmp_path / "durable_app.py"
    script.write_text(textwrap.dedent(DURABLE_APP))
    node_log = tmp_path / "nodes.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")},
        "NODE_LOG": str(node_log),
        "DB_URL": f"sqlite:///{tmp_path / 'durable.db'}",
        "ON_RESTART": policy,
    }
    first = subprocess.Popen(
        [sys.executable, str(script), "start"],
        env={**env, "HANG": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        run_id = first.stdout.readline().strip()
        assert run_id, "the host did not start"
        deadline = time.monotonic() + 30
        while "second" not in (node_log.read_text() if node_log.exists() else ""):
            assert time.monotonic() < deadline, "the run never reached its second node"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(
        [sys.executable, str(script), "resume", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(second.stdout)
    ran = node_log.read_text().split()
    if policy == "resume":
        assert outcome == {"status": "completed", "output": 104, "error": None}
        # "first" finished before the crash, so it never runs again.
        assert ran == ["first", "second", "second", "third"]

        # Both executions of "second" count, the killed process's and the new owner's.
        async def attempts() -> dict[str, int]:
            async with Nexus(storage=env["DB_URL"], autoload=False, env={}) as reader:
                return {n: r.attempts for n, r in (await reader.get_run(run_id)).nodes.items()}

        assert anyio.run(attempts) == {"first": 1, "second": 2, "third": 1}
    else:
        assert outcome["status"] == "failed"
        assert "interrupted" in outcome["error"]
        assert ran == ["first", "second"]


async def test_failures_and_registrations_are_events(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        async with app.subscribe(["node.failed", "run.failed", "workflow.registered"]) as events:
            result = await app.invoke("explode", {})

            @app.workflow
            def late() -> int:
                return 1

            seen = []
            with anyio.fail_after(5):
                async for event in events:
                    seen.append(event)
                    if len(seen) == 3:
                        break
        by_type = {e.type: e for e in seen}
        assert by_type["node.failed"].data["node"] == "explode"
        assert "kaboom" in by_type["node.failed"].data["error"]
        assert by_type["run.failed"].run_id == result.run_id
        assert by_type["workflow.registered"].data == {"workflow": "late"}
        # Registrations before start-up are in the log too, for late subscribers.
        logged = await app.storage.read_events()
        registered = [e.data["workflow"] for e in logged if e.type == "workflow.registered"]
        assert registered[:4] == ["greet", "visit", "nap", "explode"]


async def test_shutdown_lets_runs_in_flight_finish(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'grace.db'}", services={"runs": {"shutdown_grace": 5}})
    async with app:
        pending = await app.invoke("nap", {"seconds": 0.2}, wait=False)
    # The host stopped only after the run ended, and recorded it.
    async with make_app(f"sqlite:///{tmp_path / 'grace.db'}") as again:
        assert (await again.get_run(pending.run_id)).output == "rested"


async def test_runs_past_the_grace_are_left_to_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'grace.db'}"
    app = make_app(url, services={"runs": {"shutdown_grace": 0.05, "on_restart": "fail"}})
    waiter: dict[str, Any] = {}

    async def wait_for_it(run_id: str) -> None:
        waiter["result"] = await app.wait(run_id)

    async with anyio.create_task_group() as outside, app:
        async with app.subscribe(["node.started"]) as started:
            pending = await app.invoke("nap", {"seconds": 30}, wait=False)
            with anyio.fail_after(10):  # the run is under way
                assert (await started.__anext__()).run_id == pending.run_id
        outside.start_soon(wait_for_it, pending.run_id)
        with anyio.fail_after(10):  # the waiter is waiting on the run when the host stops
            await anyio.wait_all_tasks_blocked()
    assert waiter["result"].status == "running"  # the waiter was answered, not left hanging
    # The stopping host released the run's lease: a recovering host takes it over at once.
    runs = {"on_restart": "fail", "recover": "always"}
    async with make_app(url, services={"runs": runs}) as again:
        stored = await again.get_run(pending.run_id)
    assert stored.status == "failed"
    assert "interrupted" in stored.error.message


async def test_a_waiting_caller_that_goes_away_does_not_stop_its_durable_run(
    tmp_path: Path,
) -> None:
    # A caller that waits executes the run in its own task; cancelling the
    # caller (a client that disconnects) must not stop the run half-way.
    app = make_app(f"sqlite:///{tmp_path / 'caller.db'}")
    async with app, app.subscribe(["node.started"]) as started:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.invoke, "nap", {"seconds": 0.2})
            with anyio.fail_after(10):
                run_id = (await started.__anext__()).run_id
            tg.cancel_scope.cancel()
        assert run_id is not None
        with anyio.fail_after(10):
            result = await app.wait(run_id)
        assert result.status == "completed" and result.output == "rested"
        assert app.engine.active == {}


async def test_a_waiting_callers_run_past_the_grace_is_left_to_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'grace.db'}"
    app = make_app(url, services={"runs": {"shutdown_grace": 0.05, "on_restart": "fail"}})
    answer: dict[str, Any] = {}

    async def call() -> None:
        answer["result"] = await app.invoke("nap", {"seconds": 30})

    async with (
        anyio.create_task_group() as outside,
        app,
        app.subscribe(["node.started"]) as started,
    ):
        outside.start_soon(call)
        with anyio.fail_after(10):  # the run is under way in the caller's task
            run_id = (await started.__anext__()).run_id
    # The caller was answered (still running), not left hanging or cancelled.
    assert answer["result"].status == "running" and answer["result"].run_id == run_id
    runs = {"on_restart": "fail", "recover": "always"}
    async with make_app(url, services={"runs": runs}) as again:
        stored = await again.get_run(run_id)  # its lease was released: taken over at once
    assert stored.status == "failed"
    assert "interrupted" in stored.error.message


class GatedStorage(MemoryStorage):
    """Holds a run's final write (``log_writes`` with a run in it) until released."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def log_writes(self, writes: Any) -> Any:
        if any(finish is not None for finish, _ in writes):
            self.entered.set()
            await self.release.wait()
        return await super().log_writes(writes)


async def test_a_final_write_under_way_when_the_grace_ends_still_lands() -> None:
    # A waiting caller's run executes in the caller's task, under that task's
    # shield. The drain cancels such runs once the grace is over, but not one
    # whose nodes are done: its final write is under way and must land whole.
    storage = GatedStorage("memory://")
    config = {"services": {"runs": {"shutdown_grace": 0}}}
    app = Nexus("test", storage=storage, autoload=False, config=config, env={})

    @app.workflow
    def greet(name: str) -> str:
        return f"Hello, {name}."

    answer: dict[str, Any] = {}
    draining = anyio.Event()
    drain = app.engine.drain

    async def drain_and_say(grace: float) -> None:
        draining.set()
        await drain(grace)

    app.engine.drain = drain_and_say  # type: ignore[method-assign]

    async def call() -> None:
        answer["result"] = await app.invoke("greet", {"name": "Ada"})

    async def release_once_drained() -> None:
        await draining.wait()
        await anyio.wait_all_tasks_blocked()  # the drain cancelled what it would, and waits
        storage.release.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as outside, app:
            outside.start_soon(call)
            await storage.entered.wait()  # the run's final write is under way
            outside.start_soon(release_once_drained)
    assert answer["result"].status == "completed"
    assert answer["result"].output == "Hello, Ada."
    stored = await storage.get_run(answer["result"].run_id)
    assert stored is not None and stored.status == "completed"
    events = await storage.read_events(run_id=stored.id)
    assert [e.type for e in events][-1] == "run.completed"


async def test_async_runs_leave_nothing_behind() -> None:
    app = make_app("memory://")
    async with app:
        ids = [(await app.invoke("greet", {"name": str(i)}, wait=False)).run_id for i in range(20)]
        with anyio.fail_after(30):
            for run_id in ids:
                await app.wait(run_id)
        assert app.engine.active == {}
        assert {(await app.get_run(i)).status for i in ids} == {"completed"}


# -- validate, then decide; idempotency keys are the caller's own ---------------------------------

BIG_REFUNDS = {
    "description": "big refunds need a lead",
    "effect": "deny",
    "actions": ["workflow:refund:execute"],
    "conditions": [
        {"attribute": "input.amount", "op": "gt", "value": 500},
        {"attribute": "principal.level", "op": "ne", "value": "lead"},
    ],
}


def secured_app(storage_url: str, refunds: list[float]) -> Nexus:
    """Auth on; 'clerk' may run everything, a policy keeps big refunds for leads."""
    security = {
        "auth_enabled": True,
        "providers": ["api_key"],
        "strategy": "hybrid",
        "roles": {"clerk": ["workflow:*:execute"]},
        "policies": [BIG_REFUNDS],
    }
    app = make_app(storage_url, services={"security": security})

    @app.workflow
    def refund(amount: float = 1000.0, note: str = "") -> float:
        """Refund an amount (the default is a big one)."""
        refunds.append(amount)
        return amount

    return app


async def key_of(app: Nexus, who: str, **attributes: Any) -> Credentials:
    token, _ = await app.security.issue_api_key(who, roles=["clerk"], attributes=attributes)
    return Credentials(api_key=token)


@pytest.mark.parametrize("text", ["900", "9e5", "Infinity", "NaN", "-0", " 20", "true"])
async def test_text_is_never_read_as_a_number(storage_url: str, text: str) -> None:
    refunds: list[float] = []
    app = secured_app(storage_url, refunds)
    async with app:
        sam = await key_of(app, "sam", level="agent")
        for inputs in ({"amount": text}, json.dumps({"amount": text}).encode()):
            with pytest.raises(ValidationError) as err:
                await app.invoke("refund", inputs, credentials=sam)
            assert [(e.path, e.reason) for e in err.value.errors] == [
                ("amount", "expected 'float', got 'str'")
            ]
        assert refunds == [] and await app.list_runs() == []
        records = await app.security.query_audit(limit=10)
        assert [r.outcome for r in records] == ["validation_error"] * 2


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
async def test_non_finite_numbers_are_refused(storage_url: str, number: float) -> None:
    refunds: list[float] = []
    app = secured_app(storage_url, refunds)
    async with app:
        sam = await key_of(app, "sam", level="agent")
        with pytest.raises(ValidationError) as err:
            await app.invoke("refund", {"amount": number, "note": 3}, credentials=sam)
        # Every bad field at once, each by name.
        assert [e.path for e in err.value.errors] == ["amount", "note"]
        assert "finite" in err.value.errors[0].reason
        assert refunds == []


async def test_the_policy_decides_on_what_the_workflow_receives(storage_url: str) -> None:
    refunds: list[float] = []
    app = secured_app(storage_url, refunds)
    async with app:
        sam = await key_of(app, "sam", level="agent")
        lea = await key_of(app, "lea", level="lead")
        nobody = await key_of(app, "max")  # no level at all: the rule fails closed
        for who in (sam, nobody):
            with pytest.raises(PermissionDenied):
                await app.invoke("refund", {"amount": 900}, credentials=who)
            # Omitted, the amount is the default 1000: that is what the rule sees.
            with pytest.raises(PermissionDenied):
                await app.invoke("refund", {}, credentials=who)
            with pytest.raises(PermissionDenied):
                await app.invoke("refund", b'{"amount": 900}', credentials=who)
        assert refunds == []
        assert (await app.invoke("refund", {"amount": 20}, credentials=sam)).output == 20
        assert (await app.invoke("refund", {}, credentials=lea)).output == 1000
        assert refunds == [20, 1000]


async def test_authentication_comes_before_validation(storage_url: str) -> None:
    app = secured_app(storage_url, [])
    async with app:
        with pytest.raises(AuthenticationError):  # not a ValidationError: nothing about inputs
            await app.invoke("refund", {"amount": "900", "x": 1})
        with pytest.raises(AuthenticationError):
            await app.invoke("refund", {}, credentials=Credentials(api_key="nx_wrong"))


async def test_a_caller_no_inputs_could_let_through_learns_nothing_about_them(
    storage_url: str,
) -> None:
    app = secured_app(storage_url, [])
    async with app:
        token, _ = await app.security.issue_api_key("nobody", roles=[])
        nobody = Credentials(api_key=token)
        for bad in ({"amount": "900", "extra": 1}, {"amount": 5}, b"{not json"):
            with pytest.raises(PermissionDenied) as err:  # never a ValidationError
                await app.invoke("refund", bad, credentials=nobody)
            assert "amount" not in err.value.message and not getattr(err.value, "errors", None)
        # A caller some inputs could let through hears what is wrong with these.
        sam = await key_of(app, "sam", level="agent")
        with pytest.raises(ValidationError):
            await app.invoke("refund", {"amount": "900"}, credentials=sam)


async def test_invoke_as_skips_authentication_only(storage_url: str) -> None:
    refunds: list[float] = []
    app = secured_app(storage_url, refunds)
    async with app:
        sam = Principal(id="sam", roles=("clerk",), attributes={"level": "agent"})
        assert (await app.invoke_as(sam, "refund", {"amount": 20})).output == 20
        with pytest.raises(PermissionDenied):
            await app.invoke_as(sam, "refund", {"amount": 900})
        with pytest.raises(ValidationError):
            await app.invoke_as(sam, "refund", {"amount": "9e5"})
        assert refunds == [20]
        [run] = await app.list_runs()
        assert (run.principal, run.channel) == ("sam", "python")
        outcomes = [r.outcome for r in await app.security.query_audit(limit=10)]
        assert sorted(outcomes) == ["completed", "forbidden", "validation_error"]


async def test_idempotency_keys_are_scoped_to_the_principal(storage_url: str) -> None:
    refunds: list[float] = []
    app = secured_app(storage_url, refunds)
    async with app:
        ann = await key_of(app, "ann", level="agent")
        bob = await key_of(app, "bob", level="agent")
        mine = await app.invoke("refund", {"amount": 7}, credentials=ann, idempotency_key="k1")
        # Bob's equal key, same inputs: his own new run, never ann's id or output.
        theirs = await app.invoke("refund", {"amount": 7}, credentials=bob, idempotency_key="k1")
        assert theirs.run_id != mine.run_id and theirs.status == "completed"
        # Other inputs under the same key: no conflict that would tell him the key exists.
        other = await app.invoke("refund", {"amount": 8}, credentials=bob, idempotency_key="k2")
        assert other.output == 8
        ann_k2 = await app.invoke("refund", {"amount": 9}, credentials=ann, idempotency_key="k2")
        assert ann_k2.run_id != other.run_id and ann_k2.output == 9
        assert refunds == [7, 7, 8, 9]
        # Each principal's key still deduplicates its own runs, and conflicts for its own.
        again = await app.invoke("refund", {"amount": 7}, credentials=ann, idempotency_key="k1")
        assert (again.run_id, again.output) == (mine.run_id, 7)
        with pytest.raises(IdempotencyConflict):
            await app.invoke("refund", {"amount": 1}, credentials=bob, idempotency_key="k1")
        assert refunds == [7, 7, 8, 9]
        runs = {r.id: r.principal for r in await app.list_runs()}
        assert runs == {
            mine.run_id: "ann",
            theirs.run_id: "bob",
            other.run_id: "bob",
            ann_k2.run_id: "ann",
        }


# -- no channel runs as a principal of its own choosing ------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def _literal_keys(function: ast.AST, name: str) -> set[str] | None:
    """The keys of the dict literal ``name`` is bound to in ``function`` (None: not provable)."""
    keys: set[str] | None = None
    for node in ast.walk(function):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id == name:
                value = getattr(node, "value", None)
                if keys is not None or not isinstance(value, ast.Dict):
                    return None  # bound twice, or to something not a literal
                if not all(
                    isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys
                ):
                    return None
                keys = {k.value for k in value.keys}  # type: ignore[union-attr]
            elif (
                isinstance(target, ast.Subscript)
                and isinstance(target.value, ast.Name)
                and target.value.id == name
            ):
                key = target.slice
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    return None
                if keys is not None:
                    keys.add(key.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
            and node.func.attr in ("update", "setdefault", "__setitem__")
        ):
            return None
    return keys


def _calls_as_a_principal(path: Path) -> list[str]:
    """Each call in ``path`` that runs a workflow as a principal instead of its credentials."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]

    def enclosing(call: ast.Call) -> ast.AST:
        inner = [f for f in functions if f.lineno <= call.lineno <= (f.end_lineno or f.lineno)]
        return max(inner, key=lambda f: f.lineno) if inner else tree

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node.lineno}"
        if name in ("invoke_as", "_invoke"):
            found.append(f"{where}: calls {name}")
            continue
        if name != "invoke":
            continue
        for keyword in node.keywords:
            if keyword.arg == "principal":
                found.append(f"{where}: invoke(principal=...)")
            elif keyword.arg is None:  # **options: its keys must be known and not 'principal'
                value = keyword.value
                keys = (
                    _literal_keys(enclosing(node), value.id)
                    if isinstance(value, ast.Name)
                    else None
                )
                if keys is None:
                    found.append(f"{where}: invoke(**...) whose keys cannot be checked")
                elif "principal" in keys:
                    found.append(f"{where}: invoke(**{{'principal': ...}})")
    return found


def test_no_channel_plugin_invokes_as_a_principal() -> None:
    """Every channel hands its credentials to invoke; none names the principal (issue #12)."""
    sources = sorted(REPO.glob("plugins/*/nexus_plugin_*/**/*.py"))
    packages = {p.relative_to(REPO).parts[1] for p in sources}
    assert {"api", "cli", "mcp"} <= packages, packages  # the check sees the channel sources
    offenders = [line for path in sources for line in _calls_as_a_principal(path)]
    assert offenders == [], "\n".join(offenders)


def test_the_static_check_would_see_a_channel_that_does(tmp_path: Path) -> None:
    bad = tmp_path / "channel.py"
    cases = {
        "await app.invoke('w', {}, principal=who)": "invoke(principal=...)",
        "await app.invoke_as(who, 'w', {})": "calls invoke_as",
        "options = {'channel': 'x', 'principal': who}\n    await app.invoke('w', **options)": (
            "invoke(**{'principal': ...})"
        ),
        "await app.invoke('w', **make())": "cannot be checked",
        "options = {}\n    options[key] = who\n    await app.invoke('w', **options)": (
            "cannot be checked"
        ),
    }
    for body, finding in cases.items():
        bad.write_text(f"async def handler(app, who, key):\n    {body}\n", encoding="utf-8")
        [found] = _calls_as_a_principal(bad)
        assert finding in found, (body, found)
    fine = "options = {'channel': 'x'}\n    await app.invoke('w', credentials=c, **options)"
    bad.write_text(f"async def handler(app, c):\n    {fine}\n", encoding="utf-8")
    assert _calls_as_a_principal(bad) == []


async def test_a_replayed_call_is_marked_so_its_channel_does_not_cancel_the_run(
    storage_url: str,
) -> None:
    app = secured_app(storage_url, [])
    async with app:
        ann = await key_of(app, "ann")
        bob = await key_of(app, "bob")
        first = await app.invoke(
            "nap", {"seconds": 30}, credentials=ann, idempotency_key="k", wait=False
        )
        duplicate = await app.invoke(
            "nap", {"seconds": 30}, credentials=ann, idempotency_key="k", wait=False
        )
        assert (first.replayed, duplicate.replayed) == (False, True)
        assert duplicate.run_id == first.run_id and duplicate.status == "running"
        # Bob's equal key is his own run: nothing of ann's to cancel or replay.
        bobs = await app.invoke(
            "nap", {"seconds": 30}, credentials=bob, idempotency_key="k", wait=False
        )
        assert bobs.run_id != first.run_id and not bobs.replayed
        ann_who = await app.security.authenticate(ann, "python")
        bob_who = await app.security.authenticate(bob, "python")
        with pytest.raises(RunNotFound):  # without runs:read, another's run does not exist
            await app.cancel(first.run_id, principal=bob_who)
        assert await app.cancel(first.run_id, principal=ann_who)
        assert await app.cancel(bobs.run_id, principal=bob_who)
        done = await app.wait(first.run_id)
        assert done.status == "cancelled" and not done.replayed


async def test_serving_moves_start_up_objects_out_of_the_collectors_sight() -> None:
    # A full collection would otherwise walk every module and plugin object
    # (pauses of 20-100 ms under load): serving freezes them once it is up.
    import functools
    import gc
    import logging

    serving = anyio.Event()

    class Up(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "serving channels" in record.getMessage():
                serving.set()

    handler = Up()
    logger = logging.getLogger("nexus")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    gc.unfreeze()
    app = make_app("memory://")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(app.serve, [], signals=None))
            with anyio.fail_after(10):
                await serving.wait()
            assert gc.get_freeze_count() > 0  # frozen right after saying so
            tg.cancel_scope.cancel()
    finally:
        gc.unfreeze()
        logger.removeHandler(handler)
        logger.setLevel(level)
