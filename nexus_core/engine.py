"""The run engine: how an accepted run is executed, recorded and recovered, under a lease.

The host (:class:`~nexus_core.app.Nexus`) decides *whether* a call may run
(authentication, validation, authorization, limits); the engine decides *how*
it runs, and keeps the promises the many-process tiers depend on:

* **Leases with fencing.** A run executes under a lease held by one process
  incarnation (:attr:`RunEngine.owner_id`, unique per process start, never the
  hostname). A heartbeat renews the leases of the runs this process executes.
  Only a run whose lease has expired is taken over, by whichever process
  claims it first; every claim raises the run's fencing token, and every
  checkpoint and final write carries the token, so a process that lost its
  lease can never overwrite the new owner's work (it stops executing the run
  instead).
* **Recovery.** Processes that serve (``nexus serve``, workers) look for
  expired leases every heartbeat and resume those runs from their last
  checkpoints (``services.runs.recover``); processes that only read (admin
  scripts, ``nexus runs``) never take a run over.
* **Attempts.** A node's ``attempts`` counts every execution: the retries of
  this process plus one for each earlier owner that started the node before
  losing the run. The owner that stored a node's last parent started it (a
  node starts as soon as its parents' checkpoints are stored; a root, when
  the run first started). An owner that resumes a run stores a ``running``
  checkpoint for each node it is about to start, carrying the executions
  before it, just before the node starts; the next owner reads it and adds
  one. So an owner killed after claiming a run and before starting it counts
  nothing, however long that took (loading checkpoints, claiming others).
  What can still count one execution too many: an owner killed in the
  instant between storing that checkpoint and entering the node.
* **Waiting** for a run executed elsewhere listens for its final event on the
  bus (which, on a shared log, hears every process) and rereads the store
  now and then; nothing polls in a tight loop.

How a run is handed to a process is the executor's business
(:mod:`nexus_core.executors`): the default executes it in the process that
accepted it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec

from .config import ConfigError
from .errors import PluginLoadFailed, RunNotFound, SessionNotFound
from .events import Event, EventType
from .payloads import has_blob_refs, run_blob_prefix
from .security import Principal
from .sessions import Session
from .storage.base import (
    AuditRecord,
    LeaseLost,
    NodeCheckpoint,
    RunFinish,
    RunRecord,
    RunStatus,
)
from .workflows.runtime import NodeResult, RunControl, RunError, RunResult

if TYPE_CHECKING:
    from .app import Nexus
    from .executors import Executor
    from .workflows.model import Workflow

__all__ = ["ActiveRun", "RunEngine", "new_owner_id"]

log = logging.getLogger("nexus.runs")

#: The events that end a run.
FINAL_EVENTS = (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED)
#: Asks the process executing a run to cancel it (any channel, any process).
CANCEL_REQUESTED = "run.cancel_requested"


def new_owner_id(instance_id: str) -> str:
    """A lease owner id for this process incarnation: ``instance/pid/random``.

    Unique per process start, so two processes on one host, or a process and
    its restarted successor with the same pid, never take each other for the
    owner of a run.
    """
    return f"{instance_id}/{os.getpid()}/{secrets.token_hex(4)}"


class ActiveRun:
    """A run executing in this process: its cancel handle, its lease and, once done, its result."""

    __slots__ = (
        "_done",
        "_result",
        "control",
        "fence",
        "finishing",
        "lost",
        "run_id",
        "scope",
        "stored",
    )

    def __init__(self, run_id: str, fence: int) -> None:
        self.run_id = run_id
        self.fence = fence
        #: Set when another process took the run over: this one stopped executing it.
        self.lost = False
        #: Set once the run's final write landed: its lease is no longer renewed (or lost).
        self.stored = False
        #: Set once its nodes are done: the drain no longer cancels it (its final write is on).
        self.finishing = False
        self.control = RunControl()
        #: The shielded scope of a run executed in its caller's task (:meth:`RunEngine.run_here`):
        #: the host cancels it at shutdown, once the drain's grace is over, unless finishing.
        self.scope: anyio.CancelScope | None = None
        # Made only when someone waits: a caller that executes the run itself never does.
        self._done: anyio.Event | None = None
        self._result: RunResult | None = None

    def lose(self) -> None:
        """The lease is gone: stop executing (nothing more of this run is written here)."""
        if not self.lost:
            self.lost = True
            self.control.cancel()

    def finish(self, result: RunResult) -> None:
        """Hand the run's result to its waiters."""
        self._result = result
        if self._done is not None:
            self._done.set()

    @property
    def done(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._result is not None

    async def result(self) -> RunResult:
        """Wait for the run's result (status ``running`` if it stopped executing here)."""
        if self._result is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        assert self._result is not None
        return self._result


class RunEngine:
    """Executes a host's runs under leases, records them, and recovers expired ones.

    One per host (``app.engine``). The lease length, heartbeat and recovery
    policy come from ``services.runs``.
    """

    def __init__(self, app: Nexus) -> None:
        self.app = app
        settings = app.config.nexus.services.runs
        #: This process incarnation's lease owner id.
        self.owner_id = new_owner_id(app.instance_id)
        #: Seconds a lease lasts unless renewed.
        self.lease = settings.lease
        #: Seconds between renewals (and between looks for expired leases).
        self.heartbeat = settings.heartbeat
        #: Whether this process takes over runs whose lease expired (set at start).
        self.recovering = False
        #: Runs executing in this process, by id (gone once finished: nothing leaks).
        self.active: dict[str, ActiveRun] = {}
        self._last_renewal = 0.0
        self._parents: dict[str, dict[str, tuple[str, ...]]] = {}
        self._executor: Executor | None = None
        from .app import Nexus  # here: app imports this module

        self._host_type = Nexus  # the key nodes find the host under in context.state
        # Cancel requests heard for runs not executing here (yet): run id -> when.
        # A run claimed soon after (a worker between claim and start, a
        # takeover of a dead owner's run) starts cancelled.
        self._cancel_requested: dict[str, float] = {}

    @property
    def executor(self) -> Executor:
        """The executor runs are handed to (``services.runs.executor``), built on first use."""
        if self._executor is None:
            self._executor = self.load_executor()
        return self._executor

    def prepare(self) -> None:
        """Build the configured executor anew (the host calls this at every start)."""
        self._executor = self.load_executor()

    def load_executor(self) -> Executor:
        """Build the configured executor; an unknown name is a ``ConfigError`` naming the known."""
        name = self.app.config.nexus.services.runs.executor
        specs = self.app.host.executors()
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(
                f"no executor named {name!r} (installed: {', '.join(sorted(specs))})",
                key="nexus.services.runs.executor",
            )
        try:
            executor: Executor = spec.load().from_app(self.app)
        except Exception as exc:
            raise PluginLoadFailed(
                f"executor {spec.name!r} of plugin {spec.plugin!r} could not be created: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return executor

    # -- starting runs ------------------------------------------------------------

    def lease_new(self, record: RunRecord, now: float) -> None:
        """Make ``record`` (not yet stored) leased by this process: it executes here, now."""
        record.owner = self.owner_id
        record.fence = 1
        record.lease_expires_at = now + self.lease
        # Stored with its start: a later owner then knows this one started it
        # (see _prior_attempts: a run stored without one was never started).
        record.started_at = now

    def start(
        self,
        wf: Workflow,
        values: Any,
        record: RunRecord,
        sess: Session | None,
        who: Principal,
        completed: dict[str, NodeCheckpoint] | None = None,
    ) -> ActiveRun:
        """Execute a run this process holds the lease of, in the host's task group."""
        # The handle exists before the task starts, so a cancel that arrives
        # between acceptance and the first node still finds the run.
        active = self._activate(record)
        self.app._services().task_group.start_soon(
            self._execute, wf, values, record, sess, who, completed, active
        )
        return active

    async def run_here(
        self, wf: Workflow, values: Any, record: RunRecord, sess: Session | None, who: Principal
    ) -> ActiveRun:
        """Execute a new run this process holds the lease of in the caller's task, to its end here.

        For a caller that waits for the result anyway: no task is started. The
        run is shielded from the caller's cancellation (a client that goes
        away does not stop a durable run half-way, as a run in the host's
        task group would not stop); the host cancels it at shutdown like any
        other run (:meth:`drain`), unless its nodes are done: that shield
        then covers its final write. Returns the finished handle.
        """
        active = self._activate(record)
        with anyio.CancelScope(shield=True) as scope:
            active.scope = scope
            await self._execute(wf, values, record, sess, who, None, active)
        return active

    def _activate(self, record: RunRecord) -> ActiveRun:
        active = self.active[record.id] = ActiveRun(record.id, record.fence)
        if self._cancel_requested.pop(record.id, None) is not None:
            active.control.cancel()
        return active

    async def claim(self, run_id: str) -> RunRecord | None:
        """Take over ``run_id`` if its lease has expired: the claimed record, or None."""
        storage = self.app._services().storage
        return await storage.claim_run(run_id, self.owner_id, lease=self.lease, now=time.time())

    async def resume(self, record: RunRecord) -> ActiveRun | None:
        """Execute a run this process has just claimed, from its checkpoints.

        Follows ``services.runs.on_restart``: ``"fail"`` records it failed
        instead, as does a workflow this host does not have. Returns the
        executing run, or None when it was failed.
        """
        app = self.app
        services = app._services()
        wf = app._workflows.get(record.workflow)
        if app.config.nexus.services.runs.on_restart == "fail" or wf is None:
            reason = "the host restarted" if wf else "its workflow is no longer registered"
            error = {"type": "Interrupted", "message": f"run interrupted: {reason}"}
            await self._end_claimed(record, "failed", error)
            return None
        checkpoints = await services.storage.get_checkpoints(record.id)
        sess = None
        if record.session_id:
            with contextlib.suppress(SessionNotFound):
                sess = await services.sessions.get(record.session_id)
        who = Principal(id=record.principal or "anonymous", tenant=record.tenant)
        if record.fence > 1:  # an earlier owner held it: a takeover, not a first claim
            log.info(
                "run %s of workflow %r taken over (fencing token %d)",
                record.id,
                record.workflow,
                record.fence,
                extra={"run_id": record.id, "workflow": record.workflow},
            )
            app.metrics.record_takeover(record.workflow)
        inputs = await services.payloads.load(record.inputs)
        return self.start(wf, wf.validate(inputs), record, sess, who, checkpoints)

    async def recover_forever(self) -> None:
        """Take over expired runs every heartbeat, until cancelled (what serving processes do)."""
        # Spread the processes' looks over the interval, so they rarely race for one run.
        while True:
            await anyio.sleep(self.heartbeat * (0.75 + secrets.randbelow(500) / 1000))
            try:
                await self.recover_once()
            except Exception as exc:
                log.warning("looking for runs to take over failed: %s", exc)

    async def claim_claimable(
        self, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """Claim up to ``limit`` claimable runs (unleased or expired), oldest first.

        Only runs of ``workflows`` when given. A run another process claims
        first is skipped; the returned records are this process's now.
        """
        storage = self.app._services().storage
        found = await storage.claimable_runs(time.time(), limit=100, workflows=workflows)
        claimed: list[RunRecord] = []
        for record in found:
            if len(claimed) >= limit:
                break
            if record.id in self.active:
                continue
            mine = await self.claim(record.id)
            if mine is not None:  # else another process was first
                claimed.append(mine)
        return claimed

    async def recover_once(self) -> int:
        """Claim and resume every run whose lease has expired; how many were claimed."""
        claimed = await self.claim_claimable()
        for record in claimed:
            await self.resume(record)
        return len(claimed)

    # -- background work ------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The engine's background work in the host: heartbeat, cancel requests, the executor's.

        Recovery is the executor's (:meth:`Executor.run`): the default takes
        over the runs whose lease expired before it reports started; a queue
        executor leaves them to its workers.
        """
        async with anyio.create_task_group() as tg:
            await tg.start(self._listen_for_cancels)
            tg.start_soon(self._heartbeat_forever)
            await tg.start(self.executor.run, self)
            task_status.started()

    async def _heartbeat_forever(self) -> None:
        self._last_renewal = time.monotonic()
        while True:
            await anyio.sleep(self.heartbeat)
            await self.renew()

    async def renew(self) -> None:
        """Renew the leases of every run executing here; stop those another process took."""
        fences = {
            run_id: active.fence
            for run_id, active in self.active.items()
            if not active.done and not active.stored
        }
        if not fences:
            self._last_renewal = time.monotonic()
            return
        storage = self.app._services().storage
        try:
            held = await storage.renew_leases(self.owner_id, fences, until=time.time() + self.lease)
        except Exception as exc:
            log.warning("renewing %d run leases failed: %s", len(fences), exc)
            if time.monotonic() - self._last_renewal < self.lease:
                return
            held = set()  # the leases have run out meanwhile: others may own the runs now
        else:
            self._last_renewal = time.monotonic()
        for run_id in fences.keys() - held:
            active = self.active.get(run_id)
            if active is None or active.done or active.stored:
                continue
            if await self._finished_here(run_id, fences[run_id]):
                continue  # its final write landed while the renewal was on its way: not lost
            log.warning("run %s: lease lost to another process; stopping it here", run_id)
            active.lose()

    async def _finished_here(self, run_id: str, fence: int) -> bool:
        """Whether ``run_id`` is stored finished by this process under ``fence``."""
        try:
            record = await self.app._services().storage.get_run(run_id)
        except Exception:
            return False
        return (
            record is not None
            and record.status not in ("pending", "running")
            and record.owner == self.owner_id
            and record.fence == fence
        )

    async def _listen_for_cancels(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        bus = self.app._services().events
        async with bus.subscribe((CANCEL_REQUESTED,)) as requests:
            task_status.started()
            async for event in requests:
                active = self.active.get(event.run_id or "")
                if active is not None:
                    active.control.cancel()
                elif event.run_id:
                    now = time.monotonic()
                    keep = 2 * self.lease  # long enough for a dead owner's lease to run out
                    self._cancel_requested = {
                        run_id: heard
                        for run_id, heard in self._cancel_requested.items()
                        if now - heard < keep
                    }
                    self._cancel_requested[event.run_id] = now

    async def request_cancel(self, record: RunRecord) -> bool:
        """Cancel a run wherever it executes; whether it was (or was asked to be) cancelled.

        Here: at once. In another live process: a ``run.cancel_requested``
        event, which that process acts on. Not executing anywhere (its lease
        expired): it is claimed and recorded cancelled.
        """
        active = self.active.get(record.id)
        if active is not None and not active.done:
            active.control.cancel()
            return True
        if record.status not in ("pending", "running"):
            return False
        claimed = await self.claim(record.id)
        if claimed is None:
            await self.app.emit(CANCEL_REQUESTED, run=record, data={"workflow": record.workflow})
            return True
        error = {"type": "Cancelled", "message": "run cancelled"}
        return await self._end_claimed(claimed, "cancelled", error)

    async def _end_claimed(
        self, record: RunRecord, status: RunStatus, error: dict[str, Any]
    ) -> bool:
        """Record the end of a run this process claimed but will not execute; whether it landed.

        Emits ``run.<status>``; a lease lost meanwhile (another process owns the
        run now) writes and emits nothing.
        """
        record.status = status
        record.finished_at = time.time()
        record.error = error
        try:
            await self.app._services().storage.save_run(record)
        except LeaseLost:
            return False
        data = {"workflow": record.workflow, "error": error}
        await self.app.emit(f"run.{status}", run=record, data=data)
        return True

    async def drain(self, grace: float) -> None:
        """Let runs in flight finish, for ``grace`` seconds at most.

        Then the runs executing in their callers' tasks (:meth:`run_here`) are
        cancelled, and waited for until they released their leases; the rest
        are the host's task group's, cancelled with it.
        """
        with anyio.move_on_after(grace):
            while self.active:
                await next(iter(self.active.values())).result()
        inline = [(active, active.scope) for active in self.active.values() if active.scope]
        for active, scope in inline:
            if not active.finishing:  # one whose final write is on is left to finish
                scope.cancel()
        with anyio.move_on_after(max(grace, self.heartbeat)):
            for active, _ in inline:
                await active.result()

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(self, run_id: str) -> RunResult:
        """Wait until a run finishes, wherever it executes; its result as stored.

        A run executing here is awaited directly. Otherwise the engine listens
        for the run's final event (the bus hears every process sharing the
        event log) and rereads the run every heartbeat, in case the bus missed
        it or this process claims the run meanwhile.
        """
        app = self.app
        services = app._services()
        keep = lambda event: event.run_id == run_id  # noqa: E731 - a one-line filter
        async with services.events.subscribe(FINAL_EVENTS, filter=keep) as finals:
            while True:
                active = self.active.get(run_id)
                if active is not None:
                    result = await active.result()
                    if not active.lost:
                        return result
                record = await services.storage.get_run(run_id)
                if record is None:
                    raise RunNotFound(f"no run {run_id!r}")
                if record.status not in ("pending", "running"):
                    break
                with anyio.move_on_after(self.heartbeat):
                    await finals.__anext__()
        return await app.get_run(run_id)

    # -- executing --------------------------------------------------------------------

    def _prior_attempts(
        self, wf: Workflow, checkpoints: dict[str, NodeCheckpoint]
    ) -> dict[str, int]:
        """How often earlier owners executed each node about to start (see the module docstring).

        A node starts once every parent is completed. If an owner resuming the
        run stored it ``running``, that owner executed it after the
        executions its checkpoint counts; otherwise only the owner that
        stored its last parent (for a root: the run's first) executed it.
        """
        parents = self._parents.get(wf.name)
        if parents is None:
            found: dict[str, list[str]] = {node: [] for node in wf.nodes}
            for parent, children in wf.plan.children.items():
                for child in children:
                    found[child].append(parent)
            parents = self._parents[wf.name] = {n: tuple(p) for n, p in found.items()}
        prior: dict[str, int] = {}
        for node, node_parents in parents.items():
            stored = checkpoints.get(node)
            if stored is not None and stored.status == "completed":
                continue
            if not all(
                p in checkpoints and checkpoints[p].status == "completed" for p in node_parents
            ):
                continue  # a parent never finished: nobody started this node
            if stored is None:
                prior[node] = 1
            elif stored.status == "running":
                prior[node] = stored.attempts + 1
            else:  # failed, its attempts counted (its run's end was never stored)
                prior[node] = stored.attempts
        return prior

    async def _execute(
        self,
        wf: Workflow,
        values: Any,
        record: RunRecord,
        sess: Session | None,
        who: Principal,
        checkpoints: dict[str, NodeCheckpoint] | None,
        active: ActiveRun,
    ) -> None:
        app = self.app
        services = app._services()
        # Stored without a start time: no owner before this one got as far as
        # starting it (a start time is stored before any node of a claimed run
        # runs, and a run executed where it was accepted is stored with one).
        never_started = record.started_at is None
        if never_started:
            record.started_at = time.time()
        completed = None
        prior: dict[str, int] = {}
        if checkpoints is not None:
            completed = {
                n: await services.payloads.load(c.output)
                for n, c in checkpoints.items()
                if c.status == "completed"
            }
            if not never_started:  # claimed before but never started: nothing ran
                prior = self._prior_attempts(wf, checkpoints)
        recorder = _Recorder(app, record, active, len(wf.nodes) - len(completed or ()), prior)
        try:
            if record.status != "running" or checkpoints is not None:
                record.status = "running"
                await services.storage.save_run(record)
            await app.emit(
                EventType.RUN_STARTED,
                run=record,
                # Resumed: an earlier owner started it (a first claim from a queue is not).
                data={"workflow": wf.name, "resumed": record.fence > 1 and not never_started},
            )
            # Last before the nodes start: which of them this owner executes.
            for node_id, before in prior.items():
                await services.storage.save_checkpoint(
                    NodeCheckpoint(
                        run_id=record.id,
                        node_id=node_id,
                        status="running",
                        started_at=time.time(),
                        attempts=before,
                        fence=record.fence,
                    )
                )
            result = await app.runtime.run_validated(
                wf,
                values,
                run_id=record.id,
                observer=recorder,
                control=active.control,
                completed=completed,
                state=self._run_state(sess, who),
                timeout=app.config.nexus.services.runs.default_timeout,
            )
        except LeaseLost:
            active.lose()
            self._stopped_here(wf, record, active)
            return
        except BaseException as exc:
            # The host is stopping (or storage failed): the run stays "running"
            # with its checkpoints; its lease is released so another process
            # (or the next start) resumes it at once. Waiters learn it is
            # still running instead of hanging.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                if recorder.last is not None and not active.lost:
                    await services.storage.save_checkpoint(recorder.last[0])
                await services.storage.renew_leases(
                    self.owner_id, {record.id: record.fence}, until=0
                )
            self._stopped_here(wf, record, active)
            if isinstance(exc, Exception):
                # Storage failed (a database outage): this run stops here and is
                # resumed from its checkpoints when its lease runs out; the host
                # and its other runs carry on.
                _log_storage_failure(record, exc)
                return
            raise
        # From here on the drain leaves a run executed in its caller's task
        # alone: that task's shield covers the final write (see below).
        active.finishing = True
        if active.lost:
            self._stopped_here(wf, record, active)
            return
        for node_id, extra in prior.items():
            node = result.nodes.get(node_id)
            if node is not None and node.status in ("completed", "failed"):
                node.attempts += extra
        if completed:
            # Nodes an earlier owner finished: as their checkpoints say (what get_run shows).
            assert checkpoints is not None
            for node_id in completed:
                done = checkpoints[node_id]
                result.nodes[node_id] = NodeResult(
                    status="completed",
                    output=done.output,
                    started_at=done.started_at,
                    duration_ms=done.duration_ms,
                    attempts=done.attempts,
                )
        result.session_id = record.session_id
        if recorder.failure is not None:  # a node's output could not be stored: failed there
            result.status, result.error, result.output = "failed", recorder.failure, None
        try:
            # A large output is stored by reference (the last node's blob when it is the same).
            record.output = await services.payloads.store(
                msgspec.to_builtins(result.output),
                run_blob_prefix(record.tenant, record.id, record.created_at) + "output",
                reuse=recorder.refs.values(),
                whole=True,
            )
        except Exception as exc:
            message = f"the run's output could not be stored: {exc}"
            result.status, result.output = "failed", None
            result.error = RunError(type=type(exc).__name__, message=message)
            record.output = None
        record.status = result.status
        # Every channel sees the same plain JSON data (or reference), in-process callers too.
        result.output = record.output
        for node_id, node in result.nodes.items():
            stored = recorder.refs.get(node_id)
            node.output = stored if stored is not None else msgspec.to_builtins(node.output)
        record.error = msgspec.to_builtins(result.error) if result.error else None
        record.finished_at = result.finished_at
        # Never cut short: a run in the host's task group shields its final
        # write here. run_here's scope shields it already (a scope costs 4 µs
        # a run), unless the drain cancelled that scope before the run got here.
        outer = active.scope
        with _UNSHIELDED if outer and not outer.cancel_called else anyio.CancelScope(shield=True):
            last = recorder.last

            def audit(outcome: str, reason: str | None) -> Awaitable[None]:
                return self._audit(record, wf, who, outcome, reason)

            # The run's last events and its audit record are written in its
            # final write (one transaction where the storage can), with the
            # run's events the bus queued before them.
            bus, storage = services.events, services.storage
            ended = self._audit_record(
                record, wf, who, result.status, result.error.message if result.error else None
            )
            # Subscribers see the error without its traceback (runs:debug reads the run).
            error = msgspec.to_builtins(result.error.public()) if result.error else None
            outcome = {"workflow": wf.name, "output": record.output, "error": error}
            ending = [(f"run.{result.status}", outcome)]
            if last is not None:
                ending.insert(0, (last[1], last[2]))
            events = [
                run_event(kind, record, data=data) for kind, data in ending if bus.wants(kind)
            ]
            finish = RunFinish(
                record, () if last is None else (last[0],), () if ended is None else (ended,)
            )
            try:
                await bus.publish_with(events, finish, log=storage)
            except LeaseLost as exc:
                # Executed here, but another process owns the run now: the
                # audit trail says this result was refused, and nothing else
                # of it is written.
                await audit("lease_lost", str(exc))
                active.lose()
                self._stopped_here(wf, record, active)
                return
            except Exception as exc:
                # Storage failed: the result is not kept; the run is executed again
                # from its checkpoints once its lease runs out (the host carries on).
                self._stopped_here(wf, record, active)
                _log_storage_failure(record, exc)
                return
            active.stored = True
            if sess is not None and result.status == "completed":
                await app.sessions_manager().save(sess)
        if result.status == "failed":
            app.metrics.record_error(record.channel or "python", "run_failed")
            _log_failed_run(record, result.error)
        self.active.pop(record.id, None)
        active.finish(result)

    async def execute_live(
        self, wf: Workflow, values: Any, record: RunRecord, sess: Session | None, who: Principal
    ) -> RunResult:
        """Execute a run of an ephemeral workflow (``durable=False``) in the caller's task.

        No run record, checkpoint or lease is written, and no task is started:
        the run is the caller's own work, cancelled with it. Its events go to
        live subscribers only (:meth:`EventBus.publish_live`): those subscribed
        when it starts get every event, one that subscribes while it executes
        gets its final event. Its audit record is written as a durable run's is.
        """
        app = self.app
        bus = app._services().events
        record.started_at = time.time()

        async def emit(kind: str, data: dict[str, Any]) -> None:
            if bus.has_subscribers(kind):
                await bus.publish_live(
                    Event(
                        type=kind,
                        channel=record.channel,
                        session_id=record.session_id,
                        run_id=record.id,
                        tenant=record.tenant,
                        data=data,
                    )
                )

        def audit(outcome: str, reason: str | None) -> Awaitable[None]:
            return self._audit(record, wf, who, outcome, reason)

        # Nobody subscribed to any event of a run (the usual case): none is
        # built, and the runtime calls no observer per node (a subscriber that
        # comes while the run executes gets its final event only).
        listened = any(bus.has_subscribers(kind) for kind in _LIVE_EVENTS)
        if listened:
            await emit(EventType.RUN_STARTED, {"workflow": wf.name, "resumed": False})
        try:
            result = await app.runtime.run_validated(
                wf,
                values,
                run_id=record.id,
                observer=_LiveObserver(emit) if listened else None,
                state=self._run_state(sess, who),
                timeout=app.config.nexus.services.runs.default_timeout,
            )
        except BaseException:
            # The caller went away (or the host is stopping): the run goes with it.
            with anyio.CancelScope(shield=True):
                await audit("cancelled", "the caller's task was cancelled")
            raise
        result.session_id = record.session_id
        result.output = msgspec.to_builtins(result.output)
        for node in result.nodes.values():
            node.output = msgspec.to_builtins(node.output)
        await audit(result.status, result.error.message if result.error else None)
        if sess is not None and result.status == "completed":
            await app.sessions_manager().save(sess)
        error = msgspec.to_builtins(result.error.public()) if result.error else None
        # Emitted whoever listened at the start: a subscriber may have come meanwhile.
        outcome = {"workflow": wf.name, "output": result.output, "error": error}
        await emit(f"run.{result.status}", outcome)
        if result.status == "failed":
            app.metrics.record_error(record.channel or "python", "run_failed")
            record.error = msgspec.to_builtins(result.error) if result.error else None
            _log_failed_run(record, result.error)
        return result

    def _run_state(self, sess: Session | None, who: Principal) -> dict[type, Any]:
        """What a run's nodes find in ``context.state``: the host, the principal, the session."""
        state: dict[type, Any] = {self._host_type: self.app, Principal: who}
        if sess is not None:
            state[Session] = sess
        return state

    async def _audit(
        self, record: RunRecord, wf: Workflow, who: Principal, outcome: str, reason: str | None
    ) -> None:
        """Write the run's audit record (see :meth:`_audit_record`)."""
        entry = self._audit_record(record, wf, who, outcome, reason)
        if entry is not None:
            await self.app.security.write_audit(entry)

    def _audit_record(
        self, record: RunRecord, wf: Workflow, who: Principal, outcome: str, reason: str | None
    ) -> AuditRecord | None:
        """The run's audit record (action ``invoke``): how it ended, and why if it did not."""
        return self.app.security.audit_record(
            action="invoke",
            outcome=outcome,
            principal=who,
            channel=record.channel or "python",
            workflow=wf.name,
            run_id=record.id,
            reason=reason,
            input_hash=record.input_hash,
        )

    def _stopped_here(self, wf: Workflow, record: RunRecord, active: ActiveRun) -> None:
        """The run stopped executing in this process unfinished: answer its local waiters."""
        self.active.pop(record.id, None)
        active.finish(
            RunResult(
                run_id=record.id,
                workflow=wf.name,
                status="running",
                session_id=record.session_id,
                started_at=record.started_at,
            )
        )


#: What a run executed in its caller's task finishes in: that task's own shield covers it.
_UNSHIELDED = contextlib.nullcontext()

#: Every event an ephemeral run may publish (see :meth:`RunEngine.execute_live`).
_LIVE_EVENTS = (
    EventType.RUN_STARTED,
    EventType.NODE_STARTED,
    EventType.NODE_FINISHED,
    EventType.NODE_FAILED,
    EventType.RUN_COMPLETED,
    EventType.RUN_FAILED,
    EventType.RUN_CANCELLED,
)


class _LiveObserver:
    """Node events of an ephemeral run, to live subscribers only (nothing is stored)."""

    __slots__ = ("emit",)

    def __init__(self, emit: Callable[[str, dict[str, Any]], Awaitable[None]]) -> None:
        self.emit = emit

    async def node_started(self, run_id: str, node_id: str) -> None:
        await self.emit(EventType.NODE_STARTED, {"node": node_id})

    async def node_finished(
        self, run_id: str, node_id: str, result: NodeResult, output: Any
    ) -> None:
        if result.status == "failed":
            error = msgspec.to_builtins(result.error)
            await self.emit(EventType.NODE_FAILED, {"node": node_id, "error": error})
            return
        data = {"node": node_id, "status": result.status, "duration_ms": result.duration_ms}
        await self.emit(EventType.NODE_FINISHED, data)


def _log_storage_failure(record: RunRecord, exc: Exception) -> None:
    """One WARNING line: a run stopped in this process because storage failed."""
    log.warning(
        "run %s of workflow %r stopped here: storage failed (%s: %s); it resumes from its"
        " checkpoints when its lease runs out",
        record.id,
        record.workflow,
        type(exc).__name__,
        exc,
        extra={"run_id": record.id, "workflow": record.workflow},
    )


def _log_failed_run(record: RunRecord, error: RunError | None) -> None:
    """One ERROR line per failed run (run id, workflow, node, error), then its traceback."""
    node = error.node if error is not None else None
    summary = f"{error.type}: {error.message}" if error is not None else "failed"
    tb = error.traceback if error is not None else None
    log.error(
        "run %s of workflow %r failed%s: %s%s",
        record.id,
        record.workflow,
        f" at node {node!r}" if node else "",
        summary,
        f"\n{tb.rstrip()}" if tb else "",
        extra={"run_id": record.id, "workflow": record.workflow, "node": node, "traceback": tb},
    )


class _Recorder:
    """The runtime observer of host runs: checkpoint, then events, then metrics.

    A node's checkpoint is stored before the next node starts, with the run's
    fencing token (a stale owner's checkpoint is refused: the run is then
    stopped here). The run's last node has no next: its checkpoint and event
    are kept in :attr:`last` and written in the run's final write
    (:class:`~nexus_core.storage.base.RunFinish`, through ``EventBus.publish_with``).
    """

    __slots__ = ("active", "app", "failure", "last", "left", "prior", "record", "refs")

    def __init__(
        self, app: Nexus, record: RunRecord, active: ActiveRun, left: int, prior: dict[str, int]
    ) -> None:
        self.app = app
        self.record = record
        self.active = active
        self.left = left  # nodes of this run still to finish
        self.prior = prior  # executions of unfinished nodes by earlier owners
        self.last: tuple[NodeCheckpoint, str, dict[str, Any]] | None = None
        self.refs: dict[str, Any] = {}  # node id -> its output's reference (large outputs)
        self.failure: RunError | None = None  # a node output the blob store refused

    async def node_started(self, run_id: str, node_id: str) -> None:
        await self.app.emit(EventType.NODE_STARTED, run=self.record, data={"node": node_id})

    async def node_finished(
        self, run_id: str, node_id: str, result: NodeResult, output: Any
    ) -> None:
        failed = self.failure
        await self._node_finished(run_id, node_id, result, output)
        if self.failure is not failed:
            self.active.control.cancel()  # once its failure is written: the run stops here

    async def _node_finished(
        self, run_id: str, node_id: str, result: NodeResult, output: Any
    ) -> None:
        app = self.app
        self.left -= 1
        if self.active.lost:
            return
        stored: Any = None
        if result.status == "completed":
            record = self.record
            prefix = run_blob_prefix(record.tenant, run_id, record.created_at)
            try:
                stored = await app._services().payloads.store(
                    msgspec.to_builtins(output), f"{prefix}nodes/{node_id}"
                )
            except Exception as exc:
                # The blob store failed: the node fails, named, and the run stops (failed).
                message = f"its output could not be stored: {exc}"
                self.failure = RunError(type=type(exc).__name__, message=message, node=node_id)
                result.status, result.output = "failed", None
                result.error = f"{type(exc).__name__}: {message}"
        if result.status == "completed":
            if has_blob_refs(stored):
                self.refs[node_id] = stored
            checkpoint = NodeCheckpoint(
                run_id=run_id,
                node_id=node_id,
                status="completed",
                output=stored,
                started_at=result.started_at,
                duration_ms=result.duration_ms,
                attempts=result.attempts + self.prior.get(node_id, 0),
                fence=self.record.fence,
            )
            node = app._workflows[self.record.workflow].nodes[node_id].node
            if result.duration_ms is not None:
                app.metrics.observe_node(node.type_name, result.duration_ms / 1000)
            event: tuple[str, dict[str, Any]] = (
                EventType.NODE_FINISHED,
                {"node": node_id, "status": "completed", "duration_ms": result.duration_ms},
            )
        elif result.status == "failed":
            checkpoint = NodeCheckpoint(
                run_id=run_id,
                node_id=node_id,
                status="failed",
                error=result.error,
                started_at=result.started_at,
                duration_ms=result.duration_ms,
                attempts=result.attempts + self.prior.get(node_id, 0),
                fence=self.record.fence,
            )
            # Event data is plain JSON data: what subscribers get, in-process too.
            event = (
                EventType.NODE_FAILED,
                {"node": node_id, "error": msgspec.to_builtins(result.error)},
            )
        else:
            await app.emit(
                EventType.NODE_FINISHED,
                run=self.record,
                data={"node": node_id, "status": result.status},
            )
            return
        if self.left == 0:
            self.last = (checkpoint, *event)  # nothing runs after it: stored with the run
            return
        try:
            await app._services().storage.save_checkpoint(checkpoint)
        except LeaseLost:
            # Another process owns the run now: stop here, write nothing more.
            self.active.lose()
            return
        await app.emit(event[0], run=self.record, data=event[1])


def run_event(
    type: str,
    run: RunRecord | None,
    *,
    channel: str | None = None,
    session_id: str | None = None,
    tenant: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """An event to publish: of ``run`` (its channel, session and tenant unless given), if any."""
    if run is not None:
        channel = channel or run.channel
        session_id = session_id or run.session_id
        tenant = tenant or run.tenant
    return Event(
        type=str(type),
        channel=channel,
        session_id=session_id,
        run_id=run.id if run is not None else None,
        tenant=tenant,
        data=data or {},
    )
