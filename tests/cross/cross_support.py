"""What the cross-channel tests share: real servers, real clients, one form for every outcome.

Every channel is reached the way its users reach it: the gateway is
``python -m nexus_plugin_api APP`` in a subprocess, MCP over stdio is
``python -m nexus_plugin_mcp APP`` spawned by the ``mcp`` package's own client,
MCP over HTTP is that client against the gateway's ``/mcp``, and the CLI is the
installed ``nexus`` console script. Each answer, whatever its form (a
``RunResult``, a problem+json body, an MCP tool result, a CLI error object), is
turned into one :data:`Outcome` so that the tests compare like with like.

Only the standard library, pytest, hypothesis and nexus_core are imported at
module level: the plugin packages are imported by the tests that need them,
after their ``pytest.importorskip``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: The outcome of one invocation, the same on every channel:
#: ``("completed", output)``, ``("failed", node, "Type: message")`` or
#: ``("refused", code, ((path, reason), ...))``.
Outcome = tuple[Any, ...]


# -- plugins -------------------------------------------------------------------------------

PLUGINS = {
    "nexus_plugin_api": "nexus-plugin-api (the HTTP gateway: REST, WebSocket, SSE, /mcp)",
    "nexus_plugin_cli": "nexus-plugin-cli (the nexus command)",
    "nexus_plugin_mcp": "nexus-plugin-mcp (the MCP channel)",
    "mcp": "the mcp package (the MCP client)",
}


def require_plugins(*names: str) -> None:
    """Skip the calling module, naming what is missing, unless every package imports.

    The ``core_alone`` nox session runs ``tests/`` with nexus-core only.
    """
    for name in names or tuple(PLUGINS):
        pytest.importorskip(
            name,
            reason=f"cross-channel tests need {PLUGINS.get(name, name)}, which is not installed",
        )


# -- processes and environments ------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Nexus or XDG setting, with its own user folders.

    Tokens and current sessions (``nexus login``, ``nexus session use``) go to
    ``home``, never to the real user's config folder.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEXUS_", "XDG_")) and key != "COVERAGE_PROCESS_START"
    }
    env.update(
        NEXUS_CONFIG_HOME=str(home / "config" / "nexus"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        COLUMNS="120",
    )
    env.update(extra)
    return env


def nexus_command() -> list[str]:
    """The installed ``nexus`` console script (next to this Python), else ``python -m``."""
    script = Path(sys.executable).parent / "nexus"
    if script.exists():
        return [str(script)]
    found = shutil.which("nexus")
    return [found] if found else [sys.executable, "-m", "nexus_plugin_cli"]


@dataclass
class Gateway:
    """A running ``python -m nexus_plugin_api APP`` subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the gateway printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def gateway(app: Path, workdir: Path, env: Mapping[str, str]) -> Iterator[Gateway]:
    """Serve ``app`` over HTTP on a free port until the block ends; yield the gateway."""
    import httpx

    port = free_port()
    log = workdir / f"gateway-{app.stem}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "nexus_plugin_api", str(app), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=dict(env),
        )
    served = Gateway(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway for {app.name} exited:\n{served.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.url}/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway for {app.name} did not start:\n{served.output()}")
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Done:
    """A finished ``nexus`` command."""

    args: Sequence[str]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Standard output as one JSON document."""
        return json.loads(self.stdout)

    def records(self) -> list[Any]:
        """Standard output as JSON Lines."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (
            f"$ nexus {' '.join(self.args)}\nexit {self.code}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def nexus(
    *args: str, env: Mapping[str, str], cwd: Path, stdin: str = "", timeout: float = 120
) -> Done:
    """Run ``nexus ARGS`` and return what it did; never a traceback."""
    proc = subprocess.run(
        [*nexus_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    done = Done(args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, str(done)
    return done


async def receive(socket: Any, seconds: float = 60) -> Any:
    """The next WebSocket message as JSON, or a failure after ``seconds``."""
    import anyio

    with anyio.fail_after(seconds):
        return json.loads(await socket.recv())


@contextlib.asynccontextmanager
async def mcp_stdio(app: Path, workdir: Path, env: Mapping[str, str]) -> AsyncIterator[Any]:
    """An ``mcp.Client`` (automatic protocol) talking to ``python -m nexus_plugin_mcp APP``."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "nexus_plugin_mcp", str(app)],
        env=dict(env),
        cwd=str(workdir),
    )
    async with Client(params) as client:
        yield client


@contextlib.asynccontextmanager
async def mcp_http(url: str, *, token: str | None = None) -> AsyncIterator[Any]:
    """An ``mcp.Client`` against a streamable HTTP endpoint (the gateway's ``/mcp``)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    timeout = httpx2.Timeout(30.0, read=120.0)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def load_example(path: Path, *, storage: str, cwd: Path | None = None) -> Any:
    """Import an example app in this process the way a server does, on ``storage``.

    ``cwd`` is where its ``nexus.toml`` is read from (the settings are read when
    the app is created). Returns the :class:`~nexus_core.Nexus` application.
    """
    from nexus_core.loader import load_app

    saved_storage, saved_cwd = os.environ.get("NEXUS_STORAGE"), Path.cwd()
    os.environ["NEXUS_STORAGE"] = storage
    try:
        if cwd is not None:
            os.chdir(cwd)
        return load_app(str(path))
    finally:
        os.chdir(saved_cwd)
        if saved_storage is None:
            del os.environ["NEXUS_STORAGE"]
        else:
            os.environ["NEXUS_STORAGE"] = saved_storage


# -- one form for every outcome --------------------------------------------------------------


def _errors(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(e.get("path", "")), str(e.get("reason", ""))) for e in items or ())


def _failed(error: Mapping[str, Any]) -> Outcome:
    return ("failed", error.get("node"), f"{error.get('type')}: {error.get('message')}")


def outcome_of_run(run: Mapping[str, Any]) -> Outcome:
    """A run as JSON (``RunResult`` as builtins, the REST body, the CLI's run)."""
    if run["status"] == "completed":
        return ("completed", run.get("output"))
    if run["status"] == "failed":
        return _failed(run.get("error") or {})
    return (run["status"],)


def outcome_of_error(exc: Any) -> Outcome:
    """A core :class:`~nexus_core.errors.NexusError` raised in process."""
    detail = exc.detail()
    return ("refused", detail.code, tuple((e.path, e.reason) for e in detail.errors))


def outcome_of_problem(body: Mapping[str, Any]) -> Outcome:
    """An RFC 9457 problem+json body (REST, WebSocket)."""
    return ("refused", body.get("code"), _errors(body.get("errors")))


def outcome_of_tool(result: Any, wrapped: bool) -> Outcome:
    """An MCP ``CallToolResult``: structured content, or a tool error with ``nexus/error``."""
    meta = result.meta or {}
    if not result.is_error:
        content = result.structured_content
        return ("completed", content["result"] if wrapped else content)
    error = meta.get("nexus/error")
    if not isinstance(error, dict):
        return ("tool_error", result.content[0].text if result.content else "")
    if "code" in error:  # an ErrorDetail: the invocation was refused
        return ("refused", error["code"], _errors(error.get("errors")))
    return _failed(error)  # a RunError: the run failed


_FAILED_AT = re.compile(r"^run \S+ of '.*?' failed(?: at node '(?P<node>.*?)')?: (?P<reason>.*)$")


def outcome_of_batch(record: Mapping[str, Any]) -> Outcome:
    """One line of ``nexus -o json batch``."""
    status = record["status"]
    if status == "completed":
        return ("completed", record.get("output"))
    error = record.get("error") or {}
    if status == "invalid":
        return ("refused", error.get("code"), _errors(error.get("errors")))
    if status == "failed":
        match = _FAILED_AT.match(error.get("message", ""))
        assert match is not None, record
        return ("failed", error.get("node"), match.group("reason"))
    return (status,)


_HEAD = re.compile(r"^([^.\[]*)(.*)$", re.DOTALL)


def outcome_of_cli_run(done: Done, schema: Mapping[str, Any]) -> Outcome:
    """``nexus -o json run ...``: the run on stdout, or ``{"error": ...}`` and exit code 2.

    The CLI names options rather than fields in a validation error
    (``--weight-grams`` for ``weight_grams``); they are mapped back to the field.
    """
    body = done.json()
    if "error" in body and "status" not in body:
        error = body["error"]
        flags = {f"--{name.replace('_', '-')}": name for name in schema.get("properties", {})}
        errors = []
        for path, reason in _errors(error.get("errors")):
            head, tail = _HEAD.match(path).groups()  # type: ignore[union-attr]
            errors.append((flags.get(head, head) + tail, reason))
        if error.get("code") in ("validation_error", "workflow_not_found"):
            assert done.code == 2, str(done)
        return ("refused", error.get("code"), tuple(errors))
    outcome = outcome_of_run(body)
    assert done.code == (0 if outcome[0] == "completed" else 1), str(done)
    return outcome


def output_is_wrapped(output_schema: Mapping[str, Any]) -> bool:
    """Whether MCP wraps this output as ``{"result": ...}`` (its schema is not an object)."""
    return output_schema.get("type") != "object"


# -- inputs drawn from a JSON Schema ---------------------------------------------------------

_TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",))
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(-1e9, 1e9, allow_nan=False),
    st.text(_TEXT, max_size=8),
)
#: Any JSON value (small): what ``{}`` (Any) admits.
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_TEXT, max_size=5), inner),
    max_leaves=6,
)


class SchemaStrategies:
    """Hypothesis strategies for the JSON Schemas msgspec derives, valid and not.

    Handles what workflow input schemas contain: objects (``properties``,
    ``required``, ``additionalProperties``), ``$ref`` into ``$defs``, ``anyOf``,
    ``enum``/``const``, strings (lengths, ``pattern``), integers and numbers
    (bounds), booleans, null and arrays (``items``, lengths). ``overrides``
    replaces the strategy of a top-level property (a URL the test serves, say).
    """

    def __init__(
        self, schema: Mapping[str, Any], overrides: Mapping[str, st.SearchStrategy[Any]] = {}
    ) -> None:
        self.schema = schema
        self.defs: Mapping[str, Any] = schema.get("$defs", {})
        self.overrides = dict(overrides)

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow ``$ref``."""
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = {**self.defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    # valid values

    def valid(self, schema: Mapping[str, Any] | None = None) -> st.SearchStrategy[Any]:
        """Values ``schema`` (default: the whole input schema) admits."""
        top = schema is None
        schema = self.resolve(self.schema if schema is None else schema)
        if "anyOf" in schema:
            return st.one_of(*(self.valid(branch) for branch in schema["anyOf"]))
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, top)
        if kind == "array":
            low = schema.get("minItems", 0)
            high = schema.get("maxItems", low + 3)
            return st.lists(self.valid(schema.get("items", {})), min_size=low, max_size=high)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            low = schema.get("minimum", -(10**6))
            high = schema.get("maximum", 10**6)
            if "exclusiveMinimum" in schema:
                low = schema["exclusiveMinimum"] + 1
            if "exclusiveMaximum" in schema:
                high = schema["exclusiveMaximum"] - 1
            return st.integers(low, high)
        if kind == "number":
            return st.floats(
                schema.get("minimum", schema.get("exclusiveMinimum", -1e9)),
                schema.get("maximum", schema.get("exclusiveMaximum", 1e9)),
                exclude_min="exclusiveMinimum" in schema,
                exclude_max="exclusiveMaximum" in schema,
                allow_nan=False,
            )
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return JSON_VALUES

    def _string(self, schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
            return text.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))
        return st.text(_TEXT, min_size=low, max_size=high if high is not None else low + 12)

    def _object(self, schema: Mapping[str, Any], top: bool) -> st.SearchStrategy[dict[str, Any]]:
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))

        def strategy(name: str, prop: Mapping[str, Any]) -> st.SearchStrategy[Any]:
            if top and name in self.overrides:
                return self.overrides[name]
            return self.valid(prop)

        fixed = {name: strategy(name, p) for name, p in properties.items() if name in required}
        optional = {
            name: strategy(name, p) for name, p in properties.items() if name not in required
        }
        extra = schema.get("additionalProperties")
        base = st.fixed_dictionaries(fixed, optional=optional)
        if isinstance(extra, dict) and not properties:
            return st.dictionaries(st.text(_TEXT, max_size=6), self.valid(extra), max_size=3)
        return base

    # invalid values: a valid object with one thing broken

    def invalid(self) -> st.SearchStrategy[dict[str, Any]]:
        """Inputs with one fault: a field missing, unknown, of the wrong type or out of range.

        The fault may be deep (a field of an array item), so errors name paths
        such as ``items[0].sku``. Whether the result is really invalid is for
        the core to say: the tests compare channels, not this guess.
        """

        @st.composite
        def broken(draw: st.DrawFn) -> dict[str, Any]:
            return self._break(self.schema, draw(self.valid()), draw)  # type: ignore[no-any-return]

        return broken()

    def _break(self, schema: Mapping[str, Any], value: Any, draw: st.DrawFn) -> Any:
        schema = self.resolve(schema)
        if schema.get("type") == "object" and isinstance(value, dict):
            return self._break_object(schema, dict(value), draw)
        if schema.get("type") == "array" and isinstance(value, list):
            items = schema.get("items", {})
            choices = ["deep", "deep"] if value else []
            choices += ["too_many", "too_few", "wrong_type"]
            how = draw(st.sampled_from(choices))
            if how == "deep":
                index = draw(st.integers(0, len(value) - 1))
                return [*value[:index], self._break(items, value[index], draw), *value[index + 1 :]]
            if how == "too_many" and "maxItems" in schema:
                filler = value[-1] if value else draw(self.valid(items))
                return value + [filler] * (schema["maxItems"] + 1 - len(value))
            if how == "too_few" and schema.get("minItems", 0) > 0:
                return []
            return draw(self._wrong_type("array"))
        return self._break_scalar(schema, draw)

    def _break_object(
        self, schema: Mapping[str, Any], value: dict[str, Any], draw: st.DrawFn
    ) -> Any:
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = [name for name in schema.get("required", ()) if name in value]
        present = [name for name in properties if name in value]
        choices = ["bad_field"] * 3 if present else []
        if required:
            choices.append("missing_field")
        choices.append("unknown_field")
        how = draw(st.sampled_from(choices))
        if how == "missing_field":
            value.pop(draw(st.sampled_from(required)))
        elif how == "bad_field":
            name = draw(st.sampled_from(present))
            value[name] = self._break(properties[name], value[name], draw)
        else:
            name = draw(st.sampled_from(["unexpected", "Items", "extra_field"]))
            value[name] = draw(_JSON_SCALARS)
        return value

    def _break_scalar(self, schema: Mapping[str, Any], draw: st.DrawFn) -> Any:
        kind = schema.get("type")
        if "anyOf" in schema:
            branches = [self.resolve(b) for b in schema["anyOf"]]
            real = [b for b in branches if b.get("type") != "null"]
            return self._break_scalar(real[0] if real else branches[0], draw)
        faults: list[st.SearchStrategy[Any]] = [self._wrong_type(kind)]
        if "enum" in schema:
            faults.append(st.sampled_from(["not-a-choice", "", "de"]))
        if kind == "string":
            if "pattern" in schema:
                faults.append(st.sampled_from(["no match", "mug-001", "ABC-1234", ""]))
            if "minLength" in schema and schema["minLength"] > 0:
                faults.append(st.text(_TEXT, max_size=schema["minLength"] - 1))
            if "maxLength" in schema:
                size = schema["maxLength"] + 1
                faults.append(st.text(_TEXT, min_size=size, max_size=size + 3))
        if kind in ("integer", "number"):
            if "minimum" in schema:
                faults.append(st.just(schema["minimum"] - 1))
            if "maximum" in schema:
                faults.append(st.just(schema["maximum"] + 1))
            if kind == "integer":
                faults.append(st.sampled_from([1.5, -0.25]))
        return draw(st.one_of(*faults))

    @staticmethod
    def _wrong_type(kind: Any) -> st.SearchStrategy[Any]:
        samples: dict[str, list[Any]] = {
            "string": [12, True, ["a"], {"a": 1}],
            "integer": ["many", True, [1], {"n": 1}, None],
            "number": ["much", [1.0], {"x": 1}, None],
            "boolean": ["maybe", 2, [True], None],
            "array": ["a, b", 3, {"0": "x"}],
            "object": ["{}", 1, [1, 2]],
        }
        return st.sampled_from(samples.get(kind, ["wrong", 3, [None]]))

    def inputs(self) -> st.SearchStrategy[dict[str, Any]]:
        """Valid and invalid inputs, about half each."""
        return st.one_of(self.valid(), self.invalid())
