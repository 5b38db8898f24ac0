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

__all__ = ["Globals", "Settings", "console", "execute", "settings", "target"]

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


def execute(
    body: Callable[[Console], Awaitable[int]],
    *,
    on_interrupt: Callable[[], str | None] | None = None,
) -> int:
    """Run ``body(console)`` on an event loop; report any error; return the exit code.

    ``on_interrupt`` may return a hint printed after "interrupted" (Ctrl-C).
    """
    import anyio

    try:
        out = console()
    except CliError as exc:
        return Console().problem(exc.problem)
    try:
        with _core_logs():
            return anyio.run(body, out)
    except KeyboardInterrupt:
        hint = on_interrupt() if on_interrupt is not None else None
        out.note(f"interrupted; {hint}" if hint else "interrupted")
        return INTERRUPTED
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # every error becomes a message, never a traceback
        print_debug_traceback(exc)
        return out.problem(problem_from(exc))
