"""Nexus core: register a workflow once, serve it on every installed channel.

The public API. Everything else is internal unless documented; a plugin
author finds every name they implement or call in :mod:`nexus_core.plugin`.
"""

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from .app import Nexus
    from .channels import Channel, ChannelCapabilities
    from .config import ConfigStruct
    from .errors import (
        AuthenticationError,
        FieldError,
        NexusError,
        NotFound,
        PermissionDenied,
        PluginFailed,
        RateLimited,
        ValidationError,
        WorkflowDefinitionError,
        WorkflowNotFound,
    )
    from .events import EventBus
    from .plugins import PluginInfo, PluginLoadError
    from .security import AuthProvider, Credentials, Principal
    from .sessions import Session
    from .specs import (
        AuthProviderSpec,
        ChannelSpec,
        CommandSpec,
        ConfigSectionSpec,
        EventBusSpec,
        ExecutorSpec,
        HttpMountSpec,
        NodeTypeSpec,
        StorageBackendSpec,
    )
    from .storage.base import CredentialRecord, Storage
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
    "AuthProvider": ".security",
    "AuthProviderSpec": ".specs",
    "AuthenticationError": ".errors",
    "Channel": ".channels",
    "ChannelCapabilities": ".channels",
    "ChannelSpec": ".specs",
    "CommandSpec": ".specs",
    "ConfigSectionSpec": ".specs",
    "ConfigStruct": ".config",
    "CredentialRecord": ".storage.base",
    "Credentials": ".security",
    "EventBus": ".events",
    "EventBusSpec": ".specs",
    "ExecutorSpec": ".specs",
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
    "PluginFailed": ".errors",
    "PluginInfo": ".plugins",
    "PluginLoadError": ".plugins",
    "Principal": ".security",
    "RateLimited": ".errors",
    "RunControl": ".workflows",
    "RunResult": ".workflows",
    "Runtime": ".workflows",
    "Session": ".sessions",
    "Storage": ".storage.base",
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
    "AuthProvider",
    "AuthProviderSpec",
    "AuthenticationError",
    "Channel",
    "ChannelCapabilities",
    "ChannelSpec",
    "CommandSpec",
    "ConfigSectionSpec",
    "ConfigStruct",
    "CredentialRecord",
    "Credentials",
    "EventBus",
    "EventBusSpec",
    "ExecutorSpec",
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
    "PluginFailed",
    "PluginInfo",
    "PluginLoadError",
    "Principal",
    "RateLimited",
    "RunControl",
    "RunResult",
    "Runtime",
    "Session",
    "Storage",
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
