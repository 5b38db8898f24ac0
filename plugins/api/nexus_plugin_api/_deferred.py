"""Modules Litestar imports at start-up but uses only on a rare request: executed on first use.

Litestar's OpenAPI package imports PyYAML as it is imported, only to render
``/schema/openapi.yaml`` when someone asks for it: executing PyYAML is about
12 ms of every ``nexus serve`` start-up here (``python -X importtime``).

:func:`defer` binds such a module in ``sys.modules`` to a placeholder; the
first attribute anyone reads from it imports the real module, and the
placeholder takes on its namespace, so every reference behaves as the module.
The standard library's :class:`importlib.util.LazyLoader` would be the tool,
but on Python 3.11 the ``import`` statement itself reads the lazy module's
``__spec__`` and so executes it at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

__all__ = ["defer"]

_lock = threading.Lock()


class _Deferred(ModuleType):
    """Stands for a module not executed yet; any attribute it lacks executes it."""

    def __getattr__(self, attribute: str) -> Any:
        return getattr(_load(self), attribute)


def _load(placeholder: _Deferred) -> ModuleType:
    name = placeholder.__name__
    with _lock:
        module = sys.modules.get(name)
        if module is None or module is placeholder:
            sys.modules.pop(name, None)
            try:
                module = importlib.import_module(name)
            except BaseException:
                sys.modules.setdefault(name, placeholder)
                raise
            # References taken before (Litestar's ``yaml``) see the real names from now on.
            vars(placeholder).update(vars(module))
    return module


def defer(name: str) -> None:
    """Bind the top-level module ``name`` to a placeholder executed on first use.

    Nothing happens when it is imported already or not installed (``import
    name`` then fails as it would have).
    """
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    sys.modules[name] = _Deferred(name)
