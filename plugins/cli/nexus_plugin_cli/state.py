r"""What the ``nexus`` command keeps between runs, in the user's config and cache folders.

* ``credentials.json``: the token of each gateway (``nexus login``), mode 0600;
* ``sessions.json``: the current session of each target (``nexus session use``), mode 0600;
* ``history``: the lines typed in ``nexus shell``, mode 0600;
* the cache folder holds the command table of the installed plugins.

The folders follow the platform: ``$XDG_CONFIG_HOME/nexus`` (else
``~/.config/nexus``) and ``$XDG_CACHE_HOME/nexus`` on Linux,
``~/Library/Application Support/nexus`` and ``~/Library/Caches/nexus`` on
macOS, ``%APPDATA%\\nexus`` and ``%LOCALAPPDATA%\\nexus`` on Windows.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False  # typing stays unimported on the way to a cached `nexus --help`
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "cache_dir",
    "config_dir",
    "current_session",
    "forget_token",
    "load_token",
    "read_json",
    "save_token",
    "set_current_session",
    "write_private",
]


# Paths are plain strings here: this module is on the path of a cached
# `nexus --help`, which must not pay for importing pathlib.


def _home() -> str:
    return os.path.expanduser("~")


def config_dir() -> str:
    """The folder for credentials, sessions and shell history (not created here)."""
    env = os.environ.get("XDG_CONFIG_HOME")
    if env:
        return os.path.join(env, "nexus")
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.join(_home(), "AppData", "Roaming")
        return os.path.join(base, "nexus")
    if sys.platform == "darwin":
        return os.path.join(_home(), "Library", "Application Support", "nexus")
    return os.path.join(_home(), ".config", "nexus")


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
    import tempfile

    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def _credentials_path() -> str:
    return os.path.join(config_dir(), "credentials.json")


def _sessions_path() -> str:
    return os.path.join(config_dir(), "sessions.json")


def load_token(target: str) -> str | None:
    """The token saved for ``target`` (a gateway URL or a local app), if any."""
    entry = read_json(_credentials_path()).get("targets", {}).get(target)
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) and token else None


def save_token(target: str, token: str, **extra: Any) -> str:
    """Keep ``token`` for ``target`` in ``credentials.json`` (mode 0600); return the file."""
    path = _credentials_path()
    data = read_json(path)
    targets = data.setdefault("targets", {})
    targets[target] = {"token": token, "saved_at": time.time(), **extra}
    data["version"] = 1
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def forget_token(target: str) -> bool:
    """Remove the token of ``target``; whether there was one."""
    path = _credentials_path()
    data = read_json(path)
    targets = data.get("targets", {})
    if target not in targets:
        return False
    del targets[target]
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return True


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
