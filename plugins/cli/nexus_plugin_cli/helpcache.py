"""``nexus --help`` from a cache: the text cyclopts rendered last time, if nothing changed.

Rendering the top-level help means importing cyclopts and Rich and laying out
a table of commands: most of the start-up time of ``nexus --help``. The text
depends only on the installed plugins and this package (the fingerprint of
:mod:`~nexus_plugin_cli.discovery`), the terminal's width and whether it
takes colours, so it is cached under those and printed without importing
either library. ``NEXUS_CLI_NO_CACHE=1`` skips the cache.
"""

from __future__ import annotations

import json
import os
import sys

from .discovery import entry_points, fingerprint, prefix_tag
from .state import cache_dir, read_json, write_private

__all__ = ["cached_help", "help_key", "store_help", "wants_root_help"]

_ENV = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM", "TTY_COMPATIBLE")
_KEEP = 8  # entries kept (terminal widths, piped or not)


def wants_root_help(tokens: list[str]) -> bool:
    """Whether the command line asks for the top-level help (``nexus``, ``nexus --help``)."""
    return tokens in ([], ["--help"], ["-h"])


def _enabled() -> bool:
    return os.environ.get("NEXUS_CLI_NO_CACHE", "") in ("", "0")


def help_key() -> str:
    """The cache key: plugins and package fingerprint, terminal size and colour settings."""
    try:
        tty = sys.stdout.isatty()
        size = tuple(os.get_terminal_size(sys.stdout.fileno())) if tty else None
    except (OSError, ValueError, AttributeError):
        tty, size = False, None
    key = {
        "plugins": fingerprint(entry_points()),
        "tty": tty,
        "size": size,
        "env": {name: os.environ.get(name) for name in _ENV},
    }
    return json.dumps(key, sort_keys=True)


def _path() -> str:
    return os.path.join(cache_dir(), f"help-{prefix_tag()}.json")


def cached_help() -> str | None:
    """The cached help text for this terminal, or None."""
    if not _enabled():
        return None
    try:
        entry = read_json(_path()).get(help_key())
    except Exception:  # never let the cache break the command
        return None
    return entry if isinstance(entry, str) and entry else None


def store_help(text: str) -> None:
    """Remember ``text`` as the help for this terminal (best effort)."""
    if not _enabled() or not text:
        return
    try:
        path = _path()
        data = read_json(path)
        data.pop(key := help_key(), None)
        data[key] = text
        while len(data) > _KEEP:
            data.pop(next(iter(data)))
        write_private(path, json.dumps(data) + "\n")
    except Exception:
        return
