"""``nexus db migrate`` and ``nexus db status``: the console script, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_support import Schemas

pytest.importorskip("nexus_plugin_cli", reason="needs nexus-plugin-cli")

pytestmark = pytest.mark.slow


def nexus(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "nexus"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nexus_plugin_cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environ.update(env)
    return subprocess.run(
        [*command, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def test_status_and_migrate(tmp_path: Path, schemas: Schemas) -> None:
    url = schemas.url()
    where = f"127.0.0.1:5432/test (schema {url.rsplit('schema=', 1)[1]})"
    pending = nexus("db", "status", url, cwd=tmp_path)
    assert (pending.returncode, pending.stdout.strip()) == (
        1,
        f"{where}: schema version 0 of 1 (1 pending)",
    ), pending.stderr
    done = nexus("db", "migrate", url, cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"{where}: schema version 1 of 1 (applied: 1)",
    ), done.stderr
    # Without a URL: the configuration's PostgreSQL storage (here NEXUS_STORAGE).
    current = nexus("db", "status", cwd=tmp_path, NEXUS_STORAGE=url)
    assert (current.returncode, current.stdout.strip()) == (
        0,
        f"{where}: schema version 1 of 1 (up to date)",
    ), current.stderr


def test_errors_are_messages_with_exit_codes(tmp_path: Path) -> None:
    down = nexus("db", "status", "postgresql://nexus:hunter2@127.0.0.1:1/none", cwd=tmp_path)
    assert down.returncode == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/none" in down.stderr
    assert "hunter2" not in down.stderr + down.stdout
    assert "Traceback" not in down.stderr
    bad = nexus("db", "migrate", "postgresql://db/x?pool_max=many", cwd=tmp_path)
    assert bad.returncode == 2
    assert "pool_max='many'" in bad.stderr
    none = nexus("db", "status", cwd=tmp_path, NEXUS_STORAGE="sqlite:///nexus.db")
    assert none.returncode == 2
    assert "no PostgreSQL storage is configured" in none.stderr
    listed = nexus("plugins", cwd=tmp_path)
    assert "nexus-plugin-postgres" in listed.stdout, listed.stdout + listed.stderr
