"""Nexus core: register a workflow once, serve it on every installed channel.

The public API. Everything else is internal unless documented.
"""

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from .app import Nexus
    from .errors import (
        AuthenticationError,
        FieldError,
        NexusError,
        NotFound,
        PermissionDenied,
        RateLimited,
        ValidationError,
        WorkflowDefinitionError,
        WorkflowNotFound,
    )
    from .plugins import PluginInfo, PluginLoadError
    from .security import Credentials, Principal
    from .sessions import Session
    from .specs import (
        AuthProviderSpec,
        ChannelSpec,
        CommandSpec,
        ConfigSectionSpec,
        EventBusSpec,
        HttpMountSpec,
        NodeTypeSpec,
        StorageBackendSpec,
    )
    from .workflows import (
        Node,
        NodeContext,
        NodeResult,
        RunControl,
        RunResult,
        Runtime,
        Workflow,
        WorkflowBuilder,
        WorkflowMeta,
    )

# What each public name is imported from. Imported on first use (PEP 562), so
# `import nexus_core` (and a plugin's `from nexus_core import hookimpl`) stays cheap.
_EXPORTS = {
    "AuthProviderSpec": ".specs",
    "AuthenticationError": ".errors",
    "ChannelSpec": ".specs",
    "CommandSpec": ".specs",
    "ConfigSectionSpec": ".specs",
    "Credentials": ".security",
    "EventBusSpec": ".specs",
    "FieldError": ".errors",
    "HttpMountSpec": ".specs",
    "Nexus": ".app",
    "NexusError": ".errors",
    "Node": ".workflows",
    "NodeContext": ".workflows",
    "NodeResult": ".workflows",
    "NodeTypeSpec": ".specs",
    "NotFound": ".errors",
    "PermissionDenied": ".errors",
    "PluginInfo": ".plugins",
    "PluginLoadError": ".plugins",
    "Principal": ".security",
    "RateLimited": ".errors",
    "RunControl": ".workflows",
    "RunResult": ".workflows",
    "Runtime": ".workflows",
    "Session": ".sessions",
    "StorageBackendSpec": ".specs",
    "ValidationError": ".errors",
    "Workflow": ".workflows",
    "WorkflowBuilder": ".workflows",
    "WorkflowDefinitionError": ".errors",
    "WorkflowMeta": ".workflows",
    "WorkflowNotFound": ".errors",
}

__version__ = "0.1.0"

__all__ = [
    "AuthProviderSpec",
    "AuthenticationError",
    "ChannelSpec",
    "CommandSpec",
    "ConfigSectionSpec",
    "Credentials",
    "EventBusSpec",
    "FieldError",
    "HttpMountSpec",
    "Nexus",
    "NexusError",
    "Node",
    "NodeContext",
    "NodeResult",
    "NodeTypeSpec",
    "NotFound",
    "PermissionDenied",
    "PluginInfo",
    "PluginLoadError",
    "Principal",
    "RateLimited",
    "RunControl",
    "RunResult",
    "Runtime",
    "Session",
    "StorageBackendSpec",
    "ValidationError",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowDefinitionError",
    "WorkflowMeta",
    "WorkflowNotFound",
    "__version__",
    "hookimpl",
    "hookspec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nexus_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
