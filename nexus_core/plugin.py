"""Everything a plugin author implements or calls, in one place.

A plugin imports from here (or from :mod:`nexus_core`, which re-exports the
most used names) and nothing else of the core, so the core may change its
insides freely. What is here is the stable plugin API of the ``0.x`` series:
a plugin pins ``nexus-core>=0.1,<0.2`` and keeps working across core releases
of that series.

::

    from nexus_core.plugin import ChannelCapabilities, ChannelSpec, hookimpl

Grouped by what an author does:

Hooks
    :data:`hookimpl` (implement a hook), :data:`hookspec` (define a hook of
    your own, added with ``nexus_add_hookspecs``), :func:`collect_specs` (call
    any hook, core or plugin-defined, and get its specs by name, each tagged
    with its plugin; two plugins registering one name is a
    :class:`PluginConflictError` naming both).
Specs (what registration hooks return)
    :class:`ChannelSpec`, :class:`AuthProviderSpec`, :class:`StorageBackendSpec`,
    :class:`NodeTypeSpec`, :class:`EventBusSpec`, :class:`ExecutorSpec`,
    :class:`ConfigSectionSpec`, :class:`HttpMountSpec`, :class:`CommandSpec`,
    their base :class:`Spec`.
Base classes and protocols
    :class:`Channel` (+ :class:`ChannelCapabilities`), :class:`AuthProvider`,
    :class:`Storage` (:class:`MemoryStorage` and :class:`SQLiteStorage`
    are complete backends to start from; :class:`StorageRouter` is one made of a
    backend per role), the storage roles a backend may serve alone
    (:class:`Backend`, :class:`RunStore`, :class:`EventLog`, :class:`AuditLog`,
    :class:`CredentialStore`, :class:`SessionStore`, :class:`Cache`,
    :class:`BlobStore`; :data:`ROLES`, :data:`Role`), :class:`EventBus` (+
    :class:`LocalEventBus`, the in-process one, to build a bus on),
    :class:`Executor` (+ :class:`InlineExecutor`; a queue executor drives
    :class:`RunEngine`), :class:`Node` (+ :class:`NodeContext`,
    :func:`current_context`), :class:`Injectable` (a parameter type the host
    fills in),
    :class:`ConfigStruct` (a config section).
Records and values
    :class:`Credentials`, :class:`Principal`, :class:`Event`, :class:`EventType`,
    :class:`Subscription`, :class:`RunRecord`, :class:`NodeCheckpoint`,
    :class:`AuditRecord`, :class:`SessionRecord`, :class:`CredentialRecord`,
    :class:`RunResult`, :class:`HealthReport`; :class:`BlobRef` and
    :func:`blob_ref` (a run value stored by reference, see
    :mod:`nexus_core.payloads`); :func:`header_extras` (the
    request headers a channel passes in ``Credentials.extras``);
    :func:`event_id` and :func:`event_seq` (event ids are log positions).
Errors
    :class:`NexusError` and the subclasses a plugin raises or renders
    (:class:`AppNotFound`, :class:`SubscriberLagged` too); a storage backend
    raises :class:`AlreadyExists` and :class:`LeaseLost`.
Host services (what a channel or a command of its own calls)
    :func:`load_app` (an application from ``module:attr`` or a file),
    :func:`load_config` (the validated ``nexus.toml``), :class:`PluginHost`
    (the installed plugins, with :class:`PluginInfo` and
    :class:`PluginLoadError`; :func:`install_command` says how to install a
    distribution), :func:`convert` (validate builtins into a type,
    a :class:`ValidationError` naming each field), :func:`import_string`,
    :func:`describe` (a running channel as JSON), :func:`liveness`,
    :class:`Session`, :data:`RunStatus`, :class:`Prompt` (+
    :class:`PromptArgument`, :class:`PromptMessage`), and the user's token
    store: :func:`read_token`, :func:`write_token`, :func:`delete_token`,
    :func:`user_config_dir`, :func:`write_private`; logging in the host's one
    format: :func:`configure_logging`, :data:`LogFormat`, :class:`JsonFormatter`.
Contract suites (in your tests; they need pytest, anyio and hypothesis)
    the storage suites, one per role (:class:`SessionStoreContract`,
    :class:`RunStoreContract`, :class:`EventLogContract`,
    :class:`AuditLogContract`, :class:`CredentialStoreContract`,
    :class:`CacheContract`, :class:`BlobStoreContract`; :class:`StorageContract`
    is all of them), loaded on first use so that importing this module does not
    import pytest; :class:`~nexus_core.testing.auth.AuthProviderContract` and
    :class:`~nexus_core.testing.channel.ChannelContract` from
    :mod:`nexus_core.testing`.

Names are imported on first use, so ``import nexus_core.plugin`` is cheap.

Besides this module and :mod:`nexus_core` itself, a plugin may import
:mod:`nexus_core.errors`, :mod:`nexus_core.events`, :mod:`nexus_core.security`
and :mod:`nexus_core.testing` (and its modules); every other module of the core
is internal (``tests/test_plugin_imports.py`` holds the shipped plugins to it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .app import Nexus
    from .channels import Channel, ChannelCapabilities, describe
    from .config import ConfigError, ConfigStruct, load_config
    from .engine import RunEngine
    from .errors import (
        AuthenticationError,
        NexusError,
        NotFound,
        PermissionDenied,
        PluginConflictError,
        PluginFailed,
        ValidationError,
    )
    from .events import (
        Event,
        EventBus,
        EventType,
        LocalEventBus,
        SubscriberLagged,
        Subscription,
        event_id,
        event_seq,
    )
    from .executors import Executor, InlineExecutor
    from .health import HealthReport, liveness
    from .loader import AppNotFound, load_app
    from .logs import JsonFormatter, LogFormat, configure_logging
    from .payloads import BlobRef, blob_ref
    from .plugins import PluginHost, PluginInfo, PluginLoadError, install_command
    from .prompts import Prompt, PromptArgument, PromptMessage
    from .security import AuthProvider, Credentials, Principal, header_extras
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
        Spec,
        StorageBackendSpec,
        import_string,
    )
    from .storage.base import (
        ROLES,
        AlreadyExists,
        AuditLog,
        AuditRecord,
        Backend,
        BlobStore,
        Cache,
        CredentialRecord,
        CredentialStore,
        EventLog,
        LeaseLost,
        NodeCheckpoint,
        Role,
        RunFinish,
        RunRecord,
        RunStore,
        SessionRecord,
        SessionStore,
        Storage,
    )
    from .storage.memory import MemoryStorage
    from .storage.router import StorageRouter
    from .storage.sqlite import SQLiteStorage
    from .testing.storage import (
        AuditLogContract,
        BlobStoreContract,
        CacheContract,
        CredentialStoreContract,
        EventLogContract,
        RunStoreContract,
        SessionStoreContract,
        StorageContract,
    )
    from .userconfig import (
        delete_token,
        read_token,
        user_config_dir,
        write_private,
        write_token,
    )
    from .workflows import Node, NodeContext, RunResult
    from .workflows.node import current_context
    from .workflows.runtime import RunStatus
    from .workflows.schema import Injectable, convert

__all__ = [
    "ROLES",
    "AlreadyExists",
    "AppNotFound",
    "AuditLog",
    "AuditLogContract",
    "AuditRecord",
    "AuthProvider",
    "AuthProviderSpec",
    "AuthenticationError",
    "Backend",
    "BlobRef",
    "BlobStore",
    "BlobStoreContract",
    "Cache",
    "CacheContract",
    "Channel",
    "ChannelCapabilities",
    "ChannelSpec",
    "CommandSpec",
    "ConfigError",
    "ConfigSectionSpec",
    "ConfigStruct",
    "CredentialRecord",
    "CredentialStore",
    "CredentialStoreContract",
    "Credentials",
    "Event",
    "EventBus",
    "EventBusSpec",
    "EventLog",
    "EventLogContract",
    "EventType",
    "Executor",
    "ExecutorSpec",
    "HealthReport",
    "HttpMountSpec",
    "Injectable",
    "InlineExecutor",
    "JsonFormatter",
    "LeaseLost",
    "LocalEventBus",
    "LogFormat",
    "MemoryStorage",
    "Nexus",
    "NexusError",
    "Node",
    "NodeCheckpoint",
    "NodeContext",
    "NodeTypeSpec",
    "NotFound",
    "PermissionDenied",
    "PluginConflictError",
    "PluginFailed",
    "PluginHost",
    "PluginInfo",
    "PluginLoadError",
    "Principal",
    "Prompt",
    "PromptArgument",
    "PromptMessage",
    "Role",
    "RunEngine",
    "RunFinish",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "RunStore",
    "RunStoreContract",
    "SQLiteStorage",
    "Session",
    "SessionRecord",
    "SessionStore",
    "SessionStoreContract",
    "Spec",
    "Storage",
    "StorageBackendSpec",
    "StorageContract",
    "StorageRouter",
    "SubscriberLagged",
    "Subscription",
    "ValidationError",
    "blob_ref",
    "collect_specs",
    "configure_logging",
    "convert",
    "current_context",
    "delete_token",
    "describe",
    "event_id",
    "event_seq",
    "header_extras",
    "hookimpl",
    "hookspec",
    "import_string",
    "install_command",
    "liveness",
    "load_app",
    "load_config",
    "read_token",
    "user_config_dir",
    "write_private",
    "write_token",
]

_EXPORTS = {
    "Injectable": ".workflows.schema",
    "current_context": ".workflows.node",
    "blob_ref": ".payloads",
    "AlreadyExists": ".storage.base",
    "AppNotFound": ".loader",
    "AuditLog": ".storage.base",
    "AuditLogContract": ".testing.storage",
    "AuditRecord": ".storage.base",
    "AuthProvider": ".security",
    "AuthProviderSpec": ".specs",
    "AuthenticationError": ".errors",
    "Backend": ".storage.base",
    "BlobRef": ".payloads",
    "BlobStore": ".storage.base",
    "BlobStoreContract": ".testing.storage",
    "Cache": ".storage.base",
    "CacheContract": ".testing.storage",
    "Channel": ".channels",
    "ChannelCapabilities": ".channels",
    "ChannelSpec": ".specs",
    "CommandSpec": ".specs",
    "ConfigError": ".config",
    "ConfigSectionSpec": ".specs",
    "ConfigStruct": ".config",
    "CredentialRecord": ".storage.base",
    "CredentialStore": ".storage.base",
    "CredentialStoreContract": ".testing.storage",
    "Credentials": ".security",
    "Event": ".events",
    "EventBus": ".events",
    "EventBusSpec": ".specs",
    "EventLog": ".storage.base",
    "EventLogContract": ".testing.storage",
    "EventType": ".events",
    "Executor": ".executors",
    "ExecutorSpec": ".specs",
    "HealthReport": ".health",
    "HttpMountSpec": ".specs",
    "InlineExecutor": ".executors",
    "JsonFormatter": ".logs",
    "LeaseLost": ".storage.base",
    "LocalEventBus": ".events",
    "LogFormat": ".logs",
    "MemoryStorage": ".storage.memory",
    "Nexus": ".app",
    "NexusError": ".errors",
    "Node": ".workflows",
    "NodeCheckpoint": ".storage.base",
    "NodeContext": ".workflows",
    "NodeTypeSpec": ".specs",
    "NotFound": ".errors",
    "PermissionDenied": ".errors",
    "PluginConflictError": ".errors",
    "PluginFailed": ".errors",
    "PluginHost": ".plugins",
    "PluginInfo": ".plugins",
    "PluginLoadError": ".plugins",
    "Principal": ".security",
    "Prompt": ".prompts",
    "PromptArgument": ".prompts",
    "PromptMessage": ".prompts",
    "ROLES": ".storage.base",
    "Role": ".storage.base",
    "RunEngine": ".engine",
    "RunFinish": ".storage.base",
    "RunRecord": ".storage.base",
    "RunResult": ".workflows",
    "RunStatus": ".workflows.runtime",
    "RunStore": ".storage.base",
    "RunStoreContract": ".testing.storage",
    "SQLiteStorage": ".storage.sqlite",
    "Session": ".sessions",
    "SessionRecord": ".storage.base",
    "SessionStore": ".storage.base",
    "SessionStoreContract": ".testing.storage",
    "Spec": ".specs",
    "Storage": ".storage.base",
    "StorageBackendSpec": ".specs",
    "StorageContract": ".testing.storage",
    "StorageRouter": ".storage.router",
    "SubscriberLagged": ".events",
    "Subscription": ".events",
    "ValidationError": ".errors",
    "configure_logging": ".logs",
    "convert": ".workflows.schema",
    "delete_token": ".userconfig",
    "describe": ".channels",
    "event_id": ".events",
    "event_seq": ".events",
    "header_extras": ".security",
    "import_string": ".specs",
    "install_command": ".plugins",
    "liveness": ".health",
    "load_app": ".loader",
    "load_config": ".config",
    "read_token": ".userconfig",
    "user_config_dir": ".userconfig",
    "write_private": ".userconfig",
    "write_token": ".userconfig",
}

_SpecT = TypeVar("_SpecT", bound="Spec")


def collect_specs(
    source: Nexus | PluginHost,
    hook_name: str,
    spec_type: type[_SpecT],
    *,
    key: Callable[[_SpecT], Iterable[str]] | None = None,
    **kwargs: Any,
) -> dict[str, _SpecT]:
    """Call ``hook_name`` on every plugin and return its specs by name (or by ``key``).

    ``source`` is the host application or its plugin host. Works for core
    hooks and for hooks a plugin defines (the API plugin's
    ``nexus_api_mounts``, the CLI's ``nexus_cli_commands``); a hook nobody
    defined gives ``{}``. ``kwargs`` are the hook's arguments. Each spec comes
    back with ``plugin``, ``distribution`` and ``version`` filled in.

    One conflict policy for every hook: two specs under one key raise
    :class:`~nexus_core.errors.PluginConflictError` naming both plugins and
    their distributions. A plugin whose hook raises is reported (an installed
    plugin is then skipped with a warning; one passed to ``Nexus(plugins=...)``
    raises :class:`~nexus_core.errors.PluginFailed` naming it). Hook wrappers
    run around each implementation.
    """
    from .plugins import PluginHost

    host = source if isinstance(source, PluginHost) else source.host
    return host.collect(hook_name, spec_type, key=key, **kwargs)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nexus_core.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
