"""docs/how-to/secure-a-deployment.md works: its scripts run and every config example loads.

The page is run as a newcomer would follow it, in a fresh directory: a block
after ``<!-- file: PATH -->`` is written to PATH, and each ``$ python ...`` of
a ``console`` block runs in a new process and must print what the page shows
(``...`` matches anything). Every ``toml`` block is also loaded and the
security layer built from it, so a config example that would not start fails here.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from test_security import public_pem, rsa_key

from nexus_core import Nexus
from nexus_core.config import check_production, load_config

PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "secure-a-deployment.md"
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*(file|skip)\s*(?::\s*(\S+))?\s*-->$")


def blocks() -> list[tuple[str, str, str | None, str | None, int]]:
    """(language, text, directive, target, line) of every fenced block."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    out = []
    previous = ""
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        start, body = index, []
        index += 1
        while lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        directive = DIRECTIVE.match(previous)
        out.append(
            (
                match.group(1),
                "\n".join(body) + "\n",
                directive.group(1) if directive else None,
                directive.group(2) if directive else None,
                start + 1,
            )
        )
        previous = ""
        index += 1
    return out


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH")]))
    env["SHOP_JWT_SECRET"] = "a-secret-of-at-least-32-bytes-for-the-doc"
    return env


def run_console(text: str, cwd: Path, where: str) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    for command, want_lines in commands:
        words = shlex.split(command)
        if not words or words[0] != "python":
            continue  # shown, not run (sha256sum, pip...)
        proc = subprocess.run(
            [sys.executable, *words[1:]],
            cwd=cwd,
            env=_env(cwd),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        report = f"{where}: $ {command}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        assert proc.returncode == 0, report
        want = "\n".join(want_lines).strip() + "\n"
        checker = doctest.OutputChecker()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        assert checker.check_output(want, proc.stdout.strip() + "\n", flags), report


def check_config(text: str, cwd: Path, where: str) -> None:
    """Load a config example and build the security layer from it, as a start would."""
    data: dict[str, Any] = tomllib.loads(text)
    config = load_config(data=data, env={})
    nexus = config.nexus
    persistent = not nexus.storage.startswith("memory")
    # Storage plugins (postgresql://) are not installed with the core: use SQLite instead.
    app = Nexus("doc", config=config, storage=f"sqlite:///{cwd / 'check.db'}", autoload=False)
    old = os.environ.get("SHOP_JWT_SECRET")
    os.environ["SHOP_JWT_SECRET"] = "a-secret-of-at-least-32-bytes-for-the-doc"
    cwd_before = Path.cwd()
    os.chdir(cwd)
    try:
        check_production(
            config, storage_persistent=persistent, auth_configured=app.security.auth_configured
        )
        app.security.configure()
    except Exception as exc:
        raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
    finally:
        os.chdir(cwd_before)
        if old is None:
            os.environ.pop("SHOP_JWT_SECRET", None)
        else:
            os.environ["SHOP_JWT_SECRET"] = old


def test_the_page_runs_and_its_configs_load(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "idp-2024-10.pem").write_text(public_pem(rsa_key()))
    ran = configs = 0
    for language, text, directive, target, line in blocks():
        where = f"{PAGE.name}:{line}"
        if directive == "skip":
            continue
        assert language in {"python", "console", "toml", "text"}, f"{where}: label the block"
        if directive == "file":
            assert target
            (tmp_path / target).write_text(text, encoding="utf-8")
        if language == "toml":
            check_config(text, tmp_path, where)
            configs += 1
        elif language == "console":
            run_console(text, tmp_path, where)
            ran += 1
        elif language == "python":
            assert directive == "file", f"{where}: python blocks are files the page runs"
    assert ran >= 5 and configs >= 8
