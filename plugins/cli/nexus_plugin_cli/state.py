r"""What the ``nexus`` command keeps between runs, in the user's config and cache folders.

* ``tokens/``: the token of each gateway and of local mode (``nexus login``),
  kept by the core's :mod:`nexus_core.userconfig` so other channels can read it
  (``nexus mcp`` over stdio does), mode 0600;
* ``sessions.json``: the current session of each target (``nexus session use``), mode 0600;
* ``history``: the lines typed in ``nexus shell``, mode 0600;
* the cache folder holds the command table of the installed plugins.

The config folder is the core's :func:`~nexus_core.userconfig.user_config_dir`:
``$NEXUS_CONFIG_HOME``, else ``$XDG_CONFIG_HOME/nexus``, else
``~/.config/nexus`` on Linux, ``~/Library/Application Support/nexus`` on
macOS, ``%APPDATA%\\nexus`` on Windows. The cache folder is
``$XDG_CACHE_HOME/nexus`` (else ``~/.cache/nexus``), ``~/Library/Caches/nexus``
on macOS, ``%LOCALAPPDATA%\\nexus`` on Windows.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False  # typing stays unimported on the way to a cached `nexus --help`
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "cache_dir",
    "config_dir",
    "current_session",
    "read_json",
    "set_current_session",
    "write_private",
]


# Paths are plain strings here: this module is on the path of a cached
# `nexus --help`, which must not pay for importing pathlib.


def _home() -> str:
    return os.path.expanduser("~")


def config_dir() -> str:
    """The folder for tokens, sessions and shell history (not created here)."""
    from nexus_core.plugin import user_config_dir  # not on the way to a cached --help

    return str(user_config_dir())


def cache_dir() -> str:
    """The folder for caches that may be deleted at any time (not created here)."""
    env = os.environ.get("XDG_CACHE_HOME")
    if env:
        return os.path.join(env, "nexus")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(_home(), "AppData", "Local")
        return os.path.join(base, "nexus")
    if sys.platform == "darwin":
        return os.path.join(_home(), "Library", "Caches", "nexus")
    return os.path.join(_home(), ".cache", "nexus")


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the user only (0600, folder 0700)."""
    from nexus_core.plugin import write_private  # not on the way to a cached --help

    write_private(path, text)


def _sessions_path() -> str:
    return os.path.join(config_dir(), "sessions.json")


def current_session(target: str) -> str | None:
    """The session ``nexus session new|use`` made current for ``target``, if any."""
    value = read_json(_sessions_path()).get(target)
    return value if isinstance(value, str) and value else None


def set_current_session(target: str, session_id: str | None) -> None:
    """Make ``session_id`` current for ``target`` (``None`` forgets it)."""
    path = _sessions_path()
    data = read_json(path)
    if session_id is None:
        data.pop(target, None)
    else:
        data[target] = session_id
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
