"""Write-behind: appends queued in order and written in batches by one background task.

The event log and the audit log are append-only and nobody on the request path
needs to wait for each record: a run that awaited its four events and its audit
record one by one paid a storage round trip for each. With a write-behind queue
``put`` never waits, one task writes whatever has queued up in one call, and a
caller that must know its records are stored (a run about to answer its caller,
a reader of the audit log, the host at shutdown) awaits :meth:`WriteBehind.flush`,
which waits for everything put before it and nothing put after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import anyio.abc

__all__ = ["WriteBehind"]

T = TypeVar("T")

log = logging.getLogger("nexus")


class WriteBehind(Generic[T]):
    """Items written in order, in batches, by :meth:`run` (started in the host's task group).

    ``write`` receives each batch in put order. A batch that fails to write is
    logged (with ``what``, e.g. ``"events"``) and counted in :attr:`failed`; it is
    not retried, and the queue goes on with the next one. Until :meth:`run` has
    started (:attr:`running` is False) the owner writes directly instead.
    """

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, what: str) -> None:
        self._write = write
        self.what = what
        self._pending: list[T] = []
        self._put = 0  # items put so far
        self._written = 0  # items written (or given up on) so far
        self._wakeup: anyio.Event | None = None
        self._waiters: list[tuple[int, anyio.Event]] = []
        #: Whether :meth:`run` is writing; :meth:`put` only makes sense while it is.
        self.running = False
        #: Items whose batch failed to write.
        self.failed = 0

    def put(self, item: T) -> None:
        """Queue ``item``; never waits."""
        self._pending.append(item)
        self._put += 1
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def flush(self) -> None:
        """Wait until every item put before this call is written (or its batch failed)."""
        target = self._put
        if self._written >= target or not self.running:
            return
        done = anyio.Event()
        self._waiters.append((target, done))
        await done.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write queued items until cancelled; flush before cancelling to lose nothing."""
        self.running = True
        task_status.started()
        try:
            while True:
                if not self._pending:
                    wakeup = self._wakeup = anyio.Event()
                    await wakeup.wait()
                    continue
                batch, self._pending = self._pending, []
                # Shielded: a batch taken off the queue is written whatever
                # happens to the task, and its waiters hear about it.
                with anyio.CancelScope(shield=True):
                    try:
                        await self._write(batch)
                    except Exception:
                        self.failed += len(batch)
                        log.exception("writing %d queued %s failed", len(batch), self.what)
                self._written += len(batch)
                self._release(self._written)
        finally:
            self.running = False
            self._wakeup = None
            self._release(None)  # nobody waits forever on a stopped writer

    def _release(self, upto: int | None) -> None:
        if not self._waiters:
            return
        keep: list[tuple[int, anyio.Event]] = []
        for target, done in self._waiters:
            if upto is None or target <= upto:
                done.set()
            else:
                keep.append((target, done))
        self._waiters = keep
