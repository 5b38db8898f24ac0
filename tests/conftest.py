"""Shared fixtures for the core test suite, and which of its tests are slow."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent

#: Folders whose every test starts servers or ``nexus`` subprocesses.
SLOW_FOLDERS: tuple[tuple[str, ...], ...] = (("cross",), ("security", "attacks"))
#: Modules that run the docs' code, or start processes, throughout.
SLOW_MODULES = frozenset({"test_docs.py", "test_config_app_dir.py", "test_security_docs.py"})
#: Fixtures that pip-install real distributions (their tests then start processes).
SLOW_FIXTURES = frozenset({"plugin_site"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the tests of :data:`SLOW_FOLDERS`, :data:`SLOW_MODULES`, :data:`SLOW_FIXTURES`.

    ``nox -s quick`` (``-m "not slow"``) leaves them out; other slow tests
    carry ``@pytest.mark.slow`` (or a module ``pytestmark``) themselves.
    """
    for item in items:
        try:
            parts = Path(item.path).relative_to(_HERE).parts
        except ValueError:
            continue
        folder = any(parts[: len(slow)] == slow for slow in SLOW_FOLDERS)
        module = len(parts) == 1 and parts[0] in SLOW_MODULES
        if folder or module or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
