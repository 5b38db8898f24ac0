"""How results look: the same for the local and the remote backend."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

from .backends import nexus_command
from .errors import FAILURE, OK, CliError, Problem
from .options import input_options
from .output import Console, dumps

__all__ = [
    "fail_run",
    "problem_with_options",
    "render_run",
    "render_run_detail",
    "when",
]


def when(timestamp: float | None) -> str | None:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (None stays None)."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def run_problem(run: Mapping[str, Any]) -> Problem | None:
    """The error of a run that did not complete (None for a completed or unfinished run)."""
    status = run.get("status")
    run_id = run.get("run_id")
    if status == "failed":
        error = run.get("error") or {}
        node = error.get("node")
        where = f" at node {node!r}" if node else ""
        kind = error.get("type")
        reason = error.get("message") or "no reason given"
        reason = f"{kind}: {reason}" if kind and not reason.startswith(f"{kind}:") else reason
        return Problem(
            code="run_failed",
            message=f"run {run_id} of {run.get('workflow')!r} failed{where}: {reason}",
            node=node,
            hint=f"details: {nexus_command('runs', 'show', str(run_id))}",
        )
    if status == "cancelled":
        return Problem(code="run_cancelled", message=f"run {run_id} was cancelled")
    return None


def fail_run(run: Mapping[str, Any]) -> CliError | None:
    """A :class:`CliError` for a failed or cancelled run, else None."""
    problem = run_problem(run)
    return CliError(problem) if problem is not None else None


def render_run(out: Console, run: Mapping[str, Any]) -> int:
    """Print a run's result; return the exit code (1 unless it completed).

    Text: the output as JSON on stdout, or the failing node and reason on
    stderr. JSON: the whole run (status, output, error, nodes) on stdout,
    without the error's traceback (``nexus runs show`` prints it, and
    ``NEXUS_DEBUG=1`` on stderr).
    """
    problem = run_problem(run)
    status = run.get("status")
    if out.json:
        out.result(_without_traceback(run))
        if problem is not None:
            for text in problem.lines():
                out.stderr.write(text + "\n")
            _debug_traceback(out, run)
            return FAILURE
        return OK
    if problem is not None:
        out.problem(problem)
        _debug_traceback(out, run)
        return FAILURE
    if status == "completed":
        output = run.get("output")
        out.result(output)
        if isinstance(output, dict) and set(output) == {"$blob"}:
            size = output["$blob"].get("size")
            out.note(
                f"the output ({size} bytes) is stored by reference; write it to a file with "
                "--output-file FILE"
            )
        return OK
    run_id = run.get("run_id")
    out.line(str(run_id))
    follow = nexus_command("runs", "resume", str(run_id))
    out.note(f"run {run_id} is {status}; follow it with: {follow}")
    return OK


def _without_traceback(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run without its error's traceback: ``nexus runs show`` has it (and NEXUS_DEBUG)."""
    error = run.get("error")
    if not isinstance(error, Mapping) or "traceback" not in error:
        return dict(run)
    return {**run, "error": {k: v for k, v in error.items() if k != "traceback"}}


def _debug_traceback(out: Console, run: Mapping[str, Any]) -> None:
    """With ``NEXUS_DEBUG`` set: the failed run's traceback on stderr, when the caller sees it."""
    error = run.get("error")
    traceback = error.get("traceback") if isinstance(error, Mapping) else None
    if traceback and os.environ.get("NEXUS_DEBUG"):
        out.stderr.write(traceback.rstrip() + "\n")


def render_run_detail(out: Console, run: Mapping[str, Any]) -> int:
    """``nexus runs show``: the run and each node (JSON: the run itself)."""
    if out.json:
        out.result(dict(run))
        return OK
    out.line(f"run       {run.get('run_id')}")
    out.line(f"workflow  {run.get('workflow')}")
    out.line(f"status    {run.get('status')}")
    if run.get("session_id"):
        out.line(f"session   {run.get('session_id')}")
    started, finished = run.get("started_at"), run.get("finished_at")
    if started:
        out.line(f"started   {when(started)}")
    if finished:
        took = f" ({(finished - started) * 1000:.0f} ms)" if started else ""
        out.line(f"finished  {when(finished)}{took}")
    error = run.get("error")
    if error:
        node = f" at node {error.get('node')!r}" if error.get("node") else ""
        out.line(f"error     {error.get('type')}{node}: {error.get('message')}")
    if run.get("status") == "completed":
        out.line(f"output    {dumps(run.get('output'), indent=None)}")
    nodes = run.get("nodes") or {}
    if nodes:
        out.line("nodes")
        rows = []
        for node_id, node in nodes.items():
            took = node.get("duration_ms")
            rows.append(
                [
                    node_id,
                    node.get("status"),
                    f"{took:.1f} ms" if took is not None else None,
                    node.get("error") or dumps(node.get("output"), indent=None),
                ]
            )
        out.table(rows, ["node", "status", "duration", "output / error"])
    traceback = error.get("traceback") if error else None
    if traceback:
        out.line("traceback")
        out.lines("  " + line for line in traceback.rstrip().splitlines())
    return OK


_SEGMENT = re.compile(r"^([^.\[]+)(.*)$")


def problem_with_options(problem: Problem, schema: Mapping[str, Any]) -> Problem:
    """Name command-line options instead of input fields in a validation error.

    ``count: expected int, got str`` becomes ``option --count: expected int, got str``.
    Several errors are each listed on a line of their own under ``invalid input:
    N errors``.
    """
    if problem.code not in ("validation_error", "input_limit") or not problem.errors:
        return problem
    flags = {option.field: option.flag for option in input_options(schema)}
    errors = []
    for path, reason in problem.errors:
        match = _SEGMENT.match(path or "")
        if match and match.group(1) in flags:
            path = flags[match.group(1)] + match.group(2)
        errors.append((path, reason))
    if len(errors) > 1:
        # Every one at once, each on its own line (Problem.lines): --option or field path.
        message = f"{len(errors)} errors"
    else:
        [(p, r)] = errors
        message = f"option {p}: {r}" if p.startswith("--") else f"{p or '(input)'}: {r}"
    return Problem(
        code=problem.code,
        message=f"invalid input: {message}",
        errors=errors,
        hint=problem.hint or "nexus run WORKFLOW --help lists the options",
        status=problem.status,
    )
