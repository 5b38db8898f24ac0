"""The commands other plugins contribute, found without slowing ``nexus --help`` down.

Collecting the ``nexus_cli_commands`` hook means building a plugin host, which
imports ``nexus_core`` and every plugin's entry module: too slow to do on each
``nexus --help``. So the result is cached in the user's cache folder, keyed by
a fingerprint of what could change it: the ``nexus.plugins`` entry points
(read straight from the ``*.dist-info/entry_points.txt`` files on
``sys.path``, which takes a few milliseconds), the modification times of
their distributions and entry modules, the plugin switches
(``NEXUS_PLUGINS``, ``NEXUS_DISABLE_PLUGINS``, ``NEXUS_DISABLE_PLUGIN_AUTOLOAD``)
and the Python version. Installing, upgrading, removing or editing a plugin
changes the fingerprint; the next run rebuilds the table (through the real
plugin host, with its allow and block lists) and caches it again.
``NEXUS_CLI_NO_CACHE=1`` skips the cache.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import zlib

from . import __version__
from .state import cache_dir, read_json, write_private

TYPE_CHECKING = False  # typing stays unimported on the way to a cached `nexus --help`
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "GROUP",
    "HOOK",
    "PluginCommand",
    "collect_commands",
    "entry_points",
    "fingerprint",
    "plugin_commands",
    "prefix_tag",
]

GROUP = "nexus.plugins"
HOOK = "nexus_cli_commands"
_SWITCHES = ("NEXUS_PLUGINS", "NEXUS_DISABLE_PLUGINS", "NEXUS_DISABLE_PLUGIN_AUTOLOAD")


class PluginCommand:
    """A command a plugin contributes: registered lazily by its ``"module:function"``."""

    __slots__ = ("description", "factory", "name", "plugin")

    def __init__(self, name: str, factory: str, description: str, plugin: str) -> None:
        self.name = name
        self.factory = factory
        self.description = description
        self.plugin = plugin

    def __repr__(self) -> str:
        return f"PluginCommand({self.name!r}, {self.factory!r}, plugin={self.plugin!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PluginCommand) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.name, self.factory))

    def as_dict(self) -> dict[str, str]:
        """The JSON form kept in the cache."""
        return {
            "name": self.name,
            "factory": self.factory,
            "description": self.description,
            "plugin": self.plugin,
        }


def _section(text: str, group: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            inside = line == f"[{group}]"
            continue
        if inside and "=" in line:
            name, _, value = line.partition("=")
            found.append((name.strip(), value.strip()))
    return found


def entry_points(paths: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The ``nexus.plugins`` entry points on ``sys.path``, first occurrence of each name.

    Reads ``entry_points.txt`` of every ``*.dist-info`` / ``*.egg-info`` folder
    directly: the same data as ``importlib.metadata.entry_points``, cheaper.
    """
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for base in dict.fromkeys(paths if paths is not None else sys.path):
        try:
            entries = sorted(os.scandir(base or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith((".dist-info", ".egg-info")):
                continue
            ep_file = os.path.join(entry.path, "entry_points.txt")
            try:
                with open(ep_file, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            if f"[{GROUP}]" not in text:
                continue
            stem = entry.name.rsplit(".", 1)[0]
            dist, _, version = stem.partition("-")
            for name, value in _section(text, GROUP):
                if name in seen:
                    continue
                seen.add(name)
                out.append(
                    {
                        "name": name,
                        "value": value,
                        "dist": dist,
                        "version": version,
                        "dist_mtime": _mtime(ep_file),
                        "module_mtime": _module_mtime(value),
                    }
                )
    return out


def _mtime(path: str | None) -> float | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _module_mtime(value: str) -> float | None:
    """Modification time of the entry point's module file, found without importing it."""
    module = value.partition(":")[0].strip()
    top, _, rest = module.partition(".")
    try:  # the path finder alone: it imports nothing
        spec = importlib.machinery.PathFinder.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return _mtime(spec.origin)
    for location in spec.submodule_search_locations or ():
        base = os.path.join(location, *rest.split("."))
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            found = _mtime(candidate)
            if found is not None:
                return found
    return None


def _own_files() -> dict[str, float | None]:
    """Modification times of this package's modules (help texts live there)."""
    here = os.path.dirname(__file__)
    out: dict[str, float | None] = {}
    for folder in (here, os.path.join(here, "commands")):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.endswith(".py"):
                out[os.path.join(folder, name)] = _mtime(os.path.join(folder, name))
    return out


def fingerprint(points: list[dict[str, Any]]) -> str:
    """What the cached command table depends on, as one string (compared, not parsed)."""
    key = {
        "cli": __version__,
        "files": _own_files(),
        "python": sys.version,
        "prefix": sys.prefix,
        "switches": {name: os.environ.get(name) for name in _SWITCHES},
        "entry_points": points,
    }
    return json.dumps(key, sort_keys=True)


def prefix_tag() -> str:
    """A short tag of this Python environment, for cache file names."""
    return f"{zlib.crc32(sys.prefix.encode()):08x}"


def _cache_path() -> str:
    return os.path.join(cache_dir(), f"cli-commands-{prefix_tag()}.json")


def plugin_commands(reserved: Iterable[str] = ()) -> tuple[list[PluginCommand], list[str]]:
    """The commands of the installed plugins, and warnings about those that were skipped.

    From the cache when its fingerprint matches, else collected through a
    plugin host and cached. Never raises: a broken plugin costs its commands
    and a warning, not the ``nexus`` command.
    """
    reserved = frozenset(reserved)
    use_cache = os.environ.get("NEXUS_CLI_NO_CACHE", "") in ("", "0")
    try:
        print_ = fingerprint(entry_points())
    except Exception:  # an unreadable sys.path entry: collect without the cache
        print_, use_cache = "", False
    path = _cache_path()
    if use_cache:
        cached = read_json(path)
        if cached.get("fingerprint") == print_:
            try:
                commands = [PluginCommand(**item) for item in cached.get("commands", [])]
            except TypeError:
                commands = None
            if commands is not None:
                return [c for c in commands if c.name not in reserved], []
    commands, warnings = collect_commands(reserved)
    if use_cache:
        try:
            body = {"fingerprint": print_, "commands": [c.as_dict() for c in commands]}
            write_private(path, json.dumps(body, indent=1) + "\n")
        except OSError:
            pass  # a read-only home: no cache, still correct
    return commands, warnings


def collect_commands(reserved: Iterable[str] = ()) -> tuple[list[PluginCommand], list[str]]:
    """Build a plugin host and collect ``nexus_cli_commands`` through it (no cache).

    The core's :func:`~nexus_core.plugin.collect_specs` calls the hook (hook
    wrappers run) with its one conflict policy: two plugins contributing one
    command name is an error naming both, reported here as a warning (and no
    plugin commands) rather than a crash of ``nexus``.
    """
    reserved = frozenset(reserved)
    warnings: list[str] = []
    try:
        import logging

        from nexus_core.plugin import CommandSpec, PluginConflictError, PluginHost, collect_specs

        from . import hookspecs

        plugin_log = logging.getLogger("nexus.plugins")
        level = plugin_log.level
        plugin_log.setLevel(logging.ERROR)  # failures are reported below, once
        try:
            host = PluginHost()
            if not hasattr(host.pm.hook, HOOK):  # this plugin itself is blocked
                host.pm.add_hookspecs(hookspecs)
            try:
                specs = collect_specs(host, HOOK, CommandSpec)
            except PluginConflictError as exc:
                return [], [str(exc)]
        finally:
            plugin_log.setLevel(level)
        warnings += [str(error) for error in host.errors]
    except Exception as exc:
        return [], [f"plugin commands unavailable: {type(exc).__name__}: {exc}"]
    found: list[PluginCommand] = []
    for name, spec in specs.items():
        if not isinstance(spec.factory, str) or ":" not in spec.factory:
            warnings.append(
                f"plugin {spec.plugin!r}: command {name!r} skipped: its factory must be a "
                f"'module:function' string, got {spec.factory!r}"
            )
            continue
        if name in reserved:
            warnings.append(
                f"plugin {spec.plugin!r}: command {name!r} skipped: "
                "a built-in command has that name"
            )
            continue
        found.append(
            PluginCommand(
                name=name, factory=spec.factory, description=spec.description, plugin=spec.plugin
            )
        )
    return sorted(found, key=lambda c: c.name), warnings
