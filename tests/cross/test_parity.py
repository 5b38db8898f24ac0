"""Parity, generated: every workflow of the examples answers alike on every channel.

For each workflow of ``examples/hello.py`` and ``examples/shop.py``, inputs
are drawn by hypothesis from the workflow's own input JSON Schema (the one
every channel publishes), valid ones and ones with a single fault. Each input
is sent in process (``app.invoke``), over REST, over the WebSocket, over MCP
on stdio and on the gateway's streamable HTTP endpoint, and the outcomes must
be equal: the same output, the same failing node and reason, or the same
refusal with the same field paths and reasons. The ``nexus`` command is
checked on samples of the same inputs, in process (``--app``) and against the
gateway (``--url``), through ``nexus batch`` (many inputs, one process) and
``nexus run`` with the inputs written as options.

Servers start once per module: a gateway and an MCP stdio server per example
app, all on one SQLite file, with the order workflow's HTTP step pointed at a
price catalog served by this test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .cross_support import EXAMPLES, require_plugins

require_plugins()

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import httpx  # noqa: E402
import msgspec  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nexus_core import Nexus  # noqa: E402
from nexus_core.errors import NexusError  # noqa: E402

from .cross_support import (  # noqa: E402
    Gateway,
    Outcome,
    SchemaStrategies,
    gateway,
    load_example,
    mcp_http,
    mcp_stdio,
    nexus,
    outcome_of_batch,
    outcome_of_cli_run,
    outcome_of_error,
    outcome_of_problem,
    outcome_of_run,
    outcome_of_tool,
    output_is_wrapped,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

APPS = {"hello": EXAMPLES / "hello.py", "shop": EXAMPLES / "shop.py"}
#: Examples per workflow on the fast channels (in process, REST, WebSocket, MCP x2).
EXAMPLES_PER_WORKFLOW = int(os.environ.get("NEXUS_PARITY_EXAMPLES", "30"))
#: Inputs per workflow sent through `nexus batch` (local and remote).
BATCH_PER_WORKFLOW = 8


def _load(path: Path) -> tuple[Nexus, Any]:
    """Import an example the way the servers do; its in-process host keeps runs in memory."""
    return load_example(path, storage="memory://"), sys.modules[f"nexus_app_{path.stem}"]


LOADED = {name: _load(path) for name, path in APPS.items()}
CASES = [(name, workflow) for name, (app, _) in LOADED.items() for workflow in app.workflows]


@dataclass
class Channels:
    """One example app on every channel."""

    name: str
    app: Nexus
    gateway: Gateway
    rest: httpx.AsyncClient
    ws: Any
    stdio: Any
    mcp: Any
    ws_lock: anyio.Lock


@pytest.fixture(scope="module")
def catalog() -> Iterator[str]:
    """The shop's demo price catalog, served from this process; its URL."""
    server = LOADED["shop"][1].catalog_server()
    try:
        yield f"http://127.0.0.1:{server.server_port}/prices"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def gateways(workdir: Path, env: dict[str, str]) -> Iterator[dict[str, Gateway]]:
    """``python -m nexus_plugin_api APP`` for each example, on the module's SQLite file."""
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(gateway(path, workdir, env)) for name, path in APPS.items()
        }


@pytest.fixture(scope="module")
async def channels(
    gateways: dict[str, Gateway], workdir: Path, env: dict[str, str], catalog: str
) -> AsyncIterator[dict[str, Channels]]:
    """Every channel of both examples, connected once for the whole module."""
    from websockets.asyncio.client import connect

    async with contextlib.AsyncExitStack() as stack:
        found = {}
        for name, path in APPS.items():
            app = LOADED[name][0]
            served = gateways[name]
            await stack.enter_async_context(app)
            rest = await stack.enter_async_context(
                httpx.AsyncClient(base_url=served.url, timeout=60)
            )
            ws = await stack.enter_async_context(
                connect(served.url.replace("http://", "ws://") + "/ws", max_size=None)
            )
            stdio = await stack.enter_async_context(mcp_stdio(path, workdir, env))
            mcp = await stack.enter_async_context(mcp_http(served.url + "/mcp"))
            found[name] = Channels(name, app, served, rest, ws, stdio, mcp, anyio.Lock())
        yield found


# -- each channel's answer, as an Outcome ----------------------------------------------------


async def in_process(app: Nexus, workflow: str, inputs: Any) -> Outcome:
    try:
        result = await app.invoke(workflow, inputs)
    except NexusError as exc:
        return outcome_of_error(exc)
    return outcome_of_run(msgspec.to_builtins(result))


async def over_rest(http: httpx.AsyncClient, workflow: str, inputs: Any) -> Outcome:
    # A client keeping the session cookie would continue one session on every call (the
    # API sets it): like the other channels here, each call starts afresh.
    http.cookies.clear()
    response = await http.post(f"/workflows/{workflow}/runs", json=inputs)
    if response.status_code == 200:
        return outcome_of_run(response.json())
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    problem = response.json()
    assert problem["status"] == response.status_code
    if problem["code"] == "validation_error":
        assert response.status_code == 422, problem
    return outcome_of_problem(problem)


async def over_websocket(channels: Channels, workflow: str, inputs: Any) -> Outcome:
    async with channels.ws_lock:
        message = {"type": "run", "id": "parity", "workflow": workflow, "inputs": inputs}
        await channels.ws.send(json.dumps(message))
        with anyio.fail_after(60):
            answer = json.loads(await channels.ws.recv())
    assert answer["id"] == "parity", answer
    if answer["type"] == "error":
        return outcome_of_problem(answer["error"])
    return outcome_of_run(answer["run"])


async def over_mcp(client: Any, wrapped: bool, workflow: str, inputs: Any) -> Outcome:
    return outcome_of_tool(await client.call_tool(workflow, inputs), wrapped)


# -- in process, REST, WebSocket, MCP stdio, MCP HTTP: every drawn input ------------------

#: What the drawn inputs carry as the catalog URL; each test puts the real one in its place.
CATALOG = "http://catalog.test/prices"


def strategies(app: Nexus, workflow: str) -> SchemaStrategies:
    """Inputs of ``workflow`` from its schema (the shop's catalog URL is the test's own)."""
    schema = app.workflows[workflow].input_schema
    overrides = {"catalog_url": st.just(CATALOG)} if "catalog_url" in schema["properties"] else {}
    return SchemaStrategies(schema, overrides)


def with_catalog(inputs: Any, catalog: str) -> Any:
    """``inputs`` with the catalog placeholder replaced by the URL of the running catalog."""
    if isinstance(inputs, dict) and inputs.get("catalog_url") == CATALOG:
        return {**inputs, "catalog_url": catalog}
    return inputs


def parity_test(example: str, workflow: str) -> Any:
    """The test of one workflow: hypothesis draws its inputs, every channel must agree.

    One test function per workflow, each with its own strategy, so that drawing
    happens before the coroutine runs (hypothesis stops a draw with a
    ``BaseException``, which must not cross the anyio test runner).
    """
    app = LOADED[example][0]
    wrapped = output_is_wrapped(app.workflows[workflow].output_schema)

    @settings(
        max_examples=EXAMPLES_PER_WORKFLOW,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(drawn=strategies(app, workflow).inputs())
    async def test(channels: dict[str, Channels], catalog: str, drawn: Any) -> None:
        here = channels[example]
        inputs = with_catalog(drawn, catalog)
        expected = await in_process(here.app, workflow, inputs)
        got = {
            "rest": await over_rest(here.rest, workflow, inputs),
            "websocket": await over_websocket(here, workflow, inputs),
            "mcp stdio": await over_mcp(here.stdio, wrapped, workflow, inputs),
            "mcp http": await over_mcp(here.mcp, wrapped, workflow, inputs),
        }
        for channel, outcome in got.items():
            assert outcome == expected, f"{channel} answered {outcome!r}, in process {expected!r}"

    test.__name__ = test.__qualname__ = f"test_{example}_{workflow}_answers_alike"
    test.__doc__ = f"{example}.{workflow}: the same answer in process, REST, WebSocket and MCP."
    return test


for _example, _workflow in CASES:
    _test = parity_test(_example, _workflow)
    globals()[_test.__name__] = _test


# -- the nexus command: samples of the same inputs -----------------------------------------


def sample(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` inputs drawn by hypothesis (reproducibly), to send through one process."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


async def _nexus(*args: str, env: dict[str, str], cwd: Path) -> Any:
    return await anyio.to_thread.run_sync(lambda: nexus(*args, env=env, cwd=cwd))


def targets(channels: Channels) -> dict[str, list[str]]:
    """The ``nexus`` options naming the app in process, and naming its gateway."""
    return {"--app": ["--app", str(APPS[channels.name])], "--url": ["--url", channels.gateway.url]}


def write_batch(workdir: Path, invocations: list[dict[str, Any]]) -> Path:
    """A JSON Lines file of invocations, for ``nexus batch``."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=workdir, prefix="batch-", suffix=".jsonl", delete=False
    ) as fh:
        fh.write("".join(json.dumps(item) + "\n" for item in invocations))
    return Path(fh.name)


async def batch(
    target: list[str],
    invocations: list[dict[str, Any]],
    workdir: Path,
    env: dict[str, str],
    concurrency: int = 4,
) -> tuple[Any, dict[str, Outcome]]:
    """Run ``nexus TARGET -o json batch FILE`` on ``invocations``; the outcome of each ``id``."""
    path = await anyio.to_thread.run_sync(write_batch, workdir, invocations)
    options = ["-o", "json", "batch", str(path), "--concurrency", str(concurrency)]
    done = await _nexus(*target, *options, env=env, cwd=workdir)
    records = {record["id"]: outcome_of_batch(record) for record in done.records()}
    assert set(records) == {item["id"] for item in invocations}, str(done)
    return done, records


async def test_nexus_batch_gives_the_same_answers_in_process_and_remotely(
    channels: dict[str, Channels], catalog: str, workdir: Path, env: dict[str, str]
) -> None:
    # Session workflows are left to the next test: a batch line without a session runs in
    # a session of its own, which --url does not do yet.
    jobs = []
    for here in channels.values():
        invocations, expected = [], {}
        for workflow, definition in here.app.workflows.items():
            if definition.injected:
                continue
            drawn = sample(strategies(here.app, workflow).inputs(), BATCH_PER_WORKFLOW)
            for index, raw in enumerate(drawn):
                key, inputs = f"{workflow}-{index}", with_catalog(raw, catalog)
                invocations.append({"workflow": workflow, "inputs": inputs, "id": key})
                expected[key] = (inputs, await in_process(here.app, workflow, inputs))
        for mode, target in targets(here).items():
            jobs.append((mode, target, invocations, expected))

    results: list[Any] = [None] * len(jobs)

    async def run(index: int) -> None:
        _, target, invocations, _ = jobs[index]
        results[index] = await batch(target, invocations, workdir, env)

    async with anyio.create_task_group() as tg:
        for index in range(len(jobs)):
            tg.start_soon(run, index)
    for (mode, _, _, expected), (done, got) in zip(jobs, results, strict=True):
        refused = any(outcome[0] != "completed" for _, outcome in expected.values())
        assert done.code == (1 if refused else 0), str(done)
        for key, (inputs, outcome) in expected.items():
            assert got[key] == outcome, f"nexus {mode} batch, {key} {inputs!r}"


@pytest.mark.parametrize("mode", ["--app", "--url"])
async def test_nexus_batch_runs_each_session_workflow_in_a_session_of_its_own(
    channels: dict[str, Channels], workdir: Path, env: dict[str, str], mode: str
) -> None:
    here = channels["shop"]
    invocations = [
        {"workflow": "add_to_cart", "inputs": {"sku": "MUG-001", "quantity": 2}, "id": "mug"},
        {"workflow": "add_to_cart", "inputs": {"sku": "PEN-100"}, "id": "pen"},
        {"workflow": "view_cart", "inputs": {}, "id": "view"},
    ]
    expected = {}
    for item in invocations:
        expected[item["id"]] = await in_process(here.app, item["workflow"], item["inputs"])
    assert expected["view"] == ("completed", {"lines": [], "count": 0})
    # One at a time, in file order, as a script reading the results would expect.
    _, got = await batch(targets(here)[mode], invocations, workdir, env, concurrency=1)
    assert got == expected


#: Inputs written as options that only the core can find wrong (a bound, a pattern, deep).
OPTION_FAULTS = [
    ("shop", "shipping", {"weight_grams": 0, "country": "DE"}),
    ("shop", "quote", {"items": [{"sku": "MUG-001"}, {"sku": "mug-1", "quantity": 2}]}),
    ("shop", "search", {"query": "x"}),
]


async def run_all(
    calls: list[tuple[list[str], list[str]]], workdir: Path, env: dict[str, str]
) -> list[Any]:
    """``nexus TARGET -o json --quiet run ARGS`` for each call, four at a time."""
    results: list[Any] = [None] * len(calls)
    limit = anyio.CapacityLimiter(4)

    async def call(index: int) -> None:
        target, arguments = calls[index]
        async with limit:
            results[index] = await _nexus(
                *target, "-o", "json", "--quiet", "run", *arguments, env=env, cwd=workdir
            )

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(call, index)
    return results


async def test_nexus_run_gives_the_same_answers(
    channels: dict[str, Channels], catalog: str, workdir: Path, env: dict[str, str]
) -> None:
    # Valid inputs written as options (format_run_args is the inverse of the parser), inputs
    # with a fault the core finds written as options too, and drawn faulty inputs as --json.
    from nexus_plugin_cli.options import format_run_args

    cases = []
    for here in channels.values():
        for workflow in here.app.workflows:
            draw = strategies(here.app, workflow)
            # An argument vector cannot hold NUL: such an input has no command line.
            printable = draw.valid().filter(lambda inputs: "\\u0000" not in json.dumps(inputs))
            valid = with_catalog(sample(printable, 1)[0], catalog)
            invalid = with_catalog(sample(draw.invalid(), 2)[1], catalog)
            schema = here.app.workflows[workflow].input_schema
            cases.append((here, workflow, valid, format_run_args(workflow, schema, valid)))
            cases.append((here, workflow, invalid, ["--json", json.dumps(invalid), workflow]))
    for example, workflow, inputs in OPTION_FAULTS:
        here = channels[example]
        schema = here.app.workflows[workflow].input_schema
        cases.append((here, workflow, inputs, format_run_args(workflow, schema, inputs)))

    calls, expected = [], []
    for here, workflow, inputs, arguments in cases:
        outcome = await in_process(here.app, workflow, inputs)
        schema = here.app.workflows[workflow].input_schema
        for target in targets(here).values():
            calls.append((target, arguments))
            expected.append((schema, outcome))
    results = await run_all(calls, workdir, env)
    for (target, arguments), (schema, outcome), done in zip(calls, expected, results, strict=True):
        got = outcome_of_cli_run(done, schema)
        assert got == outcome, f"nexus {target[0]} run {arguments}: {got!r} != {outcome!r}"


async def test_nexus_run_reports_an_option_of_the_wrong_type_as_the_core_does(
    channels: dict[str, Channels], workdir: Path, env: dict[str, str]
) -> None:
    here = channels["shop"]
    schema = here.app.workflows["shipping"].input_schema
    expected = await in_process(here.app, "shipping", {"weight_grams": "many", "country": "DE"})
    assert expected == (
        "refused",
        "validation_error",
        (("weight_grams", "expected 'int', got 'str'"),),
    )
    arguments = ["shipping", "--weight-grams", "many", "--country", "DE"]
    (done,) = await run_all([(targets(here)["--app"], arguments)], workdir, env)
    assert outcome_of_cli_run(done, schema) == expected
