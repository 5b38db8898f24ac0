"""The standard node library, each node in a real built workflow run by the Runtime."""

from __future__ import annotations

import json
import re
import string
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core import Nexus, WorkflowDefinitionError
from nexus_core.workflows import RunResult, Runtime, WorkflowBuilder
from nexus_core.workflows.builder import default_node_types

pytestmark = pytest.mark.anyio

NODE_NAMES = [
    "DelayNode",
    "HTTPRequestNode",
    "MergeNode",
    "PythonCodeNode",
    "SQLQueryNode",
    "SwitchNode",
    "TransformNode",
    "WorkflowNode",
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def run(wb: WorkflowBuilder, inputs: Any = None) -> RunResult:
    # build() without a registry: node types come from the installed entry points.
    return await Runtime().run(wb.build(), inputs)


# -- registration ----------------------------------------------------------------


async def test_every_node_is_registered_through_the_entry_point() -> None:
    types = default_node_types()
    for name in NODE_NAMES:
        assert types[name].plugin == "nexus-core"
        assert types[name].description
        cls = types[name].load()
        assert cls.type_name == name
        assert cls.__doc__


async def test_nodes_run_through_the_host() -> None:
    app = Nexus("nodes", autoload=True)
    wb = app.builder("shout")
    wb.add_node("TransformNode", "t", {"expression": "str(data) + '!'"})
    wb.add_workflow_inputs("t", {"text": "data"})
    app.register(wb)
    result = await app.execute("shout", {"text": 42})
    assert result.ok
    assert result.output == "42!"


# -- PythonCodeNode -------------------------------------------------------------


async def test_python_code_runs_with_inputs_as_variables() -> None:
    wb = WorkflowBuilder("code")
    wb.add_node(
        "PythonCodeNode",
        "calc",
        {
            "code": "import math\ntotal = a + b\n"
            "result = {'total': total, 'root': math.isqrt(total)}"
        },
    )
    wb.add_workflow_inputs("calc", {"a": "a", "b": "b"})
    result = await run(wb, {"a": 7, "b": 9})
    assert result.ok, result.error
    assert result.output == {"total": 16, "root": 4}


async def test_python_code_output_feeds_the_next_node() -> None:
    wb = WorkflowBuilder("chain")
    wb.add_node("PythonCodeNode", "load", {"code": "result = [{'price': p} for p in prices]"})
    wb.add_node("PythonCodeNode", "total", {"code": "result = sum(i['price'] for i in items)"})
    wb.add_connection("load", "result", "total", "items")
    wb.add_workflow_inputs("load", {"prices": "prices"})
    result = await run(wb, {"prices": [1, 2, 3.5]})
    assert result.output == 6.5


async def test_python_code_node_with_a_typed_function() -> None:
    def greet(name: str, punctuation: str = "!") -> str:
        return f"Hello, {name}{punctuation}"

    wb = WorkflowBuilder("greet")
    wb.add_node("PythonCodeNode", "greet", {"function": greet, "punctuation": "?"})
    wb.add_workflow_inputs("greet", {"name": "name"})
    workflow = wb.build()
    assert workflow.input_schema["properties"]["name"] == {"type": "string"}
    result = await Runtime().run(workflow, {"name": "Ada"})
    assert result.output == "Hello, Ada?"


async def test_python_code_syntax_error_at_build_names_node_and_key() -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("PythonCodeNode", "broken", {"code": "result = (1 +"})
    with pytest.raises(WorkflowDefinitionError, match=r"'broken'.*config 'code'.*syntax") as info:
        wb.build()
    assert info.value.node == "broken"
    assert info.value.field == "code"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "code"),
        ({"code": "result = 1", "function": len}, "function"),
        ({"function": 3}, "function"),
    ],
)
async def test_python_code_needs_exactly_one_of_code_and_function(
    config: dict[str, Any], key: str
) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("PythonCodeNode", "p", config)
    with pytest.raises(WorkflowDefinitionError, match=f"config '{key}'"):
        wb.build()


async def test_python_code_that_sets_no_result_fails_the_node() -> None:
    wb = WorkflowBuilder("noresult")
    wb.add_node("PythonCodeNode", "p", {"code": "x = 1"})
    result = await run(wb)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "p"
    assert "did not assign 'result'" in result.error.message


# -- HTTPRequestNode ------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", "test")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/json":
            payload = {
                "method": "GET",
                "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                "token": self.headers.get("X-Token"),
                "agent": self.headers.get("X-Agent"),
            }
            self._send(200, json.dumps(payload).encode(), "application/json")
        elif url.path == "/text":
            self._send(200, b"plain words", "text/plain; charset=utf-8")
        else:
            self._send(404, b"no such thing", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        payload = {"received": body, "content_type": self.headers.get("Content-Type")}
        self._send(201, json.dumps(payload).encode(), "application/json; charset=utf-8")


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _run_http(wb: WorkflowBuilder, inputs: Any = None) -> RunResult:
    workflow = wb.build()
    try:
        return await Runtime().run(workflow, inputs)
    finally:
        for placed in workflow.nodes.values():
            if placed.type_name == "HTTPRequestNode":
                await placed.node.aclose()


async def test_http_get_json_with_params_and_headers(http_server: str) -> None:
    wb = WorkflowBuilder("get")
    wb.add_node(
        "HTTPRequestNode",
        "req",
        {"url": f"{http_server}/json", "headers": {"X-Agent": "nexus"}},
    )
    wb.add_workflow_inputs("req", {"params": "params", "headers": "headers"})
    wb.add_workflow_outputs("req", {"status": "status", "json": "json", "served": "headers"})
    result = await _run_http(
        wb, {"params": {"q": "cats", "page": "2"}, "headers": {"X-Token": "t"}}
    )
    assert result.ok, result.error
    assert result.output["status"] == 200
    assert result.output["json"] == {
        "method": "GET",
        "query": {"q": "cats", "page": "2"},
        "token": "t",
        "agent": "nexus",
    }
    assert result.output["served"]["x-served-by"] == "test"


async def test_http_post_json_and_url_from_input(http_server: str) -> None:
    wb = WorkflowBuilder("post")
    wb.add_node("HTTPRequestNode", "req", {"method": "POST"})
    wb.add_workflow_inputs("req", {"url": "url", "payload": "json"})
    wb.add_workflow_outputs("req", {"status": "status", "json": "json", "body": "body"})
    result = await _run_http(wb, {"url": f"{http_server}/echo", "payload": {"a": [1, 2]}})
    assert result.ok, result.error
    assert result.output["status"] == 201
    assert result.output["json"] == {"received": {"a": [1, 2]}, "content_type": "application/json"}
    assert json.loads(result.output["body"]) == result.output["json"]


async def test_http_text_response_has_no_json(http_server: str) -> None:
    wb = WorkflowBuilder("text")
    wb.add_node("HTTPRequestNode", "req", {"url": f"{http_server}/text"})
    wb.add_workflow_outputs("req", {"body": "body", "json": "json"})
    result = await _run_http(wb)
    assert result.ok, result.error
    assert result.output["body"] == "plain words"
    assert result.output["json"] is None


async def test_http_non_2xx_fails_naming_status_and_url(http_server: str) -> None:
    wb = WorkflowBuilder("missing")
    wb.add_node("HTTPRequestNode", "req", {"url": f"{http_server}/nope"})
    result = await _run_http(wb)
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "req"
    assert result.error.type == "HTTPStatusError"
    assert "404" in result.error.message
    assert f"{http_server}/nope" in result.error.message
    assert "no such thing" in result.error.message
    assert result.nodes["req"].status == "failed"


async def test_http_non_2xx_without_raise_for_status_is_output(http_server: str) -> None:
    wb = WorkflowBuilder("missing_ok")
    wb.add_node("HTTPRequestNode", "req", {"url": f"{http_server}/nope", "raise_for_status": False})
    wb.set_output("req", "status")
    result = await _run_http(wb)
    assert result.ok
    assert result.output == 404


async def test_http_client_is_reused_then_closed(http_server: str) -> None:
    wb = WorkflowBuilder("reuse")
    wb.add_node("HTTPRequestNode", "req", {"url": f"{http_server}/json"})
    workflow = wb.build()
    node = workflow.nodes["req"].node
    runtime = Runtime()
    await runtime.run(workflow)
    client = node._client
    assert client is not None
    await runtime.run(workflow)
    assert node._client is client
    await node.aclose()
    assert client.is_closed


def test_http_node_runs_in_a_new_event_loop(http_server: str) -> None:
    # The client belongs to the loop that opened it; another loop gets its own.
    wb = WorkflowBuilder("loops")
    wb.add_node("HTTPRequestNode", "req", {"url": f"{http_server}/json"})
    wb.set_output("req", "status")
    workflow = wb.build()
    node = workflow.nodes["req"].node
    clients = []
    for _ in range(2):
        assert anyio.run(Runtime().run, workflow).output == 200
        clients.append(node._client)

    async def close() -> None:
        await node.aclose()
        await clients[0].aclose()

    anyio.run(close)
    assert clients[0] is not clients[1]
    assert clients[1].is_closed


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"method": "FETCH"}, "method"),
        ({"timeout": 0}, "timeout"),
    ],
)
async def test_http_bad_config_at_build(config: dict[str, Any], key: str) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("HTTPRequestNode", "req", config)
    with pytest.raises(WorkflowDefinitionError, match=f"'req'.*config '{key}'"):
        wb.build()


async def test_http_without_any_url_fails_clearly() -> None:
    wb = WorkflowBuilder("nourl")
    wb.add_node("HTTPRequestNode", "req", {})
    result = await _run_http(wb)
    assert result.status == "failed"
    assert result.error is not None
    assert "no URL" in result.error.message


# -- SwitchNode and MergeNode ---------------------------------------------------


def _routing_workflow() -> WorkflowBuilder:
    wb = WorkflowBuilder("route")
    wb.add_node("SwitchNode", "switch", {"field": "kind", "cases": ["a", "b-c"]})
    wb.add_workflow_inputs("switch", {"item": "input_data"})
    for node_id, output in (("on_a", "case_a"), ("on_bc", "case_b_c"), ("other", "default")):
        wb.add_node("PythonCodeNode", node_id, {"code": f"result = {{**item, 'by': {node_id!r}}}"})
        wb.add_connection("switch", output, node_id, "item")
    wb.add_node("MergeNode", "merge", {})
    wb.add_connection("on_a", "result", "merge", "data1")
    wb.add_connection("on_bc", "result", "merge", "data2")
    wb.add_connection("other", "result", "merge", "data3")
    wb.set_output("merge", "merged")
    return wb


@pytest.mark.parametrize(
    ("kind", "taken"), [("a", "on_a"), ("b-c", "on_bc"), ("zzz", "other"), (None, "other")]
)
async def test_switch_routes_and_merge_joins(kind: Any, taken: str) -> None:
    result = await run(_routing_workflow(), {"item": {"kind": kind, "n": 1}})
    assert result.ok, result.error
    assert result.output == {"kind": kind, "n": 1, "by": taken}
    for node_id in ("on_a", "on_bc", "other"):
        assert result.nodes[node_id].status == ("completed" if node_id == taken else "skipped")
    assert result.nodes["switch"].status == "completed"
    assert result.nodes["merge"].status == "completed"


async def test_switch_outputs_are_typed_per_case() -> None:
    workflow = _routing_workflow().build()
    switch = workflow.nodes["switch"].node
    assert list(switch.output_fields()) == ["case_a", "case_b_c", "default"]


async def test_switch_on_a_boolean_does_not_take_case_one() -> None:
    wb = WorkflowBuilder("bools")
    wb.add_node("SwitchNode", "s", {"cases": [1, True]})
    wb.add_workflow_inputs("s", {"v": "input_data"})
    workflow = wb.build()
    taken = await Runtime().run(workflow, {"v": True})
    assert msgspec.to_builtins(taken.nodes["s"].output) == {"case_True": True}
    taken = await Runtime().run(workflow, {"v": 1})
    assert msgspec.to_builtins(taken.nodes["s"].output) == {"case_1": 1}


@pytest.mark.parametrize(
    ("operator", "value", "amount", "expected"),
    [
        (">", 100, 150, "big"),
        (">", 100, 100, "small"),
        (">=", 100, 100, "big"),
        ("<", 10, 5, "big"),
        ("==", 7, 7, "big"),
        ("!=", 7, 7, "small"),
        ("in", [1, 2, 3], 2, "big"),
        ("in", [1, 2, 3], 4, "small"),
        ("truthy", None, 0, "small"),
        ("truthy", None, 3, "big"),
    ],
)
async def test_boolean_switch(operator: str, value: Any, amount: int, expected: str) -> None:
    wb = WorkflowBuilder("boolean")
    wb.add_node(
        "SwitchNode", "check", {"field": "order.amount", "operator": operator, "value": value}
    )
    wb.add_workflow_inputs("check", {"data": "input_data"})
    wb.add_node("TransformNode", "big", {"expression": "'big'"})
    wb.add_node("TransformNode", "small", {"expression": "'small'"})
    wb.add_connection("check", "true_output", "big", "data")
    wb.add_connection("check", "false_output", "small", "data")
    wb.add_node("MergeNode", "join", {"strategy": "list"})
    wb.add_connection("big", "result", "join", "data1")
    wb.add_connection("small", "result", "join", "data2")
    wb.set_output("join", "merged")
    result = await run(wb, {"data": {"order": {"amount": amount}}})
    assert result.ok, result.error
    assert result.output == [expected]
    skipped = "small" if expected == "big" else "big"
    assert result.nodes[skipped].status == "skipped"


async def test_switch_comparison_type_error_names_the_field() -> None:
    wb = WorkflowBuilder("cmp")
    wb.add_node("SwitchNode", "check", {"field": "n", "operator": ">", "value": 3})
    wb.add_workflow_inputs("check", {"data": "input_data"})
    result = await run(wb, {"data": {"n": "text"}})
    assert result.status == "failed"
    assert result.error is not None
    assert "field 'n'" in result.error.message


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "cases"),
        ({"cases": ["a-b", "a_b"]}, "cases"),
        ({"cases": ["a"], "operator": "=="}, "cases"),
        ({"operator": "~"}, "operator"),
        ({"operator": "in", "value": 3}, "value"),
        ({"cases": ["a"], "field": "x..y"}, "field"),
        ({"cases": [{"a": 1}]}, "cases[0]"),
    ],
)
async def test_switch_bad_config_at_build(config: dict[str, Any], key: str) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("SwitchNode", "s", config)
    wb.add_workflow_inputs("s", {"x": "input_data"})
    with pytest.raises(WorkflowDefinitionError, match=rf"'s'.*config '{re.escape(key)}'"):
        wb.build()


async def test_merge_dict_merge_of_parallel_branches() -> None:
    wb = WorkflowBuilder("parallel")
    wb.add_node("TransformNode", "left", {"mapping": {"name": "user.name"}})
    wb.add_node("TransformNode", "right", {"expression": "{'items': len(data['items'])}"})
    wb.add_workflow_inputs("left", {"doc": "data"})
    wb.add_workflow_inputs("right", {"doc": "data"})
    wb.add_node("MergeNode", "merge", {"strategy": "dict_merge"})
    wb.add_connection("left", "result", "merge", "data1")
    wb.add_connection("right", "result", "merge", "data4")
    wb.set_output("merge", "merged")
    result = await run(wb, {"doc": {"user": {"name": "Ada"}, "items": [1, 2]}})
    assert result.ok, result.error
    assert result.output == {"name": "Ada", "items": 2}


async def test_merge_first_and_list_with_static_inputs() -> None:
    wb = WorkflowBuilder("merges")
    wb.add_node("MergeNode", "first", {"data2": "b", "data3": "c"})
    wb.add_node("MergeNode", "all", {"strategy": "list", "data5": "e"})
    wb.add_connection("first", "merged", "all", "data1")
    wb.set_output("all", "merged")
    result = await run(wb)
    assert result.output == ["b", "e"]


async def test_merge_dict_merge_rejects_non_mappings() -> None:
    wb = WorkflowBuilder("merge_bad")
    wb.add_node("MergeNode", "m", {"strategy": "dict_merge", "data1": {"a": 1}, "data2": 3})
    result = await run(wb)
    assert result.status == "failed"
    assert result.error is not None
    assert "data2 is int" in result.error.message


async def test_merge_bad_strategy_at_build() -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("MergeNode", "m", {"strategy": "zip"})
    with pytest.raises(WorkflowDefinitionError, match="config 'strategy'"):
        wb.build()


# -- TransformNode --------------------------------------------------------------


async def test_transform_mapping() -> None:
    wb = WorkflowBuilder("map")
    wb.add_node(
        "TransformNode",
        "t",
        {"mapping": {"name": "user.first", "city": "user.address.city", "tag": "tags.1"}},
    )
    wb.add_workflow_inputs("t", {"data": "data"})
    data = {"user": {"first": "Ada", "address": {"city": "London"}}, "tags": ["x", "y"]}
    result = await run(wb, {"data": data})
    assert result.output == {"name": "Ada", "city": "London", "tag": "y"}


@pytest.mark.parametrize(
    ("on_missing", "expected"), [("null", {"a": 1, "b": None}), ("omit", {"a": 1})]
)
async def test_transform_mapping_missing_paths(on_missing: str, expected: dict[str, Any]) -> None:
    wb = WorkflowBuilder("missing")
    wb.add_node("TransformNode", "t", {"mapping": {"a": "x", "b": "y.z"}, "on_missing": on_missing})
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": {"x": 1}})
    assert result.output == expected


async def test_transform_mapping_missing_path_is_an_error_by_default() -> None:
    wb = WorkflowBuilder("missing")
    wb.add_node("TransformNode", "t", {"mapping": {"b": "y.z"}})
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": {"y": {}}})
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.message == "mapping 'b': no value at path 'y.z'"


async def test_transform_mapping_does_not_reach_methods() -> None:
    wb = WorkflowBuilder("methods")
    wb.add_node("TransformNode", "t", {"mapping": {"m": "name.upper"}, "on_missing": "null"})
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": {"name": "ada"}})
    assert result.output == {"m": None}


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        ("data['a'] + data['b']", {"a": 2, "b": 3}, 5),
        ("sum(i['price'] * i['qty'] for i in data) ", [{"price": 2, "qty": 3}], 6),
        ("sorted(data, reverse=True)[:2]", [3, 1, 2], [3, 2]),
        (
            "{'n': len(data), 'chars': [c for c in data if c != 'b']}",
            "abc",
            {"n": 3, "chars": ["a", "c"]},
        ),
        ("'big' if data > 10 else 'small'", 11, "big"),
        ("f'{data} items'", 3, "3 items"),
        ("round(max(data) / min(data), 2)", [3, 9], 3.0),
        ("data | {'x': 1}", {"y": 2}, {"y": 2, "x": 1}),
    ],
)
async def test_transform_expression(expression: str, data: Any, expected: Any) -> None:
    wb = WorkflowBuilder("expr")
    wb.add_node("TransformNode", "t", {"expression": expression})
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": data})
    assert result.ok, result.error
    assert result.output == expected


async def test_transform_mapping_then_expression() -> None:
    wb = WorkflowBuilder("both")
    wb.add_node(
        "TransformNode",
        "t",
        {
            "mapping": {"f": "user.first", "l": "user.last"},
            "expression": "data['f'] + ' ' + data['l']",
        },
    )
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": {"user": {"first": "Ada", "last": "Lovelace"}}})
    assert result.output == "Ada Lovelace"


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "'__import__'"),
        ("().__class__", "'__class__'"),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
        ("data.__dict__", "'__dict__'"),
        ("open('/etc/passwd')", "'open'"),
        ("eval('1')", "'eval'"),
        ("getattr(data, 'x')", "'getattr'"),
        ("data.keys()", "calling 'data.keys'"),
        ("(lambda: 1)()", "Lambda"),
        ("(x := 1)", "NamedExpr"),
        ("[f for f in data][0].gi_frame", "'gi_frame'"),
        ("(i for i in data).gi_frame.f_back", "not allowed"),
        ("'{0.__class__}'.format(data)", "not allowed"),
        ("os", "unknown name 'os'"),
        ("data._private", "'_private'"),
    ],
)
async def test_transform_rejects_unsafe_expressions_at_build(expression: str, reason: str) -> None:
    wb = WorkflowBuilder("unsafe")
    wb.add_node("TransformNode", "t", {"expression": expression})
    wb.add_workflow_inputs("t", {"data": "data"})
    with pytest.raises(WorkflowDefinitionError) as info:
        wb.build()
    assert info.value.node == "t"
    assert info.value.field == "expression"
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "mapping"),
        ({"expression": "data +"}, "expression"),
        ({"mapping": {"a": "x..y"}}, "mapping"),
        ({"mapping": {"a": "__class__"}}, "mapping"),
        ({"mapping": {"a": 3}}, "mapping[...]"),
    ],
)
async def test_transform_bad_config_at_build(config: dict[str, Any], key: str) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("TransformNode", "t", config)
    wb.add_workflow_inputs("t", {"data": "data"})
    with pytest.raises(WorkflowDefinitionError, match=rf"'t'.*config '{re.escape(key)}'"):
        wb.build()


_KEYS = st.text(
    alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=4
).filter(lambda key: not key.startswith("_"))
_LEAVES = st.none() | st.booleans() | st.integers() | st.text(max_size=4)
_TREES = st.recursive(_LEAVES, lambda kids: st.dictionaries(_KEYS, kids, max_size=4), max_leaves=25)

_NOTHING = object()


def _walk(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return _NOTHING
        tree = tree[part]
    return tree


@st.composite
def _tree_and_paths(draw: st.DrawFn) -> tuple[dict[str, Any], list[list[str]]]:
    tree = draw(st.dictionaries(_KEYS, _TREES, min_size=1, max_size=5))
    paths = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            # A path that exists: walk down the tree.
            node: Any = tree
            path: list[str] = []
            while isinstance(node, dict) and node and (not path or draw(st.booleans())):
                key = draw(st.sampled_from(sorted(node)))
                path.append(key)
                node = node[key]
            paths.append(path)
        else:
            paths.append(draw(st.lists(_KEYS, min_size=1, max_size=4)))
    return tree, paths


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_tree_and_paths())
async def test_transform_mapping_matches_a_model(
    case: tuple[dict[str, Any], list[list[str]]],
) -> None:
    tree, paths = case
    mapping = {f"out{i}": ".".join(path) for i, path in enumerate(paths)}
    wb = WorkflowBuilder("model")
    wb.add_node("TransformNode", "t", {"mapping": mapping, "on_missing": "omit"})
    wb.add_workflow_inputs("t", {"data": "data"})
    result = await run(wb, {"data": tree})
    assert result.ok, result.error
    expected = {
        key: value
        for key, path in zip(mapping, paths, strict=True)
        if (value := _walk(tree, path)) is not _NOTHING
    }
    assert result.output == expected


# -- DelayNode ------------------------------------------------------------------


async def test_delay_waits_then_passes_data_through() -> None:
    wb = WorkflowBuilder("delay")
    wb.add_node("DelayNode", "wait", {"seconds": 0.05})
    wb.add_workflow_inputs("wait", {"payload": "data"})
    wb.set_output("wait", "data")
    started = time.perf_counter()
    result = await run(wb, {"payload": {"k": [1, 2]}})
    assert time.perf_counter() - started >= 0.05
    assert result.ok
    assert result.output == {"k": [1, 2]}


async def test_delay_is_cancelled_by_a_node_timeout() -> None:
    wb = WorkflowBuilder("slow")
    wb.add_node("DelayNode", "wait", {"seconds": 10}, timeout=0.05)
    with anyio.fail_after(5):
        result = await run(wb)
    assert result.status == "failed"
    assert result.error is not None
    assert "timed out" in result.error.message


@pytest.mark.parametrize("config", [{"seconds": -1}, {}])
async def test_delay_bad_config_at_build(config: dict[str, Any]) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("DelayNode", "wait", config)
    with pytest.raises(WorkflowDefinitionError, match="'wait'.*config 'seconds'"):
        wb.build()


# -- WorkflowNode ---------------------------------------------------------------


def _inner(fail: bool = False) -> Any:
    def double(x: int) -> int:
        if fail:
            raise ValueError(f"cannot double {x}")
        return x * 2

    wb = WorkflowBuilder("inner")
    wb.add_node("PythonCodeNode", "double", {"function": double})
    wb.add_workflow_inputs("double", {"x": "x"})
    return wb.build()


async def test_sub_workflow_as_a_node() -> None:
    wb = WorkflowBuilder("outer")
    wb.add_node("TransformNode", "prep", {"expression": "data + 1"})
    wb.add_workflow_inputs("prep", {"n": "data"})
    wb.add_workflow("sub", _inner())
    wb.add_connection("prep", "result", "sub", "x")
    wb.add_node("TransformNode", "post", {"expression": "data * 10"})
    wb.add_connection("sub", "result", "post", "data")
    workflow = wb.build()
    assert workflow.nodes["sub"].type_name == "WorkflowNode"
    result = await Runtime().run(workflow, {"n": 4})
    assert result.ok, result.error
    assert result.output == 100
    assert result.nodes["sub"].status == "completed"


async def test_sub_workflow_inputs_are_typed_and_validated() -> None:
    wb = WorkflowBuilder("outer")
    wb.add_workflow("sub", _inner())
    wb.add_workflow_inputs("sub", {"value": "x"})
    workflow = wb.build()
    assert workflow.input_schema["properties"]["value"] == {"type": "integer"}
    wb2 = WorkflowBuilder("outer2")
    wb2.add_node("TransformNode", "prep", {"expression": "str(data)"})
    wb2.add_workflow_inputs("prep", {"n": "data"})
    wb2.add_workflow("sub", _inner())
    wb2.add_connection("prep", "result", "sub", "x")
    result = await run(wb2, {"n": "not a number"})
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "sub"


async def test_sub_workflow_failure_names_the_inner_node() -> None:
    wb = WorkflowBuilder("outer")
    wb.add_workflow("sub", _inner(fail=True))
    wb.add_workflow_inputs("sub", {"x": "x"})
    wb.add_node("TransformNode", "after", {"expression": "data"})
    wb.add_connection("sub", "result", "after", "data")
    result = await run(wb, {"x": 3})
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "sub"
    assert result.error.type == "SubWorkflowError"
    assert "'inner'" in result.error.message
    assert "node 'double'" in result.error.message
    assert "ValueError: cannot double 3" in result.error.message
    assert result.nodes["after"].status == "cancelled"


async def test_workflow_node_needs_a_workflow() -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("WorkflowNode", "sub", {"workflow": "inner"})
    with pytest.raises(WorkflowDefinitionError, match="'sub'.*config 'workflow'"):
        wb.build()


# -- SQLQueryNode ---------------------------------------------------------------


def _sql(database: str, query: str, **config: Any) -> WorkflowBuilder:
    wb = WorkflowBuilder("sql")
    wb.add_node("SQLQueryNode", "q", {"database": database, "query": query, **config})
    wb.add_workflow_inputs("q", {"params": "params"})
    wb.add_workflow_outputs("q", {"rows": "rows", "rowcount": "rowcount"})
    return wb


async def test_sql_create_insert_select_on_a_file(tmp_path: Any) -> None:
    db = str(tmp_path / "people.db")
    create = "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER)"
    result = await run(_sql(db, create, fetch="none"), {"params": []})
    assert result.ok, result.error

    insert = _sql(db, "INSERT INTO people (name, age) VALUES (:name, :age)", fetch="none").build()
    evil = "Robert'); DROP TABLE people; --"
    for name, age in (("Ada", 36), ("Alan", 41), (evil, 12)):
        result = await Runtime().run(insert, {"params": {"name": name, "age": age}})
        assert result.ok, result.error
        assert result.output["rowcount"] == 1

    select = _sql(db, "SELECT name, age FROM people WHERE age >= ? ORDER BY age")
    result = await run(select, {"params": [18]})
    assert result.ok, result.error
    assert result.output["rows"] == [{"name": "Ada", "age": 36}, {"name": "Alan", "age": 41}]
    assert result.output["rowcount"] == 2

    one = _sql(db, "SELECT name FROM people WHERE age < ?", fetch="one")
    result = await run(one, {"params": [18]})
    assert result.output["rows"] == [{"name": evil}]

    update = _sql(db, "UPDATE people SET age = age + 1 WHERE age > :min", fetch="none")
    result = await run(update, {"params": {"min": 30}})
    assert result.output["rowcount"] == 2


async def test_sql_in_memory_with_a_script_and_static_params() -> None:
    wb = WorkflowBuilder("memory")
    wb.add_node(
        "SQLQueryNode",
        "q",
        {
            "database": ":memory:",
            "script": "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3), (4);",
            "query": "SELECT x, x * :factor AS scaled FROM t WHERE x > :min ORDER BY x",
            "params": {"factor": 10, "min": 2},
        },
    )
    wb.set_output("q", "rows")
    result = await run(wb)
    assert result.ok, result.error
    assert result.output == [{"x": 3, "scaled": 30}, {"x": 4, "scaled": 40}]


async def test_sql_rows_feed_a_transform() -> None:
    wb = WorkflowBuilder("sql_chain")
    wb.add_node("SQLQueryNode", "q", {"database": ":memory:", "query": "SELECT ? AS a, ? AS b"})
    wb.add_workflow_inputs("q", {"params": "params"})
    wb.add_node("TransformNode", "sum", {"expression": "data[0]['a'] + data[0]['b']"})
    wb.add_connection("q", "rows", "sum", "data")
    result = await run(wb, {"params": [2, 5]})
    assert result.output == 7


async def test_sql_error_fails_the_node(tmp_path: Any) -> None:
    result = await run(_sql(str(tmp_path / "x.db"), "SELECT * FROM nowhere"), {"params": []})
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "q"
    assert "no such table" in result.error.message


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"database": ":memory:", "query": "SELECT 1", "fetch": "many"}, "fetch"),
        ({"database": ":memory:", "query": "  "}, "query"),
        ({"query": "SELECT 1"}, "database"),
    ],
)
async def test_sql_bad_config_at_build(config: dict[str, Any], key: str) -> None:
    wb = WorkflowBuilder("bad")
    wb.add_node("SQLQueryNode", "q", config)
    with pytest.raises(WorkflowDefinitionError, match=f"'q'.*config '{key}'"):
        wb.build()
