"""The ``procrastinate`` executor: runs are jobs on a Procrastinate queue in PostgreSQL.

``services.runs.executor = "procrastinate"``. A process that accepts a run (a
gateway, a script) stores the run record and defers one Procrastinate job for
it (task ``nexus.run``, arguments ``{"run_id", "workflow"}``); when the run
store is this plugin's PostgreSQL storage, both happen in one transaction, so
there is never a run without its job or a job without its run. ``nexus worker
APP --concurrency N --queues a,b`` runs a Procrastinate worker whose job
claims the run's lease (:meth:`~nexus_core.RunEngine.claim`) and executes it
(:meth:`~nexus_core.RunEngine.resume`); the run's events, checkpoints and end
go to the shared run store and event log, so the caller waiting on any gateway
hears the answer.

What Procrastinate does not do, this executor adds:

* **A reaper.** Procrastinate does not retry the jobs of a worker that died
  (its issues #740, #1408, #1518). Every process (gateways and workers) looks,
  every ``services.runs.heartbeat``, for jobs in ``doing`` whose worker's
  heartbeat is older than ``stalled_after`` seconds, and puts them back in the
  queue. The job that comes back claims the run only once its lease expired,
  and every claim raises the run's fencing token: a worker that was only
  paused has its late writes refused, so a node is never written twice.
* **A sweep.** A run that is claimable (unleased, or its lease expired) but
  has no job waiting or executing (its job was aborted at a worker's
  shutdown, or it was stored without one) gets a new job.
* **Cancellation.** :meth:`cancel` asks the engine (a ``run.cancel_requested``
  event reaches the process executing the run) and aborts the run's job
  (``cancel_job_by_id(abort=True)``): a waiting job is cancelled, an executing
  one is interrupted and cancels its run.
* **Priorities and concurrency limits** per workflow: ``priorities`` and
  ``limits`` in ``[nexus.plugins.procrastinate]``, or the workflow's tags
  ``priority:N`` and ``concurrency:N`` (the configuration wins). A limit holds
  across every worker: a job over the limit goes back in the queue for a
  moment.

Queue names are workflow names unless ``queues`` maps a workflow to another
queue, so ``nexus worker --queues report`` executes the runs of ``report``.

Operations:

* ``/health/ready`` has a ``queue`` check (:meth:`~ProcrastinateExecutor.check_queue`):
  Procrastinate's tables answer and at least ``ready_min_workers`` workers
  beat within ``stalled_after`` seconds; ok, its detail says how many workers
  and jobs waiting.
* Prometheus series in the host's registry (:class:`QueueMetrics`):
  ``nexus_queue_depth{queue}`` (jobs waiting, read from the database every
  heartbeat by every process), ``nexus_queue_workers`` (live workers),
  ``nexus_queue_job_latency_seconds{queue}`` (from a job's enqueue, or its
  retry time, to its start, observed by the worker that starts it) and
  ``nexus_queue_retries_total{queue,reason}`` (jobs this process queued
  again: ``stalled`` by the reaper, ``no_job`` by the sweep), beside the
  core's ``nexus_run_takeovers_total``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.abc
from nexus_core.plugin import ConfigError, Executor, StorageRouter
from procrastinate.retry import BaseRetryStrategy, RetryDecision

if TYPE_CHECKING:
    import procrastinate
    from nexus_core.plugin import Nexus, RunEngine, RunRecord
    from procrastinate.job_context import JobContext
    from procrastinate.jobs import Job
    from prometheus_client import CollectorRegistry

    from .worker_config import ProcrastinateConfig

__all__ = [
    "TASK_NAME",
    "ProcrastinateExecutor",
    "QueueMetrics",
    "QueueNotReady",
    "QueueStatus",
]

log = logging.getLogger("nexus.worker")

#: The Procrastinate task every run's job names.
TASK_NAME = "nexus.run"
# One advisory lock key for preparing the queue's schema (several processes start at once).
_SCHEMA_LOCK = zlib.crc32(b"nexus_plugin_postgres.executor.schema")
_SWEEP_LOCK = zlib.crc32(b"nexus_plugin_postgres.executor.sweep")  # one sweep at a time
# The runs among %(ids)s that have a job waiting or executing.
_JOBS_OF_RUNS = (
    "SELECT args->>'run_id' AS run_id FROM procrastinate_jobs "
    "WHERE task_name = %(task)s AND status IN ('todo', 'doing') "
    "AND args->>'run_id' = ANY(%(ids)s)"
)
_ADMISSIONS = """
CREATE TABLE IF NOT EXISTS nexus_queue_admissions (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    workflow text NOT NULL,
    admitted_at timestamptz NOT NULL DEFAULT now()
)
"""


#: Job latency buckets (seconds): a queue that keeps up answers in milliseconds, a
#: backlog in minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class QueueMetrics:
    """The queue's Prometheus series, one set per registry (a host may start many times)."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[Any, QueueMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        #: ``nexus_queue_depth{queue}``: jobs waiting (``todo``).
        self.depth = Gauge(
            "nexus_queue_depth",
            "Jobs waiting in the queue (Procrastinate's todo), by queue; read every heartbeat.",
            ("queue",),
            registry=registry,
        )
        #: ``nexus_queue_workers``: workers whose heartbeat is fresh.
        self.workers = Gauge(
            "nexus_queue_workers",
            "Workers whose heartbeat is fresher than stalled_after seconds.",
            registry=registry,
        )
        #: ``nexus_queue_job_latency_seconds{queue}``: enqueue (or retry time) to start.
        self.latency = Histogram(
            "nexus_queue_job_latency_seconds",
            "Seconds from a job's enqueue (or the time of its retry) to its start, by queue.",
            ("queue",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        #: ``nexus_queue_retries_total{queue,reason}``: jobs this process queued again.
        self.retries = Counter(
            "nexus_queue_retries_total",
            "Jobs this process queued again, by queue and reason: stalled (the reaper: "
            "its worker stopped beating) or no_job (the sweep: a claimable run had none).",
            ("queue", "reason"),
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> QueueMetrics:
        """The series registered in ``registry`` (registered on first use)."""
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found


class QueueStatus:
    """What the queue's tables say: jobs waiting per queue, and live workers."""

    __slots__ = ("depth", "workers")

    def __init__(self, depth: dict[str, int], workers: int) -> None:
        #: Jobs waiting (``todo``), by queue (queues with none are absent).
        self.depth = depth
        #: Workers whose heartbeat is fresher than ``stalled_after``.
        self.workers = workers

    def __repr__(self) -> str:
        return f"QueueStatus(depth={self.depth!r}, workers={self.workers})"


class QueueNotReady(Exception):
    """The ``queue`` readiness check failed: the tables do not answer, or too few workers beat."""


class _Requeue(Exception):
    """The job cannot proceed now: back in the queue in ``delay`` seconds."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


def _postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class ProcrastinateExecutor(Executor):
    """Runs are Procrastinate jobs; ``nexus worker`` processes execute them under their lease."""

    needs_workers: ClassVar[bool] = True

    def __init__(self, app: Nexus, settings: ProcrastinateConfig, url: str) -> None:
        self.app = app
        self.settings = settings
        self.url = url
        runs = app.config.nexus.services.runs
        self.heartbeat = runs.heartbeat
        self.lease = runs.lease
        self.stalled_after = settings.stalled_after or runs.lease
        self.grace = runs.shutdown_grace
        self._queue: procrastinate.App | None = None
        self._engine: RunEngine | None = None
        self._ready = anyio.Event()
        self._tags: dict[str, tuple[int | None, int | None]] = {}
        self._metrics = QueueMetrics.of(app.metrics.registry) if app.metrics.enabled else None
        self._queues_seen: set[str] = set()
        quiet = logging.getLogger("procrastinate")
        if quiet.level == logging.NOTSET:  # a line per job deferred and run: unless asked for
            quiet.setLevel(logging.WARNING)

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """Build from ``[nexus.plugins.procrastinate]``; no PostgreSQL URL is a ``ConfigError``."""
        settings: ProcrastinateConfig = app.config.section("plugins.procrastinate")
        url = settings.url or app.config.storage_urls["runs"]
        if not _postgres_url(url):
            raise ConfigError(
                "the procrastinate executor needs a PostgreSQL database: set "
                "nexus.plugins.procrastinate.url, or a postgresql:// storage URL for runs "
                f"(the run store is {url!r})",
                key="nexus.plugins.procrastinate.url",
            )
        return cls(app, settings, url)

    # -- the queue ----------------------------------------------------------------------

    @property
    def queue(self) -> procrastinate.App:
        """The Procrastinate app (open while the host runs)."""
        if self._queue is None:
            raise RuntimeError("the procrastinate executor is not running (start the host)")
        return self._queue

    def _build_queue(self) -> procrastinate.App:
        import procrastinate

        from .storage import parse_url

        # The storage URL's own settings (schema=, pool sizes) become libpq's search_path.
        connector = procrastinate.PsycopgConnector(
            conninfo=parse_url(self.url).conninfo, min_size=1, max_size=self.settings.pool_size
        )
        queue = procrastinate.App(connector=connector)
        queue.task(name=TASK_NAME, pass_context=True, retry=_RetryStrategy(self))(self._job)
        return queue

    async def _prepare_schema(self, queue: procrastinate.App) -> None:
        """Apply Procrastinate's schema and the admissions table once, whoever starts first."""
        from procrastinate.schema import SchemaManager

        pool = queue.connector.pool  # type: ignore[attr-defined]
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            row = await cur.fetchone()
            if not (row and row[0]):
                await conn.execute(SchemaManager.get_schema())
            await conn.execute(_ADMISSIONS)

    def job_options(self, workflow: str) -> dict[str, Any]:
        """The queue and priority a run of ``workflow`` is deferred with."""
        priority, _ = self._tag_settings(workflow)
        return {
            "queue": self.settings.queues.get(workflow, workflow),
            "priority": self.settings.priorities.get(workflow, priority or 0),
        }

    def limit(self, workflow: str) -> int | None:
        """The most runs of ``workflow`` executing at once (None: no limit)."""
        _, limit = self._tag_settings(workflow)
        return self.settings.limits.get(workflow, limit)

    def _tag_settings(self, workflow: str) -> tuple[int | None, int | None]:
        found = self._tags.get(workflow)
        if found is None:
            priority = limit = None
            wf = self.app._workflows.get(workflow)
            for tag in wf.meta.tags if wf is not None and wf.meta is not None else ():
                name, _, value = tag.partition(":")
                with contextlib.suppress(ValueError):
                    if name == "priority":
                        priority = int(value)
                    elif name == "concurrency":
                        limit = max(1, int(value))
            found = self._tags[workflow] = (priority, limit)
        return found

    async def defer(self, record: RunRecord, connection: Any | None = None) -> int:
        """Defer the job of ``record`` (on ``connection``'s transaction when given); its id."""
        options = self.job_options(record.workflow)
        task = self.queue.tasks[TASK_NAME]
        deferrer = task.configure(connection=connection, **options)
        return await deferrer.defer_async(
            run_id=record.id, workflow=record.workflow, deferred_at=time.time()
        )

    # -- the executor contract --------------------------------------------------------------

    async def run(
        self,
        engine: RunEngine,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """In every host process: open the queue, then reap stalled jobs until cancelled."""
        self._engine = engine
        queue = self._build_queue()
        await queue.open_async()
        try:
            await self._prepare_schema(queue)
            self._queue = queue
            self._ready.set()
            with contextlib.suppress(Exception):  # the loop below tries again
                await self.refresh_metrics()
            task_status.started()
            await self._reap_forever()
        finally:
            self._queue = None
            self._ready = anyio.Event()
            with anyio.CancelScope(shield=True):
                await queue.close_async()

    async def accept(self, engine: RunEngine, record: RunRecord) -> tuple[RunRecord, bool]:
        """Store the run and defer its job, in one transaction when the run store is PostgreSQL."""
        store = self._transactional_store(engine)
        if store is None:
            return await super().accept(engine, record)
        async with store.transaction() as connection:
            stored, created = await store.create_run(record)
            if created:
                await self.defer(stored, connection)
        return stored, created

    async def submit(self, engine: RunEngine, record: RunRecord) -> None:
        """Defer the run's job on the queue's own connection (run store not on PostgreSQL)."""
        await self.defer(record)

    async def cancel(self, engine: RunEngine, record: RunRecord) -> bool:
        """Cancel the run wherever it executes, and abort its job (waiting or executing)."""
        cancelled = await engine.request_cancel(record)
        if cancelled:
            with contextlib.suppress(Exception):  # the engine's path has done the essential
                for job_id in await self.jobs_of(record.id):
                    await self.queue.job_manager.cancel_job_by_id_async(job_id, abort=True)
        return cancelled

    async def jobs_of(self, run_id: str) -> list[int]:
        """The ids of the run's jobs waiting or executing."""
        rows = await self.queue.connector.execute_query_all_async(
            "SELECT id FROM procrastinate_jobs WHERE task_name = %(task)s "
            "AND status IN ('todo', 'doing') AND args->>'run_id' = %(run_id)s",
            task=TASK_NAME,
            run_id=run_id,
        )
        return [int(row["id"]) for row in rows]

    async def work(
        self, engine: RunEngine, *, concurrency: int = 1, queues: Sequence[str] = ()
    ) -> None:
        """Run a Procrastinate worker until cancelled: ``concurrency`` jobs at once from ``queues``.

        Cancelled, the worker stops fetching and hands the jobs in flight back
        to the queue at once; their runs go on in the host, which drains them
        for ``services.runs.shutdown_grace`` seconds and releases the leases of
        those still going, so another worker resumes them.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        await self._ready.wait()
        worker = self.queue._worker(
            # None: every queue (Procrastinate's own default).
            queues=[self.settings.queues.get(q, q) for q in queues] or None,  # type: ignore[arg-type]
            concurrency=concurrency,
            name=f"nexus-{engine.owner_id}",
            install_signal_handlers=False,
            update_heartbeat_interval=self.heartbeat,
            stalled_worker_timeout=self.stalled_after,
            fetch_job_polling_interval=self.heartbeat,
            abort_job_polling_interval=self.heartbeat,
            shutdown_graceful_timeout=0,
        )
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def run_worker() -> None:
                try:
                    # Procrastinate stops gracefully on stop(), not on cancellation.
                    with anyio.CancelScope(shield=True):
                        await worker.run()  # type: ignore[no-untyped-call]
                finally:
                    done.set()

            tg.start_soon(run_worker)
            try:
                await done.wait()
            finally:
                worker.stop()  # type: ignore[no-untyped-call]

    # -- operations ---------------------------------------------------------------------------

    def checks(self) -> dict[str, Callable[[], Awaitable[bool | str] | bool | str]]:
        """``/health/ready``'s ``queue`` check (:meth:`check_queue`)."""
        return {"queue": self.check_queue}

    async def queue_status(self) -> QueueStatus:
        """Jobs waiting per queue and live workers, read from Procrastinate's tables.

        Raises :class:`QueueNotReady` naming the database's error when they do not answer.
        """
        from procrastinate.exceptions import ConnectorException

        connector = self.queue.connector
        try:
            rows = await connector.execute_query_all_async(
                "SELECT queue_name, count(*) AS todo FROM procrastinate_jobs "
                "WHERE status = 'todo' GROUP BY queue_name"
            )
            live = await connector.execute_query_one_async(
                "SELECT count(*) AS workers FROM procrastinate_workers "
                "WHERE last_heartbeat > now() - make_interval(secs => %(seconds)s)",
                seconds=self.stalled_after,
            )
        except ConnectorException as exc:  # Procrastinate's wrapper says only "Database error"
            cause = exc.__cause__ or exc
            text = " ".join(str(cause).split())
            raise QueueNotReady(
                f"the queue's tables do not answer: {type(cause).__name__}: {text}"
            ) from exc
        depth = {str(row["queue_name"]): int(row["todo"]) for row in rows}
        return QueueStatus(depth, int(live["workers"]))

    async def check_queue(self) -> str:
        """Ready when the queue's tables answer and ``ready_min_workers`` workers beat.

        Returns what it found (``"2 workers, 0 jobs waiting"``); raises
        :class:`QueueNotReady` when too few workers beat, and the database's
        error when the tables do not answer.
        """
        status = await self.queue_status()
        waiting = sum(status.depth.values())
        found = f"{status.workers} worker{'s' * (status.workers != 1)}, {waiting} jobs waiting"
        self._set_gauges(status)
        needed = self.settings.ready_min_workers
        if status.workers < needed:
            raise QueueNotReady(
                f"{found}: fewer than ready_min_workers = {needed} workers beat within "
                f"stalled_after = {self.stalled_after:g}s (start `nexus worker`)"
            )
        return found

    async def refresh_metrics(self) -> None:
        """Read the queue's depth and live workers into the gauges."""
        if self._metrics is not None:
            self._set_gauges(await self.queue_status())

    def _set_gauges(self, status: QueueStatus) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        # Queues that emptied read 0, not their last depth; every workflow's queue shows.
        queues = {self.job_options(name)["queue"] for name in self.app._workflows}
        self._queues_seen |= queues | status.depth.keys()
        for queue in self._queues_seen:
            metrics.depth.labels(queue).set(status.depth.get(queue, 0))
        metrics.workers.set(status.workers)

    def _count_retry(self, job: Job, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.retries.labels(job.queue, reason).inc()

    # -- the job ------------------------------------------------------------------------------

    async def _job(
        self, context: JobContext, run_id: str, workflow: str, deferred_at: float | None = None
    ) -> None:
        """Execute one run under its lease (the ``nexus.run`` task)."""
        engine = self._engine
        assert engine is not None
        job = context.job
        assert job.id is not None
        job_id = job.id
        if self._metrics is not None:
            # Waiting since its enqueue, or since its retry time (a retry sets scheduled_at).
            retry_at = job.scheduled_at.timestamp() if job.scheduled_at else 0.0
            since = max(deferred_at or 0.0, retry_at)
            if since:
                self._metrics.latency.labels(job.queue).observe(max(0.0, time.time() - since))
        limit = self.limit(workflow)
        if limit is not None:
            await self._admit(job_id, workflow, limit)
        try:
            await self._execute(context, engine, run_id)
        finally:
            if limit is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self.queue.connector.execute_query_async(
                        "DELETE FROM nexus_queue_admissions WHERE job_id = %(job_id)s",
                        job_id=job_id,
                    )

    async def _execute(self, context: JobContext, engine: RunEngine, run_id: str) -> None:
        record = await engine.claim(run_id)
        if record is None:
            current = await self.app.storage.get_run(run_id)  # type: ignore[union-attr]
            if current is None or current.status not in ("pending", "running"):
                return  # finished (or cancelled) already: nothing to do
            left = (current.lease_expires_at or 0) - time.time()
            raise _Requeue(max(0.0, min(left, self.heartbeat)), f"run {run_id} is leased")
        active = await engine.resume(record)
        if active is None:
            return
        from procrastinate import exceptions, job_context

        try:
            result = await active.result()
        except BaseException:
            if context.abort_reason() == job_context.AbortReason.USER_REQUEST:
                active.control.cancel()
                with anyio.CancelScope(shield=True):
                    await active.result()
                raise exceptions.JobAborted(f"run {run_id} cancelled") from None
            raise  # a shutdown: the job goes back to the queue (see work())
        if result.status == "cancelled":
            # Cancelled by the run.cancel_requested event before the job's abort
            # arrived (cancel() sends both): the job of a cancelled run is aborted
            # either way, whichever reached the worker first.
            raise exceptions.JobAborted(f"run {run_id} cancelled")

    async def _admit(self, job_id: int, workflow: str, limit: int) -> None:
        """Take one of the workflow's ``limit`` slots, or go back to the queue."""
        pool = self.queue.connector.pool  # type: ignore[attr-defined]
        async with pool.connection() as conn, conn.transaction():
            key = zlib.crc32(f"nexus_plugin_postgres.limit:{workflow}".encode())
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            cur = await conn.execute(
                "SELECT count(*) FROM nexus_queue_admissions a "
                "JOIN procrastinate_jobs j ON j.id = a.job_id "
                "WHERE a.workflow = %s AND j.status = 'doing' AND a.job_id <> %s",
                (workflow, job_id),
            )
            row = await cur.fetchone()
            if row is not None and row[0] >= limit:
                raise _Requeue(min(0.2, self.heartbeat), f"{workflow} at its limit of {limit}")
            await conn.execute(
                "INSERT INTO nexus_queue_admissions (job_id, workflow) VALUES (%s, %s) "
                "ON CONFLICT (job_id) DO UPDATE SET admitted_at = now()",
                (job_id, workflow),
            )

    # -- reaper and sweep ------------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat * (0.75 + secrets.randbelow(500) / 1000))
            try:
                await self.reap_once()
                await self.sweep_once()
            except Exception as exc:
                log.warning("looking for stalled jobs failed: %s", exc)
            try:
                await self.refresh_metrics()
            except Exception as exc:
                log.debug("reading the queue's depth failed: %s", exc)

    async def reap_once(self) -> int:
        """Queue again the jobs of workers silent for ``stalled_after`` seconds; how many."""
        manager = self.queue.job_manager
        stalled = await manager.get_stalled_jobs(
            task_name=TASK_NAME, seconds_since_heartbeat=self.stalled_after
        )
        retried = 0
        for job in stalled:
            try:
                await manager.retry_job(job)
            except Exception:  # another process retried it first
                continue
            retried += 1
            self._count_retry(job, "stalled")
            log.info(
                "job %s of run %s: its worker stopped beating; queued again",
                job.id,
                job.task_kwargs.get("run_id"),
            )
        if retried:
            await manager.prune_stalled_workers(self.stalled_after)
        return retried

    async def sweep_once(self) -> int:
        """Give a job to every claimable run that has none; how many were deferred."""
        engine = self._engine
        storage = self.app.storage
        if engine is None or storage is None:
            return 0
        now = time.time()
        found = await storage.claimable_runs(now, limit=100)
        # A run just stored has its job on the way (or in the same transaction).
        candidates = {r.id: r for r in found if r.created_at < now - self.heartbeat}
        if not candidates:
            return 0
        rows = await self.queue.connector.execute_query_all_async(
            _JOBS_OF_RUNS, task=TASK_NAME, ids=list(candidates)
        )
        missing = candidates.keys() - {row["run_id"] for row in rows}
        if not missing:
            return 0
        deferred = []
        pool = self.queue.connector.pool  # type: ignore[attr-defined]
        async with pool.connection() as conn, conn.transaction():
            # Every process sweeps: one at a time from here, so that the second
            # sees the job the first deferred, or the run it finished, and
            # defers nothing more.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SWEEP_LOCK,))
            cur = await conn.execute(_JOBS_OF_RUNS, {"task": TASK_NAME, "ids": list(missing)})
            have = {row[0] for row in await cur.fetchall()}
            still = {r.id for r in await storage.claimable_runs(time.time(), limit=1000)}
            for run_id in sorted((missing - have) & still):
                await self.defer(candidates[run_id], conn)
                deferred.append(run_id)
        for run_id in deferred:
            if self._metrics is not None:
                queue = self.job_options(candidates[run_id].workflow)["queue"]
                self._metrics.retries.labels(queue, "no_job").inc()
            log.info("run %s had no job; deferred one", run_id)
        return len(deferred)

    # -- the run store's transaction -------------------------------------------------------------

    def _transactional_store(self, engine: RunEngine) -> Any | None:
        """The run store if it is this plugin's PostgreSQL storage (one transaction), else None."""
        storage: Any = engine.app.storage
        if isinstance(storage, StorageRouter):
            storage = storage.backends["runs"]
        from .storage import PostgresStorage

        if isinstance(storage, PostgresStorage) and storage.url == self.url:
            return storage
        return None


class _RetryStrategy(BaseRetryStrategy):
    """When a ``nexus.run`` job goes back to the queue (Procrastinate's retry strategy)."""

    def __init__(self, executor: ProcrastinateExecutor) -> None:
        self.executor = executor

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        """Retry every job that did not end its run: at once, or when :class:`_Requeue` says.

        A job aborted on request (its run cancelled) is not retried.
        """
        from procrastinate import exceptions

        if isinstance(exception, exceptions.JobAborted):
            return None
        if isinstance(exception, _Requeue):
            delay = exception.delay
        elif isinstance(exception, anyio.get_cancelled_exc_class()):
            delay = 0.0  # its worker stopped: another one takes it
        else:  # storage trouble, most likely: try again in a moment
            delay = self.executor.heartbeat
            log.warning("job %s of run %s: %s; queued again", job.id, job.task_kwargs, exception)
        return RetryDecision(retry_in={"milliseconds": int(delay * 1000)})
