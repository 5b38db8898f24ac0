"""Plain Python functions as nodes and as one-node workflows.

``@app.workflow`` turns a typed function into a :class:`Workflow` whose input
schema comes from the signature and whose output schema comes from the return
annotation. The same function can be a node in a larger workflow through
:class:`FunctionNode` (``add_node("PythonCodeNode", "id", {"function": fn})``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from ..errors import WorkflowDefinitionError
from .model import NodePolicy, PlacedNode, Workflow, WorkflowMeta
from .node import Node, NodeContext
from .schema import input_struct_from_signature

__all__ = ["FunctionNode", "workflow_from_function"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_.\-]", name) if part)


class FunctionConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Config of a function node: the callable itself."""

    function: Any


class FunctionNode(Node):
    """Call a typed Python function; its parameters are the inputs, ``result`` the output.

    Sync functions run in a worker thread, async ones on the event loop.
    Parameters annotated with an :class:`~nexus_core.workflows.schema.Injectable`
    type (``Session``) are filled in by the host, not read from inputs.
    """

    type_name = "PythonFunction"
    Config: ClassVar[type[msgspec.Struct]] = FunctionConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        function = self.config.function
        if not callable(function):
            raise WorkflowDefinitionError(f"'function' must be callable, got {function!r}")
        self.function = function
        name = getattr(function, "__name__", type(function).__name__)
        self.Inputs, self.injected, return_type = input_struct_from_signature(
            function, f"{_camel(name)}Input"
        )
        self.return_type = return_type
        self.Outputs = msgspec.defstruct(f"{_camel(name)}Output", [("result", return_type)])
        self.is_async = inspect.iscoroutinefunction(function)

    def invoke(self, kwargs: dict[str, Any], context: NodeContext) -> Any:
        """Call the function with keyword inputs (and injected values); wrap as ``result``."""
        if self.injected:
            state = context.state or {}
            for param, kind in self.injected.items():
                kwargs[param] = state[kind] if kind in state else kind.inject(context)
        if self.is_async:
            return self._await(kwargs)
        return {"result": self.function(**kwargs)}

    async def _await(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"result": await self.function(**kwargs)}


def workflow_from_function(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    meta: WorkflowMeta | None = None,
    policy: NodePolicy | None = None,
) -> Workflow:
    """Make a one-node workflow of ``function``.

    The name defaults to the function's name, the description to its docstring.
    """
    name = name or str(getattr(function, "__name__", ""))
    if not _NAME.match(name):
        raise WorkflowDefinitionError(
            f"workflow name {name!r} must start with a letter or '_' and contain only "
            "letters, digits, '_', '-' and '.'"
        )
    node = FunctionNode(FunctionConfig(function=function))
    fields = node.Inputs.__struct_fields__
    return Workflow(
        name=name,
        description=description
        if description is not None
        else inspect.cleandoc(function.__doc__ or ""),
        nodes={name: PlacedNode(name, node, {}, policy or NodePolicy())},
        connections=(),
        input_type=node.Inputs,
        output_type=node.return_type,
        input_map={field: [(name, field)] for field in fields},
        output_map=(name, ("result",)),
        injected=node.injected,
        meta=meta,
        function=function,
    )
