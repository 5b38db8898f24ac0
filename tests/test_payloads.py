"""Large run values by reference (``services.runs.inline_limit``) on the core's memory and SQLite.

The S3 plugin's tests run the same path against a real S3 API; these need no plugin.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import Nexus, WorkflowBuilder
from nexus_core.errors import RunNotFound
from nexus_core.payloads import (
    BLOB_REF,
    Payloads,
    blob_ref,
    has_blob_refs,
    is_blob_ref,
    run_blob_prefix,
)
from nexus_core.storage.memory import MemoryStorage
from nexus_core.workflows import FunctionNode

pytestmark = pytest.mark.anyio

LIMIT = 10_000


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'nexus.db'}"


def make_app(storage_url: str, limit: int | None = LIMIT, **runs: Any) -> Nexus:
    app = Nexus(
        "payloads",
        storage=storage_url,
        autoload=False,
        config={"services": {"runs": {"inline_limit": limit, **runs}}},
        env={},
    )

    @app.workflow
    def blow_up(text: str, times: int) -> str:
        """Repeat ``text``."""
        return text * times

    @app.workflow
    def measure(text: str) -> int:
        """The length of ``text``."""
        return len(text)

    return app


async def _read(app: Nexus, run_id: str) -> bytes:
    _ref, chunks = await app.open_output(run_id, chunk_size=4096)
    return b"".join([chunk async for chunk in chunks])


async def test_large_output_is_stored_by_reference(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("blow_up", {"text": "é-", "times": 20_000})
        assert result.status == "completed"
        ref = blob_ref(result.output)
        assert ref is not None, result.output
        expected = msgspec.json.encode("é-" * 20_000)
        assert ref.size == len(expected)
        assert ref.sha256 == hashlib.sha256(expected).hexdigest()
        # The stored run and its checkpoint hold references, not the value.
        storage = app.storage
        record = await storage.get_run(result.run_id)
        assert record is not None
        assert len(msgspec.json.encode(record)) < 2_000
        for checkpoint in (await storage.get_checkpoints(result.run_id)).values():
            assert len(msgspec.json.encode(checkpoint)) < 2_000
            assert has_blob_refs(checkpoint.output)
        # get_run shows the reference; open_output streams the bytes.
        again = await app.get_run(result.run_id)
        assert again.output == result.output
        assert await _read(app, result.run_id) == expected
        got = await storage.get_blob(ref.key)
        assert got == expected
        # The node's output and the run's are the same bytes: stored once.
        assert await storage.list_blobs("runs/") == [ref.key]


async def test_small_output_stays_inline_and_streams_too(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("blow_up", {"text": "ab", "times": 3})
        assert result.output == "ababab"
        ref, _chunks = await app.open_output(result.run_id)
        assert ref is None
        assert await _read(app, result.run_id) == b'"ababab"'
        assert await app.storage.list_blobs("runs/") == []


async def test_no_limit_keeps_everything_inline(storage_url: str) -> None:
    app = make_app(storage_url, limit=None)
    async with app:
        result = await app.invoke("blow_up", {"text": "x", "times": 50_000})
        assert result.output == "x" * 50_000
        assert await app.storage.list_blobs() == []


async def test_large_inputs_are_stored_by_reference(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("measure", {"text": "y" * 30_000})
        assert result.output == 30_000
        record = await app.storage.get_run(result.run_id)
        assert record is not None
        assert set(record.inputs) == {"text"}  # still an object: its large field by reference
        key = record.inputs["text"][BLOB_REF]["key"]
        assert key.endswith("/inputs/text")
        assert await app.storage.get_blob(key) == msgspec.json.encode("y" * 30_000)


async def test_output_of_unfinished_or_failed_run_is_not_found(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        with pytest.raises(RunNotFound, match="no run"):
            await app.open_output("nope")


async def test_resume_loads_referenced_inputs_and_checkpoints(tmp_path: Path) -> None:
    """A run interrupted after a large node output resumes from its referenced checkpoint."""
    url = f"sqlite:///{tmp_path / 'nexus.db'}"
    release = anyio.Event()
    second_started = anyio.Event()
    calls: list[str] = []

    def build(app: Nexus) -> None:
        def first(text: str) -> str:
            calls.append("first")
            return text * 2

        async def second(y: str) -> int:
            calls.append("second")
            second_started.set()
            await release.wait()
            return len(y)

        wb = WorkflowBuilder("pipeline")
        wb.add_node(FunctionNode, "first", {"function": first})
        wb.add_node(FunctionNode, "second", {"function": second})
        wb.add_connection("first", "result", "second", "y")
        wb.add_workflow_inputs("first", {"text": "text"})
        wb.set_output("second", "result")
        app.register(wb)

    one = make_app(url, shutdown_grace=0.01)
    build(one)
    async with one:
        pending = await one.invoke("pipeline", {"text": "z" * 20_000}, wait=False)
        with anyio.fail_after(10):
            await second_started.wait()
        checkpoints = await one.storage.get_checkpoints(pending.run_id)
        assert has_blob_refs(checkpoints["first"].output)
    release.set()
    two = make_app(url, recover="always")
    build(two)
    async with two:
        with anyio.fail_after(20):
            result = await two.wait(pending.run_id)
    assert result.status == "completed", result.error
    assert result.output == 40_000
    assert calls == ["first", "second", "second"]  # first was not executed again


async def test_object_fields_by_reference_stream_as_one_document() -> None:
    store = MemoryStorage("memory://")
    payloads = Payloads(store, 500)
    value = {"small": 1, "big": "b" * 1000, "odd/name": ["c"] * 200, "none": None}
    stored = await payloads.store(value, "v")
    assert stored["small"] == 1 and stored["none"] is None
    assert is_blob_ref(stored["big"]) and is_blob_ref(stored["odd/name"])
    assert await store.list_blobs() == ["v/#2", "v/big"]
    assert await payloads.load(stored) == value
    streamed = b"".join([c async for c in payloads.open(stored, chunk_size=7)])
    assert msgspec.json.decode(streamed) == value
    # Many small fields: the object itself goes by reference.
    many = {f"f{i}": i for i in range(100)}
    assert is_blob_ref(await payloads.store(many, "m"))


async def test_payloads_reuse_and_missing_blob() -> None:
    store = MemoryStorage("memory://")
    payloads = Payloads(store, 10)
    ref = await payloads.store("a" * 100, "k1")
    assert is_blob_ref(ref)
    assert await payloads.store("a" * 100, "k2", reuse=[ref]) is ref
    assert await store.list_blobs() == ["k1"]
    assert await payloads.load(ref) == "a" * 100
    assert await payloads.store(12345678901234, "k3") == 12345678901234
    await store.delete_blob("k1")
    with pytest.raises(LookupError, match="k1"):
        await payloads.load(ref)


def test_sqlite_run_rows_stay_small(tmp_path: Path) -> None:
    """The runs table of a SQLite store holding a large output by reference stays small."""
    db = tmp_path / "nexus.db"

    async def main() -> None:
        app = make_app(f"sqlite:///{db}")
        async with app:
            for _ in range(3):
                assert (await app.invoke("blow_up", {"text": "q", "times": 200_000})).ok

    anyio.run(main)
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if "blob" in table:
                continue
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                biggest = conn.execute(
                    f"SELECT max(length(CAST({column} AS BLOB))) FROM {table}"
                ).fetchone()[0]
                assert biggest is None or biggest < 10_000, (table, column, biggest)


async def test_retention_prunes_the_blobs_of_pruned_runs(storage_url: str) -> None:
    from nexus_core.housekeeping import DAY, prune_old_records

    app = make_app(storage_url)
    app.config.nexus.services.monitoring.retention_days = 1.0
    async with app:
        old = await app.invoke("blow_up", {"text": "o", "times": 20_000})
        keep = await app.invoke("measure", {"text": "k" * 30_000})
        assert len(await app.storage.list_blobs("runs/")) == 2
        # A day later nothing is old enough; ten days later both runs and their blobs go.
        await prune_old_records(app, now=time.time() + DAY)
        assert len(await app.storage.list_blobs("runs/")) == 2
        await prune_old_records(app, now=time.time() + 10 * DAY)
        assert await app.storage.get_run(old.run_id) is None
        assert await app.storage.get_run(keep.run_id) is None
        assert await app.storage.list_blobs("runs/") == []


class _BrokenBlobs(MemoryStorage):
    """Memory storage whose blob store is down."""

    async def put_blob(self, key: str, data: bytes) -> None:
        raise OSError(f"blob store down (putting {key})")


async def test_a_blob_store_failure_fails_the_run_at_its_node_not_the_host() -> None:
    app = Nexus(
        "broken",
        storage=_BrokenBlobs("memory://"),
        autoload=False,
        config={"services": {"runs": {"inline_limit": LIMIT}}},
        env={},
    )
    ran: list[str] = []

    def make(n: int) -> str:
        return "m" * n

    def after(text: str) -> int:
        ran.append("after")
        return len(text)

    wb = WorkflowBuilder("chain")
    wb.add_node(FunctionNode, "make", {"function": make})
    wb.add_node(FunctionNode, "after", {"function": after})
    wb.add_connection("make", "result", "after", "text")
    wb.add_workflow_inputs("make", {"n": "n"})
    wb.set_output("after", "result")
    app.register(wb)
    async with app:
        failed = await app.invoke("chain", {"n": 50_000})
        assert failed.status == "failed"
        assert failed.error is not None
        assert failed.error.node == "make"
        assert failed.error.type == "OSError"
        assert "its output could not be stored: blob store down" in failed.error.message
        assert ran == []  # the run stopped at the node
        stored = await app.get_run(failed.run_id)
        assert stored.status == "failed" and stored.nodes["make"].status == "failed"
        small = await app.invoke("chain", {"n": 5})  # the host goes on
        assert small.status == "completed" and small.output == 5


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_run_blob_prefix_day_is_the_utc_day(when: float) -> None:
    expected = time.strftime("%Y%m%d", time.gmtime(when))
    assert run_blob_prefix("t", "r", when) == f"runs/{expected}/t/r/"
