"""Executors: how an accepted run gets executed, and by which process.

An executor is chosen by name (``services.runs.executor``) among those the
plugins contribute through the ``nexus_executors`` hook. The core ships one:

* ``"inline"`` (:class:`InlineExecutor`): the process that accepted a run
  executes it at once, under its lease; serving processes take over runs
  whose lease expired. No extra process is needed.

* ``"workers"`` (:class:`WorkerQueueExecutor`): runs wait in the run store
  and ``nexus worker`` processes execute them; the serving process only
  accepts runs and waits for their results. It needs nothing but the run
  store and the event log every process already shares (one SQLite file on
  one machine; PostgreSQL across machines).

A queue executor (this one, or the PostgreSQL plugin's on Procrastinate) hands runs to
``nexus worker`` processes instead: the host stores the run unleased and calls
:meth:`Executor.submit`; a worker's :meth:`Executor.work` loop claims runs
(:meth:`~nexus_core.engine.RunEngine.claim`) and executes them
(:meth:`~nexus_core.engine.RunEngine.resume`). A caller waiting on the gateway
hears the result through the event log, wherever the run executed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.abc

from .config import ConfigError
from .storage.base import RunRecord

if TYPE_CHECKING:
    from .engine import RunEngine

__all__ = ["RUN_SUBMITTED", "Executor", "InlineExecutor", "WorkerQueueExecutor"]

log = logging.getLogger("nexus.worker")

#: Published when a run is handed to workers: idle workers wake at once.
RUN_SUBMITTED = "run.submitted"


class Executor:
    """The executor contract: submit, cancel, background work in every host, a worker loop.

    Subclass it and register an ``ExecutorSpec`` naming the class through the
    ``nexus_executors`` hook.
    """

    #: True: the process that accepts a run executes it (the host leases the run to
    #: itself when it stores it and starts it at once; :meth:`submit` is not called).
    #: False: the run is stored unleased and handed to :meth:`submit`.
    inline: ClassVar[bool] = False
    #: True when runs are executed by ``nexus worker`` processes.
    needs_workers: ClassVar[bool] = False

    @classmethod
    def from_app(cls, app: Any) -> Self:
        """Build the executor for a host (the ``ExecutorSpec`` factory). Default: ``cls()``."""
        return cls()

    async def run(
        self,
        engine: RunEngine,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Background work in every host process, until cancelled at shutdown.

        The default takes over runs whose lease expired when the engine
        recovers (``engine.recovering``: serving processes, see
        ``services.runs.recover``), once before it reports started and then
        every heartbeat, and otherwise does nothing.
        """
        if engine.recovering:
            await engine.recover_once()
        task_status.started()
        if engine.recovering:
            await engine.recover_forever()

    def checks(self) -> dict[str, Callable[[], Awaitable[bool | str] | bool | str]]:
        """Readiness checks of this executor, by name, for ``/health/ready`` (default: none).

        The host runs them beside its own (``storage``, ``channel:*``): a check
        is ok when it returns a true value (a string is reported as the check's
        ``detail``), and not ok when it returns false or raises (the error is
        the detail). A queue executor reports its queue here.
        """
        return {}

    async def accept(self, engine: RunEngine, record: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run record and, for a queue executor, hand it over: ``(stored, created)``.

        The host calls this once per accepted run. The default stores it with
        the run store's ``create_run`` (an existing run with the same
        idempotency key comes back with ``created`` False) and then calls
        :meth:`submit` for a new run unless :attr:`inline`. A queue executor
        on the database of the run store may override it to store the run and
        enqueue it in one transaction, so neither exists without the other.
        """
        stored, created = await engine.app._services().storage.create_run(record)
        if created and not self.inline:
            await self.submit(engine, stored)
        return stored, created

    async def submit(self, engine: RunEngine, record: RunRecord) -> None:
        """Hand a stored, unleased run to whoever executes it (queue executors).

        Called once per run by :meth:`accept`, after the run record is stored.
        Inline executors are never asked.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot take runs")

    async def cancel(self, engine: RunEngine, record: RunRecord) -> bool:
        """Cancel a run wherever it executes; whether it was cancelled or asked to be.

        The default is the engine's: at once here, by a ``run.cancel_requested``
        event in the live process that holds its lease, or recorded cancelled
        when nobody holds it.
        """
        return await engine.request_cancel(record)

    async def work(
        self, engine: RunEngine, *, concurrency: int = 1, queues: Sequence[str] = ()
    ) -> None:
        """The ``nexus worker`` loop: execute submitted runs until cancelled.

        ``concurrency`` runs at a time, from ``queues`` (all when empty). The
        default refuses: this executor needs no workers.
        """
        raise ConfigError(
            f"the {type(self).__name__} executor runs runs in the process that accepts them; "
            "'nexus worker' needs an executor that uses workers (services.runs.executor)",
            key="nexus.services.runs.executor",
        )


class InlineExecutor(Executor):
    """Execute each run in the process that accepted it (the default)."""

    inline = True


class WorkerQueueExecutor(Executor):
    """Runs wait in the run store; ``nexus worker`` processes claim and execute them.

    ``services.runs.executor = "workers"``. The process that accepts a run
    (a gateway, a script) stores it unleased (status ``pending``) and
    publishes ``run.submitted``; it never executes a run itself, not even
    one whose lease expired. A worker (:meth:`work`) claims the oldest
    claimable runs while it has free slots and executes each under its
    lease. Claimable runs include those whose lease expired, so the runs of
    a worker killed outright are taken over by another worker once their
    leases run out; fencing keeps the dead worker's writes out.
    """

    needs_workers = True

    async def run(
        self,
        engine: RunEngine,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Nothing: workers execute the runs (and take over expired ones), never this process."""
        task_status.started()

    async def submit(self, engine: RunEngine, record: RunRecord) -> None:
        """Publish ``run.submitted``: idle workers (on the shared event log) wake at once."""
        await engine.app.emit(RUN_SUBMITTED, run=record, data={"workflow": record.workflow})

    async def work(
        self, engine: RunEngine, *, concurrency: int = 1, queues: Sequence[str] = ()
    ) -> None:
        """Claim and execute runs, ``concurrency`` at a time, until cancelled.

        ``queues`` names the workflows this worker executes (all when empty):
        a worker started with ``queues=("report",)`` leaves every other
        workflow's runs to other workers. The worker looks for claimable runs
        (oldest first) when a run is submitted, when one of its own runs
        finishes, and every heartbeat (expired leases are found that way).
        Cancelling it stops claiming; the runs it executes belong to the host,
        which drains them at shutdown and releases their leases.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        loop = _WorkLoop(engine, concurrency, frozenset(queues))
        await loop.run()


class _WorkLoop:
    """One worker's loop: free slots, a wake-up event, the runs it executes."""

    def __init__(self, engine: RunEngine, concurrency: int, queues: frozenset[str]) -> None:
        self.engine = engine
        self.queues = queues
        self.free = concurrency
        self.wake = anyio.Event()

    def wanted(self, workflow: str | None) -> bool:
        """Whether this worker executes runs of ``workflow``."""
        return not self.queues or workflow in self.queues

    async def run(self) -> None:
        engine = self.engine
        async with anyio.create_task_group() as tg:
            await tg.start(self._listen)
            while True:
                self.wake = anyio.Event()  # before looking: a submission meanwhile wakes us
                if self.free > 0:
                    try:
                        await self._fill(tg)
                    except Exception as exc:  # storage hiccup: try again next heartbeat
                        log.warning("looking for runs to execute failed: %s", exc)
                with anyio.move_on_after(engine.heartbeat):
                    await self.wake.wait()

    async def _listen(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        keep = lambda event: self.wanted(event.data.get("workflow"))  # noqa: E731
        async with self.engine.app.subscribe((RUN_SUBMITTED,), filter=keep) as submitted:
            task_status.started()
            async for _ in submitted:
                self.wake.set()

    async def _fill(self, tg: anyio.abc.TaskGroup) -> None:
        """Claim claimable runs, oldest first, while there are free slots."""
        while self.free > 0:
            claimed = await self.engine.claim_claimable(
                limit=self.free, workflows=self.queues or None
            )
            if not claimed:
                return
            for record in claimed:
                self.free -= 1
                tg.start_soon(self._execute, record)

    async def _execute(self, record: RunRecord) -> None:
        """Execute one claimed run; the slot is free again once it stopped here."""
        try:
            active = await self.engine.resume(record)
            if active is not None:
                await active.result()
        except Exception as exc:
            log.warning("run %s could not be executed here: %s", record.id, exc)
        finally:
            self.free += 1
            self.wake.set()
