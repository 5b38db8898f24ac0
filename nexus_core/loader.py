"""Find the application a command or a server should run.

``APP`` may be a file (``examples/hello.py``), a ``module:attr`` reference
(``shop.app:app``), or nothing, in which case ``NEXUS_APP`` and then the
``app`` key of ``nexus.toml`` are consulted. In a file or module without an
attribute named, the single :class:`~nexus_core.Nexus` instance found is used.

While the application is imported (and its factory called), configuration is
also looked for beside its file (:func:`nexus_core.config.app_directory`): a
host started from another working directory, such as ``nexus mcp
/path/app.py`` run by a desktop agent, reads ``/path/nexus.toml`` and keeps
its SQLite database beside it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .app import Nexus
from .config import app_directory
from .errors import NexusError

__all__ = ["AppNotFound", "load_app"]


class AppNotFound(NexusError):
    """The application could not be found or imported; the message says where we looked."""

    code = "app_not_found"


def load_app(target: str | None = None, *, env: Mapping[str, str] | None = None) -> Nexus:
    """Import and return the :class:`Nexus` application named by ``target``."""
    environ = os.environ if env is None else env
    target = target or environ.get("NEXUS_APP") or _from_config_file()
    if not target:
        raise AppNotFound(
            "no application given: pass APP (a file such as app.py, or module:attr), "
            'set NEXUS_APP, or put app = "module:attr" in nexus.toml'
        )
    module_part, _, attr = target.partition(":")
    if module_part.endswith(".py") or os.sep in module_part or Path(module_part).is_file():
        with app_directory(module_part if Path(module_part).is_file() else None):
            return _pick(_import_file(Path(module_part)), module_part, attr, target)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's own modules
    with app_directory(_module_file(module_part)):
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise AppNotFound(f"cannot import {module_part!r}: {exc}") from exc
        return _pick(module, module_part, attr, target)


def _module_file(name: str) -> str | None:
    """The file of module ``name``, found without importing it (``None``: unknown)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin and Path(origin).is_file() else None


def _pick(module: object, module_part: str, attr: str, target: str) -> Nexus:
    """The application in ``module``: the attribute ``attr`` (called if a factory), or the one."""
    if attr:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise AppNotFound(f"{module_part!r} has no attribute {attr!r}")
        if callable(obj) and not isinstance(obj, Nexus):
            obj = obj()  # an application factory
        if not isinstance(obj, Nexus):
            raise AppNotFound(f"{target!r} is a {type(obj).__name__}, not a Nexus application")
        return obj
    found = [value for value in vars(module).values() if isinstance(value, Nexus)]
    if len(found) != 1:
        what = "no Nexus application" if not found else f"{len(found)} Nexus applications"
        raise AppNotFound(f"{module_part!r} defines {what}; name one as {module_part}:NAME")
    return found[0]


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise AppNotFound(f"no such file: {path}")
    name = f"nexus_app_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppNotFound(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import as in a script
    try:
        spec.loader.exec_module(module)
    except NexusError:
        raise
    except Exception as exc:
        raise AppNotFound(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _from_config_file() -> str | None:
    path = Path("nexus.toml")
    if not path.is_file():
        return None
    import tomllib

    with path.open("rb") as fh:
        data = tomllib.load(fh)
    value = data.get("app") or data.get("nexus", {}).get("app")
    return value if isinstance(value, str) else None
