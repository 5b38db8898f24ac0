"""Operating the queue: ``/health/ready``'s ``queue`` check and the queue's Prometheus series.

In process, like ``test_executor.py``: a gateway host and a worker host on a
queue database of the test's own, the run store a SQLite file. The series are
read from each host's own registry (what its ``/metrics`` serves; the HTTP
side is in ``test_deployment_doc.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from nexus_core import Nexus
from nexus_core.plugin import ConfigError
from test_executor import HEARTBEAT, LEASE, make_app, wait_until, work
from test_executor_support import fresh_database, queue_rows

from nexus_plugin_postgres.executor import ProcrastinateExecutor

pytestmark = pytest.mark.anyio


@pytest.fixture
def queue_url() -> Iterator[str]:
    yield from fresh_database()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def sample(app: Nexus, name: str, **labels: str) -> float:
    """A series' value in the host's registry (0 when it has none yet)."""
    value = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def executor_of(app: Nexus) -> ProcrastinateExecutor:
    executor = app.engine.executor
    assert isinstance(executor, ProcrastinateExecutor)
    return executor


async def queue_check(app: Nexus) -> Any:
    report = await app.readiness()
    (check,) = [c for c in report.checks if c.name == "queue"]
    return report, check


async def test_ready_needs_a_live_worker_and_says_what_it_found(
    store_url: str, queue_url: str
) -> None:
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway:
        await gateway.invoke("double", {"x": 1}, wait=False)
        report, check = await queue_check(gateway)
        assert report.status == "fail" and not check.ok
        assert check.detail.startswith("QueueNotReady: 0 workers, 1 jobs waiting")
        assert "ready_min_workers = 1" in check.detail and "nexus worker" in check.detail
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(work(worker))

            async def ready() -> bool:
                return (await gateway.readiness()).ok

            await wait_until(ready)
            report, check = await queue_check(gateway)
            assert check.ok and check.detail.startswith("1 worker, ")
            tg.cancel_scope.cancel()


async def test_ready_without_workers_when_asked_and_not_without_the_tables(
    store_url: str, queue_url: str
) -> None:
    gateway = make_app(store_url, queue_url, ready_min_workers=0)
    async with gateway:
        report, check = await queue_check(gateway)
        assert report.ok and check.detail == "0 workers, 0 jobs waiting"
        queue_rows(queue_url, "DROP TABLE procrastinate_workers CASCADE")
        report, check = await queue_check(gateway)
    assert report.status == "fail" and not check.ok
    assert check.detail.startswith("QueueNotReady: the queue's tables do not answer: ")
    assert "procrastinate_workers" in check.detail  # the database's own error


async def test_a_negative_ready_min_workers_is_refused_naming_it(store_url: str) -> None:
    with pytest.raises(ConfigError, match="ready_min_workers must be 0 or more, got -1"):
        make_app(store_url, "postgresql://x/y", ready_min_workers=-1)


async def test_depth_workers_and_latency_series(store_url: str, queue_url: str) -> None:
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway:
        runs = [(i, await gateway.invoke("double", {"x": i}, wait=False)) for i in range(3)]
        await executor_of(gateway).refresh_metrics()
        assert sample(gateway, "nexus_queue_depth", queue="double") == 3
        assert sample(gateway, "nexus_queue_depth", queue="urgent") == 0  # every workflow's queue
        assert sample(gateway, "nexus_queue_workers") == 0
        waited = time.time()
        async with worker, anyio.create_task_group() as tg:
            tg.start_soon(work(worker, concurrency=3))
            with anyio.fail_after(30):
                for x, run in runs:
                    assert (await gateway.wait(run.run_id)).output == x * 2

            async def refreshed() -> bool:
                await executor_of(gateway).refresh_metrics()
                return sample(gateway, "nexus_queue_workers") == 1

            await wait_until(refreshed)
            tg.cancel_scope.cancel()
        assert sample(gateway, "nexus_queue_depth", queue="double") == 0
        # The worker that started the jobs observed their latency; the gateway started none.
        count = sample(worker, "nexus_queue_job_latency_seconds_count", queue="double")
        total = sample(worker, "nexus_queue_job_latency_seconds_sum", queue="double")
        assert count == 3
        assert 0 < total <= 3 * (time.time() - waited + 1)
        assert sample(gateway, "nexus_queue_job_latency_seconds_count", queue="double") == 0
        body, _ = gateway.metrics.render()
    assert b"nexus_queue_retries_total" in body and b"nexus_run_takeovers_total" in body


async def test_the_reapers_and_the_sweeps_retries_are_counted(
    store_url: str, queue_url: str
) -> None:
    """A job held by a dead worker is requeued (stalled); a run without a job gets one (no_job)."""
    gateway = make_app(store_url, queue_url)
    async with gateway:
        run = await gateway.invoke("double", {"x": 5}, wait=False)
        manager = executor_of(gateway).queue.job_manager
        dead = await manager.register_worker()
        job = await manager.fetch_job(queues=None, worker_id=dead)
        assert job is not None and job.task_kwargs["run_id"] == run.run_id
        queue_rows(
            queue_url,
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' "
            "WHERE id = %s",
            dead,
        )

        def retries(reason: str) -> float:
            return sample(gateway, "nexus_queue_retries_total", queue="double", reason=reason)

        async def reaped() -> bool:
            return retries("stalled") > 0

        await wait_until(reaped)  # the gateway's own reaper, every heartbeat
        assert retries("stalled") == 1
        assert queue_rows(
            queue_url, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", job.id
        ) == [("todo",)]

        queue_rows(queue_url, "DELETE FROM procrastinate_jobs")  # the job is lost

        async def swept() -> bool:
            return retries("no_job") > 0

        await wait_until(swept, within=10 * (LEASE + HEARTBEAT))
        assert retries("no_job") == 1
