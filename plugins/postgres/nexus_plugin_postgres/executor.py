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
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import zlib
from collections.abc import Sequence
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

    from .worker_config import ProcrastinateConfig

__all__ = [
    "TASK_NAME",
    "ProcrastinateExecutor",
]

log = logging.getLogger("nexus.worker")

#: The Procrastinate task every run's job names.
TASK_NAME = "nexus.run"
# One advisory lock key for preparing the queue's schema (several processes start at once).
_SCHEMA_LOCK = zlib.crc32(b"nexus_plugin_postgres.executor.schema")
_ADMISSIONS = """
CREATE TABLE IF NOT EXISTS nexus_queue_admissions (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    workflow text NOT NULL,
    admitted_at timestamptz NOT NULL DEFAULT now()
)
"""


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
        return await deferrer.defer_async(run_id=record.id, workflow=record.workflow)

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

    # -- the job ------------------------------------------------------------------------------

    async def _job(self, context: JobContext, run_id: str, workflow: str) -> None:
        """Execute one run under its lease (the ``nexus.run`` task)."""
        engine = self._engine
        assert engine is not None
        assert context.job.id is not None
        job_id = context.job.id
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
        try:
            await active.result()
        except BaseException:
            from procrastinate import exceptions, job_context

            if context.abort_reason() == job_context.AbortReason.USER_REQUEST:
                active.control.cancel()
                with anyio.CancelScope(shield=True):
                    await active.result()
                raise exceptions.JobAborted(f"run {run_id} cancelled") from None
            raise  # a shutdown: the job goes back to the queue (see work())

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
            "SELECT args->>'run_id' AS run_id FROM procrastinate_jobs "
            "WHERE task_name = %(task)s AND status IN ('todo', 'doing') "
            "AND args->>'run_id' = ANY(%(ids)s)",
            task=TASK_NAME,
            ids=list(candidates),
        )
        missing = candidates.keys() - {row["run_id"] for row in rows}
        for run_id in missing:
            await self.defer(candidates[run_id])
            log.info("run %s had no job; deferred one", run_id)
        return len(missing)

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
