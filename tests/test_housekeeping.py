"""The host's schedule: retention_days prunes old records, export_url receives metrics pushes."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from nexus_core import Nexus
from nexus_core.events import Event
from nexus_core.housekeeping import DAY, prune_old_records
from nexus_core.storage.base import AuditRecord, NodeCheckpoint, RunRecord, Storage
from nexus_core.storage.memory import MemoryStorage
from nexus_core.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _app(storage: str | Storage, **monitoring: Any) -> Nexus:
    app = Nexus(
        config={"services": {"monitoring": monitoring}},
        storage=storage,
        autoload=False,
        env={},
    )

    @app.workflow
    def greet(name: str) -> str:
        return f"Hello, {name}"

    return app


async def _seed_old(storage: Storage, old: float) -> None:
    """Records three days old (and an old run still running), written before the host starts."""
    for i in range(7):
        await storage.create_run(
            RunRecord(
                id=f"old{i}",
                workflow="greet",
                status="completed",
                created_at=old,
                finished_at=old + 1,
            )
        )
        await storage.save_checkpoint(
            NodeCheckpoint(run_id=f"old{i}", node_id="greet", status="completed")
        )
    await storage.create_run(
        RunRecord(id="stuck", workflow="gone", status="running", created_at=old)
    )
    await storage.append_events([Event(type="run.started", time=old + i) for i in range(9)])
    await storage.append_audits(
        [
            AuditRecord(id=f"a{i}", time=old + i, action="invoke", outcome="allowed")
            for i in range(9)
        ]
    )


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``condition`` to hold, polling; fail after 20 s."""
    with anyio.fail_after(20):
        while True:
            if await condition():
                return
            await anyio.sleep(0.01)


async def _wait_until_pruned(app: Nexus) -> None:
    storage = app.storage
    assert storage is not None

    async def gone() -> bool:
        return await storage.get_run("old6") is None

    await _until(gone)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_retention_prunes_old_records_on_schedule_and_keeps_recent_ones(
    backend: str, tmp_path: Path
) -> None:
    old = time.time() - 3 * DAY
    if backend == "memory":
        target: str | Storage = MemoryStorage()
        seeded: Storage = target  # type: ignore[assignment]
    else:
        target = f"sqlite:///{tmp_path / 'retention.db'}"
        seeded = SQLiteStorage(target)
    await seeded.open()
    await _seed_old(seeded, old)
    if backend == "sqlite":
        await seeded.close()

    # Two days of retention, batches of 3: the host prunes at start and every 50 ms.
    app = _app(target, retention_days=2, retention_interval=0.05, retention_batch=3)
    async with app:
        recent = await app.invoke("greet", {"name": "Ada"})
        await _wait_until_pruned(app)
        storage = app.storage
        assert storage is not None
        for i in range(7):
            assert await storage.get_run(f"old{i}") is None
            assert await storage.get_checkpoints(f"old{i}") == {}
        # An unfinished run is never pruned, whatever its age.
        assert await storage.get_run("stuck") is not None
        # The recent run, its events and its audit record stay.
        assert (await app.get_run(recent.run_id)).status == "completed"

        async def old_events_gone() -> bool:
            return all(e.time > old + 100 for e in await storage.read_events())

        await _until(old_events_gone)
        kept = await storage.read_events()
        assert any(e.run_id == recent.run_id for e in kept)

        async def old_audit_gone() -> bool:
            return all(a.time > old + 100 for a in await storage.query_audit(limit=1000))

        await _until(old_audit_gone)
        audit = await storage.query_audit(limit=1000)
        assert any(a.run_id == recent.run_id for a in audit)
        # Requests were served all along: another run now, between prunes.
        assert (await app.invoke("greet", {"name": "Bo"})).status == "completed"


async def test_prune_old_records_without_retention_does_nothing() -> None:
    storage = MemoryStorage()
    await _seed_old(storage, time.time() - 30 * DAY)
    app = _app(storage)
    async with app:
        assert await prune_old_records(app) == 0
        assert await storage.get_run("old0") is not None


class _Gateway:
    """A tiny HTTP server that records what a Pushgateway would receive."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, bytes]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                gateway.pushes.append((self.command, self.path, self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    found = _Gateway()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


async def test_metrics_are_pushed_every_export_interval(gateway: _Gateway) -> None:
    app = _app("memory://", export_url=gateway.url, export_interval=0.05, export_job="coffee")
    async with app:
        await app.invoke("greet", {"name": "Ada"})

        async def pushed() -> bool:
            return any(b'workflow="greet"' in body for _, _, body in gateway.pushes)

        await _until(pushed)
        count = len(gateway.pushes)

        async def pushed_again() -> bool:  # and again, on schedule
            return len(gateway.pushes) >= count + 2

        await _until(pushed_again)
    method, path, body = next(p for p in gateway.pushes if b'workflow="greet"' in p[2])
    assert method == "PUT"
    assert path == f"/metrics/job/coffee/instance/{app.instance_id}"
    assert b"nexus_requests_total" in body


async def test_an_unreachable_gateway_is_logged_and_the_host_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app("memory://", export_url="http://127.0.0.1:9", export_interval=0.05)
    with caplog.at_level("WARNING", logger="nexus.housekeeping"):
        async with app:

            async def warned() -> bool:
                return any("pushing metrics" in r.message for r in caplog.records)

            await _until(warned)
            assert (await app.invoke("greet", {"name": "Ada"})).status == "completed"
