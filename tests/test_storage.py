"""The storage contract on the built-in backends, plus SQLite's own promises."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nexus_core.events import Event, event_id
from nexus_core.storage import sqlite as sqlite_backend
from nexus_core.storage.base import (
    AlreadyExists,
    LeaseLost,
    NodeCheckpoint,
    RunRecord,
    Storage,
)
from nexus_core.storage.memory import MemoryStorage
from nexus_core.storage.sqlite import SchemaVersionError, SQLiteStorage
from nexus_core.testing.storage import StorageContract

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return MemoryStorage

    def test_not_persistent(self) -> None:
        assert MemoryStorage("memory://").persistent is False


class TestSQLiteStorage(StorageContract):
    @pytest.fixture
    def storage_factory(self, tmp_path: Path) -> Callable[[], Storage]:
        counter = itertools.count()
        return lambda: SQLiteStorage(f"sqlite:///{tmp_path}/db{next(counter)}.sqlite")


class TestSQLiteInMemory(StorageContract):
    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return lambda: SQLiteStorage("sqlite:///:memory:")


# -- SQLite specifics ------------------------------------------------------------


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nexus.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStorage]:
    """An open SQLite store on a file of its own, closed after the test."""
    storage = SQLiteStorage(_url(db_path))
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


def test_urls() -> None:
    assert SQLiteStorage("sqlite:///relative/x.db").path == "relative/x.db"
    assert SQLiteStorage("sqlite:////abs/x.db").path == "/abs/x.db"
    memory = SQLiteStorage("sqlite:///:memory:")
    assert memory.path == ":memory:"
    assert memory.persistent is False
    assert SQLiteStorage("sqlite:///x.db").persistent is True
    for bad in ("sqlite://x.db", "postgresql:///x", "sqlite:///", "sqlite:///x.db?mode=ro"):
        with pytest.raises(ValueError, match="SQLite URL"):
            SQLiteStorage(bad)


async def test_relative_path_and_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStorage("sqlite:///data/sub/nexus.db")
    await store.open()
    await store.put_blob("k", b"v")
    await store.close()
    assert (tmp_path / "data" / "sub" / "nexus.db").exists()


async def test_wal_and_pragmas(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(
                SQLiteStorage.migrations
            )
    finally:
        await store.close()


async def test_closed_storage(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    assert await store.ping() is False
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_blob("k")
    await store.open()
    assert await store.ping() is True
    await store.close()
    await store.close()  # twice is harmless
    assert await store.ping() is False
    with pytest.raises(RuntimeError, match="not open"):
        await store.put_blob("k", b"v")


async def test_duplicate_ids_raise(db_path: Path) -> None:
    for store in (SQLiteStorage(_url(db_path)), MemoryStorage()):
        await store.open()
        try:
            await store.create_run(RunRecord(id="r1", workflow="w", created_at=1.0))
            with pytest.raises(AlreadyExists, match="already exists"):
                await store.create_run(RunRecord(id="r1", workflow="w", created_at=2.0))
            with pytest.raises(ValueError, match="already exists"):  # a ValueError too
                await store.create_run(RunRecord(id="r1", workflow="w", created_at=2.0))
        finally:
            await store.close()


async def _until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not predicate():  # noqa: ASYNC110 - a condition of another thread's queue
            await anyio.sleep(0.001)


def _queued(storage: SQLiteStorage) -> int:
    """How many calls wait in the writer thread's queue."""
    assert storage._writer is not None
    return storage._writer._calls.qsize()


@contextlib.asynccontextmanager
async def writer_held(storage: SQLiteStorage) -> AsyncIterator[list[int]]:
    """Keep the writer's thread busy for the block; yields the sizes of the batches it applies.

    Writes queued meanwhile wait in its queue, as they would behind a long
    transaction, and are applied once the block ends.
    """
    writer = storage._writer
    assert writer is not None
    release = threading.Event()
    sizes: list[int] = []
    apply_group = sqlite_backend._apply_group

    def counting(group: list[Any]) -> None:  # in the writer's thread
        sizes.append(sum(len(items) for _, (_, items, _), _, _ in group))
        apply_group(group)

    def hold() -> None:
        holding.set()
        release.wait()

    holding = threading.Event()
    sqlite_backend._apply_group = counting
    writer.post(hold)
    try:
        await _until(holding.is_set)
        yield sizes
    finally:
        release.set()
        await writer.run(lambda: None)  # everything queued before is applied
        sqlite_backend._apply_group = apply_group


async def test_writes_queued_behind_a_busy_writer_share_one_transaction(
    store: SQLiteStorage,
) -> None:
    # The group commit is the writer thread's: whatever is queued while it is
    # busy goes into its next transaction, however many callers queued it.
    async with anyio.create_task_group() as tg, writer_held(store) as sizes:
        for n in range(20):
            tg.start_soon(store.cache_set, f"k{n}", b"v")
        await _until(lambda: _queued(store) == 20)
    assert sizes == [20]
    assert [await store.cache_get(f"k{n}") for n in range(20)] == [b"v"] * 20


async def test_a_queued_write_is_applied_though_its_caller_was_cancelled(
    store: SQLiteStorage,
) -> None:
    # Once queued, a write is the writer thread's: a caller that stops waiting
    # (a client gone away) leaves it applied, never half-done.
    async with writer_held(store) as sizes:
        with anyio.move_on_after(0.05) as waiting:
            await store.cache_set("k", b"v")
        assert waiting.cancelled_caught
    assert sizes == [1]
    assert await store.cache_get("k") == b"v"


async def test_a_failing_write_fails_only_its_caller_in_a_shared_batch(
    store: SQLiteStorage,
) -> None:
    # Concurrent writes share one transaction; a duplicate among them fails
    # alone and every other write of the batch is stored.
    await store.create_run(RunRecord(id="taken", workflow="w", created_at=1.0))
    outcomes: dict[str, str] = {}

    async def create(run_id: str) -> None:
        try:
            await store.create_run(RunRecord(id=run_id, workflow="w", created_at=2.0))
            outcomes[run_id] = "ok"
        except ValueError as exc:
            outcomes[run_id] = str(exc)

    async with anyio.create_task_group() as tg, writer_held(store) as sizes:
        for run_id in ["r1", "r2", "taken", "r3", "r4"]:
            tg.start_soon(create, run_id)
        await _until(lambda: _queued(store) == 5)
    assert sizes == [5]  # one batch: the duplicate was among the others
    assert "already exists" in outcomes.pop("taken")
    assert outcomes == {"r1": "ok", "r2": "ok", "r3": "ok", "r4": "ok"}
    for run_id in ["r1", "r2", "r3", "r4"]:
        assert await store.get_run(run_id) is not None
    taken = await store.get_run("taken")
    assert taken is not None and taken.created_at == 1.0


async def test_events_appended_in_a_shared_batch_get_the_positions_the_log_holds(
    store: SQLiteStorage,
) -> None:
    # Positions come from each statement's last rowid and row count, not from
    # RETURNING: bursts of several callers in one transaction, and a run's
    # final write refused by its fence among them, must still each get theirs.
    await store.create_run(RunRecord(id="mine", workflow="w", created_at=1.0, fence=2))
    got: dict[str, list[Event]] = {}

    async def append(name: str, size: int) -> None:
        got[name] = await store.append_events(
            [Event(type="x", data={"who": name, "i": i}) for i in range(size)]
        )

    async def finish(name: str, fence: int) -> None:
        run = RunRecord(id="mine", workflow="w", created_at=1.0, status="completed", fence=fence)
        events = [Event(type="run.completed", run_id="mine", data={"who": name, "i": 0})]
        try:
            got[name] = await store.finish_run_logged(run, [], events, audits=[])
        except LeaseLost:
            got[name] = []

    async with anyio.create_task_group() as tg, writer_held(store) as sizes:
        for name, size in [("a", 1), ("b", 7), ("c", 3)]:
            tg.start_soon(append, name, size)
        tg.start_soon(finish, "stale", 1)
        tg.start_soon(append, "d", 2)
        tg.start_soon(finish, "owner", 2)
        await _until(lambda: _queued(store) == 6)
    assert sizes == [6]
    logged = await store.read_events(limit=100)
    assert sorted(e.id for events in got.values() for e in events) == [e.id for e in logged]
    by_id = {e.id: e for e in logged}
    for name, events in got.items():
        assert [by_id[e.id] for e in events] == events, name
    assert got["stale"] == [] and len(got["owner"]) == 1
    assert len(got["b"]) == 7


async def test_a_writer_waits_for_its_own_batch_not_for_later_ones(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a steady stream of writes a writer is answered once its own batch is
    # applied: it never waits for the batches queued after it.
    storage = SQLiteStorage(_url(db_path))
    await storage.open()
    applied = 0
    applied_in: dict[str, int] = {}  # a run's id: the number of the batch that stored it
    apply_group = sqlite_backend._apply_group

    def counting(group: list[Any]) -> None:  # in the writer's thread
        nonlocal applied
        for _, (_, items, _), _, _ in group:  # noted first: applying wakes the callers
            for ops in items:
                for op in ops:
                    if op.sql == sqlite_backend._INSERT_RUN:
                        applied_in[op.params[0]] = applied + 1
        apply_group(group)
        applied += 1

    monkeypatch.setattr(sqlite_backend, "_apply_group", counting)
    busy = True

    in_flight = 0

    async def one_write(key: str) -> None:
        nonlocal in_flight
        try:
            await storage.cache_set(key, b"x")
        finally:
            in_flight -= 1

    async def arriving_writes(tg: anyio.abc.TaskGroup) -> None:
        nonlocal in_flight
        # New writers keep coming, as requests do (up to 32 at a time): some
        # queue during every trip to the writer thread.
        n = 0
        while busy:
            if in_flight < 32:
                n += 1
                in_flight += 1
                tg.start_soon(one_write, f"k{n % 50}")
            await anyio.lowlevel.checkpoint()

    waited: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(arriving_writes, tg)
            with anyio.fail_after(30):  # the writer is busy with the arriving writes
                while not applied:  # noqa: ASYNC110 - counted by the patched _apply_group
                    await anyio.sleep(0.001)
            with anyio.fail_after(30):  # a writer kept flushing would never come back
                for n in range(30):
                    before = applied
                    await storage.create_run(RunRecord(id=f"r{n}", workflow="w", created_at=1.0))
                    waited.append(applied_in[f"r{n}"] - before)
            busy = False
    finally:
        await storage.close()
    # Its own batch, after the one in flight when it came and, at most, one the
    # writer's thread took between that look and the write's queueing.
    assert max(waited) <= 3, waited
    assert min(waited) >= 1, waited


async def test_reopen_keeps_data(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    await store.create_run(RunRecord(id="r1", workflow="w", created_at=1.0, idempotency_key="k"))
    await store.save_checkpoint(NodeCheckpoint(run_id="r1", node_id="a", status="completed"))
    await store.put_blob("b", b"data")
    await store.cache_set("c", b"cached")
    await store.take_tokens("bucket", capacity=1, refill_per_second=1e-9)
    await store.close()

    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        assert (await store.get_run("r1")) is not None
        assert list(await store.get_checkpoints("r1")) == ["a"]
        assert await store.get_blob("b") == b"data"
        assert await store.cache_get("c") == b"cached"
        assert await store.take_tokens("bucket", capacity=1, refill_per_second=1e-9) > 0
        _, created = await store.create_run(
            RunRecord(id="r2", workflow="w", created_at=2.0, idempotency_key="k")
        )
        assert created is False
    finally:
        await store.close()


# -- migrations ------------------------------------------------------------------


async def test_migrates_a_version_0_database(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:  # made by hand: someone else's table, version 0
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        await store.put_blob("k", b"v")
        assert await store.get_blob("k") == b"v"
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLiteStorage.migrations)
        assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]


class _V2Storage(SQLiteStorage):
    """What a later release looks like: one more migration step."""

    migrations = (
        *SQLiteStorage.migrations,
        (
            "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX runs_priority ON runs (priority)",
        ),
    )


async def test_migrates_an_older_database_keeping_data(db_path: Path) -> None:
    old = SQLiteStorage(_url(db_path))
    await old.open()
    await old.create_run(RunRecord(id="r1", workflow="w", created_at=1.0))
    await old.close()

    new = _V2Storage(_url(db_path))
    await new.open()
    try:
        assert (await new.get_run("r1")) is not None
    finally:
        await new.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_V2Storage.migrations)
        assert conn.execute("SELECT id, priority FROM runs").fetchall() == [("r1", 0)]

    # The older code now refuses the newer database, saying why.
    old = SQLiteStorage(_url(db_path))
    newer = rf"schema version {len(_V2Storage.migrations)}.*newer Nexus"
    with pytest.raises(SchemaVersionError, match=newer):
        await old.open()


class _KeysPerTenant(SQLiteStorage):
    """The schema before idempotency keys were scoped to the principal (steps 1-2)."""

    migrations = SQLiteStorage.migrations[:2]


async def test_migration_3_scopes_idempotency_keys_to_the_principal(db_path: Path) -> None:
    old = _KeysPerTenant(_url(db_path))
    await old.open()  # the schema of steps 1-2 only
    await old.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO runs (id, workflow, status, tenant, principal, inputs, output,"
            " created_at, idempotency_key) VALUES"
            " ('r1', 'w', 'completed', 'acme', 'ann', '{}', '{\"n\": 1}', 1.0, 'k')"
        )
        with pytest.raises(sqlite3.IntegrityError):  # before: one key per tenant
            conn.execute(
                "INSERT INTO runs (id, workflow, status, tenant, principal, inputs, output,"
                " created_at, idempotency_key) VALUES"
                " ('r2', 'w', 'pending', 'acme', 'bob', '{}', 'null', 2.0, 'k')"
            )
    ann = RunRecord(
        id="r3", workflow="w", tenant="acme", principal="ann", created_at=3.0, idempotency_key="k"
    )

    new = SQLiteStorage(_url(db_path))
    await new.open()
    try:
        kept = await new.get_run("r1")
        assert kept is not None and (kept.status, kept.output) == ("completed", {"n": 1})
        again, created = await new.create_run(ann)
        assert (again.id, created) == ("r1", False)  # ann's key still finds ann's run
        bobs, created = await new.create_run(
            RunRecord(
                id="r2",
                workflow="w",
                tenant="acme",
                principal="bob",
                created_at=4.0,
                idempotency_key="k",
            )
        )
        assert (bobs.id, created) == ("r2", True)  # bob's equal key is his own
    finally:
        await new.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLiteStorage.migrations)
        indexes = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"runs_order", "runs_tenant", "runs_unfinished", "runs_idempotency"} <= indexes


class _BeforeLeases(SQLiteStorage):
    """The schema before run leases and log-given event ids (steps 1-3)."""

    migrations = SQLiteStorage.migrations[:3]


async def test_migration_4_adds_leases_and_log_event_ids(db_path: Path) -> None:
    old = _BeforeLeases(_url(db_path))
    await old.open()
    await old.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO runs (id, workflow, status, tenant, inputs, output, created_at, owner)"
            " VALUES ('r1', 'w', 'running', 'default', '{}', 'null', 1.0, 'old-host')"
        )
        for old_id, kind in (("0001-000001-abc", "a"), ("0001-000002-abc", "b")):
            data = f'{{"type": "{kind}", "id": "{old_id}", "time": 1.0}}'
            conn.execute("INSERT INTO events (id, data) VALUES (?, ?)", (old_id, data))

    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        run = await store.get_run("r1")
        assert run is not None
        assert (run.owner, run.fence, run.lease_expires_at) == ("old-host", 0, None)
        assert [r.id for r in await store.claimable_runs(100.0)] == ["r1"]  # recoverable
        claimed = await store.claim_run("r1", "new-host", lease=30.0, now=100.0)
        assert claimed is not None and claimed.fence == 1
        events = await store.read_events()
        assert [(e.type, e.id) for e in events] == [
            ("a", "0000000000000001"),
            ("b", "0000000000000002"),
        ]
        # A client holding an id of before reads from the start.
        assert await store.read_events(after="0001-000001-abc") == events
        [new] = await store.append_events([Event(type="c")])
        assert new.id == "0000000000000003"
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLiteStorage.migrations)
        seqs = [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]
        assert seqs == [1, 2, 3]
        indexes = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "runs_claimable" in indexes


async def test_event_positions_are_never_reused_after_pruning_everything(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        logged = await store.append_events([Event(type="a", time=1.0), Event(type="b", time=1.0)])
        assert await store.prune_events(100.0) == 2
        assert await store.last_event_id() is None
        [later] = await store.append_events([Event(type="c")])
        assert later.id > logged[-1].id
        assert await store.read_events(after=logged[-1].id) == [later]
        # A burst larger than one statement's share keeps its order and its positions.
        burst = await store.append_events([Event(type="x", data={"i": i}) for i in range(1203)])
        assert [e.data["i"] for e in burst] == list(range(1203))
        assert [int(e.id) for e in burst] == list(range(int(later.id) + 1, int(later.id) + 1204))
        assert await store.read_events(after=later.id, limit=5000) == burst
    finally:
        await store.close()


async def test_newer_database_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    store = SQLiteStorage(_url(db_path))
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        await store.open()
    assert await store.ping() is False


async def test_failed_migration_rolls_back(db_path: Path) -> None:
    class Broken(SQLiteStorage):
        migrations = (*SQLiteStorage.migrations, ("CREATE TABLE extra (x)", "NOT SQL AT ALL"))

    with pytest.raises(sqlite3.OperationalError):
        await Broken(_url(db_path)).open()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == []


# -- several writers -------------------------------------------------------------


async def test_two_objects_concurrent_idempotent_create(db_path: Path) -> None:
    stores = [SQLiteStorage(_url(db_path)), SQLiteStorage(_url(db_path))]
    async with anyio.create_task_group() as tg:  # even opening concurrently is safe
        for store in stores:
            tg.start_soon(store.open)
    results: list[tuple[RunRecord, bool]] = []

    async def create(i: int) -> None:
        run = RunRecord(id=f"r{i}", workflow="w", created_at=float(i), idempotency_key="same")
        results.append(await stores[i % 2].create_run(run))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(create, i)
        assert sum(created for _, created in results) == 1
        assert len({run.id for run, _ in results}) == 1
        for store in stores:
            assert len(await store.list_runs()) == 1
    finally:
        for store in stores:
            await store.close()


def _run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_CREATE_CHILD = """
    import sys, anyio
    from nexus_core.storage.base import RunRecord
    from nexus_core.storage.sqlite import SQLiteStorage

    async def main(url, name):
        store = SQLiteStorage(url)
        await store.open()
        created = 0
        for i in range(25):
            run = RunRecord(id=f"{name}-{i}", workflow="w", created_at=1.0, idempotency_key="one")
            created += (await store.create_run(run))[1]
            await store.take_tokens("b", capacity=30, refill_per_second=1e-9)
        await store.close()
        print(created)

    anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_processes_concurrent_idempotent_create_and_take_tokens(db_path: Path) -> None:
    children = [_run_child(_CREATE_CHILD, _url(db_path), f"p{n}") for n in range(3)]
    outputs = [
        await anyio.to_thread.run_sync(functools.partial(child.communicate, timeout=60))
        for child in children
    ]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    assert sum(int(out) for out, _ in outputs) == 1
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        assert len(await store.list_runs()) == 1
        # 75 takes from a bucket of 30: exactly 30 went through, so it is empty.
        assert await store.take_tokens("b", capacity=30, refill_per_second=1e-9) > 0
    finally:
        await store.close()


_CLAIM_CHILD = """
    import sys, anyio
    from nexus_core.storage.sqlite import SQLiteStorage

    async def main(url, owner):
        store = SQLiteStorage(url)
        await store.open()
        won = []
        for i in range(30):
            if await store.claim_run(f"r{i}", owner, lease=30.0, now=100.0) is not None:
                won.append(f"r{i}")
        await store.close()
        print(" ".join(won))

    anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_processes_claim_each_run_once(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    for i in range(30):  # expired leases of a dead owner: claimable by anyone
        await store.create_run(
            RunRecord(
                id=f"r{i}",
                workflow="w",
                status="running",
                created_at=float(i),
                owner="dead",
                fence=1,
                lease_expires_at=50.0,
            )
        )
    await store.close()
    children = [_run_child(_CLAIM_CHILD, _url(db_path), f"p{n}") for n in range(3)]
    outputs = [
        await anyio.to_thread.run_sync(functools.partial(child.communicate, timeout=60))
        for child in children
    ]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    won = [rid for out, _ in outputs for rid in out.split()]
    assert sorted(won) == sorted(f"r{i}" for i in range(30))  # each run exactly once
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        for run in await store.list_runs(limit=100):
            assert run.fence == 2
            assert run.id in outputs[int(run.owner[1:])][0].split()  # type: ignore[index]
    finally:
        await store.close()


# -- durability ------------------------------------------------------------------

_CHECKPOINT_CHILD = """
    import sys, anyio
    from nexus_core.storage.base import NodeCheckpoint, RunRecord
    from nexus_core.storage.sqlite import SQLiteStorage

    async def main(url):
        store = SQLiteStorage(url)
        await store.open()
        await store.create_run(RunRecord(id="r1", workflow="w", created_at=1.0))
        i = 0
        while True:
            await store.save_checkpoint(
                NodeCheckpoint(run_id="r1", node_id=f"n{i}", status="completed", output=i)
            )
            print(i, flush=True)  # reported only once the write returned
            i += 1

    anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_checkpoints_survive_sigkill(db_path: Path) -> None:
    child = _run_child(_CHECKPOINT_CHILD, _url(db_path))
    assert child.stdout is not None
    reported: list[int] = []

    def read_until(n: int) -> None:
        assert child.stdout is not None
        while len(reported) < n and (line := child.stdout.readline()):
            reported.append(int(line))

    try:
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(read_until, 200)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, err = await anyio.to_thread.run_sync(functools.partial(child.communicate, timeout=30))
    assert child.returncode == -signal.SIGKILL, err
    reported.extend(int(line) for line in out.split())
    assert len(reported) >= 200

    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        saved = await store.get_checkpoints("r1")
    finally:
        await store.close()
    assert all(f"n{i}" in saved for i in reported)
    assert all(saved[f"n{i}"].output == i for i in reported)


# -- throughput sanity ------------------------------------------------------------


async def test_many_writes_stay_fast(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        await store.create_run(RunRecord(id="r", workflow="w", created_at=1.0))
        start = time.perf_counter()
        for i in range(200):
            await store.save_checkpoint(NodeCheckpoint(run_id="r", node_id=f"n{i}", status="ok"))
        assert time.perf_counter() - start < 10  # generous: catches an fsync per write on CI
    finally:
        await store.close()


# -- checkpoints off the write path -------------------------------------------------


def _wal_pages(db_path: Path) -> int:
    """The WAL file's size in pages: its high-water mark (SQLite reuses it from the start)."""
    try:
        size = Path(f"{db_path}-wal").stat().st_size
    except FileNotFoundError:
        return 0
    return max(0, size - 32) // (4096 + 24)  # a 32-byte header, then 24 bytes a page


async def test_commits_never_checkpoint_and_the_wal_stays_bounded(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    store.checkpoint_after, store.wal_limit = 20, 60
    await store.open()
    try:
        assert store._writer is not None
        checkpointer = store._checkpointer
        assert checkpointer is not None
        [[auto]] = await store._writer.execute_fetchall("PRAGMA wal_autocheckpoint")
        assert auto == 0  # no commit (nor the writes queued behind it) waits for a checkpoint
        written = 0
        reads = 0

        async def read_along() -> None:
            # A reader during checkpoints: always a gap-free prefix of what was written.
            nonlocal reads
            while True:
                after = max(0, written - 50)
                page = await store.read_events(after=event_id(after), limit=100)
                seqs = [int(e.id) for e in page]
                assert seqs == list(range(after + 1, after + 1 + len(seqs)))
                assert [e.data["i"] for e in page] == [seq - 1 for seq in seqs]
                reads += 1
                await anyio.lowlevel.checkpoint()

        # One event a commit, as a bus appends them at a steady rate: at least a page
        # each, 3000 pages unless the WAL is reused. Written until the WAL's file is
        # small again (a checkpointer held up by a busy machine empties it when past
        # twice the limit), with checkpoints and reads under way meanwhile.
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_along)
                while written < 3000 or checkpointer.checkpoints < 10 or reads < 10:
                    await store.append_events([Event(type="e", data={"i": written})])
                    written += 1
                while _wal_pages(db_path) > 10 * store.wal_limit:
                    await store.append_events([Event(type="e", data={"i": written})])
                    written += 1
                tg.cancel_scope.cancel()
        assert _wal_pages(db_path) <= 10 * store.wal_limit < written
    finally:
        await store.close()
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:  # every commit is there after a close (whose checkpoint removes the WAL)
        assert await store.last_event_id() == event_id(written)
    finally:
        await store.close()


async def test_a_reader_keeps_its_snapshot_and_the_wal_is_emptied_after(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    store.checkpoint_after, store.wal_limit = 20, 60
    await store.open()
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        checkpointer = store._checkpointer
        assert checkpointer is not None
        await store.append_events([Event(type="e") for _ in range(10)])
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchall() == [(10,)]
        # Checkpoints cannot copy past the reader's snapshot: the WAL grows past
        # twice the limit, where a checkpoint waits (100 ms) for the reader, in vain.
        with anyio.fail_after(60):
            while checkpointer.wal_pages < 2 * store.wal_limit:
                await store.append_events([Event(type="e")])
        assert checkpointer.truncations == 0
        assert reader.execute("SELECT count(*) FROM events").fetchall() == [(10,)]
        reader.execute("COMMIT")
        # The reader gone, the next checkpoint past the limit empties the WAL.
        with anyio.fail_after(60):
            while checkpointer.truncations == 0:
                await store.append_events([Event(type="e")])
        [[count]] = reader.execute("SELECT count(*) FROM events").fetchall()
        assert await store.last_event_id() == event_id(count)
    finally:
        reader.close()
        await store.close()


class _BeforeEventRebuild(SQLiteStorage):
    """The schema with a stored event id column (steps 1-4)."""

    migrations = SQLiteStorage.migrations[:4]


async def test_migration_5_drops_the_event_id_and_never_reuses_a_position(
    db_path: Path,
) -> None:
    old = _BeforeEventRebuild(_url(db_path))
    await old.open()
    await old.close()
    with sqlite3.connect(db_path) as conn:  # as step 4's code appended them
        for seq, kind in enumerate("abc", 1):
            data = f'{{"type": "{kind}", "run_id": "r1", "time": 1.0}}'
            conn.execute(
                "INSERT INTO events (seq, id, run_id, data) VALUES (?, ?, 'r1', ?)",
                (seq, event_id(seq), data),
            )
        conn.execute("DELETE FROM events WHERE seq = 3")  # the newest pruned away

    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        kept = await store.read_events()
        assert [(e.type, e.id, e.run_id) for e in kept] == [
            ("a", event_id(1), "r1"),
            ("b", event_id(2), "r1"),
        ]
        assert [e.type for e in await store.read_events(run_id="r1")] == ["a", "b"]
        [new] = await store.append_events([Event(type="d")])
        assert new.id == event_id(4)  # position 3 was handed out once: never again
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        assert columns == ["seq", "run_id", "data"]
        indexes = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "events_run" in indexes


async def test_positions_are_not_reused_after_the_whole_log_is_pruned(db_path: Path) -> None:
    store = SQLiteStorage(_url(db_path))
    await store.open()
    try:
        await store.append_events([Event(type="a"), Event(type="b")])
        with sqlite3.connect(db_path) as conn:
            conn.execute("DELETE FROM events")
        [new] = await store.append_events([Event(type="c")])
        assert new.id == event_id(3)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("query", "pragma"), [("", 1), ("?synchronous=normal", 1), ("?synchronous=FULL", 2)]
)
async def test_synchronous_is_chosen_in_the_url(db_path: Path, query: str, pragma: int) -> None:
    store = SQLiteStorage(_url(db_path) + query)
    await store.open()
    try:
        assert store.path == str(db_path)
        assert store._writer is not None
        [[value]] = await store._writer.execute_fetchall("PRAGMA synchronous")
        assert value == pragma  # 1: NORMAL, 2: FULL
        await store.append_events([Event(type="a")])
        assert [e.type for e in await store.read_events()] == ["a"]
    finally:
        await store.close()


@given(
    query=st.dictionaries(
        st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12),
        st.text(max_size=8),
        min_size=1,
        max_size=3,
    )
)
def test_a_bad_sqlite_url_option_names_itself(query: dict[str, str]) -> None:
    good = query.get("synchronous", "normal").lower() in ("normal", "full")
    assume(not (set(query) == {"synchronous"} and good))
    url = "sqlite:///x.db?" + urllib.parse.urlencode(query)
    with pytest.raises(ValueError, match="synchronous") as error:
        SQLiteStorage(url)
    assert url in str(error.value)
