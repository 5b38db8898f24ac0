"""The global options of a ``nexus`` invocation and the runner every command goes through.

``--app``, ``--url``, ``--token``, ``--output`` and ``--quiet`` may come before
the command (``nexus --url URL runs``) or after it (``nexus runs --url URL``);
``NEXUS_APP``, ``NEXUS_URL``, ``NEXUS_TOKEN`` and ``NEXUS_OUTPUT`` are their
defaults. :func:`execute` runs a command's async body and turns every error
into a message and an exit code: never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import Parameter

from .errors import INTERRUPTED, CliError, print_debug_traceback, problem_from, usage_error
from .output import Console

if TYPE_CHECKING:
    from .backends import Target

__all__ = [
    "INTERRUPT_HANDLERS",
    "Globals",
    "Settings",
    "console",
    "execute",
    "settings",
    "target",
]

Output = Literal["text", "json"]


@dataclass
class Settings:
    """The global options in force for this invocation."""

    app: str | None = None
    url: str | None = None
    token: str | None = None
    output: str | None = None
    quiet: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def merge(self, other: Globals) -> None:
        """Take the options given after the command over those given before it."""
        for name in ("app", "url", "token", "output"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        self.quiet = self.quiet or other.quiet


SETTINGS = Settings()


@Parameter(name="*", group="Global options")
@dataclass
class Globals:
    """Options every command takes."""

    app: Annotated[
        str | None, Parameter(name="--app", help="In process: APP.py or module:attr (NEXUS_APP).")
    ] = None
    url: Annotated[
        str | None, Parameter(name="--url", help="A running gateway, http://host:port (NEXUS_URL).")
    ] = None
    token: Annotated[
        str | None,
        Parameter(name="--token", help="Bearer token (NEXUS_TOKEN; default: from nexus login)."),
    ] = None
    output: Annotated[
        Output | None,
        Parameter(name=["--output", "-o"], help="text (default) or json (NEXUS_OUTPUT)."),
    ] = None
    quiet: Annotated[
        bool, Parameter(name=["--quiet", "-q"], negative=(), help="No progress or notes on stderr.")
    ] = False


def settings(extra: Globals | None = None) -> Settings:
    """The settings, with the options given after the command applied."""
    if extra is not None:
        SETTINGS.merge(extra)
    return SETTINGS


def console() -> Console:
    """The console for the current settings."""
    output = SETTINGS.output or os.environ.get("NEXUS_OUTPUT") or "text"
    if output not in ("text", "json"):
        raise usage_error(f"--output must be 'text' or 'json', got {output!r}")
    return Console(output, quiet=SETTINGS.quiet)


def target() -> Target:
    """The target of the current settings (``--url`` or ``--app``, then the environment)."""
    from .backends import resolve_target

    return resolve_target(SETTINGS.url, SETTINGS.app, SETTINGS.token)


@contextlib.contextmanager
def _core_logs() -> Iterator[None]:
    """Show the core's warnings as ``warning: ...`` lines while a built-in command runs.

    Only for this package's commands: a plugin's command (``nexus serve``)
    sets up its own logging.
    """
    import logging

    logger = logging.getLogger("nexus")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_lower_level)
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _lower_level(record: Any) -> bool:
    """``WARNING`` -> ``warning``, as in the command's own messages.

    A failed run's log line is dropped: the command reports the failure itself
    (and its traceback with ``NEXUS_DEBUG=1``).
    """
    if record.name == "nexus.runs":
        return False
    record.levelname = record.levelname.lower()
    return True


#: Called (and awaited) on the first Ctrl-C, before the command is cancelled: the
#: in-process backend cancels the runs it waits for, so they are recorded ``cancelled``.
INTERRUPT_HANDLERS: list[Callable[[], Awaitable[None]]] = []


class _Interrupt:
    """The signals received while a command runs (first: stop gracefully; second: at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0


def execute(
    body: Callable[[Console], Awaitable[int]],
    *,
    on_interrupt: Callable[[], str | None] | None = None,
    signals: bool = True,
) -> int:
    """Run ``body(console)`` on an event loop; report any error; return the exit code.

    The first Ctrl-C (or ``SIGTERM``) cancels ``body``: the runs it started in
    this process are cancelled and recorded so, without waiting out the host's
    shutdown grace. ``on_interrupt`` may then return a hint printed after
    "interrupted". A second signal stops the process at once, quietly.
    ``signals=False`` leaves Ctrl-C to the command (``nexus shell``).
    """
    import anyio

    try:
        out = console()
    except CliError as exc:
        return Console().problem(exc.problem)
    stop = _Interrupt()
    try:
        with _core_logs():
            if not signals:
                return anyio.run(body, out)
            code = anyio.run(_guarded, body, out, stop)
    except KeyboardInterrupt:
        return _interrupted(out, stop, on_interrupt)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # every error becomes a message, never a traceback
        if stop.count:
            return _interrupted(out, stop, on_interrupt)
        print_debug_traceback(exc)
        return out.problem(problem_from(exc))
    # After the loop: its idle worker threads are gone, busy ones are node threads.
    return _interrupted(out, stop, on_interrupt) if stop.count else code


async def _guarded(
    body: Callable[[Console], Awaitable[int]],
    out: Console,
    stop: _Interrupt,
) -> int:
    import anyio

    result = INTERRUPTED
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(_watch_signals, scope, stop, out)
            result = await body(out)
        tg.cancel_scope.cancel()
    return result


async def _watch_signals(scope: Any, stop: _Interrupt, out: Console) -> None:
    import signal

    import anyio

    try:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    stop.count += 1
                    stop.signum = stop.signum or int(signum)
                    if stop.count == 1:
                        out.note("stopping: cancelling what this command started (again: at once)")
                        tg.start_soon(_stop_body, scope)
                    else:  # a second signal: no more waiting, and no traceback
                        out.note("interrupted again: stopping now")
                        _exit_now(128 + stop.signum)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (a thread)
        await anyio.sleep_forever()


async def _stop_body(scope: Any) -> None:
    """Cancel what the command waits for (recorded so), then the command itself."""
    try:
        for handler in INTERRUPT_HANDLERS.copy():  # a handler may unregister
            await handler()
    finally:
        scope.cancel()


def _interrupted(
    out: Console, stop: _Interrupt, on_interrupt: Callable[[], str | None] | None
) -> int:
    import signal

    code = 128 + stop.signum if stop.signum else INTERRUPTED
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, lambda *_: _exit_now(code))  # again: quietly, at once
    hint = on_interrupt() if on_interrupt is not None else None
    out.note(f"interrupted; {hint}" if hint else "interrupted")
    _leave_threads(code)
    return code


def _leave_threads(code: int, grace: float = 1.0) -> None:
    """Exit now if node threads are still running after ``grace`` seconds.

    Their runs are already recorded (cancelled) and the nodes were told to
    stop; a sync node that does not check (a long ``time.sleep``) would keep
    the process alive until it returns, since Python waits for its threads.
    """
    import threading
    import time

    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(
        t.is_alive() and not t.daemon and t is not threading.current_thread()
        for t in threading.enumerate()
    ):
        _exit_now(code)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
