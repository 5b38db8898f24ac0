"""``nexus run WORKFLOW [OPTIONS]``: run a workflow, its inputs given as options.

The options come from the workflow's input schema (see
:mod:`nexus_plugin_cli.options`); ``nexus run WORKFLOW --help`` lists them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from cyclopts import Parameter

from .. import context, state
from ..backends import HIDDEN, Backend, Target, open_backend
from ..errors import OK, CliError, Problem, problem_from
from ..options import (
    ParsedRun,
    RunUsageError,
    check_required,
    input_options,
    merge_json,
    options_help,
    parse_inputs,
    parse_unknown_inputs,
    split_run_args,
)
from ..output import Console
from ..progress import make_progress
from ..render import problem_with_options, render_run

__all__ = ["execute_run", "run_command", "run_help"]

_TARGET_OPTIONS = ("--app", "--url", "--token")

RUN_OPTIONS_HELP = [
    (
        "--json JSON",
        "all inputs as one JSON object; '-' reads it from stdin; options override keys",
    ),
    ("--session ID", "run in this session (default: the one of `nexus session use`)"),
    ("--no-session", "ignore the current session"),
    ("--idempotency-key KEY", "the same key never runs twice: it returns the first run"),
    ("--no-wait", "print the run id and return at once"),
    ("-o, --output text|json", "text: the output as JSON (default); json: the whole run"),
    ("--output-file FILE", "write the output's JSON to FILE (streamed; for large outputs)"),
    ("-q, --quiet", "no progress on stderr"),
    ("--app APP / --url URL", "in process, or on a gateway (before the workflow name)"),
]


def run_command(
    *tokens: Annotated[str, Parameter(allow_leading_hyphen=True, show=False)],
) -> int:
    """Run a workflow: nexus run WORKFLOW --input VALUE ... (WORKFLOW --help lists its options)."""
    try:
        parsed, rest = split_run_args(tokens)
    except RunUsageError as exc:
        return context.console().problem(problem_from(exc))
    _apply_settings(parsed.options)
    started: dict[str, str] = {}

    def hint() -> str | None:
        from ..backends import nexus_command

        run_id = started.get("run_id")
        if run_id is None:
            return None
        if context.target().remote:
            follow = nexus_command("runs", "resume", run_id)
            return f"run {run_id} goes on on the gateway; follow it: {follow}"
        from ..local import interrupted_runs

        show = nexus_command("runs", "show", run_id)
        status = interrupted_runs().get(run_id)
        if status is None:  # not cancelled in time: its process is gone, nothing runs it
            resume = nexus_command("runs", "resume", run_id)
            return f"run {run_id} stopped; finish it from its checkpoints: {resume}"
        if status == "cancelled":
            return f"run {run_id} was cancelled; see it: {show}"
        return f"run {run_id} {status} as it was interrupted; see it: {show}"

    return context.execute(lambda out: _main(out, parsed, rest, started), on_interrupt=hint)


def _apply_settings(options: Mapping[str, Any]) -> None:
    settings = context.SETTINGS
    for key in ("app", "url", "token", "output"):
        if options.get(key) is not None:
            setattr(settings, key, options[key])
    if options.get("quiet"):
        settings.quiet = True


def _prescan(rest: Sequence[str]) -> dict[str, str]:
    """``--app``/``--url``/``--token`` after the workflow name (unless they turn out inputs)."""
    found: dict[str, str] = {}
    for index, token in enumerate(rest):
        name, eq, value = token.partition("=")
        if name in _TARGET_OPTIONS:
            if eq:
                found[name] = value
            elif index + 1 < len(rest):
                found[name] = rest[index + 1]
    return found


async def _main(out: Console, parsed: ParsedRun, rest: list[str], started: dict[str, str]) -> int:
    if parsed.workflow is None:
        if parsed.help:
            await _print_usage(out)
            return OK
        raise CliError(
            problem_from(RunUsageError("missing the workflow name: nexus run WORKFLOW [OPTIONS]"))
        )
    late = _prescan(rest)
    base = context.target()
    target = _with(base, late)
    async with open_backend(target) as backend:
        workflow = await _runnable(backend, parsed.workflow)
        flags = {o.flag for o in input_options(workflow["input_schema"])}
        if target != base and any(name in flags for name in late):
            # An input of the workflow, not the target: read again against the first target.
            async with open_backend(base) as first:
                return await execute_run(out, first, parsed, rest, started=started)
        return await execute_run(out, backend, parsed, rest, workflow=workflow, started=started)


async def _runnable(backend: Backend, name: str) -> dict[str, Any]:
    """The workflow ``name``; refused rather than unknown when it is only hidden.

    A gateway does not show a caller the workflows it may not run, so the
    lookup alone would call a forbidden workflow unknown (exit 2) where every
    other channel, ``nexus --app`` included, refuses it (``forbidden``, exit 1).
    """
    try:
        return await backend.workflow(name)
    except CliError as exc:
        if exc.problem.code != "workflow_not_found":
            raise
        refused = await backend.refusal(name)
        if refused is None:
            raise
        if refused.code == HIDDEN:
            # It exists, but its schema is not shown to this caller: the inputs go as
            # given, and the gateway decides (refused, invalid, or allowed for them).
            return {"name": name, "description": "", "input_schema": {}, HIDDEN: True}
        raise CliError(refused) from None


def _with(target: Target, late: Mapping[str, str]) -> Target:
    if not late:
        return target
    from ..backends import resolve_target

    url = late.get("--url")
    app = late.get("--app")
    if url is None and app is None:
        url, app = target.url, target.app
    return resolve_target(url, app, late.get("--token") or target.token)


async def execute_run(
    out: Console,
    backend: Backend,
    parsed: ParsedRun,
    rest: Sequence[str],
    *,
    workflow: Mapping[str, Any] | None = None,
    started: dict[str, str] | None = None,
) -> int:
    """Parse the inputs of ``parsed.workflow`` from ``rest``, run it, print the result.

    Shared by ``nexus run`` and ``nexus shell``. ``started`` receives the run
    id (key ``run_id``) as soon as the run starts, for an interrupted command's hint.
    """
    assert parsed.workflow is not None
    if workflow is None:
        workflow = await _runnable(backend, parsed.workflow)
    schema = workflow["input_schema"]
    name = str(workflow["name"])
    hidden = bool(workflow.get(HIDDEN))
    if hidden:
        parse_unknown_inputs(rest, parsed)
    else:
        parse_inputs(schema, rest, parsed)
    for key in ("output",):
        if parsed.options.get(key):
            out.output = str(parsed.options[key])
    if parsed.options.get("quiet"):
        out.quiet = True
    if parsed.help:
        print_workflow_help(out, workflow)
        return OK
    merge_json(parsed, sys.stdin.read)
    check_required(schema, parsed.inputs)
    session = parsed.options.get("session")
    if session is None and not parsed.options.get("no_session"):
        session = state.current_session(backend.target.key)
    wait = not parsed.options.get("no_wait")
    progress = make_progress(out, name) if wait else None
    seen = started if started is not None else {}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("run_id") and "run_id" not in seen:
            seen["run_id"] = str(event["run_id"])
        if progress is not None:
            progress(event)

    try:
        if not wait:
            result = await backend.invoke(
                name,
                parsed.inputs,
                session=session,
                idempotency_key=parsed.options.get("idempotency_key"),
                wait=False,
            )
        else:
            with progress or contextlib.nullcontext():
                result = await backend.invoke(
                    name,
                    parsed.inputs,
                    session=session,
                    idempotency_key=parsed.options.get("idempotency_key"),
                    on_event=on_event,
                )
    except Exception as exc:
        problem = problem_with_options(problem_from(exc), schema)
        if problem.code in ("validation_error", "input_limit"):
            problem.hint = f"nexus run {name} --help lists its options"
        raise CliError(problem) from None
    target = parsed.options.get("output_file")
    if target is not None and wait and result.get("status") == "completed":
        size = await save_output(backend, str(result["run_id"]), str(target))
        out.note(f"run {result['run_id']}: output written to {target} ({size} bytes)")
        if out.json:
            out.result({**result, "output": None, "output_file": str(target)})
        return OK
    return render_run(out, result)


async def save_output(backend: Backend, run_id: str, target: str) -> int:
    """Write a completed run's output (its JSON) to the file ``target``, streamed; its size.

    Written to a temporary file beside it, then renamed: a failure leaves no
    partial file. ``-`` writes to stdout.
    """
    import os

    import anyio

    if target == "-":
        size = 0
        async for chunk in backend.output_chunks(run_id):
            await anyio.to_thread.run_sync(sys.stdout.buffer.write, chunk)
            size += len(chunk)
        await anyio.to_thread.run_sync(sys.stdout.buffer.flush)
        return size
    path = anyio.Path(target)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    size = 0
    try:
        async with await anyio.open_file(partial, "wb") as fh:
            async for chunk in backend.output_chunks(run_id):
                await fh.write(chunk)
                size += len(chunk)
        await partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            await partial.unlink()
        raise CliError(
            Problem(
                code="output_file",
                message=f"--output-file {target}: {exc.strerror or exc}",
            )
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            await partial.unlink()
        raise
    return size


def print_workflow_help(out: Console, workflow: Mapping[str, Any]) -> None:
    """``nexus run WORKFLOW --help``: the options generated from the input schema."""
    out.lines(run_help(workflow))


def run_help(workflow: Mapping[str, Any]) -> list[str]:
    """The lines of ``nexus run WORKFLOW --help``."""
    name = workflow["name"]
    lines = [f"Usage: nexus run {name} [OPTIONS]", ""]
    if workflow.get("description"):
        lines += [str(workflow["description"]).strip(), ""]
    rows = options_help(workflow.get("input_schema") or {})
    lines.append("Inputs:")
    lines += _rows(rows) if rows else ["  (none)"]
    lines += ["", "Run options:", *_rows(RUN_OPTIONS_HELP)]
    return lines


def _rows(rows: Sequence[tuple[str, str]]) -> list[str]:
    width = min(max((len(usage) for usage, _ in rows), default=0), 34)
    out = []
    for usage, text in rows:
        if len(usage) > width:
            out.append(f"  {usage}")
            if text:
                out.append(f"  {'':{width}}  {text}")
        else:
            out.append(f"  {usage:{width}}  {text}".rstrip())
    return out


async def _print_usage(out: Console) -> None:
    out.lines(
        [
            "Usage: nexus run WORKFLOW [OPTIONS]",
            "",
            "Run a workflow. Its inputs are options generated from its input schema:",
            "  nexus run greet --name Ada --excited",
            '  nexus run greet --json \'{"name": "Ada"}\'',
            "",
            "Run options:",
            *_rows(RUN_OPTIONS_HELP),
        ]
    )
    try:
        async with open_backend(context.target()) as backend:
            names = [wf["name"] for wf in await backend.workflows()]
    except Exception:  # no application found: the usage alone is still useful
        return
    if names:
        out.lines(["", "Workflows:", *(f"  {name}" for name in names)])
