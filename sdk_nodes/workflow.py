"""``WorkflowNode``: a built workflow used as one node of another."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from nexus_core.workflows.model import Workflow
from nexus_core.workflows.node import Node, NodeContext

from ._common import ConfigError, NamedConfigErrors

__all__ = ["SubWorkflowError", "WorkflowNode", "WorkflowNodeConfig"]


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]", name)) or "Sub"


class SubWorkflowError(RuntimeError):
    """The inner workflow of a :class:`WorkflowNode` did not complete; names the inner node."""

    def __init__(self, workflow: str, status: str, node: str | None, error: str) -> None:
        at = f" at node {node!r}" if node else ""
        super().__init__(f"sub-workflow {workflow!r} {status}{at}: {error}")
        self.workflow = workflow
        self.node = node


class WorkflowNodeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`WorkflowNode`: the built workflow to run."""

    workflow: Any


class WorkflowNode(NamedConfigErrors, Node):
    """Run a built workflow as one node: its inputs are this node's, its output is ``result``.

    ``WorkflowBuilder.add_workflow(node_id, workflow)`` adds one. The inner run
    uses the outer run's runtime and state (the session); if it fails, this
    node fails with an error naming the inner node and its error.
    """

    Config = WorkflowNodeConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        workflow = self.config.workflow
        if not isinstance(workflow, Workflow):
            raise ConfigError(
                "workflow",
                "expected a built Workflow (WorkflowBuilder.build()), "
                f"got {type(workflow).__name__}",
            )
        self.workflow = workflow
        self.Inputs = workflow.input_type
        self.Outputs = msgspec.defstruct(
            f"{_camel(workflow.name)}NodeOutput",
            [("result", workflow.output_type)],
            kw_only=True,
        )

    async def run(self, inputs: Any, context: NodeContext) -> dict[str, Any]:
        """Run the inner workflow; raise :class:`SubWorkflowError` unless it completes."""
        # Validate again from plain values: connections typed Any are only
        # checked here, and the inner workflow must see its declared types.
        values = {name: getattr(inputs, name) for name in inputs.__struct_fields__}
        result = await context.runtime.run(
            self.workflow,
            values,
            run_id=f"{context.run_id}.{context.node_id}",
            state=context.state,
        )
        if result.status != "completed":
            error = result.error
            raise SubWorkflowError(
                self.workflow.name,
                result.status,
                error.node if error is not None else None,
                f"{error.type}: {error.message}" if error is not None else result.status,
            )
        return {"result": result.output}
