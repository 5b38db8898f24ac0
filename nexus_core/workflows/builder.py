"""``WorkflowBuilder``: a DAG of typed nodes, in the shape Kailash SDK users know.

::

    wb = WorkflowBuilder("orders")
    wb.add_node("PythonCodeNode", "load", {"function": load_orders})
    wb.add_node("PythonCodeNode", "total", {"function": total})
    wb.add_connection("load", "result", "total", "orders")
    wb.add_workflow_inputs("load", {"customer": "customer_id"})
    workflow = wb.build()

``build()`` checks everything it can before anything runs: unknown node types,
unknown or unfed required inputs, cycles, and connections between fields of
incompatible types, each error naming the nodes and fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, cast

import msgspec

from ..errors import WorkflowDefinitionError
from ..specs import NodeTypeSpec
from .model import Connection, NodePolicy, PlacedNode, Workflow, WorkflowMeta, output_type_at
from .node import Node
from .schema import is_assignable, strip_unset

if TYPE_CHECKING:
    from ..app import Nexus

__all__ = ["WorkflowBuilder", "default_node_types"]

NodeTypes = Mapping[str, NodeTypeSpec | type[Node]]


def default_node_types() -> dict[str, NodeTypeSpec]:
    """Node types from the installed plugins, for builders not tied to a host."""
    from ..plugins import PluginHost

    global _DEFAULT_TYPES
    if _DEFAULT_TYPES is None:
        _DEFAULT_TYPES = PluginHost().node_types()
    return _DEFAULT_TYPES


_DEFAULT_TYPES: dict[str, NodeTypeSpec] | None = None


class _Pending:
    __slots__ = ("node_type", "parameters", "policy")

    def __init__(self, node_type: str | type[Node], parameters: dict[str, Any], policy: NodePolicy):
        self.node_type = node_type
        self.parameters = parameters
        self.policy = policy


class WorkflowBuilder:
    """Collects nodes and connections; :meth:`build` checks them and returns a ``Workflow``."""

    def __init__(
        self, name: str = "workflow", *, description: str = "", meta: WorkflowMeta | None = None
    ) -> None:
        self.name = name
        self.description = description
        self.meta = meta
        self._nodes: dict[str, _Pending] = {}
        self._connections: list[Connection] = []
        self._inputs: dict[str, list[tuple[str, str]]] = {}
        self._outputs: dict[str, tuple[str, str]] = {}
        self._single_output: tuple[str, str] | None = None

    def add_node(
        self,
        node_type: str | type[Node],
        node_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.1,
    ) -> str:
        """Add a node of ``node_type`` (a registered name or a ``Node`` class).

        ``config`` holds the node's settings and any fixed input values, as in
        Kailash. Returns the node id (generated when not given).
        """
        if node_id is None:
            base = node_type if isinstance(node_type, str) else node_type.type_name
            node_id = f"{base}_{len(self._nodes) + 1}"
        if node_id in self._nodes:
            raise WorkflowDefinitionError(f"duplicate node id {node_id!r}", node=node_id)
        if retries < 0 or (timeout is not None and timeout <= 0):
            raise WorkflowDefinitionError(
                f"node {node_id!r}: retries must be >= 0 and timeout > 0", node=node_id
            )
        policy = NodePolicy(timeout=timeout, retries=retries, backoff=backoff)
        self._nodes[node_id] = _Pending(node_type, dict(config or {}), policy)
        return node_id

    def add_workflow(self, node_id: str, workflow: Workflow, **policy: Any) -> str:
        """Add a built workflow as one node; its inputs and ``result`` output are connectable."""
        return self.add_node("WorkflowNode", node_id, {"workflow": workflow}, **policy)

    def add_connection(
        self, from_node: str, from_output: str, to_node: str, to_input: str
    ) -> WorkflowBuilder:
        """Connect ``from_node``'s output field (a dotted path) to ``to_node``'s input field."""
        self._connections.append(Connection(from_node, from_output, to_node, to_input))
        return self

    def connect(
        self, from_node: str, to_node: str, mapping: Mapping[str, str] | None = None
    ) -> WorkflowBuilder:
        """Kailash's older form: ``mapping`` is ``{from_output: to_input}``."""
        for from_output, to_input in (mapping or {"result": "input"}).items():
            self.add_connection(from_node, from_output, to_node, to_input)
        return self

    def add_workflow_inputs(self, node_id: str, mapping: Mapping[str, str]) -> WorkflowBuilder:
        """Expose node inputs as workflow inputs: ``{workflow_field: node_input}``."""
        for workflow_field, node_input in mapping.items():
            self._inputs.setdefault(workflow_field, []).append((node_id, node_input))
        return self

    def add_workflow_outputs(self, node_id: str, mapping: Mapping[str, str]) -> WorkflowBuilder:
        """Make the workflow's output an object: ``{workflow_field: node_output_path}``."""
        for workflow_field, path in mapping.items():
            self._outputs[workflow_field] = (node_id, path)
        return self

    def set_output(self, node_id: str, path: str = "result") -> WorkflowBuilder:
        """Make the workflow's output one node's output value (not wrapped in an object)."""
        self._single_output = (node_id, path)
        return self

    # -- build -----------------------------------------------------------------

    def build(
        self, registry: Nexus | NodeTypes | None = None, *, name: str | None = None
    ) -> Workflow:
        """Check the definition and return an immutable :class:`Workflow`.

        ``registry`` resolves node type names: a host (``app``), a mapping of
        names to specs or classes, or None for the installed plugins' types.
        """
        types = _resolve_registry(registry)
        nodes = {node_id: self._place(node_id, p, types) for node_id, p in self._nodes.items()}
        checks = self._check_connections(nodes)
        _check_acyclic(nodes, self._connections)
        input_type, input_map = self._input_type(nodes)
        self._check_required(nodes, input_map)
        output_type, output_map = self._output(nodes)
        return Workflow(
            name=name or self.name,
            description=self.description,
            nodes=nodes,
            connections=tuple(self._connections),
            input_type=input_type,
            output_type=output_type,
            input_map=input_map,
            output_map=output_map,
            runtime_checks=checks,
            meta=self.meta,
        )

    def _place(self, node_id: str, pending: _Pending, types: NodeTypes) -> PlacedNode:
        node_type = pending.node_type
        if isinstance(node_type, str):
            entry = types.get(node_type)
            if entry is None:
                import difflib

                close = difflib.get_close_matches(node_type, list(types), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise WorkflowDefinitionError(
                    f"node {node_id!r}: unknown node type {node_type!r}{hint}", node=node_id
                )
            try:
                cls = entry.load() if isinstance(entry, NodeTypeSpec) else entry
            except Exception as exc:
                plugin = entry.plugin if isinstance(entry, NodeTypeSpec) else "?"
                raise WorkflowDefinitionError(
                    f"node {node_id!r}: node type {node_type!r} of plugin {plugin!r} could not "
                    f"be imported: {type(exc).__name__}: {exc}",
                    node=node_id,
                ) from exc
        else:
            cls = node_type
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise WorkflowDefinitionError(
                f"node {node_id!r}: {cls!r} is not a Node subclass", node=node_id
            )
        try:
            node, static = cls.from_parameters(node_id, pending.parameters)
        except WorkflowDefinitionError as exc:
            if exc.node is not None:
                raise
            raise WorkflowDefinitionError(
                f"node {node_id!r} ({cls.type_name}): {exc.message}",
                node=node_id,
                field=exc.field,
            ) from exc
        except Exception as exc:
            raise WorkflowDefinitionError(
                f"node {node_id!r} ({cls.type_name}): {exc}", node=node_id
            ) from exc
        return PlacedNode(node_id, node, static, pending.policy)

    def _check_connections(self, nodes: dict[str, PlacedNode]) -> dict[tuple[str, str], Any]:
        checks: dict[tuple[str, str], Any] = {}
        for c in self._connections:
            for end in (c.source, c.target):
                if end not in nodes:
                    raise WorkflowDefinitionError(
                        f"connection {c.source}.{c.source_output} -> {c.target}.{c.target_input}: "
                        f"no node {end!r}",
                        node=end,
                    )
            source, target = nodes[c.source].node, nodes[c.target].node
            out_type = output_type_at(source, tuple(c.source_output.split(".")))
            if out_type is None:
                known = ", ".join(source.output_fields() or {}) or "none"
                raise WorkflowDefinitionError(
                    f"node {c.source!r} has no output {c.source_output!r} (outputs: {known})",
                    node=c.source,
                    field=c.source_output,
                )
            in_fields = target.input_fields()
            if in_fields is None:
                continue
            if c.target_input not in in_fields:
                raise WorkflowDefinitionError(
                    f"node {c.target!r} has no input {c.target_input!r} "
                    f"(inputs: {', '.join(in_fields) or 'none'})",
                    node=c.target,
                    field=c.target_input,
                )
            in_type = in_fields[c.target_input][0]
            if not is_assignable(out_type, in_type):
                raise WorkflowDefinitionError(
                    f"cannot connect {c.source}.{c.source_output} ({_type_name(out_type)}) to "
                    f"{c.target}.{c.target_input} ({_type_name(in_type)}): incompatible types",
                    node=c.target,
                    field=c.target_input,
                )
            if strip_unset(out_type) is Any and in_type is not Any:
                checks[(c.target, c.target_input)] = in_type
        return checks

    def _input_type(
        self, nodes: dict[str, PlacedNode]
    ) -> tuple[type[msgspec.Struct], dict[str, list[tuple[str, str]]]]:
        fields: list[Any] = []
        for workflow_field, targets in self._inputs.items():
            chosen: tuple[Any, bool, Any] | None = None
            for node_id, node_input in targets:
                if node_id not in nodes:
                    raise WorkflowDefinitionError(
                        f"workflow input {workflow_field!r}: no node {node_id!r}", node=node_id
                    )
                in_fields = nodes[node_id].node.input_fields()
                if in_fields is None:
                    chosen = chosen or (Any, True, msgspec.NODEFAULT)
                    continue
                if node_input not in in_fields:
                    raise WorkflowDefinitionError(
                        f"workflow input {workflow_field!r}: node {node_id!r} has no input "
                        f"{node_input!r}",
                        node=node_id,
                        field=node_input,
                    )
                type_, required = in_fields[node_input]
                default = _default_of(nodes[node_id].node.Inputs, node_input)
                if chosen is not None and chosen[0] is not Any and chosen[0] != type_:
                    raise WorkflowDefinitionError(
                        f"workflow input {workflow_field!r} feeds inputs of different types "
                        f"({_type_name(chosen[0])} and {_type_name(type_)})",
                        node=node_id,
                        field=node_input,
                    )
                chosen = (type_, required, default)
            assert chosen is not None
            type_, required, default = chosen
            fields.append((workflow_field, type_) if required else (workflow_field, type_, default))
        struct_name = "".join(p.capitalize() for p in self.name.replace("-", "_").split("_"))
        input_type = msgspec.defstruct(
            f"{struct_name or 'Workflow'}Input", fields, kw_only=True, forbid_unknown_fields=True
        )
        return input_type, {k: list(v) for k, v in self._inputs.items()}

    def _check_required(
        self, nodes: dict[str, PlacedNode], input_map: dict[str, list[tuple[str, str]]]
    ) -> None:
        fed: set[tuple[str, str]] = {(c.target, c.target_input) for c in self._connections}
        fed |= {target for targets in input_map.values() for target in targets}
        for node_id, placed in nodes.items():
            for name, (_, required) in (placed.node.input_fields() or {}).items():
                if required and name not in placed.static and (node_id, name) not in fed:
                    raise WorkflowDefinitionError(
                        f"node {node_id!r} ({placed.type_name}): required input {name!r} is "
                        "neither connected, configured, nor a workflow input "
                        "(add_connection or add_workflow_inputs)",
                        node=node_id,
                        field=name,
                    )

    def _output(
        self, nodes: dict[str, PlacedNode]
    ) -> tuple[Any, tuple[str, tuple[str, ...]] | dict[str, tuple[str, tuple[str, ...]]]]:
        if self._single_output is not None:
            node_id, path = self._single_output
            return self._output_type(nodes, node_id, path), (node_id, tuple(path.split(".")))
        outputs = dict(self._outputs)
        if not outputs:
            sources = {c.source for c in self._connections}
            sinks = [node_id for node_id in nodes if node_id not in sources]
            if len(sinks) == 1:
                node_id = sinks[0]
                out = nodes[node_id].node.Outputs
                if out is not None and "result" in (nodes[node_id].node.output_fields() or {}):
                    return self._output_type(nodes, node_id, "result"), (node_id, ("result",))
                return (out if out is not None else Any), (node_id, ())
            for node_id in sinks:
                outputs[node_id] = (node_id, "")
        fields = []
        output_map: dict[str, tuple[str, tuple[str, ...]]] = {}
        for workflow_field, (node_id, path) in outputs.items():
            parts = tuple(path.split(".")) if path else ()
            type_ = self._output_type(nodes, node_id, path) if path else nodes[node_id].node.Outputs
            fields.append((workflow_field, Optional[type_ if type_ is not None else Any], None))  # noqa: UP045
            output_map[workflow_field] = (node_id, parts)
        struct_name = "".join(p.capitalize() for p in self.name.replace("-", "_").split("_"))
        return msgspec.defstruct(f"{struct_name or 'Workflow'}Output", fields), output_map

    @staticmethod
    def _output_type(nodes: dict[str, PlacedNode], node_id: str, path: str) -> Any:
        if node_id not in nodes:
            raise WorkflowDefinitionError(f"workflow output: no node {node_id!r}", node=node_id)
        type_ = output_type_at(nodes[node_id].node, tuple(path.split(".")))
        if type_ is None:
            raise WorkflowDefinitionError(
                f"workflow output: node {node_id!r} has no output {path!r}",
                node=node_id,
                field=path,
            )
        return strip_unset(type_)


def _resolve_registry(registry: Any) -> NodeTypes:
    if registry is None:
        return default_node_types()
    node_types = getattr(registry, "node_types", None)
    if node_types is not None:
        return cast("NodeTypes", node_types() if callable(node_types) else node_types)
    return cast("NodeTypes", registry)


def _check_acyclic(nodes: Mapping[str, PlacedNode], connections: list[Connection]) -> None:
    children: dict[str, set[str]] = {n: set() for n in nodes}
    for c in connections:
        if c.source == c.target:
            raise WorkflowDefinitionError(
                f"node {c.source!r} is connected to itself", node=c.source
            )
        children[c.source].add(c.target)
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(nodes, white)
    for start in nodes:
        if color[start] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(children[start]))]
        path = [start]
        color[start] = grey
        while stack:
            node_id, pending = stack[-1]
            if not pending:
                color[node_id] = black
                stack.pop()
                path.pop()
                continue
            child = pending.pop()
            if color[child] == grey:
                cycle = [*path[path.index(child) :], child]
                raise WorkflowDefinitionError(f"cycle: {' -> '.join(cycle)}", node=child)
            if color[child] == white:
                color[child] = grey
                path.append(child)
                stack.append((child, sorted(children[child])))


def _default_of(type_: Any, field: str) -> Any:
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        for info in msgspec.structs.fields(type_):
            if info.name == field:
                if info.default is not msgspec.NODEFAULT:
                    return info.default
                if info.default_factory is not msgspec.NODEFAULT:
                    return info.default_factory()
    return msgspec.NODEFAULT


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_).replace("typing.", "")
