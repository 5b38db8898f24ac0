"""Build small plugin distributions in temporary folders and install them with pip.

Each distribution goes into a site folder of its own, so a test composes
exactly the plugins it wants on ``PYTHONPATH``; the host finds them through
its ordinary entry-point discovery, as it finds any installed plugin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["dist", "environ", "install", "install_path", "pyproject"]


def pyproject(name: str, version: str, package: str, entry_point: str | None = None) -> str:
    """A setuptools ``pyproject.toml`` registering ``package`` in ``nexus.plugins``."""
    return f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"

        [project.entry-points."nexus.plugins"]
        {entry_point or name} = "{package}"

        [tool.setuptools]
        packages = ["{package}"]
    """


def dist(name: str, version: str, package: str, code: str, **extra: str) -> dict[str, str]:
    """The files of a one-module plugin distribution (``extra``: more files by path)."""
    entry_point = extra.pop("entry_point", None)
    return {
        "pyproject.toml": pyproject(name, version, package, entry_point),
        f"{package}/__init__.py": code,
        **extra,
    }


def install(base: Path, dists: dict[str, dict[str, str]]) -> Path:
    """Write each distribution under ``base/NAME`` and pip-install them all into one site.

    One pip call for all of them (building is the slow part); returns the
    site folder. Tests pick the plugins they load with ``NEXUS_PLUGINS``.
    """
    sources = []
    for name, files in dists.items():
        src = base / name
        for rel, text in files.items():
            path = src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())
        sources.append(str(src))
    site = base / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            *sources,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def environ(*sites: Path, **env: str) -> dict[str, str]:
    """The environment of a subprocess seeing ``sites`` and no ``NEXUS_*`` of ours."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    out["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *sys.path])
    out["PYTHONUNBUFFERED"] = "1"
    out["NEXUS_CLI_NO_CACHE"] = "1"
    out.update(env)
    return out


def install_path(base: Path, *sources: Path) -> Path:
    """Pip-install the distributions at ``sources`` into ``base/site``; return the site.

    Each source is copied first: a build writes into its folder, and the
    checkout's copy must stay clean (and usable by tests running at once).
    """
    copies = []
    for source in sources:
        copy = base / "sources" / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        copies.append(str(copy))
    site = base / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            *copies,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site
