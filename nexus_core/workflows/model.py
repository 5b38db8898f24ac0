"""The workflow model: placed nodes, typed connections, and the plan the runtime follows.

A :class:`Workflow` is immutable once built. Everything the runtime needs per
node (parents, children, where each input comes from) is computed here once,
so running a node costs dictionary look-ups, not graph walks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..errors import FieldError, ValidationError
from .node import Node
from .schema import json_schema, strip_unset, validate_inputs

__all__ = ["Connection", "NodePolicy", "PlacedNode", "Workflow", "WorkflowMeta"]

_decode = msgspec.json.decode


class Connection(msgspec.Struct, frozen=True):
    """Data flows from ``source``'s output ``source_output`` to ``target``'s input ``target_input``.

    ``source_output`` may be a dotted path into the output (``"result.user.id"``).
    """

    source: str
    source_output: str
    target: str
    target_input: str


class NodePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a node is run: a timeout in seconds, and retries with exponential backoff."""

    timeout: float | None = None
    retries: int = 0
    backoff: float = 0.1


class WorkflowMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a workflow is published (MCP tool annotations, tags, a title) and recorded.

    ``durable=False`` makes an ephemeral workflow: its runs keep no run record
    and no checkpoints, execute in the caller's task, and their events go to
    live subscribers only (not to the event log); their audit records are
    still written. Such a run cannot be looked up, resumed after a crash or
    replayed with an idempotency key.
    """

    title: str | None = None
    tags: tuple[str, ...] = ()
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    durable: bool = True


class PlacedNode:
    """A node instance at its place in one workflow."""

    __slots__ = ("id", "node", "policy", "static")

    def __init__(self, id: str, node: Node, static: dict[str, Any], policy: NodePolicy) -> None:
        self.id = id
        self.node = node
        self.static = static
        self.policy = policy

    @property
    def type_name(self) -> str:
        """The node's registered type name."""
        return self.node.type_name


# What feeds one input: (input name, source node, path into its output, type to check or None).
Feed = tuple[str, str, tuple[str, ...], Any]


class Plan:
    """Precomputed graph facts the runtime reads on its hot path."""

    __slots__ = (
        "children",
        "feeds",
        "is_chain",
        "order",
        "parent_count",
        "required",
        "roots",
        "wf_feeds",
    )

    def __init__(self, workflow: Workflow) -> None:
        nodes = workflow.nodes
        self.children: dict[str, list[str]] = {n: [] for n in nodes}
        parents: dict[str, set[str]] = {n: set() for n in nodes}
        self.feeds: dict[str, list[Feed]] = {n: [] for n in nodes}
        for c in workflow.connections:
            if c.source not in parents[c.target]:
                parents[c.target].add(c.source)
                self.children[c.source].append(c.target)
            check = workflow.runtime_checks.get((c.target, c.target_input))
            self.feeds[c.target].append(
                (c.target_input, c.source, tuple(c.source_output.split(".")), check)
            )
        self.parent_count = {n: len(p) for n, p in parents.items()}
        self.roots = [n for n, count in self.parent_count.items() if count == 0]
        self.wf_feeds: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
        for wf_field, targets in workflow.input_map.items():
            for node_id, input_name in targets:
                self.wf_feeds[node_id].append((input_name, wf_field))
        # Required inputs that only connections can fill: if all of those are
        # dead (a branch not taken), the node is skipped rather than failed.
        self.required: dict[str, frozenset[str]] = {}
        for node_id, placed in nodes.items():
            fields = placed.node.input_fields() or {}
            fixed = set(placed.static) | {name for name, _ in self.wf_feeds[node_id]}
            self.required[node_id] = frozenset(
                name for name, (_, req) in fields.items() if req and name not in fixed
            )
        self.order = _topological(nodes, self.children, self.parent_count)
        #: A single path (every node has at most one parent and one child).
        self.is_chain = (
            len(self.roots) == 1
            and all(len(c) <= 1 for c in self.children.values())
            and all(count <= 1 for count in self.parent_count.values())
        )


def _topological(
    nodes: Mapping[str, Any], children: Mapping[str, list[str]], parent_count: Mapping[str, int]
) -> list[str]:
    remaining = dict(parent_count)
    ready = [n for n in nodes if remaining[n] == 0]
    order: list[str] = []
    while ready:
        node_id = ready.pop()
        order.append(node_id)
        for child in children[node_id]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    return order


class Workflow:
    """A built, immutable workflow: a typed DAG with a name, a description and schemas.

    A function registered with ``@app.workflow`` is a one-node workflow. Build a
    DAG with :class:`~nexus_core.workflows.builder.WorkflowBuilder`.
    """

    def __init__(
        self,
        *,
        name: str,
        description: str,
        nodes: dict[str, PlacedNode],
        connections: tuple[Connection, ...],
        input_type: type[msgspec.Struct],
        output_type: Any,
        input_map: dict[str, list[tuple[str, str]]],
        output_map: tuple[str, tuple[str, ...]] | dict[str, tuple[str, tuple[str, ...]]],
        runtime_checks: dict[tuple[str, str], Any] | None = None,
        injected: dict[str, type] | None = None,
        meta: WorkflowMeta | None = None,
        function: Callable[..., Any] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.nodes = nodes
        self.connections = connections
        self.input_type = input_type
        self.output_type = output_type
        self.input_map = input_map
        self.output_map = output_map
        self.runtime_checks = runtime_checks or {}
        self.injected = injected or {}
        self.meta = meta or WorkflowMeta()
        self.function = function
        self.plan = Plan(self)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} nodes={len(self.nodes)}>"

    @functools.cached_property
    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of the inputs (an object), shared by every channel."""
        return json_schema(self.input_type)

    @functools.cached_property
    def output_schema(self) -> dict[str, Any]:
        """JSON Schema of the output."""
        return json_schema(self.output_type)

    def validate(self, inputs: Any) -> msgspec.Struct:
        """Validate ``inputs`` (a mapping, a Struct, or JSON bytes) into the input Struct.

        Strict for every caller (see :func:`~nexus_core.workflows.schema.validate_inputs`):
        text is never read as a number or a boolean, and NaN and infinities are
        refused. Raises :class:`~nexus_core.errors.ValidationError` naming each
        bad field's path and the reason.
        """
        if type(inputs) is dict:  # the common case, first
            return validate_inputs(inputs, self.input_type)
        if isinstance(inputs, (bytes, bytearray, memoryview, str)):
            raw = bytes(inputs) if not isinstance(inputs, str) else inputs
            try:
                return _decode(raw, type=self.input_type)  # JSON has no NaN: strict as it is
            except msgspec.ValidationError:
                inputs = _decode(raw)  # well-formed but invalid: name every bad field
            except msgspec.DecodeError as exc:
                error = FieldError(path="", reason=f"invalid JSON: {exc}")
                raise ValidationError([error]) from None
        if inputs is None:
            inputs = {}
        elif isinstance(inputs, Mapping) and not isinstance(inputs, dict):
            inputs = dict(inputs)
        elif not isinstance(inputs, (dict, self.input_type)):
            raise ValidationError([FieldError(path="", reason="inputs must be an object")])
        return validate_inputs(inputs, self.input_type)

    def extract_output(self, outputs: Mapping[str, Any]) -> Any:
        """Pick the workflow's output out of the finished nodes' outputs."""
        if isinstance(self.output_map, tuple):
            node_id, path = self.output_map
            return _follow(outputs.get(node_id, msgspec.UNSET), path)
        picked = {}
        for name, (node_id, path) in self.output_map.items():
            value = _follow(outputs.get(node_id, msgspec.UNSET), path)
            picked[name] = None if value is msgspec.UNSET else value  # a branch not taken
        return picked


def _follow(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if value is msgspec.UNSET or value is None:
            return None if value is None else msgspec.UNSET
        value = value[part] if isinstance(value, Mapping) else getattr(value, part, msgspec.UNSET)
    return value


def output_type_at(node: Node, path: tuple[str, ...]) -> Any:
    """The static type at ``path`` in ``node``'s outputs (``Any`` when not knowable)."""
    from .schema import fields_of

    type_: Any = node.Outputs
    for part in path:
        fields = fields_of(strip_unset(type_))
        if fields is None or part not in fields:
            return Any if fields is None else None
        type_ = fields[part][0]
    return type_


follow = _follow
