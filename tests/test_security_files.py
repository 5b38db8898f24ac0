"""Files that hold secrets or user data are the user's alone: 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_security import make_app

from nexus_core.storage.sqlite import SQLiteStorage
from nexus_core.userconfig import token_path, write_token

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX"),
]


@pytest.fixture(params=[0o022, 0o002, 0o000], ids=["umask-022", "umask-002", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_database_and_its_wal_and_shm_files_are_0600(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "data" / "nexus.db"
    app = make_app(f"sqlite:///{db}")
    async with app:
        await app.invoke("greet", {"name": "Ada"})  # a write: the WAL and its index exist
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    assert oct(mode(db)) == "0o600"


async def test_a_database_left_readable_by_an_older_version_is_narrowed(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    first = SQLiteStorage(f"sqlite:///{db}")
    await first.open()
    await first.cache_set("k", b"v")
    await first.close()
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            path.chmod(0o644)
    again = SQLiteStorage(f"sqlite:///{db}")
    await again.open()
    try:
        assert await again.cache_get("k") == b"v"
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if path.exists():
                assert oct(mode(path)) == "0o600", path
    finally:
        await again.close()


def test_login_tokens_are_0600_in_a_0700_folder(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for url in (None, "https://nexus.example"):
        path = write_token("nxc_secret", url)
        assert path == token_path(url)
        assert oct(mode(path)) == "0o600"
        assert oct(mode(path.parent)) == "0o700"
        path.chmod(0o644)  # an old token file: rewritten 0600
        write_token("nxc_other", url)
        assert oct(mode(path)) == "0o600"
