"""``nexus runs``: list runs, show one, cancel one, resume an interrupted one."""

from __future__ import annotations

from typing import Annotated, Literal

from cyclopts import App, Parameter

from .. import context
from ..backends import open_backend
from ..checks import between
from ..context import Globals
from ..errors import FAILURE, OK, CliError, Problem, usage_error
from ..output import Console
from ..progress import make_progress
from ..render import render_run, render_run_detail, when

__all__ = ["app", "cancel_run", "list_runs", "resume_run", "show_run"]

app = App(name="runs", help="List runs; show, cancel or resume one.")

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
#: Run ids are URL-safe base64 and may start with "-": never read one as an option.
RunId = Annotated[str, Parameter(allow_leading_hyphen=True)]
#: The most runs one listing shows (a gateway answers at most 200 a page too).
MAX_LIMIT = 200


@app.default
def list_runs(
    *,
    workflow: Annotated[str | None, Parameter(name=["--workflow", "-w"])] = None,
    status: Status | None = None,
    limit: Annotated[int, Parameter(validator=between(1, MAX_LIMIT))] = 20,
    g: Globals | None = None,
) -> int:
    """List runs, newest first.

    Parameters
    ----------
    workflow
        Only runs of this workflow.
    status
        Only runs with this status.
    limit
        At most this many.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        if not 1 <= limit <= 200:
            raise usage_error(f"--limit must be between 1 and 200, got {limit}")
        async with open_backend(context.target()) as backend:
            found = await backend.runs(workflow=workflow, status=status, limit=limit)
        if out.json:
            out.result(found)
            return OK
        if not found:
            out.note("no runs")
            return OK
        out.table(
            [
                [r["run_id"], r["workflow"], r["status"], when(r["created_at"]), r["channel"]]
                for r in found
            ],
            ["run", "workflow", "status", "created", "channel"],
        )
        return OK

    return context.execute(body)


@app.command(name="show")
def show_run(run_id: RunId, /, *, g: Globals | None = None) -> int:
    """Show a run: status, output or error, and each node.

    Parameters
    ----------
    run_id
        The run id (printed by nexus run, listed by nexus runs).
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            run = await backend.run(run_id)
        return render_run_detail(out, run)

    return context.execute(body)


@app.command(name="cancel")
def cancel_run(run_id: RunId, /, *, g: Globals | None = None) -> int:
    """Cancel a run that has not finished, wherever it executes.

    A run executing in another process (a gateway, a worker, another `nexus
    run`) is asked to stop through the shared event log; this waits briefly
    for it to be recorded cancelled.

    Parameters
    ----------
    run_id
        The run to cancel.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            outcome = await backend.cancel(run_id)
        if not outcome["cancelled"]:
            raise CliError(
                Problem(
                    code="conflict",
                    message=f"run {run_id} is already {outcome['status']}; nothing to cancel",
                )
            )
        if out.json:
            out.result(outcome)
        elif outcome.get("requested"):  # its process has not answered yet
            out.line(f"asked the process executing run {run_id} to cancel it")
        else:
            out.line(f"cancelled run {run_id}")
        return OK if outcome["cancelled"] else FAILURE

    return context.execute(body)


@app.command(name="resume")
def resume_run(run_id: RunId, /, *, g: Globals | None = None) -> int:
    """Follow a run to its end, resuming it from its checkpoints if it was interrupted.

    In process, a run whose process is gone (a crash, kill -9) is taken over
    once its lease has expired and finished here from its last completed node;
    a run still leased is executing elsewhere and is left alone. With an
    executor that uses workers, and on a gateway, interrupted runs are resumed
    there; this follows the run and prints its result.

    Parameters
    ----------
    run_id
        The run to resume or follow.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            run = await backend.run(run_id)
            progress = make_progress(out, run["workflow"] or "run")
            if progress is None:
                result = await backend.resume(run_id)
            else:
                with progress:
                    result = await backend.resume(run_id, on_event=progress)
        return render_run(out, result)

    return context.execute(body)
