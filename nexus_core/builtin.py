"""The core's own defaults, registered through the same hooks as any plugin.

Like pytest's built-in plugins: the function node type, the in-memory and
SQLite storage backends, and the in-process event bus.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .specs import EventBusSpec, NodeTypeSpec, StorageBackendSpec

__all__ = [
    "nexus_event_buses",
    "nexus_node_types",
    "nexus_storage_backends",
]


@hookimpl
def nexus_node_types() -> list[NodeTypeSpec]:
    """The function node, which every ``@app.workflow`` uses."""
    return [
        NodeTypeSpec(
            name="PythonFunction",
            factory="nexus_core.workflows.function:FunctionNode",
            description="Call a typed Python function.",
        )
    ]


@hookimpl
def nexus_storage_backends() -> list[StorageBackendSpec]:
    """``memory://`` and ``sqlite:///path``."""
    return [
        StorageBackendSpec(
            name="memory",
            schemes=("memory",),
            factory="nexus_core.storage.memory:MemoryStorage",
            description="In-process, lost on exit; for tests and throwaway runs.",
        ),
        StorageBackendSpec(
            name="sqlite",
            schemes=("sqlite",),
            factory="nexus_core.storage.sqlite:SQLiteStorage",
            description="A local SQLite file (WAL); the embedded default.",
        ),
    ]


@hookimpl
def nexus_event_buses() -> list[EventBusSpec]:
    """The in-process bus (priority 0: any distributed bus installed wins)."""
    return [
        EventBusSpec(
            name="local",
            factory="nexus_core.events:LocalEventBus",
            description="Events within one process.",
            priority=0,
        )
    ]
