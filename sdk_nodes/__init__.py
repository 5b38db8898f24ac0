"""The standard node library, registered through nexus-core's own ``nexus.plugins`` entry point.

Use the nodes by name in a builder (``wb.add_node("SwitchNode", ...)``); the
classes are importable from here too, loaded on first access so that
``import sdk_nodes`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DelayNode",
    "HTTPRequestNode",
    "MergeNode",
    "PythonCodeNode",
    "SQLQueryNode",
    "SwitchNode",
    "TransformNode",
    "WorkflowNode",
]

_MODULES = {
    "DelayNode": "delay",
    "HTTPRequestNode": "http",
    "MergeNode": "merge",
    "PythonCodeNode": "python",
    "SQLQueryNode": "sql",
    "SwitchNode": "switch",
    "TransformNode": "transform",
    "WorkflowNode": "workflow",
}


def __getattr__(name: str) -> Any:
    """Import a node class on first access."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'sdk_nodes' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sdk_nodes.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
