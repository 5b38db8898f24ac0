"""The user config folder and the login tokens kept in it (nexus_core.userconfig)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nexus_core import userconfig
from nexus_core.userconfig import (
    delete_token,
    read_token,
    token_path,
    user_config_dir,
    write_token,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "nexus-home"
    monkeypatch.setenv("NEXUS_CONFIG_HOME", str(folder))
    return folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folder_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXUS_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_config_dir() == tmp_path / "xdg" / "nexus"
    monkeypatch.setenv("NEXUS_CONFIG_HOME", str(tmp_path / "override"))
    assert user_config_dir() == tmp_path / "override"
    monkeypatch.delenv("NEXUS_CONFIG_HOME")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform not in ("win32", "darwin"):
        assert user_config_dir() == tmp_path / "home" / ".config" / "nexus"


def test_one_file_per_gateway_and_one_for_local_mode(home: Path) -> None:
    local = token_path()
    assert local == home / "tokens" / "local"
    a = token_path("http://127.0.0.1:8000")
    assert a.parent == home / "tokens"
    assert a.name.startswith("http_127.0.0.1_8000-")
    assert token_path("HTTP://127.0.0.1:8000/") == a  # one spelling per gateway
    assert token_path("http://127.0.0.1:8001") != a
    assert token_path("https://127.0.0.1:8000") != a
    assert token_path("http://h/a/b") != token_path("http://h/a_b")  # the hash tells them apart
    assert len({local, a}) == 2
    with pytest.raises(ValueError, match="empty"):
        token_path("  ")


def test_write_read_delete(home: Path) -> None:
    assert read_token() is None
    assert read_token("http://gw:1") is None
    path = write_token("nxc_local", None)
    assert path == token_path()
    assert write_token("nxc_remote\n", "http://gw:1") == token_path("http://gw:1")
    assert read_token() == "nxc_local"
    assert read_token("http://gw:1/") == "nxc_remote"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert _mode(home) == 0o700
    write_token("nxc_again")  # replaced, still private, no temporary files left
    assert read_token() == "nxc_again"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, token_path("http://gw:1").name]
    )
    assert delete_token() is True
    assert delete_token() is False
    assert read_token() is None
    assert read_token("http://gw:1") == "nxc_remote"  # the others are untouched
    assert delete_token("http://gw:1") is True


def test_bad_tokens_are_refused(home: Path) -> None:
    for bad in ("", "   ", "two words", "a\nb"):
        with pytest.raises(ValueError, match="empty|whitespace"):
            write_token(bad)
    assert not home.exists()  # nothing written, not even the folder


def test_empty_or_unreadable_file_is_no_token(home: Path) -> None:
    path = token_path()
    path.parent.mkdir(parents=True)
    path.write_text("\n")
    assert read_token() is None
    path.write_bytes(b"\xff\xfe")
    assert read_token() is None


def test_a_lax_tokens_folder_is_tightened(home: Path) -> None:
    folder = home / "tokens"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    write_token("nxc_x")
    assert _mode(folder) == 0o700


def test_replacement_is_atomic_for_readers(home: Path) -> None:
    write_token("nxc_" + "a" * 64)
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(read_token())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            write_token("nxc_" + ("a" if i % 2 else "b") * 64)
    finally:
        stop.set()
        thread.join()
    assert seen <= {"nxc_" + "a" * 64, "nxc_" + "b" * 64}


def test_importing_it_stays_cheap(tmp_path: Path) -> None:
    code = (
        "import sys, nexus_core.userconfig as u; "
        "print(u.token_path()); "
        "print(any(m in sys.modules for m in ('msgspec', 'anyio', 'nexus_core.app')))"
    )
    env = {**os.environ, "NEXUS_CONFIG_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    path, heavy = done.stdout.split()
    assert path == str(tmp_path / "tokens" / "local")
    assert heavy == "False"
    assert userconfig.__all__
