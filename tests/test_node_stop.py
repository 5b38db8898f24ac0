"""A sync node in a worker thread is told to stop when its run stops waiting for it."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest

from nexus_core import Nexus, Node, RunControl, WorkflowBuilder
from nexus_core.workflows import NodeContext, Runtime
from nexus_core.workflows.node import current_context

pytestmark = pytest.mark.anyio


class Seen(msgspec.Struct):
    started: Any  # threading.Event: the node is running in its thread
    stopped: Any  # threading.Event: the node saw the stop request and returned


class Patient(Node):
    """Sync: waits up to 60 s for a stop request, the cooperative way."""

    Config = Seen

    class Outputs(msgspec.Struct):
        stopped: bool

    def run(self, inputs: Any, context: NodeContext) -> Outputs:
        assert current_context() is context  # the same context, in the worker thread
        self.config.started.set()
        stopped = context.wait_for_stop(60)
        if stopped:
            self.config.stopped.set()
        return self.Outputs(stopped=stopped)


async def _wait_thread_event(event: threading.Event, seconds: float = 10) -> bool:
    return await anyio.to_thread.run_sync(event.wait, seconds)


def _workflow(seen: Seen, **options: Any) -> Any:
    wb = WorkflowBuilder("patient")
    wb.add_node(Patient, "wait", {"started": seen.started, "stopped": seen.stopped}, **options)
    return wb.build({})


async def test_a_cancelled_run_tells_its_sync_node_to_stop() -> None:
    seen = Seen(started=threading.Event(), stopped=threading.Event())
    control = RunControl()
    outcome: dict[str, Any] = {}

    async def go() -> None:
        outcome["result"] = await Runtime().run(_workflow(seen), {}, control=control)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            assert await _wait_thread_event(seen.started)
            assert not seen.stopped.is_set()
            control.cancel()
    assert outcome["result"].status == "cancelled"
    # The runtime did not wait for the thread, but the node heard the request.
    assert await _wait_thread_event(seen.stopped)


async def test_a_timed_out_sync_node_is_told_to_stop() -> None:
    seen = Seen(started=threading.Event(), stopped=threading.Event())
    with anyio.fail_after(20):
        result = await Runtime().run(_workflow(seen, timeout=0.2), {})
    assert result.status == "failed" and result.error is not None
    assert "timed out" in result.error.message
    assert await _wait_thread_event(seen.stopped)


async def test_a_function_workflow_sees_the_stop_through_current_context() -> None:
    app = Nexus("stop-test")
    started, stopped = threading.Event(), threading.Event()

    @app.workflow
    def patient() -> bool:
        context = current_context()
        assert context is not None and context.run_id
        started.set()
        if context.wait_for_stop(60):
            stopped.set()
        return True

    async with app:
        run = await app.invoke("patient", {}, wait=False)
        assert await _wait_thread_event(started)
        assert await app.cancel(run.run_id)
        with anyio.fail_after(10):
            result = await app.wait(run.run_id)
    assert result.status == "cancelled"
    assert await _wait_thread_event(stopped)


async def test_no_context_outside_a_node() -> None:
    assert current_context() is None
