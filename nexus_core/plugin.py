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
    :class:`NodeTypeSpec`, :class:`EventBusSpec`, :class:`ConfigSectionSpec`,
    :class:`HttpMountSpec`, :class:`CommandSpec`, their base :class:`Spec`.
Base classes and protocols
    :class:`Channel` (+ :class:`ChannelCapabilities`), :class:`AuthProvider`,
    :class:`Storage` (:class:`MemoryStorage` is a complete backend to start
    from), :class:`EventBus`, :class:`Node` (+ :class:`NodeContext`),
    :class:`ConfigStruct` (a config section).
Records and values
    :class:`Credentials`, :class:`Principal`, :class:`Event`, :class:`EventType`,
    :class:`Subscription`, :class:`RunRecord`, :class:`NodeCheckpoint`,
    :class:`AuditRecord`, :class:`SessionRecord`, :class:`CredentialRecord`,
    :class:`RunResult`, :class:`HealthReport`; :func:`header_extras` (the
    request headers a channel passes in ``Credentials.extras``).
Errors
    :class:`NexusError` and the subclasses a plugin raises or renders.
Contract suites (in your tests; they need pytest, anyio and hypothesis)
    :class:`~nexus_core.testing.storage.StorageContract`,
    :class:`~nexus_core.testing.auth.AuthProviderContract`,
    :class:`~nexus_core.testing.channel.ChannelContract`, imported from
    :mod:`nexus_core.testing` so that this module does not import pytest.

Names are imported on first use, so ``import nexus_core.plugin`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .app import Nexus
    from .channels import Channel, ChannelCapabilities
    from .config import ConfigError, ConfigStruct
    from .errors import (
        AuthenticationError,
        NexusError,
        NotFound,
        PermissionDenied,
        PluginConflictError,
        PluginFailed,
        ValidationError,
    )
    from .events import Event, EventBus, EventType, Subscription
    from .health import HealthReport
    from .plugins import PluginHost
    from .security import AuthProvider, Credentials, Principal, header_extras
    from .specs import (
        AuthProviderSpec,
        ChannelSpec,
        CommandSpec,
        ConfigSectionSpec,
        EventBusSpec,
        HttpMountSpec,
        NodeTypeSpec,
        Spec,
        StorageBackendSpec,
    )
    from .storage.base import (
        AuditRecord,
        CredentialRecord,
        NodeCheckpoint,
        RunRecord,
        SessionRecord,
        Storage,
    )
    from .storage.memory import MemoryStorage
    from .workflows import Node, NodeContext, RunResult

__all__ = [
    "AuditRecord",
    "AuthProvider",
    "AuthProviderSpec",
    "AuthenticationError",
    "Channel",
    "ChannelCapabilities",
    "ChannelSpec",
    "CommandSpec",
    "ConfigError",
    "ConfigSectionSpec",
    "ConfigStruct",
    "CredentialRecord",
    "Credentials",
    "Event",
    "EventBus",
    "EventBusSpec",
    "EventType",
    "HealthReport",
    "HttpMountSpec",
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
    "Principal",
    "RunRecord",
    "RunResult",
    "SessionRecord",
    "Spec",
    "Storage",
    "StorageBackendSpec",
    "Subscription",
    "ValidationError",
    "collect_specs",
    "header_extras",
    "hookimpl",
    "hookspec",
]

_EXPORTS = {
    "AuditRecord": ".storage.base",
    "AuthProvider": ".security",
    "AuthProviderSpec": ".specs",
    "AuthenticationError": ".errors",
    "Channel": ".channels",
    "ChannelCapabilities": ".channels",
    "ChannelSpec": ".specs",
    "CommandSpec": ".specs",
    "ConfigError": ".config",
    "ConfigSectionSpec": ".specs",
    "ConfigStruct": ".config",
    "CredentialRecord": ".storage.base",
    "Credentials": ".security",
    "Event": ".events",
    "EventBus": ".events",
    "EventBusSpec": ".specs",
    "EventType": ".events",
    "HealthReport": ".health",
    "HttpMountSpec": ".specs",
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
    "Principal": ".security",
    "RunRecord": ".storage.base",
    "RunResult": ".workflows",
    "SessionRecord": ".storage.base",
    "Spec": ".specs",
    "Storage": ".storage.base",
    "StorageBackendSpec": ".specs",
    "Subscription": ".events",
    "ValidationError": ".errors",
    "header_extras": ".security",
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
