"""Registers the standard node library through nexus-core's ``nexus.plugins`` entry point.

Factories are ``"module:Class"`` strings: a node module (and httpx, aiosqlite)
is imported only when a workflow first uses that node type.
"""

from __future__ import annotations

from nexus_core import NodeTypeSpec, hookimpl

__all__ = ["NODE_TYPES", "nexus_node_types"]

#: name -> (factory, description). Names follow Kailash SDK.
NODE_TYPES: dict[str, tuple[str, str]] = {
    "PythonCodeNode": (
        "sdk_nodes.python:PythonCodeNode",
        "Run a typed Python function, or a code string that sets 'result'.",
    ),
    "HTTPRequestNode": (
        "sdk_nodes.http:HTTPRequestNode",
        "Send an HTTP request; output status, headers, body and parsed JSON.",
    ),
    "SwitchNode": (
        "sdk_nodes.switch:SwitchNode",
        "Route the input to one output by case value or by a comparison.",
    ),
    "MergeNode": (
        "sdk_nodes.merge:MergeNode",
        "Join the branches that arrived: first value, a list, or merged dicts.",
    ),
    "TransformNode": (
        "sdk_nodes.transform:TransformNode",
        "Reshape data with a dotted-path mapping and/or a restricted expression.",
    ),
    "DelayNode": (
        "sdk_nodes.delay:DelayNode",
        "Wait a number of seconds, then pass the data through.",
    ),
    "WorkflowNode": (
        "sdk_nodes.workflow:WorkflowNode",
        "Run a built workflow as one node; its output is 'result'.",
    ),
    "SQLQueryNode": (
        "sdk_nodes.sql:SQLQueryNode",
        "Run one parameterised SQLite statement; output rows as dicts.",
    ),
}


@hookimpl
def nexus_node_types() -> list[NodeTypeSpec]:
    """Return the standard node library, by Kailash SDK name."""
    return [
        NodeTypeSpec(name=name, factory=factory, description=description)
        for name, (factory, description) in NODE_TYPES.items()
    ]
