"""The ``procrastinate`` executor, in process: a gateway host and worker hosts on one database.

Each test has a PostgreSQL database of its own (the queue). The run store and
event log are a SQLite file shared by the hosts of the test (or, where
parametrized, the same PostgreSQL database through this plugin's storage).
Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from nexus_core import Nexus
from nexus_core.errors import PluginLoadFailed
from nexus_core.plugin import ConfigError
from nexus_core.storage.base import RunRecord
from nexus_core.workflows import RunResult
from test_executor_support import PLUGIN, fresh_database, queue_rows

from nexus_plugin_postgres.executor import TASK_NAME, ProcrastinateExecutor

LEASE = 1.5
HEARTBEAT = 0.3

pytestmark = pytest.mark.anyio


@pytest.fixture
def queue_url() -> Iterator[str]:
    yield from fresh_database()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


class Probe:
    """What the test workflows did: the order they ran in, how many ran at once."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.running = 0
        self.most = 0
        self.release = anyio.Event()


def make_app(store: str, queue: str, probe: Probe | None = None, **section: Any) -> Nexus:
    runs = {"executor": "procrastinate", "lease": LEASE, "heartbeat": HEARTBEAT}
    config = {"services": {"runs": runs}, "plugins": {"procrastinate": {"url": queue, **section}}}
    app = Nexus("pq", storage=store, autoload=False, plugins=[PLUGIN], config=config, env={})
    probe = probe or Probe()

    @app.workflow
    async def double(x: int) -> int:
        probe.order.append(f"double:{x}")
        return x * 2

    @app.workflow(tags=("priority:5",))
    async def urgent(x: int) -> int:
        probe.order.append(f"urgent:{x}")
        return x

    @app.workflow
    async def gated(x: int) -> int:
        probe.running += 1
        probe.most = max(probe.most, probe.running)
        try:
            await probe.release.wait()
        finally:
            probe.running -= 1
        return x

    return app


def job_statuses(queue: str, run_id: str) -> list[str]:
    rows = queue_rows(
        queue,
        "SELECT status::text FROM procrastinate_jobs WHERE args->>'run_id' = %s ORDER BY id",
        run_id,
    )
    return [row[0] for row in rows]


async def wait_until(check: Any, within: float = 20.0) -> None:
    """Poll ``check`` (state in another process or database: nothing to wait on) until true."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - the state lives outside this process
            await anyio.sleep(0.05)


def work(app: Nexus, **options: Any) -> Any:
    return lambda: app.engine.executor.work(app.engine, **options)


async def test_the_plugin_registers_the_procrastinate_executor(store_url: str) -> None:
    app = make_app(store_url, "postgresql://postgres@127.0.0.1:5432/test")
    executor = app.engine.executor
    assert isinstance(executor, ProcrastinateExecutor)
    assert executor.needs_workers and not executor.inline


async def test_without_a_postgresql_url_the_error_names_the_setting(store_url: str) -> None:
    app = Nexus(
        "pq",
        storage=store_url,
        autoload=False,
        plugins=[PLUGIN],
        config={"services": {"runs": {"executor": "procrastinate"}}},
        env={},
    )
    # The host reports it as the executor that could not be created, naming the setting.
    with pytest.raises(PluginLoadFailed, match=r"set nexus\.plugins\.procrastinate\.url"):
        app.engine.load_executor()


async def test_bad_limits_are_refused_naming_the_workflow(store_url: str) -> None:
    with pytest.raises(ConfigError, match="limits.gated must be at least 1"):
        make_app(store_url, "postgresql://x/y", limits={"gated": 0})


async def test_a_gateway_gets_its_result_from_a_worker(store_url: str, queue_url: str) -> None:
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway, worker:
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker, concurrency=2))
            with anyio.fail_after(30):
                result = await gateway.invoke("double", {"x": 21})
            tg.cancel_scope.cancel()
        record = await gateway.storage.get_run(result.run_id)  # type: ignore[union-attr]
    assert result.status == "completed" and result.output == 42
    assert record is not None and record.fence == 1  # claimed once, by the worker's job
    assert record.owner == worker.engine.owner_id
    assert job_statuses(queue_url, result.run_id) == ["succeeded"]


async def test_a_queued_run_waits_in_its_workflow_queue(store_url: str, queue_url: str) -> None:
    before = time.time()
    async with make_app(store_url, queue_url) as gateway:
        run = await gateway.invoke("double", {"x": 1}, wait=False)
    assert run.status == "pending"
    rows = queue_rows(
        queue_url,
        "SELECT queue_name, task_name, status::text, args FROM procrastinate_jobs",
    )
    (row,) = rows
    args = row[3]
    deferred_at = args.pop("deferred_at")  # for the job latency series
    assert row == ("double", TASK_NAME, "todo", {"run_id": run.run_id, "workflow": "double"})
    assert before <= deferred_at <= time.time()


async def test_queues_name_the_workflows_a_worker_executes(store_url: str, queue_url: str) -> None:
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway, worker:
        first = await gateway.invoke("double", {"x": 2}, wait=False)
        second = await gateway.invoke("urgent", {"x": 3}, wait=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker, queues=("urgent",)))
            with anyio.fail_after(30):
                done = await gateway.wait(second.run_id)
            tg.cancel_scope.cancel()
        left = await gateway.storage.get_run(first.run_id)  # type: ignore[union-attr]
    assert done.status == "completed"
    assert left is not None and left.status == "pending" and left.fence == 0
    assert job_statuses(queue_url, first.run_id) == ["todo"]


async def test_higher_priority_runs_go_first(store_url: str, queue_url: str) -> None:
    probe = Probe()
    gateway = make_app(store_url, queue_url, probe)
    worker = make_app(store_url, queue_url, probe)
    async with gateway, worker:
        runs = [await gateway.invoke("double", {"x": i}, wait=False) for i in range(3)]
        runs += [await gateway.invoke("urgent", {"x": i}, wait=False) for i in range(3)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker, concurrency=1))
            with anyio.fail_after(30):
                for run in runs:
                    await gateway.wait(run.run_id)
            tg.cancel_scope.cancel()
    # urgent has the tag priority:5: its runs, queued last, ran first, each queue in order.
    assert probe.order == [f"urgent:{i}" for i in range(3)] + [f"double:{i}" for i in range(3)]


async def test_configured_priorities_win_over_tags(store_url: str, queue_url: str) -> None:
    probe = Probe()
    section = {"priorities": {"double": 10}}
    gateway = make_app(store_url, queue_url, probe, **section)
    worker = make_app(store_url, queue_url, probe, **section)
    async with gateway, worker:
        runs = [await gateway.invoke("urgent", {"x": 0}, wait=False)]
        runs += [await gateway.invoke("double", {"x": 0}, wait=False)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker, concurrency=1))
            with anyio.fail_after(30):
                for run in runs:
                    await gateway.wait(run.run_id)
            tg.cancel_scope.cancel()
    assert probe.order == ["double:0", "urgent:0"]


async def test_a_concurrency_limit_holds_across_workers(store_url: str, queue_url: str) -> None:
    probe = Probe()
    section = {"limits": {"gated": 2}}
    gateway = make_app(store_url, queue_url, probe, **section)
    workers = [make_app(store_url, queue_url, probe, **section) for _ in range(2)]
    async with gateway, workers[0], workers[1]:
        runs = [await gateway.invoke("gated", {"x": i}, wait=False) for i in range(6)]
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(work(worker, concurrency=4))

            async def two_running() -> bool:
                return probe.running == 2

            await wait_until(two_running)
            # Eight slots, six runs, a limit of two: others stay queued, however long we look.
            for _ in range(10):
                await anyio.sleep(HEARTBEAT)  # let the other jobs try (and bounce) meanwhile
                assert probe.running == 2
            probe.release.set()
            with anyio.fail_after(30):
                results = [await gateway.wait(run.run_id) for run in runs]
            tg.cancel_scope.cancel()
    assert [r.status for r in results] == ["completed"] * 6
    assert probe.most == 2


async def test_cancelling_a_queued_run_cancels_its_job(store_url: str, queue_url: str) -> None:
    async with make_app(store_url, queue_url) as gateway:
        run = await gateway.invoke("double", {"x": 3}, wait=False)
        assert await gateway.cancel(run.run_id)
        result = await gateway.get_run(run.run_id)
    assert result.status == "cancelled"
    assert job_statuses(queue_url, run.run_id) == ["cancelled"]


@contextlib.asynccontextmanager
async def gated_run_executing(
    store_url: str, queue_url: str, probe: Probe
) -> AsyncIterator[tuple[Nexus, RunResult]]:
    """A gateway, and the run of ``gated`` it accepted, executing at a worker (stopped after)."""
    gateway = make_app(store_url, queue_url, probe)
    worker = make_app(store_url, queue_url, probe)
    async with gateway, worker:
        run = await gateway.invoke("gated", {"x": 1}, wait=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker))

            async def running() -> bool:
                return probe.running == 1

            await wait_until(running)
            yield gateway, run
            tg.cancel_scope.cancel()


async def test_cancelling_a_running_run_aborts_its_job(store_url: str, queue_url: str) -> None:
    probe = Probe()
    async with gated_run_executing(store_url, queue_url, probe) as (gateway, run):
        assert await gateway.cancel(run.run_id)
        with anyio.fail_after(30):
            result = await gateway.wait(run.run_id)

        async def aborted() -> bool:
            return job_statuses(queue_url, run.run_id) == ["aborted"]

        await wait_until(aborted)
    assert result.status == "cancelled"
    assert probe.running == 0


async def test_a_run_cancelled_before_its_jobs_abort_arrives_still_aborts_the_job(
    store_url: str, queue_url: str
) -> None:
    # cancel() sends the run.cancel_requested event and then aborts the job; the
    # event can end the run first (the job's abort then finds nothing to abort).
    # Only the event is sent here: the job must end aborted all the same.
    async with gated_run_executing(store_url, queue_url, Probe()) as (gateway, run):
        record = await gateway.storage.get_run(run.run_id)  # type: ignore[union-attr]
        assert record is not None
        assert await gateway.engine.request_cancel(record)  # the event alone
        with anyio.fail_after(30):
            result = await gateway.wait(run.run_id)

        async def finished() -> bool:
            return job_statuses(queue_url, run.run_id) not in (["todo"], ["doing"])

        await wait_until(finished)
    assert result.status == "cancelled"
    assert job_statuses(queue_url, run.run_id) == ["aborted"]


async def test_the_reaper_requeues_the_job_of_a_dead_worker(store_url: str, queue_url: str) -> None:
    """A worker died holding a job (status doing) and the run's lease: another finishes it."""
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway, worker:
        run = await gateway.invoke("double", {"x": 5}, wait=False)
        executor = gateway.engine.executor
        assert isinstance(executor, ProcrastinateExecutor)
        manager = executor.queue.job_manager
        dead = await manager.register_worker()
        job = await manager.fetch_job(queues=None, worker_id=dead)
        assert job is not None and job.task_kwargs["run_id"] == run.run_id
        storage = gateway.storage
        assert storage is not None
        held = await storage.claim_run(run.run_id, "dead/1/x", lease=LEASE, now=time.time())
        assert held is not None and held.fence == 1
        queue_rows(
            queue_url,
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' "
            "WHERE id = %s",
            dead,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker))
            with anyio.fail_after(30):
                result = await gateway.wait(run.run_id)
            tg.cancel_scope.cancel()
        record = await storage.get_run(run.run_id)
    assert result.status == "completed" and result.output == 10
    assert record is not None and record.fence == 2  # the dead owner's claim, then the worker's
    assert job_statuses(queue_url, run.run_id) == ["succeeded"]
    (attempts,) = queue_rows(
        queue_url, "SELECT attempts FROM procrastinate_jobs WHERE id = %s", job.id
    )[0]
    assert attempts >= 1  # retried by the reaper (and again while the lease ran out)


async def test_the_sweep_gives_a_job_to_a_run_without_one(store_url: str, queue_url: str) -> None:
    gateway, worker = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with gateway, worker:
        run = await gateway.invoke("double", {"x": 4}, wait=False)
        queue_rows(queue_url, "DELETE FROM procrastinate_jobs")  # the job is lost
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker))
            with anyio.fail_after(30):
                result = await gateway.wait(run.run_id)
            tg.cancel_scope.cancel()
    assert result.status == "completed" and result.output == 8
    assert job_statuses(queue_url, run.run_id) == ["succeeded"]


async def test_sweeps_of_several_processes_at_once_defer_one_job(
    store_url: str, queue_url: str
) -> None:
    """Every host sweeps; two that find the same run without a job give it one job."""
    first, second = make_app(store_url, queue_url), make_app(store_url, queue_url)
    async with first, second:
        storage = first.storage
        assert storage is not None
        # A run stored a while ago without a job (none is on its way any more).
        then = time.time() - 60
        run = RunRecord(id="r-lost", workflow="double", inputs={"x": 4}, created_at=then)
        await storage.create_run(run)
        counts: list[int] = []

        async def sweep(app: Nexus) -> None:
            executor = app.engine.executor
            assert isinstance(executor, ProcrastinateExecutor)
            counts.append(await executor.sweep_once())

        async with anyio.create_task_group() as tg:
            for app in (first, second, first, second):
                tg.start_soon(sweep, app)
    assert sum(counts) <= 1  # (the hosts' own sweeps run too)
    assert job_statuses(queue_url, run.id) == ["todo"]


async def test_a_stopped_worker_hands_its_run_to_another(store_url: str, queue_url: str) -> None:
    probe = Probe()
    gateway = make_app(store_url, queue_url, probe)
    first, second = (make_app(store_url, queue_url, probe) for _ in range(2))
    async with gateway:
        run = await gateway.invoke("gated", {"x": 7}, wait=False)
        async with first, anyio.create_task_group() as tg:
            tg.start_soon(work(first))

            async def running() -> bool:
                return probe.running == 1

            await wait_until(running)
            tg.cancel_scope.cancel()  # stop claiming: the job goes back to the queue
        # `first` stopped: its run was stopped after the grace, its lease released.
        probe.release.set()
        async with second, anyio.create_task_group() as tg:
            tg.start_soon(work(second))
            with anyio.fail_after(30):
                result = await gateway.wait(run.run_id)
            tg.cancel_scope.cancel()
        record = await gateway.storage.get_run(run.run_id)  # type: ignore[union-attr]
    assert result.status == "completed"
    assert record is not None and record.owner == second.engine.owner_id and record.fence == 2


# -- the run store on the same PostgreSQL database: one transaction --------------------------


async def test_with_postgres_storage_the_run_and_its_job_commit_together(queue_url: str) -> None:
    gateway, worker = make_app(queue_url, queue_url), make_app(queue_url, queue_url)
    async with gateway, worker:
        executor = gateway.engine.executor
        assert isinstance(executor, ProcrastinateExecutor)
        assert executor._transactional_store(gateway.engine) is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(work(worker, concurrency=2))
            with anyio.fail_after(30):
                result = await gateway.invoke("double", {"x": 8})
            tg.cancel_scope.cancel()
    assert result.status == "completed" and result.output == 16
    assert job_statuses(queue_url, result.run_id) == ["succeeded"]


async def test_a_failed_enqueue_leaves_no_run_behind(queue_url: str) -> None:
    async with make_app(queue_url, queue_url) as gateway:
        executor = gateway.engine.executor
        assert isinstance(executor, ProcrastinateExecutor)
        real = executor.defer

        async def broken(record: Any, connection: Any | None = None) -> int:
            await real(record, connection)  # the job row is written, then the transaction fails
            raise RuntimeError("the queue refused the job")

        executor.defer = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="the queue refused the job"):
            await gateway.invoke("double", {"x": 1}, wait=False)
        executor.defer = real  # type: ignore[method-assign]
        runs = await gateway.list_runs()
    assert runs == []
    assert queue_rows(queue_url, "SELECT count(*) FROM procrastinate_jobs") == [(0,)]
