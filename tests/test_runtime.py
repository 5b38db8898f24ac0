"""The anyio runtime: ordering, concurrency, routing, timeouts, retries and cancellation."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core import Nexus, Node, RunControl, WorkflowBuilder
from nexus_core.workflows import NodeContext, Runtime

pytestmark = pytest.mark.anyio


class Journal:
    """Records which node ran when, shared by the nodes of one run."""

    def __init__(self) -> None:
        self.order: list[str] = []


class AddConfig(msgspec.Struct):
    value: int = 0
    journal: Any = None
    pause: float = 0.0


class Add(Node):
    """Untyped inputs: sums whatever arrives plus its own value."""

    Config = AddConfig
    Inputs = None

    class Outputs(msgspec.Struct):
        total: int

    async def run(self, inputs: dict[str, int], context: NodeContext) -> Outputs:
        if self.config.pause:
            await anyio.sleep(self.config.pause)
        self.config.journal.order.append(context.node_id)
        return self.Outputs(total=self.config.value + sum(inputs.values()))


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int]]:
    n = draw(st.integers(1, 12))
    edges = [(i, j) for j in range(n) for i in range(j) if draw(st.booleans())]
    values = draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))
    return n, edges, values


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dag=dags())
async def test_random_dags_match_sequential_evaluation(dag: Any) -> None:
    n, edges, values = dag
    journal = Journal()
    wb = WorkflowBuilder("dag")
    for i in range(n):
        wb.add_node(Add, f"n{i}", {"value": values[i], "journal": journal})
    for i, j in edges:
        wb.add_connection(f"n{i}", "total", f"n{j}", f"from_{i}")
    workflow = wb.build({})
    result = await Runtime().run(workflow, {})
    assert result.status == "completed", result.error

    # Every node ran exactly once, and only after all of its parents.
    assert sorted(journal.order) == sorted(f"n{i}" for i in range(n))
    position = {node: k for k, node in enumerate(journal.order)}
    for i, j in edges:
        assert position[f"n{i}"] < position[f"n{j}"]

    # The results equal a plain sequential evaluation.
    expected: dict[int, int] = {}
    for j in range(n):
        expected[j] = values[j] + sum(expected[i] for i, jj in edges if jj == j)
    for j in range(n):
        assert result.nodes[f"n{j}"].output.total == expected[j]
        assert result.nodes[f"n{j}"].status == "completed"


class Rendezvous(Node):
    """Each of two branches waits until the other has started: only concurrency lets both end."""

    class Config(msgspec.Struct):
        mine: Any
        theirs: Any

    class Outputs(msgspec.Struct):
        ok: bool

    async def run(self, inputs: Any) -> Outputs:
        self.config.mine.set()
        with anyio.fail_after(5):
            await self.config.theirs.wait()
        return self.Outputs(ok=True)


async def test_independent_slow_branches_overlap() -> None:
    a, b = anyio.Event(), anyio.Event()
    wb = WorkflowBuilder("pair")
    wb.add_node(Rendezvous, "left", {"mine": a, "theirs": b})
    wb.add_node(Rendezvous, "right", {"mine": b, "theirs": a})
    result = await Runtime().run(wb.build({}), {})
    assert result.status == "completed", result.error
    assert result.output["left"].ok
    assert result.output["right"].ok


async def test_sync_code_runs_in_a_worker_thread() -> None:
    app = Nexus(autoload=False)
    loop_thread = threading.get_ident()

    @app.workflow
    def where() -> int:
        return threading.get_ident()

    @app.workflow
    async def where_async() -> int:
        return threading.get_ident()

    assert (await app.execute("where")).output != loop_thread
    assert (await app.execute("where_async")).output == loop_thread


class Route(Node):
    blocking = False

    class Inputs(msgspec.Struct):
        n: int

    class Outputs(msgspec.Struct):
        even: int | msgspec.UnsetType = msgspec.UNSET
        odd: int | msgspec.UnsetType = msgspec.UNSET

    def run(self, inputs: Inputs) -> Outputs:
        if inputs.n % 2:
            return self.Outputs(odd=inputs.n)
        return self.Outputs(even=inputs.n)


class Label(Node):
    blocking = False

    class Config(msgspec.Struct):
        label: str

    class Inputs(msgspec.Struct):
        n: int

    class Outputs(msgspec.Struct):
        text: str

    def run(self, inputs: Inputs) -> Outputs:
        return self.Outputs(text=f"{inputs.n} is {self.config.label}")


@pytest.mark.parametrize(("n", "taken", "skipped"), [(4, "even", "odd"), (7, "odd", "even")])
async def test_a_switch_routes_and_skips_the_branch_not_taken(
    n: int, taken: str, skipped: str
) -> None:
    wb = WorkflowBuilder("parity")
    wb.add_node(Route, "route")
    wb.add_node(Label, "even", {"label": "even"})
    wb.add_node(Label, "odd", {"label": "odd"})
    wb.add_node(Label, "after_odd", {"label": "still odd"})
    wb.add_connection("route", "even", "even", "n")
    wb.add_connection("route", "odd", "odd", "n")
    wb.add_workflow_inputs("route", {"n": "n"})
    wb.add_workflow_outputs("even", {"even": "text"})
    wb.add_workflow_outputs("odd", {"odd": "text"})
    # after_odd hangs off the odd branch through a typed int connection.
    wb.add_connection("route", "odd", "after_odd", "n")
    result = await Runtime().run(wb.build({}), {"n": n})
    assert result.status == "completed"
    assert result.nodes[taken].status == "completed"
    assert result.nodes[skipped].status == "skipped"
    assert result.nodes["after_odd"].status == ("completed" if taken == "odd" else "skipped")
    assert result.output[taken] == f"{n} is {taken}"
    assert result.output[skipped] is None


class Flaky(Node):
    class Config(msgspec.Struct):
        failures: int
        calls: list[int]

    class Outputs(msgspec.Struct):
        attempt: int

    async def run(self, inputs: Any) -> Outputs:
        self.config.calls.append(1)
        if len(self.config.calls) <= self.config.failures:
            raise ConnectionError(f"flaky failure {len(self.config.calls)}")
        return self.Outputs(attempt=len(self.config.calls))


async def test_retries_with_backoff_then_success() -> None:
    calls: list[int] = []
    wb = WorkflowBuilder("retry")
    wb.add_node(Flaky, "flaky", {"failures": 2, "calls": calls}, retries=2, backoff=0.001)
    result = await Runtime().run(wb.build({}), {})
    assert result.status == "completed"
    assert result.nodes["flaky"].attempts == 3
    assert result.output.attempt == 3


async def test_retries_exhausted_names_the_node_and_reason() -> None:
    calls: list[int] = []
    wb = WorkflowBuilder("retry")
    wb.add_node(Flaky, "flaky", {"failures": 5, "calls": calls}, retries=1, backoff=0.001)
    workflow = wb.build({})
    result = await Runtime().run(workflow, {})
    assert result.status == "failed"
    assert result.error is not None
    assert (result.error.node, result.error.type) == ("flaky", "ConnectionError")
    assert result.error.message == "flaky failure 2"
    assert result.nodes["flaky"].attempts == 2
    assert len(workflow.nodes["flaky"].node.config.calls) == 2  # config is validated: a copy


class Sleeper(Node):
    class Config(msgspec.Struct):
        seconds: float
        started: Any = None

    class Outputs(msgspec.Struct):
        done: bool

    async def run(self, inputs: Any) -> Outputs:
        if self.config.started is not None:
            self.config.started.set()
        await anyio.sleep(self.config.seconds)
        return self.Outputs(done=True)


async def test_a_node_timeout_fails_the_run_and_cancels_siblings() -> None:
    wb = WorkflowBuilder("slow")
    wb.add_node(Sleeper, "slow", {"seconds": 30}, timeout=0.05)
    wb.add_node(Sleeper, "sibling", {"seconds": 30})
    with anyio.fail_after(10):
        result = await Runtime().run(wb.build({}), {})
    assert result.status == "failed"
    assert result.error.node == "slow"
    assert result.error.message == "timed out after 0.05s"
    assert result.nodes["sibling"].status == "cancelled"


async def test_a_run_can_be_cancelled() -> None:
    started = anyio.Event()
    wb = WorkflowBuilder("long")
    wb.add_node(Sleeper, "wait", {"seconds": 30, "started": started})
    wb.add_node(Label, "after", {"label": "x"})
    wb.add_connection("wait", "done", "after", "n")
    control = RunControl()
    outcome: dict[str, Any] = {}

    async def go() -> None:
        outcome["result"] = await Runtime().run(wb.build({}), {}, control=control)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(go)
            await started.wait()
            control.cancel()
    result = outcome["result"]
    assert result.status == "cancelled"
    assert result.nodes["wait"].status == "cancelled"
    assert result.nodes["after"].status == "cancelled"


async def test_a_failing_function_workflow_names_node_and_reason() -> None:
    app = Nexus(autoload=False)

    @app.workflow
    def divide(a: int, b: int) -> float:
        return a / b

    result = await app.execute("divide", {"a": 1, "b": 0})
    assert result.status == "failed"
    assert result.error.node == "divide"
    assert result.error.type == "ZeroDivisionError"
    assert "division by zero" in result.error.message
    assert (await app.execute("divide", {"a": 1, "b": 4})).output == 0.25


async def test_resume_skips_nodes_that_already_finished() -> None:
    journal = Journal()
    wb = WorkflowBuilder("chain")
    for i in range(4):
        wb.add_node(Add, f"n{i}", {"value": 1, "journal": journal})
    for i in range(3):
        wb.add_connection(f"n{i}", "total", f"n{i + 1}", "prev")
    workflow = wb.build({})
    result = await Runtime().run(workflow, {}, completed={"n0": {"total": 10}, "n1": {"total": 11}})
    assert journal.order == ["n2", "n3"]
    assert result.nodes["n3"].output.total == 13


async def test_an_untyped_value_into_a_typed_input_is_checked_at_run_time() -> None:
    class Loose(Node):
        blocking = False

        class Outputs(msgspec.Struct):
            value: Any

        def run(self, inputs: Any) -> Any:
            return self.Outputs(value="not a number")

    wb = WorkflowBuilder("loose")
    wb.add_node(Loose, "loose")
    wb.add_node(Label, "label", {"label": "x"})
    wb.add_connection("loose", "value", "label", "n")
    result = await Runtime().run(wb.build({}), {})
    assert result.status == "failed"
    assert result.error.node == "label"
    assert "input 'n'" in result.error.message


async def test_a_run_timeout_fails_the_run_and_cancels_its_nodes() -> None:
    wb = WorkflowBuilder("slow")
    wb.add_node(Sleeper, "slow", {"seconds": 30})
    with anyio.fail_after(10):
        result = await Runtime().run(wb.build({}), {}, timeout=0.05)
    assert result.status == "failed"
    assert result.error.type == "TimeoutError"
    assert result.error.message == "run timed out after 0.05s"
    assert result.error.node is None
    assert result.nodes["slow"].status == "cancelled"


async def test_a_quick_sync_workflow_can_stay_on_the_loop() -> None:
    app = Nexus(autoload=False)
    loop_thread = threading.get_ident()

    @app.workflow(blocking=False)
    def where() -> int:
        return threading.get_ident()

    assert (await app.execute("where")).output == loop_thread
