"""The contract between the Nexus host and its plugins.

Every hook is named ``nexus_*`` and documented here: when it runs, what it
receives, what it returns. Registration hooks are synchronous and return lists
of spec Structs (see :mod:`nexus_core.specs`) whose factories are imported
lazily. Lifecycle hooks may return an awaitable; the host awaits it.

A plugin implements any subset::

    from nexus_core import hookimpl, NodeTypeSpec

    @hookimpl
    def nexus_node_types():
        return [NodeTypeSpec(name="shout", factory="my_plugin.nodes:Shout")]

pluggy lets an implementation accept fewer arguments than the spec names, so
adding an argument to a hook is backwards compatible; removing one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .app import Nexus
    from .specs import (
        AuthProviderSpec,
        ChannelSpec,
        ConfigSectionSpec,
        EventBusSpec,
        ExecutorSpec,
        NodeTypeSpec,
        StorageBackendSpec,
    )
    from .workflows.model import Workflow

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "nexus"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- extending the contract ---------------------------------------------------


@hookspec(historic=True)
def nexus_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add hook specifications of a plugin's own.

    Called once for each plugin as it is registered (historic, so plugins
    registered later still see it). Call ``pluginmanager.add_hookspecs(module)``
    with a module or class of ``@hookspec`` functions; other plugins then
    implement those hooks like any core hook. The CLI plugin adds its command
    hook this way, the API plugin its route hook.

    .. versionadded:: 0.1
    """


# -- registration hooks (sync, return specs) ----------------------------------
#
# A registration hook of an installed plugin that raises (or returns anything
# but its spec type) is reported with the plugin's name, distribution and
# version and skipped; two specs of one name are an error naming both plugins.


@hookspec
def nexus_channels() -> list[ChannelSpec]:
    """Return the channels this plugin contributes.

    Called once when the host collects its registry. Each ``ChannelSpec``
    names a factory ``factory(app, config) -> Channel``: ``app`` is the host,
    ``config`` the validated Struct of ``[nexus.channels.NAME]`` (a section the
    plugin registers with ``nexus_config_sections``) or ``None``. ``nexus
    serve`` and ``app.serve()`` start every enabled channel (one whose section
    has no ``enabled = false``) inside the host's task group, list them, and
    stop them all on the first ``SIGINT``/``SIGTERM``: ``stop()`` when the
    channel has one, else cancellation. See :class:`~nexus_core.channels.Channel`
    for what the object must offer; a channel that delivers events subscribes
    with ``app.subscribe``. A factory that cannot be imported, raises, or a
    channel that fails before it is ready stops the start with a
    :class:`~nexus_core.errors.PluginFailed` naming the plugin, its
    distribution and version.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
       ``Channel.emit_event`` left the contract (the host never called it).
    """


@hookspec
def nexus_auth_providers() -> list[AuthProviderSpec]:
    """Return the authentication providers this plugin contributes.

    Called once when the host collects its registry. A provider factory
    ``(app, config) -> AuthProvider`` turns channel credentials (a bearer
    token, an API key, or any header or claim in ``Credentials.extras``) into
    a principal. The API and MCP (HTTP) channels fill ``extras`` with the
    request's other headers, lower-cased (``nexus_core.plugin.header_extras``:
    no credentials, cookies or hop-by-hop headers, bounded in count and size).

    .. versionadded:: 0.1
    """


@hookspec
def nexus_storage_backends() -> list[StorageBackendSpec]:
    """Return the storage backends this plugin contributes, with the URL schemes they serve.

    Called once when the host collects its registry. The host picks the backend
    whose ``schemes`` contain the configured URL's scheme (``memory``,
    ``sqlite``, ``redis``, ``postgresql``...) and calls ``factory(url)``.
    Two backends claiming the same scheme is an error naming both plugins.

    .. versionadded:: 0.1
    """


@hookspec
def nexus_node_types() -> list[NodeTypeSpec]:
    """Return the node types this plugin contributes.

    Called once when the host collects its registry. ``name`` is what
    ``WorkflowBuilder.add_node(name, ...)`` takes; ``factory`` is a
    :class:`~nexus_core.workflows.node.Node` subclass (or its ``"module:attr"``),
    imported the first time a workflow uses the type.

    .. versionadded:: 0.1
    """


@hookspec
def nexus_event_buses() -> list[EventBusSpec]:
    """Return the event buses this plugin contributes.

    Called once when the host collects its registry. The bus with the highest
    ``priority`` whose :meth:`~nexus_core.events.EventBus.usable` says yes is
    used: the in-process bus registers priority 0 and is always usable, so a
    distributed bus only has to be installed (and configured, if it needs a
    broker's URL) to take over. A spec's ``usable`` predicate is asked before
    the bus's module is imported, so an unconfigured bus costs no import.

    .. versionchanged:: 0.2
       A bus may decline a host it cannot serve (``EventBus.usable``).

    .. versionadded:: 0.1
    """


@hookspec
def nexus_executors() -> list[ExecutorSpec]:
    """Return the executors this plugin contributes: how runs get executed.

    Called once when the host starts. ``services.runs.executor`` names the one
    used (the core's ``"inline"`` by default: runs execute in the process that
    accepted them); ``factory`` is an
    :class:`~nexus_core.executors.Executor` subclass, built with its
    ``from_app(app)``. A queue executor hands runs to ``nexus worker``
    processes (see :mod:`nexus_core.executors`).

    .. versionadded:: 0.2
    """


@hookspec
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """Return the config sections this plugin owns.

    Called once when the host loads its configuration. ``name`` is the dotted
    path under ``nexus`` (``"channels.api"``, ``"plugins.redis"``); ``factory``
    is the msgspec Struct that validates that table. Keys nobody declared are
    an error naming the key path.

    .. versionadded:: 0.1
    """


# -- lifecycle hooks (may return an awaitable) --------------------------------


@hookspec
def nexus_startup(app: Nexus) -> Awaitable[None] | None:
    """Run when the host starts, after storage is open and before channels start.

    May return an awaitable, which the host awaits. An exception here stops the
    start-up with a :class:`~nexus_core.errors.PluginFailed` naming the plugin,
    its distribution and version, and how to disable it (the CLI prints it and
    exits 1).

    .. versionadded:: 0.1
    """


@hookspec
def nexus_shutdown(app: Nexus) -> Awaitable[None] | None:
    """Run when the host stops, after channels have stopped and before storage closes.

    May return an awaitable, which the host awaits. Called only for plugins
    whose start-up ran: those whose ``nexus_startup`` returned, and, once the
    whole start-up finished, those without one. Every such implementation runs
    even if an earlier one fails; failures are logged.

    .. versionadded:: 0.1
    """


@hookspec
def nexus_workflow_registered(app: Nexus, workflow: Workflow) -> Awaitable[None] | None:
    """Run after a workflow is registered on the host (``@app.workflow`` or ``app.register``).

    Channels use it to publish the new workflow (an MCP tool list change, a
    new CLI command). May return an awaitable, which the host awaits when it
    is running and schedules at startup otherwise.

    .. versionadded:: 0.1
    """
