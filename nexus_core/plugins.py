"""Plugin discovery and the typed facade over the hooks.

Plugins are found through the ``nexus.plugins`` entry-point group (the entry
point's name is its distribution's name). The loader is our own rather than
pluggy's ``load_setuptools_entrypoints`` so that one broken plugin is reported
with its distribution, version and error and the host keeps running.

Switches, read from the environment when the host is built:

``NEXUS_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry points; only the core's built-ins and plugins passed explicitly.
``NEXUS_PLUGINS=a,b``
    an allow list of entry-point names; set but empty means none.
``NEXUS_DISABLE_PLUGINS=a,b``
    a block list of entry-point names.
``NEXUS_STRICT_PLUGINS=1``
    a plugin that fails to load stops the host instead of being skipped.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import os
import traceback
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginLoadFailed
from .specs import (
    AuthProviderSpec,
    ChannelSpec,
    ConfigSectionSpec,
    EventBusSpec,
    NodeTypeSpec,
    Spec,
    StorageBackendSpec,
)

if TYPE_CHECKING:
    from .app import Nexus
    from .workflows.model import Workflow

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "PluginLoadError",
    "await_me_maybe",
    "clear_entry_point_cache",
    "get_plugin_manager",
]

ENTRY_POINT_GROUP = "nexus.plugins"
BUILTIN_PLUGINS = ("nexus_core.builtin",)

log = logging.getLogger("nexus.plugins")
_SpecT = TypeVar("_SpecT", bound=Spec)


class PluginInfo(msgspec.Struct, kw_only=True):
    """One loaded plugin as ``nexus plugins`` and ``GET /plugins`` report it."""

    name: str
    version: str | None
    hooks: list[str]
    builtin: bool = False


class PluginLoadError(msgspec.Struct, kw_only=True):
    """A plugin that could not be loaded, and how to get rid of the message."""

    name: str
    distribution: str
    version: str | None
    error: str
    hint: str

    def __str__(self) -> str:
        version = f" {self.version}" if self.version else ""
        return (
            f"plugin {self.name!r} ({self.distribution}{version}) failed to load: "
            f"{self.error}. {self.hint}"
        )


def get_plugin_manager() -> pluggy.PluginManager:
    """Return a fresh plugin manager knowing the core hook specs (and nothing registered)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


@functools.cache
def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    # Read once per process: scanning every distribution's metadata is the
    # slowest part of start-up with many packages installed.
    return tuple(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def clear_entry_point_cache() -> None:
    """Forget the cached entry points (after installing a plugin in a running process)."""
    _entry_points.cache_clear()
    importlib.invalidate_caches()


def _env_list(env: Mapping[str, str], name: str) -> list[str] | None:
    raw = env.get(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def _truthy(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


async def await_me_maybe(value: Any) -> Any:
    """Await ``value`` if it is awaitable, else return it (hooks may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value


class PluginHost:
    """Loads plugins and exposes every hook as a typed method.

    No call site outside this class touches ``pm.hook``: the registry methods
    collect specs, tag each with the plugin that returned it and reject
    duplicate names naming both plugins.
    """

    def __init__(
        self,
        plugins: Iterable[object | str] = (),
        *,
        autoload: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.pm = get_plugin_manager()
        self.errors: list[PluginLoadError] = []
        self._env = os.environ if env is None else env
        self._strict = _truthy(self._env, "NEXUS_STRICT_PLUGINS")
        self._versions: dict[str, str | None] = {}
        self._builtin: set[str] = set()
        self._entry_point_names: set[str] = set()
        self.pm.hook.nexus_add_hookspecs.call_historic(kwargs={"pluginmanager": self.pm})
        for module_name in BUILTIN_PLUGINS:
            self._register(importlib.import_module(module_name), "nexus-core:builtin", builtin=True)
        if autoload is None:
            autoload = not _truthy(self._env, "NEXUS_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            self._load_entry_points()
        for plugin in plugins:
            obj = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
            name = plugin if isinstance(plugin, str) else _object_name(obj)
            if self.pm.get_plugin(name) is not None and not isinstance(plugin, str):
                # Two instances of one plugin class: both register, under distinct names.
                name = (
                    f"{name}#{sum(1 for n, _ in self.pm.list_name_plugin() if n.startswith(name))}"
                )
            self._register(obj, name)
        self._check_pending()
        self._registry_cache: dict[str, dict[str, Any]] = {}

    # -- loading -------------------------------------------------------------

    def _load_entry_points(self) -> None:
        allow = _env_list(self._env, "NEXUS_PLUGINS")
        block = set(_env_list(self._env, "NEXUS_DISABLE_PLUGINS") or ())
        for ep in _entry_points():
            if (allow is not None and ep.name not in allow) or ep.name in block:
                continue
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue  # the same distribution installed twice on sys.path
            self._entry_point_names.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else None
            try:
                obj = ep.load()
                if inspect.isclass(obj):
                    obj = obj()
                self._register(obj, ep.name, version=version)
            except Exception as exc:
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
                self._load_failed(ep.name, dist, version, exc)

    def _load_failed(self, name: str, dist: str, version: str | None, exc: BaseException) -> None:
        if name in self._entry_point_names:
            hint = (
                f"Set NEXUS_DISABLE_PLUGINS={name} to skip it, "
                f"or uninstall it with 'pip uninstall {dist}'."
            )
        else:
            hint = "Remove it from the plugins passed to Nexus(...)."
        error = PluginLoadError(
            name=name,
            distribution=dist,
            version=version,
            error=f"{type(exc).__name__}: {exc}",
            hint=hint,
        )
        if self._strict:
            raise PluginLoadFailed(str(error)) from exc
        log.warning("%s", error)
        log.debug("%s", "".join(traceback.format_exception(exc)))
        self.errors.append(error)

    def _register(
        self, obj: object, name: str, *, version: str | None = None, builtin: bool = False
    ) -> None:
        self.pm.register(obj, name=name)
        self._versions[name] = version
        if builtin:
            self._builtin.add(name)

    def _check_pending(self) -> None:
        # A hookimpl for a hook nobody specified is a typo (or a hook of a
        # plugin that is not installed, which must be marked optionalhook=True).
        for hook_name, caller in vars(self.pm.hook).items():
            if not hook_name.startswith("nexus_") or caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                message = (
                    f"implements unknown hook {hook_name!r} (misspelt, or a hook of a plugin "
                    "that is not installed: mark it @hookimpl(optionalhook=True))"
                )
                if plugin_name in self._builtin:
                    raise PluginLoadFailed(f"{plugin_name} {message}")
                self._load_failed(
                    plugin_name,
                    plugin_name,
                    self._versions.get(plugin_name),
                    PluginLoadFailed(message),
                )
                self.pm.unregister(impl.plugin)

    # -- introspection -------------------------------------------------------

    def infos(self) -> list[PluginInfo]:
        """Name, version and implemented hooks of every registered plugin."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            callers = self.pm.get_hookcallers(plugin) or []
            infos.append(
                PluginInfo(
                    name=name,
                    version=self._versions.get(name),
                    hooks=sorted(caller.name for caller in callers),
                    builtin=name in self._builtin,
                )
            )
        return sorted(infos, key=lambda info: (not info.builtin, info.name))

    def hook(self, name: str) -> Any:
        """Return the hook caller ``name``, for hooks that plugins add themselves."""
        return getattr(self.pm.hook, name)

    # -- registries ----------------------------------------------------------

    def _collect(self, hook_name: str, kind: str, spec_type: type[_SpecT]) -> dict[str, _SpecT]:
        cached = self._registry_cache.get(hook_name)
        if cached is not None:
            return cached
        found: dict[str, _SpecT] = {}
        caller = getattr(self.pm.hook, hook_name)
        # Call each implementation on its own so every spec knows its plugin.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            for spec in impl.function() or ():
                if not isinstance(spec, spec_type):
                    raise TypeError(
                        f"plugin {plugin_name!r}: {hook_name} must return "
                        f"{spec_type.__name__} objects, got {type(spec).__name__}"
                    )
                tagged = msgspec.structs.replace(spec, plugin=plugin_name)
                keys = spec.schemes if isinstance(spec, StorageBackendSpec) else (spec.name,)
                for key in keys:
                    if key in found:
                        raise PluginConflictError(
                            f"{kind} {key!r} is registered by both "
                            f"{found[key].plugin!r} and {plugin_name!r}; "
                            "disable one with NEXUS_DISABLE_PLUGINS"
                        )
                    found[key] = tagged
        self._registry_cache[hook_name] = found
        return found

    def channels(self) -> dict[str, ChannelSpec]:
        """Every contributed channel, by name."""
        return self._collect("nexus_channels", "channel", ChannelSpec)

    def auth_providers(self) -> dict[str, AuthProviderSpec]:
        """Every contributed authentication provider, by name."""
        return self._collect("nexus_auth_providers", "auth provider", AuthProviderSpec)

    def storage_backends(self) -> dict[str, StorageBackendSpec]:
        """Every contributed storage backend, by URL scheme."""
        return self._collect("nexus_storage_backends", "storage scheme", StorageBackendSpec)

    def node_types(self) -> dict[str, NodeTypeSpec]:
        """Every contributed node type, by type name."""
        return self._collect("nexus_node_types", "node type", NodeTypeSpec)

    def event_buses(self) -> dict[str, EventBusSpec]:
        """Every contributed event bus, by name."""
        return self._collect("nexus_event_buses", "event bus", EventBusSpec)

    def config_sections(self) -> dict[str, ConfigSectionSpec]:
        """Every contributed config section, by dotted path under ``nexus``."""
        return self._collect("nexus_config_sections", "config section", ConfigSectionSpec)

    # -- lifecycle -----------------------------------------------------------

    async def _call_each(
        self, hook_name: str, *, stop_on_error: bool, reverse: bool = False, **kwargs: Any
    ) -> None:
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()  # registration order
        for impl in reversed(impls) if reverse else impls:
            args = {key: kwargs[key] for key in impl.argnames}
            try:
                await await_me_maybe(impl.function(**args))
            except Exception as exc:
                name = self.pm.get_name(impl.plugin)
                if stop_on_error:
                    exc.add_note(f"raised by {hook_name} of plugin {name!r}")
                    raise
                log.exception("%s failed in plugin %r", hook_name, name)

    async def startup(self, app: Nexus) -> None:
        """Call ``nexus_startup`` on every plugin, awaiting each in registration order."""
        await self._call_each("nexus_startup", stop_on_error=True, app=app)

    async def shutdown(self, app: Nexus) -> None:
        """Call ``nexus_shutdown`` in reverse registration order; failures are logged only."""
        await self._call_each("nexus_shutdown", stop_on_error=False, reverse=True, app=app)

    async def workflow_registered(self, app: Nexus, workflow: Workflow) -> None:
        """Call ``nexus_workflow_registered`` on every plugin."""
        await self._call_each(
            "nexus_workflow_registered", stop_on_error=False, app=app, workflow=workflow
        )

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (lets hot paths skip empty hooks)."""
        caller = getattr(self.pm.hook, hook_name, None)
        return bool(caller and caller.get_hookimpls())


def _object_name(obj: object) -> str:
    if isinstance(obj, ModuleType):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
