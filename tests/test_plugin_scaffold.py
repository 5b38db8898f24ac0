"""``nexus plugin new``: each kind is a ready distribution whose own tests pass once installed.

The real ``nexus`` command writes one plugin of each kind; pip installs the
four into a throwaway target; the host discovers them through their entry
points; and each plugin's own test (the matching contract suite) runs against
the installed copy (``python -P``: the source folder is not on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_dists import environ

pytest.importorskip("nexus_plugin_cli", reason="nexus plugin new is a command of the CLI")

pytestmark = pytest.mark.slow

KINDS = {
    "channel": "nexus-acme-lines",
    "storage": "nexus-acme-store",
    "auth": "nexus-acme-secret",
    "nodes": "nexus-acme-nodes",
}


def _nexus(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus_plugin_cli", *args],
        cwd=cwd,
        env=environ(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The four generated projects, and the site folder they are installed into."""
    base = tmp_path_factory.mktemp("generated")
    for kind, name in KINDS.items():
        proc = _nexus(base, "plugin", "new", name, "--kind", kind)
        assert proc.returncode == 0, proc.stderr
        assert (base / name / "pyproject.toml").is_file()
    site = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
        + [str(base / name) for name in KINDS.values()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return base, site


def test_the_installed_plugins_are_discovered(generated: tuple[Path, Path]) -> None:
    base, site = generated
    env = environ(site, NEXUS_PLUGINS=",".join([*KINDS.values(), "nexus-plugin-cli"]))
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_plugin_cli", "plugins", "--json"],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["errors"] == []
    versions = {p["name"]: p["version"] for p in report["plugins"]}
    for name in KINDS.values():
        assert versions[name] == "0.1.0"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_generated_plugin_passes_its_own_contract_test(
    kind: str, generated: tuple[Path, Path]
) -> None:
    base, site = generated
    project = base / KINDS[kind]
    env = environ(site)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    imported = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            f"import {KINDS[kind].replace('-', '_')} as m; print(m.__file__)",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.startswith(str(site)), "the test ran the source, not the installed copy"


def test_a_bad_name_or_kind_is_a_usage_error(tmp_path: Path) -> None:
    bad = _nexus(tmp_path, "plugin", "new", "not a name")
    assert bad.returncode == 2
    assert "invalid plugin name" in bad.stderr
    kind = _nexus(tmp_path, "plugin", "new", "nexus-x", "--kind", "teleporter")
    assert kind.returncode == 2
    assert "teleporter" in kind.stderr
    assert "Traceback" not in bad.stderr + kind.stderr
