"""The shipped plugins use the core only through its public API.

A plugin may import :mod:`nexus_core`, :mod:`nexus_core.plugin`,
:mod:`nexus_core.errors`, :mod:`nexus_core.events`, :mod:`nexus_core.security`
and :mod:`nexus_core.testing` (and its modules), and from each only the names
in its ``__all__``; every other core module is internal and may change
without notice (see the ``nexus_core.plugin`` docstring). The plugins' source
is read, not imported, so this runs with nexus-core alone.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = {
    "nexus_core",
    "nexus_core.plugin",
    "nexus_core.errors",
    "nexus_core.events",
    "nexus_core.security",
}
PUBLIC_PREFIXES = ("nexus_core.testing",)
SOURCES = sorted(
    path
    for package in ROOT.glob("plugins/*/nexus_plugin_*")
    for path in package.rglob("*.py")
    if "__pycache__" not in path.parts
)


def _public(module: str) -> bool:
    return module in PUBLIC or any(
        module == prefix or module.startswith(prefix + ".") for prefix in PUBLIC_PREFIXES
    )


def core_imports(source: str) -> list[tuple[int, str, str | None]]:
    """Every ``(line, module, name)`` importing from nexus_core (``name`` None: a module)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name, None)
                for alias in node.names
                if alias.name.split(".")[0] == "nexus_core"
            )
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == "nexus_core"
        ):
            found.extend((node.lineno, node.module, alias.name) for alias in node.names)
    return found


def violations(source: str) -> list[str]:
    """What ``source`` imports from the core that is not its public API."""
    bad: list[str] = []
    for line, module, name in core_imports(source):
        if not _public(module):
            message = f"line {line}: {module} is internal"
            if message not in bad:
                bad.append(message)
            continue
        if name is None or name == "*":
            continue
        imported = importlib.import_module(module)
        exported = getattr(imported, "__all__", None)
        if exported is None or name in exported:
            continue
        is_module = hasattr(imported, "__path__") and (
            importlib.util.find_spec(f"{module}.{name}") is not None
        )
        if not is_module:
            bad.append(f"line {line}: {name} is not in {module}.__all__")
    return bad


def test_there_are_plugins_to_check() -> None:
    assert any("nexus_plugin_api" in str(path) for path in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT / "plugins")))
def test_plugin_imports_only_the_public_core(path: Path) -> None:
    bad = violations(path.read_text(encoding="utf-8"))
    assert not bad, (
        f"{path.relative_to(ROOT)}: "
        + "; ".join(bad)
        + (" (import it from nexus_core.plugin; add it there if it is missing)")
    )


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from nexus_core.workflows.schema import convert", True),
        ("import nexus_core.loader", True),
        ("def f():\n    from nexus_core.userconfig import read_token", True),
        ("from nexus_core.plugin import not_a_public_name", True),
        ("from nexus_core.plugin import convert, load_app", False),
        ("from nexus_core import Nexus, hookimpl", False),
        ("from nexus_core.testing.storage import StorageContract", False),
        ("from nexus_core.security import Credentials", False),
        ("from . import nexus_core_like", False),
    ],
)
def test_the_check_flags_private_imports(source: str, flagged: bool) -> None:
    assert bool(violations(source)) is flagged
