"""The core's own defaults, registered through the same hooks as any plugin.

Like pytest's built-in plugins: the function node type, the in-memory and
SQLite storage backends, the in-process event bus and the auth providers
(API keys, CLI tokens, JWT, anonymous).
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .specs import AuthProviderSpec, EventBusSpec, ExecutorSpec, NodeTypeSpec, StorageBackendSpec

__all__ = [
    "nexus_auth_providers",
    "nexus_event_buses",
    "nexus_executors",
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


@hookimpl
def nexus_executors() -> list[ExecutorSpec]:
    """``inline`` (in the process that accepted the run) and ``workers`` (``nexus worker``)."""
    return [
        ExecutorSpec(
            name="inline",
            factory="nexus_core.executors:InlineExecutor",
            description="Runs execute in the process that accepted them.",
        ),
        ExecutorSpec(
            name="workers",
            factory="nexus_core.executors:WorkerQueueExecutor",
            description="Runs wait in the run store; `nexus worker` processes execute them.",
        ),
    ]


@hookimpl
def nexus_auth_providers() -> list[AuthProviderSpec]:
    """``api_key``, ``cli_token``, ``jwt`` and ``anonymous`` (enabled by name in the config)."""
    return [
        AuthProviderSpec(
            name="api_key",
            factory="nexus_core.security.providers:ApiKeyProvider",
            description="API keys (X-API-Key or bearer), stored hashed, scoped, revocable.",
        ),
        AuthProviderSpec(
            name="cli_token",
            factory="nexus_core.security.providers:CliTokenProvider",
            description="Tokens issued by 'nexus login', stored hashed, revocable.",
        ),
        AuthProviderSpec(
            name="jwt",
            factory="nexus_core.security.jwt_provider:JWTProvider",
            description="JWT bearer tokens (HS256, RS256, ES256; static keys or a JWKS URL).",
        ),
        AuthProviderSpec(
            name="anonymous",
            factory="nexus_core.security.providers:AnonymousProvider",
            description="Callers without credentials get the configured roles.",
        ),
    ]
