"""``nexus shell``: an interactive prompt with history and completion.

Type a workflow's name and its options (``greet --name Ada``), or a command::

    run WORKFLOW [OPTIONS]   WORKFLOW [OPTIONS]   workflows   show WORKFLOW
    runs [LIMIT]   runs show|cancel|resume RUN   session new|use ID|show
    plugins   output text|json   help   exit

Tab completes commands, workflow names and each workflow's options; the
history is kept in the user's config folder. The application (or the
gateway connection) stays open for the whole session, so runs and sessions
carry over between lines.
"""

from __future__ import annotations

import datetime
import itertools
import os
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from .. import context, state
from ..backends import Backend, open_backend
from ..config import CliConfig, cli_config
from ..context import Globals
from ..errors import OK, CliError, Problem, problem_from
from ..options import RUN_FLAGS, RUN_OPTIONS, ParsedRun, flag_names
from ..output import Console
from ..progress import make_progress
from ..render import render_run, render_run_detail, when
from .run import execute_run, run_help

__all__ = ["SHELL_COMMANDS", "BoundedFileHistory", "Shell", "ShellCompleter", "shell_command"]

#: Commands of the shell (workflow names work as commands too).
SHELL_COMMANDS: dict[str, str] = {
    "run": "run WORKFLOW [OPTIONS]: run a workflow (or just type WORKFLOW [OPTIONS])",
    "workflows": "workflows: list the workflows",
    "show": "show WORKFLOW: its options and schemas",
    "runs": "runs [LIMIT] | runs show|cancel|resume RUN: recent runs, one run",
    "session": "session new | session use ID | session show: the current session",
    "plugins": "plugins: the loaded plugins",
    "output": "output text|json: how results are printed",
    "help": "help: this list",
    "exit": "exit (or Ctrl-D): leave the shell",
}
_ALIASES = {"quit": "exit", "ls": "workflows", "?": "help"}
_RUN_OPTION_NAMES = sorted(
    (RUN_OPTIONS | RUN_FLAGS) - {"--app", "--url", "--token", "-o", "-h", "-q", "--help"}
)


def shell_command(*, g: Globals | None = None) -> int:
    """An interactive shell: run workflows with completion of names and options, and history."""
    context.settings(g)

    async def body(out: Console) -> int:
        async with open_backend(context.target()) as backend:
            await backend.start()
            shell = Shell(backend, out, cli_config(backend))
            await shell.load()
            await shell.loop()
        return OK

    return context.execute(body, signals=False)  # Ctrl-C stops a line, not the shell


class ShellCompleter(Completer):
    """Completes commands and workflow names, then the options of the workflow being typed."""

    def __init__(self, workflows: Mapping[str, Mapping[str, Any]]) -> None:
        self.workflows = workflows

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        """prompt_toolkit's completer protocol."""
        text = document.text_before_cursor
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        current = "" if not text or text[-1].isspace() else (words[-1] if words else "")
        done = words[:-1] if current else words
        for candidate in self.candidates(done, current):
            yield Completion(candidate, start_position=-len(current))

    def candidates(self, done: list[str], current: str) -> list[str]:
        """The words that may follow ``done``, starting with ``current``."""
        if not done:
            pool = [*SHELL_COMMANDS, *self.workflows]
        elif done[0] in ("run", "show") and len(done) == 1:
            pool = list(self.workflows)
        elif done[0] == "session" and len(done) == 1:
            pool = ["new", "use", "show"]
        elif done[0] == "runs" and len(done) == 1:
            pool = ["show", "cancel", "resume"]
        elif done[0] == "output" and len(done) == 1:
            pool = ["text", "json"]
        else:
            name = done[1] if done[0] == "run" and len(done) > 1 else done[0]
            schema = (self.workflows.get(name) or {}).get("input_schema")
            if schema is None or (current and not current.startswith("-")):
                return []
            given = set(done)
            pool = [f for f in flag_names(schema) if f not in given] + _RUN_OPTION_NAMES
        return sorted(
            {c for c in pool if c.startswith(current)}, key=lambda c: (c.startswith("-"), c)
        )


class BoundedFileHistory(FileHistory):
    """prompt_toolkit's file history, keeping only the newest ``size`` lines (0: none)."""

    def __init__(self, filename: str, size: int) -> None:
        super().__init__(filename)
        self.size = size

    def load_history_strings(self) -> Iterable[str]:
        """The newest ``size`` lines, newest first."""
        return list(itertools.islice(super().load_history_strings(), self.size))

    def store_string(self, string: str) -> None:
        """Append ``string``, then drop the oldest lines beyond ``size``."""
        if self.size <= 0:
            return
        super().store_string(string)
        newest = list(super().load_history_strings())
        if len(newest) <= self.size:
            return
        # Rewritten in place (the file keeps its 0600 mode), in FileHistory's format.
        with open(self.filename, "w", encoding="utf-8") as fh:
            for entry in reversed(newest[: self.size]):
                fh.write(f"\n# {datetime.datetime.now()}\n")
                fh.writelines(f"+{line}\n" for line in entry.split("\n"))


class Shell:
    """The read-eval-print loop over one open backend.

    ``config`` holds ``channels.cli``: the idle timeout and the history size.
    """

    def __init__(self, backend: Backend, out: Console, config: CliConfig | None = None) -> None:
        self.backend = backend
        self.out = out
        self.config = config or CliConfig()
        self.workflows: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        """Read the workflows and their schemas (for completion)."""
        found = await self.backend.workflows()
        for workflow in found:
            if not workflow.get("input_schema"):
                workflow = await self.backend.workflow(workflow["name"])
            self.workflows[workflow["name"]] = workflow

    def _session(self) -> Any:
        from prompt_toolkit import PromptSession

        path = os.path.join(state.config_dir(), "history")
        if not os.path.exists(path):
            state.write_private(path, "")
        return PromptSession(
            history=BoundedFileHistory(path, self.config.history_size),
            completer=ShellCompleter(self.workflows),
            complete_while_typing=False,
        )

    async def loop(self) -> None:
        """Prompt, run, repeat, until ``exit``, Ctrl-D or ``idle_timeout`` seconds without input."""
        session = self._session()
        idle = self.config.idle_timeout
        self.out.note(
            f"nexus shell on {self.backend.target.describe()}: "
            f"{len(self.workflows)} workflow(s). Tab completes; 'help' lists commands."
        )
        while True:
            try:
                line = await _prompt(session, idle)
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if line is None:
                self.out.note(
                    f"no input for {idle:g} s: leaving the shell (channels.cli.idle_timeout)"
                )
                return
            try:
                words = shlex.split(line)
            except ValueError as exc:
                self.out.problem(Problem(code="usage", message=f"cannot read that line: {exc}"))
                continue
            if not words:
                continue
            if _ALIASES.get(words[0], words[0]) == "exit":
                return
            await self.one(words)

    async def one(self, words: list[str]) -> None:
        """Run one line; report its error without leaving the shell."""
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_interrupt, scope, self.out)
                    try:
                        await self.dispatch(words)
                    finally:
                        tg.cancel_scope.cancel()
        except Exception as exc:
            self.out.problem(problem_from(exc))

    async def dispatch(self, words: list[str]) -> None:
        """Do what one line asks."""
        command, args = _ALIASES.get(words[0], words[0]), words[1:]
        out, backend = self.out, self.backend
        if command == "help":
            out.lines(f"  {text}" for text in SHELL_COMMANDS.values())
        elif command == "workflows":
            out.table(
                [
                    [name, (wf.get("description") or "").strip().split("\n")[0]]
                    for name, wf in sorted(self.workflows.items())
                ],
                ["name", "description"],
            )
        elif command == "show":
            if not args:
                raise CliError(Problem(code="usage", message="show WORKFLOW"))
            out.lines(run_help(await backend.workflow(args[0])))
        elif command == "output":
            if not args or args[0] not in ("text", "json"):
                raise CliError(Problem(code="usage", message="output text|json"))
            out.output = args[0]
        elif command == "runs":
            await self._runs(args)
        elif command == "session":
            await self._session_command(args)
        elif command == "plugins":
            report = await backend.plugins()
            out.table(
                [[p.get("name"), p.get("version") or "-"] for p in report["plugins"]],
                ["plugin", "version"],
            )
        elif command == "run" or command in self.workflows:
            if command == "run":
                if not args:
                    raise CliError(Problem(code="usage", message="run WORKFLOW [OPTIONS]"))
                command, args = args[0], args[1:]
            await execute_run(out, backend, ParsedRun(workflow=command), args)
        else:
            await backend.workflow(command)  # raises "unknown workflow ...; did you mean"

    async def _runs(self, args: list[str]) -> None:
        out, backend = self.out, self.backend
        if args and args[0] in ("show", "cancel", "resume"):
            if len(args) < 2:
                raise CliError(Problem(code="usage", message=f"runs {args[0]} RUN_ID"))
            if args[0] == "show":
                render_run_detail(out, await backend.run(args[1]))
            elif args[0] == "cancel":
                outcome = await backend.cancel(args[1])
                out.line(
                    f"cancelled run {args[1]}"
                    if outcome["cancelled"]
                    else f"run {args[1]} is already {outcome['status']}"
                )
            else:
                progress = make_progress(out, "run")
                if progress is None:
                    render_run(out, await backend.resume(args[1]))
                else:
                    with progress:
                        result = await backend.resume(args[1], on_event=progress)
                    render_run(out, result)
            return
        limit = int(args[0]) if args and args[0].isdigit() else 10
        found = await backend.runs(limit=limit)
        out.table(
            [[r["run_id"], r["workflow"], r["status"], when(r["created_at"])] for r in found],
            ["run", "workflow", "status", "created"],
        )

    async def _session_command(self, args: list[str]) -> None:
        out, backend = self.out, self.backend
        key = backend.target.key
        if args[:1] == ["new"]:
            session = await backend.create_session()
            state.set_current_session(key, session["id"])
            out.line(f"session {session['id']} (current)")
        elif args[:1] == ["use"] and len(args) > 1:
            session = await backend.session(args[1])
            state.set_current_session(key, session["id"])
            out.line(f"session {session['id']} (current)")
        elif args[:1] in (["show"], []):
            current = state.current_session(key)
            if not current:
                out.line("no current session (session new starts one)")
                return
            session = await backend.session(current)
            out.line(f"session {session['id']}: channels {', '.join(session['channels']) or '-'}")
        else:
            raise CliError(
                Problem(code="usage", message="session new | session use ID | session show")
            )


async def _prompt(session: Any, idle: float | None) -> str | None:
    """Read one line; ``None`` when ``idle`` seconds pass without a key pressed."""
    if idle is None:
        line: str = await session.prompt_async("nexus> ")
        return line
    last = anyio.current_time()

    def pressed(_: object) -> None:
        nonlocal last
        last = anyio.current_time()

    outcome: list[str | BaseException] = []

    async def ask(scope: anyio.CancelScope) -> None:
        try:
            outcome.append(await session.prompt_async("nexus> "))
        except (KeyboardInterrupt, EOFError) as exc:
            outcome.append(exc)
        scope.cancel()

    async def watch(scope: anyio.CancelScope) -> None:
        while True:
            left = last + idle - anyio.current_time()
            if left <= 0:
                scope.cancel()
                return
            await anyio.sleep(left)

    keys = session.app.key_processor
    keys.before_key_press += pressed
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, tg.cancel_scope)
            tg.start_soon(watch, tg.cancel_scope)
    finally:
        keys.before_key_press -= pressed
    if not outcome:
        return None
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


async def _cancel_on_interrupt(scope: anyio.CancelScope, out: Console) -> None:
    """Ctrl-C while a line runs stops waiting for it (the shell stays)."""
    import signal

    try:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                out.note("interrupted (a run started here goes on; see: runs)")
                scope.cancel()
                return
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, thread)
        await anyio.sleep_forever()
