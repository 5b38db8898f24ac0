"""``nexus workflows`` (list) and ``nexus workflows show NAME`` (with its schemas)."""

from __future__ import annotations

from cyclopts import App

from .. import context
from ..backends import open_backend
from ..context import Globals
from ..errors import OK
from ..output import Console, dumps
from .run import run_help

__all__ = ["app", "first_line", "list_workflows", "show_workflow"]

app = App(name="workflows", help="List the workflows, or show one with its schemas.")


def first_line(text: str | None) -> str:
    """The first line of a description."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


@app.default
def list_workflows(*, g: Globals | None = None) -> int:
    """List the workflows: name and description."""
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            found = await backend.workflows()
        if out.json:
            out.result([{"name": wf["name"], "description": wf["description"]} for wf in found])
            return OK
        if not found:
            out.note("no workflows registered")
            return OK
        out.table(
            [[wf["name"], first_line(wf["description"])] for wf in found],
            ["name", "description"],
        )
        return OK

    return context.execute(body)


@app.command(name="show")
def show_workflow(name: str, /, *, g: Globals | None = None) -> int:
    """Show a workflow: its description, its options and its input and output schemas.

    Parameters
    ----------
    name
        The workflow.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            workflow = await backend.workflow(name)
        if out.json:
            out.result(workflow)
            return OK
        out.lines(run_help(workflow))
        out.lines(["", "Input schema:", dumps(workflow["input_schema"])])
        out.lines(["", "Output schema:", dumps(workflow["output_schema"])])
        return OK

    return context.execute(body)
