"""Executors: how an accepted run gets executed, and by which process.

An executor is chosen by name (``services.runs.executor``) among those the
plugins contribute through the ``nexus_executors`` hook. The core ships one:

* ``"inline"`` (:class:`InlineExecutor`): the process that accepted a run
  executes it at once, under its lease; serving processes take over runs
  whose lease expired. No extra process is needed.

A queue executor (the PostgreSQL plugin's, on Procrastinate) hands runs to
``nexus worker`` processes instead: the host stores the run unleased and calls
:meth:`Executor.submit`; a worker's :meth:`Executor.work` loop claims runs
(:meth:`~nexus_core.engine.RunEngine.claim`) and executes them
(:meth:`~nexus_core.engine.RunEngine.resume`). A caller waiting on the gateway
hears the result through the event log, wherever the run executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import anyio.abc

from .config import ConfigError
from .storage.base import RunRecord

if TYPE_CHECKING:
    from .engine import RunEngine

__all__ = ["Executor", "InlineExecutor"]


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
        ``services.runs.recover``) and otherwise does nothing.
        """
        task_status.started()
        if engine.recovering:
            await engine.recover_forever()

    async def submit(self, engine: RunEngine, record: RunRecord) -> None:
        """Hand a stored, unleased run to whoever executes it (queue executors).

        Called once per run, after the run record is stored. Inline executors
        are never asked.
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
