"""The in-process backend: the application loaded from ``--app`` and run in this process.

Every invocation takes the core's one request path (``app.invoke`` with
``channel="cli"``), so security, validation, sessions, events and audit are
the same as on every other channel. The host (storage, events, sessions) is
started only for the commands that need it: listing workflows does not open
the database.

Which process executes a run is told by its lease (see
:mod:`nexus_core.engine`): a run is executing somewhere while it is unfinished
and its ``lease_expires_at`` is in the future. A ``nexus`` command never takes
a run over by itself; ``nexus runs resume`` claims a run whose lease expired
(its process is gone) and finishes it here, and ``nexus runs cancel`` cancels
a run wherever it executes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from . import tokens
from .backends import (
    TERMINAL,
    Backend,
    EventCallback,
    Target,
    event_view,
    nexus_command,
    run_summary,
    run_view,
    session_view,
)
from .errors import CliError, Problem

if TYPE_CHECKING:
    from nexus_core import Nexus
    from nexus_core.security import Credentials, Principal

__all__ = ["LocalBackend", "executing_elsewhere", "interrupted_runs"]

log = logging.getLogger("nexus.cli")

_POLL = 0.2  # seconds between reads of the event log when following

#: Runs this process cancelled because its command was interrupted: id -> final status.
_INTERRUPTED: dict[str, str] = {}


def interrupted_runs() -> dict[str, str]:
    """The runs cancelled because this ``nexus`` process was interrupted, with their status."""
    return dict(_INTERRUPTED)


def executing_elsewhere(record: Any, now: float | None = None) -> bool:
    """Whether a run is executing in some process: unfinished, with a lease not yet expired."""
    if record.status in TERMINAL or record.lease_expires_at is None:
        return False
    return bool(record.lease_expires_at > (time.time() if now is None else now))


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _executing_elsewhere(record: Any) -> CliError:
    """The conflict of resuming a run another process holds the lease of."""
    from .render import when

    return CliError(
        Problem(
            code="conflict",
            message=f"run {record.id} is executing elsewhere (its lease runs until "
            f"{when(record.lease_expires_at)}, renewed while its process lives); it finishes there",
            hint=f"follow it with: {nexus_command('runs', 'show', record.id)}; "
            "resume it once its process is gone and the lease expired",
        )
    )


class LocalBackend(Backend):
    """The application in this process (``--app``, ``NEXUS_APP`` or ``nexus.toml``)."""

    def __init__(self, target: Target, *, app: Nexus | None = None) -> None:
        self.target = target
        self.app: Nexus | None = app
        self._host: contextlib.AsyncExitStack | None = None
        self._principal: Principal | None = None
        self._credentials: Credentials | None = None
        self._waiting: set[str] = set()  # runs started here that a command waits for

    async def __aenter__(self) -> LocalBackend:
        if self.app is None:
            from nexus_core.plugin import load_app

            self.app = load_app(self.target.app)
        from .context import INTERRUPT_HANDLERS

        INTERRUPT_HANDLERS.append(self._cancel_waiting)
        return self

    async def __aexit__(self, exc_type: Any, *exc_info: Any) -> None:
        from .context import INTERRUPT_HANDLERS

        with contextlib.suppress(ValueError):
            INTERRUPT_HANDLERS.remove(self._cancel_waiting)
        if exc_type is not None and self._waiting:
            # Failed while waiting: nothing will execute these runs once this
            # process is gone, so cancel them rather than wait out the shutdown grace.
            with anyio.CancelScope(shield=True):
                await self._cancel_waiting()
        await self._stop_host()

    async def _cancel_waiting(self) -> None:
        """Cancel the runs a command of this process waits for (Ctrl-C: before the host stops).

        Their sync nodes are told to stop; each run is recorded ``cancelled``
        (or as it ended, if it ended first), not left ``running``.
        """
        if self._host is None:
            return
        app = self.nexus
        for run_id in sorted(self._waiting):
            try:
                if not await app.cancel(run_id):
                    continue
                with anyio.move_on_after(10):
                    _INTERRUPTED[run_id] = (await app.wait(run_id)).status
            except Exception:  # the host is failing: it records what it can
                log.debug("could not cancel run %s", run_id, exc_info=True)
        self._waiting.clear()

    # -- the host ------------------------------------------------------------------

    @property
    def nexus(self) -> Nexus:
        """The application (loaded on entry)."""
        if self.app is None:
            raise RuntimeError("use 'async with LocalBackend(...)'")
        return self.app

    async def start(self) -> None:
        """Start the host now (before the backend is used from several tasks)."""
        await self._running()

    async def host(self) -> Nexus:
        """The application with its host started, without authenticating (``nexus login``)."""
        app = self.nexus
        if self._host is None:
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(app.running())
            self._host = stack
        return app

    async def _running(self) -> Nexus:
        app = await self.host()
        if self._principal is None:
            from nexus_core.errors import AuthenticationError
            from nexus_core.security import Credentials

            given = self.target.token
            saved = None if given else tokens.saved(self.target)
            self._credentials = Credentials(bearer=given or saved, client="cli")
            try:
                self._principal = await app.security.authenticate(self._credentials, "cli")
            except AuthenticationError as exc:
                if saved is None:
                    raise
                # Never go on as someone else (anonymous) than the login says: the
                # saved token was refused, so say so and what to do about it.
                raise CliError(
                    Problem(
                        code=exc.code,
                        message="the token saved by `nexus login` is not accepted by this "
                        f"application: {exc.message}",
                        hint="log in again with: nexus login (or forget the token with: "
                        "nexus logout; or pass --token / NEXUS_TOKEN)",
                    )
                ) from None
        return app

    async def _stop_host(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            await host.aclose()

    # -- workflows ---------------------------------------------------------------------

    async def workflows(self) -> list[dict[str, Any]]:
        """Every registered workflow, sorted by name."""
        return [self._workflow(wf) for _, wf in sorted(self.nexus.workflows.items())]

    async def workflow(self, name: str) -> dict[str, Any]:
        """One workflow with its schemas (``WorkflowNotFound`` with a suggestion)."""
        return self._workflow(self.nexus.get_workflow(name))

    @staticmethod
    def _workflow(wf: Any) -> dict[str, Any]:
        return {
            "name": wf.name,
            "description": wf.description or "",
            "input_schema": wf.input_schema,
            "output_schema": wf.output_schema,
        }

    # -- runs ------------------------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        session: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Run ``name`` through ``app.invoke`` on channel ``cli``."""
        app = await self._running()
        options: dict[str, Any] = {
            "credentials": self._credentials,
            "channel": "cli",
            "session": session,
            "idempotency_key": idempotency_key,
        }
        workflow = app.workflows.get(name)
        if workflow is not None and not workflow.meta.durable:
            # Ephemeral: no run record to wait on; it runs in this task, and
            # Ctrl-C (cancelling the task) stops it.
            return run_view(_builtins(await app.invoke(name, inputs, wait=wait, **options)))
        started = await app.invoke(name, inputs, wait=False, **options)
        if not wait or started.status in TERMINAL:
            return run_view(_builtins(started))
        run_id = started.run_id
        if not started.replayed:  # an earlier command's run is not ours to cancel
            self._waiting.add(run_id)
        if on_event is None:
            result = run_view(_builtins(await app.wait(run_id)))
        else:
            # Registered before this task yields: the run has not emitted anything yet.
            sub = app.subscribe(("run.*", "node.*"), filter=lambda event: event.run_id == run_id)
            result = await self._follow(run_id, sub, on_event)
        return await self._settled(run_id, result)

    async def _settled(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        self._waiting.discard(run_id)  # over: an interruption from now on leaves it be
        if run_id in _INTERRUPTED:
            # Cancelled by Ctrl-C: the command is being stopped; the interrupt
            # message, not the cancelled run, is what it reports.
            await anyio.sleep_forever()
        return result

    async def _follow(
        self, run_id: str, sub: Any, on_event: EventCallback | None
    ) -> dict[str, Any]:
        app = self.nexus
        finished = anyio.Event()

        async def forward() -> None:
            async with sub:
                async for event in sub:
                    if on_event is not None:
                        await _call(on_event, event_view(_builtins(event)))
                    if event.type in ("run.completed", "run.failed", "run.cancelled"):
                        break
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            result = await app.wait(run_id)
            with anyio.move_on_after(2):
                await finished.wait()
            tg.cancel_scope.cancel()
        return run_view(_builtins(result))

    async def run(self, run_id: str) -> dict[str, Any]:
        """A run with its nodes."""
        app = await self._running()
        return run_view(_builtins(await app.get_run(run_id, principal=self._principal)))

    async def output_chunks(self, run_id: str) -> AsyncIterator[bytes]:
        """The run's output as JSON bytes (``Nexus.open_output``)."""
        app = await self._running()
        _ref, chunks = await app.open_output(run_id, principal=self._principal)
        async for chunk in chunks:
            yield chunk

    async def runs(
        self, *, workflow: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Run summaries, newest first."""
        app = await self._running()
        records = await app.list_runs(
            principal=self._principal, workflow=workflow, status=status, limit=limit
        )
        return [run_summary({"run_id": r.id, **_builtins(r)}) for r in records]

    async def _record(self, run_id: str) -> Any:
        from nexus_core.errors import RunNotFound

        app = await self._running()
        assert app.storage is not None
        assert self._principal is not None
        record = await app.storage.get_run(run_id, tenant=self._principal.tenant)
        if record is None:
            raise RunNotFound(f"no run {run_id!r}")
        return record

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run wherever it executes, and wait briefly for its final status.

        ``app.cancel`` cancels it here, asks its live owner to (a
        ``run.cancel_requested`` event on the shared log), or records it
        cancelled when nobody holds its lease. A run whose owner died keeps
        its lease until it expires: it is cancelled here once it has.
        """
        app = await self._running()
        record = await self._record(run_id)
        if record.status in TERMINAL:
            return {"run_id": run_id, "cancelled": False, "status": record.status}
        if not await app.cancel(run_id, principal=self._principal):
            record = await self._record(run_id)
            return {"run_id": run_id, "cancelled": False, "status": record.status}
        status = await self._final_status(run_id)
        if status in TERMINAL:
            return {"run_id": run_id, "cancelled": status == "cancelled", "status": status}
        return {"run_id": run_id, "cancelled": True, "status": status, "requested": True}

    async def _final_status(self, run_id: str, patience: float = 10.0) -> str:
        """The run's status once it ended, or as it stands after ``patience`` seconds.

        While waiting, a run whose lease expired (its owner is gone, so the
        cancel request went unheard) is cancelled here.
        """
        app = self.nexus
        deadline = time.monotonic() + patience
        record = await self._record(run_id)
        if record.lease_expires_at is not None:  # wait out a dead owner's lease too
            deadline += max(0.0, record.lease_expires_at - time.time())
        step = app.engine.heartbeat
        while True:
            with anyio.move_on_after(min(step, max(0.0, deadline - time.monotonic()))):
                return (await app.wait(run_id)).status
            record = await self._record(run_id)
            if record.status in TERMINAL or time.monotonic() >= deadline:
                return str(record.status)
            if not executing_elsewhere(record):
                await app.cancel(run_id, principal=self._principal)

    async def resume(self, run_id: str, *, on_event: EventCallback | None = None) -> dict[str, Any]:
        """Finish an interrupted run here from its checkpoints (or show a finished one).

        Only a run whose lease expired (its process is gone) is claimed and
        executed here; one still leased is executing elsewhere (a conflict).
        With an executor that uses workers, the workers resume it: this
        follows it to its end.
        """
        record = await self._record(run_id)
        if record.status in TERMINAL:
            return await self.run(run_id)
        app = self.nexus
        if app.engine.executor.needs_workers:
            claimed = None
        elif executing_elsewhere(record):
            raise _executing_elsewhere(record)
        else:
            claimed = await app.engine.claim(run_id)
            if claimed is None:  # another process was first, or it ended meanwhile
                record = await self._record(run_id)
                if record.status in TERMINAL:
                    return await self.run(run_id)
                raise _executing_elsewhere(record)
        # Subscribed before it resumes: none of its events is missed.
        sub = app.subscribe(("run.*", "node.*"), filter=lambda event: event.run_id == run_id)
        if claimed is not None:
            self._waiting.add(run_id)
            await app.engine.resume(claimed)
        return await self._settled(run_id, await self._follow(run_id, sub, on_event))

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self) -> dict[str, Any]:
        """A new session (``session.created`` is emitted)."""
        app = await self._running()
        sess = await app.create_session(channel="cli", principal=self._principal)
        return session_view(_builtins(sess.record))

    async def session(self, session_id: str) -> dict[str, Any]:
        """A live session."""
        app = await self._running()
        sess = await app.get_session(session_id, principal=self._principal)
        return session_view(_builtins(sess.record))

    # -- events -------------------------------------------------------------------------------

    async def events(
        self, patterns: Sequence[str], *, since: str | None = None, follow: bool = True
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Read the event log (shared by every process on this storage), then poll it."""
        app = await self._running()  # here, not in the generator: the host is task-bound
        return self._poll_events(app, patterns, since, follow)

    async def _poll_events(
        self, app: Nexus, patterns: Sequence[str], since: str | None, follow: bool
    ) -> AsyncGenerator[dict[str, Any], None]:
        storage = app.storage
        assert storage is not None
        match = _matcher(patterns)
        cursor = None if since in (None, "", "0") else since
        if since is None:
            cursor = await _last_event_id(storage)
        page_size = 500
        while True:
            page = await storage.read_events(after=cursor, limit=page_size)
            for event in page:
                cursor = event.id
                if match(event.type):
                    yield event_view(_builtins(event))
            if len(page) >= page_size:
                continue
            if not follow:
                return
            await anyio.sleep(_POLL)

    # -- plugins ------------------------------------------------------------------------------

    async def plugins(self) -> dict[str, Any]:
        """The plugins the application loaded, and those that failed."""
        app = self.nexus
        return {
            "plugins": [_builtins(info) for info in app.plugins],
            "errors": [_builtins(error) for error in app.plugin_errors],
        }


async def _call(callback: EventCallback, event: dict[str, Any]) -> None:
    result = callback(event)
    if result is not None:
        await result


def _matcher(patterns: Sequence[str]) -> Any:
    pats = tuple(patterns) or ("*",)
    if "*" in pats:
        return lambda _type: True
    compiled = [re.compile(fnmatch.translate(p)) for p in pats]
    return lambda event_type: any(c.match(event_type) for c in compiled)


async def _last_event_id(storage: Any) -> str | None:
    cursor: str | None = None
    while True:
        page = await storage.read_events(after=cursor, limit=5000)
        if not page:
            return cursor
        cursor = str(page[-1].id)
        if len(page) < 5000:
            return cursor
