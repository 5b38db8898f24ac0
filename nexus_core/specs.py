"""What registration hooks return: small msgspec Structs naming a lazy factory.

A plugin never hands the host a heavy object at import time. It returns a spec
whose ``factory`` is a ``"module:attr"`` string; the host imports it only when
the thing is first used (a storage URL with that scheme, a node of that type).
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

__all__ = [
    "AuthProviderSpec",
    "ChannelSpec",
    "CommandSpec",
    "ConfigSectionSpec",
    "EventBusSpec",
    "ExecutorSpec",
    "HttpMountSpec",
    "NodeTypeSpec",
    "Spec",
    "StorageBackendSpec",
    "disable_hint",
    "import_string",
    "plugin_label",
]

#: The name under which the core's own defaults are registered.
BUILTIN_PLUGIN = "nexus-core:builtin"

#: What each spec type registers, as error messages name it.
_KINDS = {
    "ChannelSpec": "channel",
    "AuthProviderSpec": "auth provider",
    "StorageBackendSpec": "storage backend",
    "NodeTypeSpec": "node type",
    "EventBusSpec": "event bus",
    "ExecutorSpec": "executor",
    "ConfigSectionSpec": "config section",
    "HttpMountSpec": "HTTP mount",
    "CommandSpec": "command",
}


def plugin_label(plugin: str, distribution: str = "", version: str | None = None) -> str:
    """``plugin 'x' (distribution 1.2)``: how every plugin failure names its culprit."""
    if not distribution:
        return f"plugin {plugin!r}"
    return f"plugin {plugin!r} ({distribution}{f' {version}' if version else ''})"


def disable_hint(plugin: str, distribution: str = "", *, entry_point: bool = True) -> str:
    """How to get rid of a failing plugin, as one sentence."""
    if plugin == BUILTIN_PLUGIN:
        return "It is built into nexus-core: please report it."
    if not entry_point or not distribution:
        return "Remove it from the plugins passed to Nexus(...)."
    return (
        f"Set NEXUS_DISABLE_PLUGINS={plugin} to skip it, "
        f"or uninstall it with 'pip uninstall {distribution}'."
    )


def import_string(target: str | Any) -> Any:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``) and return the attribute.

    Anything that is not a string is returned unchanged, so a spec may carry the
    object itself where laziness does not matter (tests, embedded apps).
    """
    if not isinstance(target, str):
        return target
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Spec(msgspec.Struct, kw_only=True, frozen=True):
    """Common shape of every registration: a unique name and a lazy factory.

    ``factory`` is a ``"module:attr"`` string (preferred) or the object itself.
    ``plugin``, ``distribution`` and ``version`` are filled in by the host:
    the plugin that registered the spec (its entry-point name) and the
    distribution it comes from, so every failure can name them.
    """

    name: str
    factory: Any
    description: str = ""
    plugin: str = ""
    distribution: str = ""
    version: str | None = None

    @property
    def kind(self) -> str:
        """What this spec registers, in words (``"channel"``, ``"storage backend"``)."""
        return _KINDS.get(type(self).__name__, type(self).__name__)

    def describe(self) -> str:
        """``channel 'tcp' of plugin 'x' (x 1.0)``: for error messages."""
        if not self.plugin:
            return f"{self.kind} {self.name!r}"
        return f"{self.kind} {self.name!r} of " + plugin_label(
            self.plugin, self.distribution, self.version
        )

    def failed(self, what: str, exc: BaseException) -> Exception:
        """A :class:`~nexus_core.errors.PluginFailed` naming this spec's plugin and ``exc``.

        ``what`` says what went wrong (``"cannot be imported"``); the message
        ends with how to disable the plugin. Raise it ``from exc``.
        """
        from .errors import PluginFailed

        hint = disable_hint(self.plugin, self.distribution) if self.plugin else ""
        message = f"{self.describe()} {what}: {type(exc).__name__}: {exc}"
        return PluginFailed(
            f"{message}. {hint}".rstrip(),
            plugin=self.plugin or None,
            distribution=self.distribution or None,
            version=self.version,
        )

    def load(self) -> Any:
        """Import and return the factory.

        A factory that cannot be imported raises
        :class:`~nexus_core.errors.PluginFailed` naming the plugin, its
        distribution and version, and how to disable it.
        """
        try:
            return import_string(self.factory)
        except Exception as exc:
            raise self.failed(f"cannot be loaded ({self.factory!r})", exc) from exc


class ChannelSpec(Spec, kw_only=True, frozen=True):
    """A channel (API, CLI, MCP, voice...): ``factory(app, config)`` returns a ``Channel``."""


class AuthProviderSpec(Spec, kw_only=True, frozen=True):
    """An authentication provider: ``factory(app, config)`` returns an ``AuthProvider``."""


class StorageBackendSpec(Spec, kw_only=True, frozen=True):
    """A storage backend chosen by URL scheme: ``factory(url)`` returns a ``Storage``."""

    schemes: tuple[str, ...] = ()


class NodeTypeSpec(Spec, kw_only=True, frozen=True):
    """A node type for ``WorkflowBuilder.add_node(name, ...)``: factory is a ``Node`` class."""


class EventBusSpec(Spec, kw_only=True, frozen=True):
    """An event bus: ``factory(app)`` returns an ``EventBus``.

    The bus with the highest ``priority`` wins (in-process is 0; a distributed
    bus such as Redis registers higher so installing it is enough), among
    those that are usable. ``usable``, when given, is a predicate
    ``(app) -> bool`` (or its ``"module:attr"``) the host asks before it
    imports ``factory``: a bus whose module imports a broker's client says
    no to a host that does not use it without that import (the bus's own
    :meth:`~nexus_core.events.EventBus.usable` is asked after, as always).

    .. versionchanged:: 0.3
       ``usable``.
    """

    priority: int = 0
    usable: Any = None


class ExecutorSpec(Spec, kw_only=True, frozen=True):
    """An executor: ``factory(app)`` returns an :class:`~nexus_core.executors.Executor`.

    ``services.runs.executor`` names the one a host uses (``"inline"``, the
    core's, by default).
    """


class ConfigSectionSpec(Spec, kw_only=True, frozen=True):
    """A config section: ``name`` is its dotted path under ``nexus``.

    For example ``"channels.api"``; ``factory`` is the msgspec Struct type that validates it.
    """


class HttpMountSpec(Spec, kw_only=True, frozen=True):
    """An ASGI app another plugin mounts on the HTTP server (returned by ``nexus_api_mounts``).

    ``path`` is the mount point (``"/mcp"``); ``factory(app)`` returns an ASGI
    callable. If that object has a ``lifespan()`` method returning an async
    context manager, the server enters it at start-up and exits it at shutdown.
    The hook itself is defined by the API plugin; the spec lives in the core so
    neither plugin imports the other.
    """

    path: str


class CommandSpec(Spec, kw_only=True, frozen=True):
    """A ``nexus`` sub-command another plugin adds (returned by ``nexus_cli_commands``).

    ``factory`` is a ``"module:function"`` string the CLI registers lazily, so
    ``nexus --help`` never imports the plugin's heavy modules. The hook itself
    is defined by the CLI plugin; the spec lives in the core.
    """
