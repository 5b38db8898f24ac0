"""A storage URL per role: select_storage, StorageRouter, and a backend per distinct URL.

Real backends throughout (memory and SQLite files), plus a tiny test backend
that serves only some roles, registered through the ``nexus_storage_backends``
hook as a plugin would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import hookimpl
from nexus_core.config import ConfigError, load_config
from nexus_core.errors import PluginLoadFailed
from nexus_core.events import Event
from nexus_core.plugins import PluginHost
from nexus_core.specs import StorageBackendSpec
from nexus_core.storage.base import (
    ROLES,
    AuditRecord,
    BlobStore,
    Cache,
    Role,
    RunRecord,
    Storage,
)
from nexus_core.storage.memory import MemoryStorage
from nexus_core.storage.router import StorageRouter
from nexus_core.storage.select import create_storage, redact_url, select_storage
from nexus_core.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.anyio

#: What the toy backends did, in order: ("open" | "close", url).
JOURNAL: list[tuple[str, str]] = []


class Toy(Cache, BlobStore):
    """Cache and blobs in a dict; ``toy://fail`` fails to open. Journals open and close."""

    roles: ClassVar[frozenset[Role]] = frozenset({"cache", "blobs"})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.values: dict[str, bytes] = {}

    async def open(self) -> None:
        if "fail" in self.url:
            raise OSError(f"{self.url}: cannot connect")
        JOURNAL.append(("open", self.url))

    async def close(self) -> None:
        JOURNAL.append(("close", self.url))

    @property
    def persistent(self) -> bool:
        return "volatile" not in self.url

    async def ping(self) -> bool:
        return "down" not in self.url

    async def cache_get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self.values[key] = value

    async def cache_delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        return 0.0

    async def put_blob(self, key: str, data: bytes) -> None:
        self.values[f"blob:{key}"] = data

    async def get_blob(self, key: str) -> bytes | None:
        return self.values.get(f"blob:{key}")

    async def delete_blob(self, key: str) -> None:
        self.values.pop(f"blob:{key}", None)

    async def list_blobs(self, prefix: str = "") -> list[str]:
        return sorted(k[5:] for k in self.values if k.startswith(f"blob:{prefix}"))


class CacheOnly(Toy):
    """Declares the cache role only (though it could store blobs)."""

    roles: ClassVar[frozenset[Role]] = frozenset({"cache"})


def unreachable(url: str) -> Toy:
    """A backend whose driver names the whole URL in its error (password included)."""
    raise ConnectionError(f"cannot reach {url}")


class ToyPlugin:
    @hookimpl
    def nexus_storage_backends(self) -> list[StorageBackendSpec]:
        return [
            StorageBackendSpec(name="toy", schemes=("toy",), factory=f"{__name__}:Toy"),
            StorageBackendSpec(
                name="unreachable", schemes=("unreachable",), factory=f"{__name__}:unreachable"
            ),
            StorageBackendSpec(
                name="cacheonly", schemes=("cacheonly",), factory=f"{__name__}:CacheOnly"
            ),
        ]


@pytest.fixture
def host() -> PluginHost:
    JOURNAL.clear()
    return PluginHost([ToyPlugin()], autoload=False, env={})


def _urls(default: str, **roles: str) -> dict[Role, str]:
    urls: dict[Role, str] = dict.fromkeys(ROLES, default)
    urls.update(roles)  # type: ignore[typeddict-item]
    return urls


def _run(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, workflow="greet", created_at=time.time())


# -- one URL: the backend itself ------------------------------------------------------------


async def test_one_url_for_every_role_is_that_backend_itself(
    host: PluginHost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    storage = select_storage(host, _urls(url))
    assert type(storage) is SQLiteStorage
    assert storage.url == url
    assert type(select_storage(host, _urls("memory://"))) is MemoryStorage
    assert type(create_storage(host, "memory://")) is MemoryStorage


async def test_config_urls_pick_the_backends(host: PluginHost, tmp_path: Path) -> None:
    (tmp_path / "nexus.toml").write_text(
        '[nexus.storage]\nurl = "sqlite:///main.db"\ncache = "memory://"\n'
    )
    config = load_config(tmp_path / "nexus.toml", env={})
    storage = select_storage(host, config.storage_urls, url=config.storage_url)
    assert isinstance(storage, StorageRouter)
    assert storage.url == config.storage_url == f"sqlite:///{tmp_path / 'main.db'}"
    assert type(storage.backends["cache"]) is MemoryStorage
    assert {type(storage.backends[r]) for r in ROLES if r != "cache"} == {SQLiteStorage}
    assert len(storage.distinct) == 2


# -- memory cache, SQLite for the rest ---------------------------------------------------------


async def test_memory_cache_and_sqlite_for_the_rest(host: PluginHost, tmp_path: Path) -> None:
    db = tmp_path / "main.db"
    url = f"sqlite:///{db}"
    storage = select_storage(host, _urls(url, cache="memory://"), url=url)
    assert isinstance(storage, StorageRouter)
    sqlite = storage.backends["runs"]
    memory = storage.backends["cache"]
    assert all(storage.backends[r] is sqlite for r in ROLES if r != "cache")
    assert storage.persistent is False  # the memory cache does not persist
    await storage.open()
    try:
        assert await storage.ping()
        await storage.cache_set("k", b"v")
        assert await storage.take_tokens("b", capacity=1, refill_per_second=0.001) == 0.0
        await storage.create_run(_run("r1"))
        await storage.put_blob("a/b", b"bytes")
        assert await memory.cache_get("k") == b"v"  # type: ignore[attr-defined]
        assert await sqlite.cache_get("k") is None  # type: ignore[attr-defined]
        assert (await sqlite.get_run("r1")) is not None  # type: ignore[attr-defined]
        assert await storage.list_blobs("a/") == ["a/b"]
    finally:
        await storage.close()
    # Reopened: SQLite kept its roles, the memory cache forgot.
    again = select_storage(host, _urls(url, cache="memory://"), url=url)
    await again.open()
    try:
        run = await again.get_run("r1")
        assert run is not None and run.workflow == "greet"
        assert await again.get_blob("a/b") == b"bytes"
        assert await again.cache_get("k") is None
    finally:
        await again.close()


# -- two SQLite files: runs apart from events -------------------------------------------------


async def test_runs_and_events_in_two_sqlite_files(host: PluginHost, tmp_path: Path) -> None:
    runs_url = f"sqlite:///{tmp_path / 'runs.db'}"
    events_url = f"sqlite:///{tmp_path / 'events.db'}"
    urls = _urls(runs_url, events=events_url)
    storage = select_storage(host, urls)
    assert isinstance(storage, StorageRouter)
    assert storage.url == runs_url  # the URL most roles share
    assert storage.backends["runs"] is not storage.backends["events"]
    await storage.open()
    try:
        await storage.create_run(_run("r1"))
        logged = await storage.append_events(
            [Event(type="run.started", run_id="r1"), Event(type="run.completed", run_id="r1")]
        )
        assert [e.type for e in await storage.read_events()] == ["run.started", "run.completed"]
        assert await storage.last_event_id() == logged[-1].id
        assert (await storage.read_events(after=logged[0].id))[0].type == "run.completed"
    finally:
        await storage.close()
    # Each file holds its own role only.
    runs_db, events_db = SQLiteStorage(runs_url), SQLiteStorage(events_url)
    await runs_db.open()
    await events_db.open()
    try:
        assert await runs_db.get_run("r1") is not None
        assert await runs_db.read_events() == []
        assert await events_db.get_run("r1") is None
        assert len(await events_db.read_events()) == 2
    finally:
        await runs_db.close()
        await events_db.close()


async def test_prune_prunes_each_role_on_its_own_backend(host: PluginHost, tmp_path: Path) -> None:
    runs_url = f"sqlite:///{tmp_path / 'runs.db'}"
    events_url = f"sqlite:///{tmp_path / 'events.db'}"
    storage = select_storage(host, _urls(runs_url, events=events_url))
    await storage.open()
    try:
        old = time.time() - 3600
        await storage.append_events([Event(type="old", time=old), Event(type="older", time=old)])
        await storage.append_audit(
            AuditRecord(id="a1", time=old, action="invoke", outcome="allowed")
        )
        assert await storage.prune(time.time(), limit=100) == 3
        assert await storage.read_events() == []
        assert await storage.query_audit() == []
    finally:
        await storage.close()


# -- a role the backend does not declare ---------------------------------------------------------


async def test_a_role_the_backend_does_not_declare_is_a_config_error(
    host: PluginHost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert isinstance(select_storage(host, _urls(url, cache="cacheonly://c")), StorageRouter)
    with pytest.raises(ConfigError) as info:
        select_storage(host, _urls(url, cache="cacheonly://c", blobs="cacheonly://c"))
    assert info.value.key == "nexus.storage.blobs"
    message = str(info.value)
    assert "CacheOnly" in message and "'blobs'" in message and "nexus.storage.blobs" in message
    assert "it serves: cache" in message
    with pytest.raises(ConfigError) as info:  # one URL for every role, but not a whole Storage
        select_storage(host, _urls("toy://t"))
    assert info.value.key == "nexus.storage.runs"
    with pytest.raises(ConfigError, match=r"nexus\.storage\.events: no storage backend for 'nope'"):
        select_storage(host, _urls(url, events="nope://x"))


# -- lifecycle: open once each, in order; close in reverse; a failed open undoes -------------


async def test_each_backend_opens_once_in_order_and_closes_in_reverse(
    host: PluginHost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = select_storage(host, _urls(url, cache="toy://a", blobs="toy://b"))
    assert isinstance(storage, StorageRouter)
    await storage.open()
    await storage.cache_set("k", b"1")
    await storage.put_blob("k", b"2")
    assert await storage.cache_get("k") == b"1"
    assert await storage.get_blob("k") == b"2"
    await storage.close()
    assert JOURNAL == [
        ("open", "toy://a"),
        ("open", "toy://b"),
        ("close", "toy://b"),
        ("close", "toy://a"),
    ]
    JOURNAL.clear()
    shared = select_storage(host, _urls(url, cache="toy://a", blobs="toy://a"))
    await shared.open()
    await shared.close()
    assert JOURNAL == [("open", "toy://a"), ("close", "toy://a")]  # two roles, one backend


async def test_a_failed_open_closes_the_backends_already_open(
    host: PluginHost, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    storage = select_storage(host, _urls(url, cache="toy://a", blobs="toy://fail"))
    with pytest.raises(OSError, match="cannot connect"):
        await storage.open()
    assert JOURNAL == [("open", "toy://a"), ("close", "toy://a")]
    # The SQLite backend was opened and closed too: it opens again cleanly.
    again = select_storage(host, _urls(url, cache="toy://a", blobs="toy://b"))
    await again.open()
    await again.close()


async def test_ping_and_persistent_hold_for_every_backend(host: PluginHost, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    healthy = select_storage(host, _urls(url, cache="toy://a"))
    down = select_storage(host, _urls(url, cache="toy://down"))
    volatile = select_storage(host, _urls(url, cache="toy://volatile"))
    assert healthy.persistent and down.persistent and not volatile.persistent
    for storage, answers in ((healthy, True), (down, False)):
        await storage.open()
        try:
            assert await storage.ping() is answers
        finally:
            await storage.close()


def test_the_router_is_exported_and_a_whole_storage() -> None:
    import nexus_core.plugin
    import nexus_core.storage

    assert nexus_core.plugin.StorageRouter is StorageRouter
    assert nexus_core.storage.StorageRouter is StorageRouter
    assert issubclass(StorageRouter, Storage)
    assert StorageRouter.roles == frozenset(ROLES)
    with pytest.raises(ValueError, match="no backend for the roles"):
        StorageRouter({"runs": MemoryStorage()}, url="memory://")


@given(
    user=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=10),
    password=st.text(st.characters(categories=["L", "N"]), min_size=4, max_size=16),
)
def test_a_storage_url_is_shown_without_its_password(user: str, password: str) -> None:
    url = f"postgresql://{user}:{password}@db.internal:5432/nexus"
    shown = redact_url(url)
    assert password not in shown.replace(user, "").replace("db.internal", "")
    assert shown == f"postgresql://{user}:***@db.internal:5432/nexus"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_backend_that_fails_to_build_does_not_show_the_password(host: PluginHost) -> None:
    with pytest.raises(PluginLoadFailed) as error:
        create_storage(host, "unreachable://nexus:hunter22@db.internal/nexus")
    assert "hunter22" not in str(error.value)
    assert "unreachable://nexus:***@db.internal/nexus" in str(error.value)
