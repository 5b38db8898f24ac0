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

A name in ``NEXUS_PLUGINS`` or ``NEXUS_DISABLE_PLUGINS`` that no installed
plugin has is warned about, with the closest installed name. Two
distributions declaring one entry-point name are an error naming both (neither
loads). Every failure names the plugin, its distribution and version and says
how to disable it; each warning is given once per process.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import pluggy

from . import hookspecs
from .errors import PluginConflictError, PluginFailed, PluginLoadFailed
from .specs import (
    BUILTIN_PLUGIN,
    AuthProviderSpec,
    ChannelSpec,
    ConfigSectionSpec,
    EventBusSpec,
    ExecutorSpec,
    NodeTypeSpec,
    Spec,
    StorageBackendSpec,
    disable_hint,
    plugin_label,
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
    "install_command",
]

ENTRY_POINT_GROUP = "nexus.plugins"
BUILTIN_PLUGINS = ("nexus_core.builtin",)


def install_command(distribution: str) -> str:
    """The command that installs ``distribution`` (a plugin) where nexus-core came from.

    From a checkout (nexus-core installed editable: its ``direct_url.json``
    says so) it is ``pip install -e plugins/NAME``, the folder relative to the
    working directory when inside it, else absolute; otherwise
    ``pip install DISTRIBUTION`` from an index.
    """
    import shlex
    from pathlib import Path

    checkout = _checkout()
    prefix = "nexus-plugin-"
    if checkout is not None and distribution.startswith(prefix):
        folder = checkout / "plugins" / distribution[len(prefix) :]
        if (folder / "pyproject.toml").is_file():
            try:
                shown = str(folder.relative_to(Path.cwd()))
            except ValueError:
                shown = str(folder)
            return f"pip install -e {shlex.quote(shown)}"
    return f"pip install {distribution}"


def _checkout() -> Any:
    """The folder nexus-core is installed editable from, or None (installed from an index)."""
    import json
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    try:
        text = importlib.metadata.distribution("nexus-core").read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    url = str(info.get("url", "")) if isinstance(info, dict) else ""
    editable = isinstance(info, dict) and (info.get("dir_info") or {}).get("editable")
    if not editable or not url.startswith("file://"):
        return None
    return Path(unquote(urlparse(url).path))


log = logging.getLogger("nexus.plugins")
_SpecT = TypeVar("_SpecT", bound=Spec)

# Warnings already given in this process: several hosts are built by one
# command (the CLI's command table, the application, `nexus plugins`), and a
# broken plugin is worth one warning, not one per host.
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    log.warning("%s", message)


class PluginInfo(msgspec.Struct, kw_only=True):
    """One loaded plugin as ``nexus plugins`` and ``GET /plugins`` report it."""

    name: str
    version: str | None
    hooks: list[str]
    builtin: bool = False
    distribution: str | None = None


class PluginLoadError(msgspec.Struct, kw_only=True):
    """A plugin that could not be loaded, and how to get rid of the message."""

    name: str
    distribution: str
    version: str | None
    error: str
    hint: str
    during: str = "failed to load"

    def __str__(self) -> str:
        label = plugin_label(self.name, self.distribution, self.version)
        return f"{label} {self.during}: {self.error}. {self.hint}"


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
    duplicate names naming both plugins. :meth:`collect` does the same for a
    hook a plugin defines (``nexus_api_mounts``, ``nexus_cli_commands``).

    Every failure of a plugin (it cannot be imported, a registration hook
    raises, its ``nexus_startup`` raises) names the plugin, its distribution
    and version, and says how to disable it.
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
        self._dists: dict[str, str] = {}
        self._builtin: set[str] = set()
        self._entry_point_names: set[str] = set()
        self._registry_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._started: set[str] | None = None  # plugins whose nexus_startup ran
        self._startup_done = False
        self.pm.hook.nexus_add_hookspecs.call_historic(kwargs={"pluginmanager": self.pm})
        from . import __version__

        for module_name in BUILTIN_PLUGINS:
            self._register(
                importlib.import_module(module_name),
                BUILTIN_PLUGIN,
                version=__version__,
                dist="nexus-core",
                builtin=True,
            )
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

    # -- loading -------------------------------------------------------------

    def _load_entry_points(self) -> None:
        allow = _env_list(self._env, "NEXUS_PLUGINS")
        block = set(_env_list(self._env, "NEXUS_DISABLE_PLUGINS") or ())
        points = _entry_points()
        known = sorted({ep.name for ep in points})
        for switch, names in (("NEXUS_PLUGINS", allow or ()), ("NEXUS_DISABLE_PLUGINS", block)):
            for name in sorted(set(names) - set(known)):
                close = difflib.get_close_matches(name, known, n=1)
                guess = f"; did you mean {close[0]!r}?" if close else ""
                _warn_once(
                    f"{switch} names {name!r}, which is not an installed plugin{guess} "
                    f"(installed: {', '.join(known) or 'none'})"
                )
        by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
        for ep in points:
            by_name.setdefault(ep.name, []).append(ep)
        for name, eps in by_name.items():
            if (allow is not None and name not in allow) or name in block:
                continue
            if self.pm.get_plugin(name) is not None or self.pm.is_blocked(name):
                continue
            dists = list(dict.fromkeys(_dist_of(ep) for ep in eps))
            if len(dists) > 1:
                self._duplicate(name, dists)
                continue
            ep = eps[0]
            self._entry_point_names.add(name)
            dist, version = _dist_of(ep)
            try:
                obj = ep.load()
                if inspect.isclass(obj):
                    obj = obj()
                self._register(obj, name, version=version, dist=dist)
            except Exception as exc:
                if self.pm.get_plugin(name) is not None:
                    self.pm.unregister(name=name)
                self._load_failed(name, dist, version, exc)

    def _duplicate(self, name: str, dists: list[tuple[str, str | None]]) -> None:
        shown = " and ".join(f"{d}{f' {v}' if v else ''}" for d, v in dists)
        uninstall = " or ".join(f"'pip uninstall {d}'" for d, _ in dists)
        error = PluginLoadError(
            name=name,
            distribution=", ".join(d for d, _ in dists),
            version=None,
            error=(
                f"the entry point {name!r} (group {ENTRY_POINT_GROUP}) is declared by two "
                f"distributions, {shown}; neither is loaded"
            ),
            hint=f"Uninstall one of them ({uninstall}).",
        )
        if self._strict:
            raise PluginConflictError(str(error))
        _warn_once(str(error))
        self.errors.append(error)

    def _load_failed(
        self,
        name: str,
        dist: str,
        version: str | None,
        exc: BaseException,
        *,
        during: str = "failed to load",
    ) -> None:
        error = PluginLoadError(
            name=name,
            distribution=dist,
            version=version,
            error=f"{type(exc).__name__}: {exc}",
            hint=disable_hint(name, dist, entry_point=name in self._entry_point_names),
            during=during,
        )
        if self._strict:
            raise PluginLoadFailed(
                str(error), plugin=name, distribution=dist, version=version
            ) from exc
        _warn_once(str(error))
        log.debug("%s", "".join(traceback.format_exception(exc)))
        self.errors.append(error)

    def _register(
        self,
        obj: object,
        name: str,
        *,
        version: str | None = None,
        dist: str = "",
        builtin: bool = False,
    ) -> None:
        self.pm.register(obj, name=name)
        self._versions[name] = version
        self._dists[name] = dist
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
                    self._dists.get(plugin_name, ""),
                    self._versions.get(plugin_name),
                    PluginLoadFailed(message),
                )
                self.pm.unregister(impl.plugin)

    # -- naming plugins ------------------------------------------------------

    def label(self, plugin: str) -> str:
        """``plugin 'x' (distribution 1.2)``: how messages name a registered plugin."""
        return plugin_label(plugin, self._dists.get(plugin, ""), self._versions.get(plugin))

    def disable_hint(self, plugin: str) -> str:
        """How to disable the registered plugin ``plugin``, as one sentence."""
        return disable_hint(
            plugin,
            self._dists.get(plugin, ""),
            entry_point=plugin in self._entry_point_names,
        )

    def failure(self, plugin: str, what: str, exc: BaseException) -> PluginFailed:
        """A :class:`PluginFailed` for ``plugin``: ``what`` went wrong because of ``exc``.

        Raise it ``from exc``. The message names the plugin, its distribution
        and version, and how to disable it.
        """
        hint = self.disable_hint(plugin)
        return PluginFailed(
            f"{self.label(plugin)} {what}: {type(exc).__name__}: {exc}. {hint}",
            plugin=plugin,
            distribution=self._dists.get(plugin) or None,
            version=self._versions.get(plugin),
        )

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
                    distribution=self._dists.get(name) or None,
                )
            )
        return sorted(infos, key=lambda info: (not info.builtin, info.name))

    def hook(self, name: str) -> Any:
        """Return the hook caller ``name``, for hooks that plugins add themselves."""
        return getattr(self.pm.hook, name)

    # -- registries ----------------------------------------------------------

    def collect(
        self,
        hook_name: str,
        spec_type: type[_SpecT],
        *,
        key: Callable[[_SpecT], Iterable[str]] | None = None,
        **kwargs: Any,
    ) -> dict[str, _SpecT]:
        """Call ``hook_name`` on every plugin and return the specs it returns, by name.

        Works for the core's registration hooks and for hooks plugins define
        (``nexus_api_mounts``, ``nexus_cli_commands``); a hook nobody defined
        gives ``{}``. Each spec comes back tagged with its plugin, distribution
        and version. The one conflict policy: two specs under one key (``key``
        gives a spec's keys, its ``name`` by default) raise
        :class:`~nexus_core.errors.PluginConflictError` naming both plugins.
        A plugin whose hook raises, or returns something other than
        ``spec_type``, is reported (see :attr:`errors`) and contributes
        nothing; with ``NEXUS_STRICT_PLUGINS=1`` it raises
        :class:`~nexus_core.errors.PluginFailed`. Hook wrappers run around
        each implementation. Results are cached when ``kwargs`` is empty.
        """
        cache_key = (hook_name, spec_type.__name__)
        if not kwargs:
            cached = self._registry_cache.get(cache_key)
            if cached is not None:
                return cached
        caller = getattr(self.pm.hook, hook_name, None)
        found: dict[str, _SpecT] = {}
        if caller is None:
            return found
        keys = key or _default_keys
        impls = caller.get_hookimpls()
        wrappers = [i for i in impls if i.hookwrapper or i.wrapper]
        # Call each implementation on its own (wrappers around it) so every
        # spec knows its plugin. pluggy's own subset callers use _hookexec too.
        for impl in reversed([i for i in impls if not (i.hookwrapper or i.wrapper)]):
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                results = self.pm._hookexec(hook_name, [impl, *wrappers], kwargs, False)
                assert isinstance(results, list)  # firstresult=False: one list per call
                specs: list[Any] = [spec for result in results for spec in (result or ())]
                for spec in specs:
                    if not isinstance(spec, spec_type):
                        raise TypeError(
                            f"{hook_name} must return {spec_type.__name__} objects, "
                            f"got {type(spec).__name__}"
                        )
            except Exception as exc:
                self._hook_failed(plugin_name, hook_name, exc)
                continue
            for spec in specs:
                tagged = msgspec.structs.replace(
                    spec,
                    plugin=plugin_name,
                    distribution=self._dists.get(plugin_name, ""),
                    version=self._versions.get(plugin_name),
                )
                for item in keys(spec):
                    if item in found:
                        raise PluginConflictError(
                            f"{spec.kind} {item!r} is registered by both "
                            f"{self.label(found[item].plugin)} and {self.label(plugin_name)}; "
                            "disable one with NEXUS_DISABLE_PLUGINS"
                        )
                    found[item] = tagged
        if not kwargs:
            self._registry_cache[cache_key] = found
        return found

    def _hook_failed(self, plugin: str, hook_name: str, exc: Exception) -> None:
        # An installed plugin is reported and skipped; one passed to the host
        # explicitly (or built in) is the program's own: its failure raises.
        if self._strict or plugin not in self._entry_point_names:
            raise self.failure(plugin, f"failed in {hook_name}", exc) from exc
        self._load_failed(
            plugin,
            self._dists.get(plugin, ""),
            self._versions.get(plugin),
            exc,
            during=f"failed in {hook_name}",
        )

    def channels(self) -> dict[str, ChannelSpec]:
        """Every contributed channel, by name."""
        return self.collect("nexus_channels", ChannelSpec)

    def auth_providers(self) -> dict[str, AuthProviderSpec]:
        """Every contributed authentication provider, by name."""
        return self.collect("nexus_auth_providers", AuthProviderSpec)

    def storage_backends(self) -> dict[str, StorageBackendSpec]:
        """Every contributed storage backend, by URL scheme."""
        return self.collect("nexus_storage_backends", StorageBackendSpec)

    def node_types(self) -> dict[str, NodeTypeSpec]:
        """Every contributed node type, by type name."""
        return self.collect("nexus_node_types", NodeTypeSpec)

    def event_buses(self) -> dict[str, EventBusSpec]:
        """Every contributed event bus, by name."""
        return self.collect("nexus_event_buses", EventBusSpec)

    def executors(self) -> dict[str, ExecutorSpec]:
        """Every contributed executor, by name."""
        return self.collect("nexus_executors", ExecutorSpec)

    def config_sections(self) -> dict[str, ConfigSectionSpec]:
        """Every contributed config section, by dotted path under ``nexus``."""
        return self.collect("nexus_config_sections", ConfigSectionSpec)

    # -- lifecycle -----------------------------------------------------------

    async def _call_each(
        self,
        hook_name: str,
        *,
        stop_on_error: bool,
        reverse: bool = False,
        only: Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()  # registration order
        for impl in reversed(impls) if reverse else impls:
            name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            if only is not None and not only(name):
                continue
            args = {key: kwargs[key] for key in impl.argnames}
            try:
                await await_me_maybe(impl.function(**args))
            except Exception as exc:
                if stop_on_error:
                    raise self.failure(name, f"failed in {hook_name}", exc) from exc
                log.exception("%s failed in %s", hook_name, self.label(name))
            else:
                if hook_name == "nexus_startup" and self._started is not None:
                    self._started.add(name)

    async def startup(self, app: Nexus) -> None:
        """Call ``nexus_startup`` on every plugin, awaiting each in registration order.

        The first that raises stops the start-up with a
        :class:`~nexus_core.errors.PluginFailed` naming the plugin.
        """
        self._started = set()
        self._startup_done = False
        await self._call_each("nexus_startup", stop_on_error=True, app=app)
        self._startup_done = True

    async def shutdown(self, app: Nexus) -> None:
        """Call ``nexus_shutdown`` in reverse registration order; failures are logged only.

        Only plugins whose start-up ran are shut down: those whose
        ``nexus_startup`` returned, and, once start-up finished, those without
        one. A host that never started shuts nothing down.
        """
        started = self._started or set()
        with_startup = {
            self.pm.get_name(impl.plugin) for impl in self.pm.hook.nexus_startup.get_hookimpls()
        }
        done = self._startup_done

        def ran(name: str) -> bool:
            return name in started or (done and name not in with_startup)

        try:
            await self._call_each(
                "nexus_shutdown", stop_on_error=False, reverse=True, only=ran, app=app
            )
        finally:
            self._started = None
            self._startup_done = False

    async def workflow_registered(self, app: Nexus, workflow: Workflow) -> None:
        """Call ``nexus_workflow_registered`` on every plugin."""
        await self._call_each(
            "nexus_workflow_registered", stop_on_error=False, app=app, workflow=workflow
        )

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (lets hot paths skip empty hooks)."""
        caller = getattr(self.pm.hook, hook_name, None)
        return bool(caller and caller.get_hookimpls())


def _default_keys(spec: Spec) -> Iterable[str]:
    return spec.schemes if isinstance(spec, StorageBackendSpec) else (spec.name,)


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str | None]:
    if ep.dist is None:
        return ep.name, None
    return ep.dist.name, ep.dist.version


def _object_name(obj: object) -> str:
    if isinstance(obj, ModuleType):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
