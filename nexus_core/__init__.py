"""Nexus core: register a workflow once, serve it on every installed channel.

The public API. Everything else is internal unless documented.
"""

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
from .hookspecs import hookimpl, hookspec
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
