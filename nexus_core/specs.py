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
    "HttpMountSpec",
    "NodeTypeSpec",
    "Spec",
    "StorageBackendSpec",
    "import_string",
]


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
    ``plugin`` is filled in by the host with the distribution that registered it.
    """

    name: str
    factory: Any
    description: str = ""
    plugin: str = ""

    def load(self) -> Any:
        """Import and return the factory."""
        return import_string(self.factory)


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
    bus such as Redis registers higher so installing it is enough).
    """

    priority: int = 0


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
