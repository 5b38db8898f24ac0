"""Workflows: the model, the builder, function workflows, nodes and the runtime."""

from .builder import WorkflowBuilder
from .function import FunctionNode, workflow_from_function
from .model import Connection, NodePolicy, Workflow, WorkflowMeta
from .node import NoConfig, Node, NodeContext
from .runtime import NodeResult, RunControl, RunError, RunObserver, RunResult, Runtime
from .schema import Injectable, json_schema

__all__ = [
    "Connection",
    "FunctionNode",
    "Injectable",
    "NoConfig",
    "Node",
    "NodeContext",
    "NodePolicy",
    "NodeResult",
    "RunControl",
    "RunError",
    "RunObserver",
    "RunResult",
    "Runtime",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowMeta",
    "json_schema",
    "workflow_from_function",
]
