r"""The user's own Nexus folder and the login tokens kept in it, shared by every channel.

``nexus login`` (the CLI plugin) writes a token here and other channels read
it without importing the CLI: ``nexus mcp APP`` over stdio, for one, takes
its bearer token from ``NEXUS_TOKEN`` or else from :func:`read_token`.

There is one token per gateway URL (``nexus login --url URL``) and one for
local mode (``nexus login --app APP``, in process), each in its own file under
``<user config dir>/tokens/``, readable by the user only (mode 0600, folder
0700), replaced atomically.

The folder is, in order: ``$NEXUS_CONFIG_HOME`` (the folder itself, for tests
and unusual setups), ``$XDG_CONFIG_HOME/nexus``, else the platform's usual
place: ``~/.config/nexus`` on Linux and other Unix systems,
``~/Library/Application Support/nexus`` on macOS, ``%APPDATA%\nexus`` on
Windows. Nothing here creates it before a token is written.

This module imports only the standard library, so a command can use it
without paying for the rest of the core.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = [
    "CONFIG_HOME_ENV",
    "LOCAL",
    "delete_token",
    "read_token",
    "token_path",
    "user_config_dir",
    "write_private",
    "write_token",
]

#: The environment variable that names the user config folder itself (overrides the rest).
CONFIG_HOME_ENV = "NEXUS_CONFIG_HOME"
#: The file name of the local-mode token (``nexus login`` in process).
LOCAL = "local"

_TOKENS = "tokens"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def user_config_dir() -> Path:
    """The user's Nexus folder: ``$NEXUS_CONFIG_HOME``, ``$XDG_CONFIG_HOME/nexus`` or the default.

    Not created here.
    """
    override = os.environ.get(CONFIG_HOME_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg).expanduser() / "nexus"
    home = Path.home()
    if sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        return (Path(appdata) if appdata else home / "AppData" / "Roaming") / "nexus"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "nexus"
    return home / ".config" / "nexus"


def _normalise(url: str) -> str:
    """One spelling per gateway: lower-case scheme and host, no trailing slash."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.rstrip("/")
    authority, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{authority.lower()}{slash}{path}".rstrip("/")


def token_path(url: str | None = None) -> Path:
    """The file holding the token of gateway ``url``, or of local mode when ``url`` is None.

    A gateway's file name is readable (``http_127.0.0.1_8000-<hash>``) and
    unique per URL (``HTTP://Host:80/`` and ``http://host:80`` are the same).
    """
    folder = user_config_dir() / _TOKENS
    if url is None:
        return folder / LOCAL
    if not url.strip():
        raise ValueError("a gateway URL cannot be empty (pass None for local mode)")
    normal = _normalise(url)
    digest = hashlib.sha256(normal.encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", normal.replace("://", "_")).strip("._-")[:64] or "gateway"
    return folder / f"{readable}-{digest}"


def read_token(url: str | None = None) -> str | None:
    """The token saved for gateway ``url`` (local mode when None), or None if there is none.

    A missing, empty or unreadable file is no token.
    """
    try:
        text = token_path(url).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    token = text.strip()
    return token or None


def write_token(token: str, url: str | None = None) -> Path:
    """Save ``token`` for gateway ``url`` (local mode when None); return the file.

    The folder is created with mode 0700 and the file written with mode 0600,
    through a temporary file renamed over the old one, so a reader never sees
    half a token. Raises ``ValueError`` for an empty token or one with
    whitespace inside.
    """
    token = token.strip()
    if not token:
        raise ValueError("cannot save an empty token")
    if any(ch.isspace() for ch in token):
        raise ValueError("a token cannot contain whitespace")
    path = token_path(url)
    if os.name == "posix" and path.parent.is_dir() and path.parent.stat().st_mode & 0o077:
        path.parent.chmod(0o700)  # the tokens folder is ours alone
    write_private(path, token + "\n")
    return path


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` readable by the user only, replacing it atomically.

    Missing folders (the file's and its parent) are made with mode 0700 and the
    file ends with mode 0600. The text goes to a temporary file in the same
    folder, synced, then renamed over ``path``: a reader sees the old file or
    the new one, never half of it.
    """
    path = Path(path)
    folder = path.parent
    for part in (folder.parent, folder):  # parents=True would use the umask's mode
        if not part.is_dir():
            part.parent.mkdir(parents=True, exist_ok=True)
            part.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def delete_token(url: str | None = None) -> bool:
    """Forget the token of gateway ``url`` (local mode when None); whether there was one."""
    try:
        token_path(url).unlink()
    except FileNotFoundError:
        return False
    return True
