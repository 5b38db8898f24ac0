"""The ``nexus`` console script: a cyclopts app whose every command is registered lazily.

Built-in commands and the commands of other plugins (``nexus_cli_commands``)
are registered by ``"module:function"`` strings, so ``nexus --help`` imports
neither ``nexus_core.app`` nor Litestar nor mcp: only cyclopts and this
package's light modules. See :mod:`nexus_plugin_cli.discovery` for how plugin
commands are found quickly.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported on the way to a cached `nexus --help`
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nexus`` command; return its exit code (never raise, never a traceback)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    from .helpcache import cached_help, wants_root_help

    root_help = wants_root_help(tokens)
    if root_help:
        text = cached_help()
        if text is not None:
            sys.stdout.write(text)
            _flush()
            return 0
    try:
        from .cli_app import build_app

        meta = build_app(warn=lambda text: sys.stderr.write(f"warning: {text}\n"))
        result = _help_and_cache(meta, tokens) if root_help else meta(_run_help(tokens))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        return _report(exc, tokens)
    finally:
        _flush()
    if isinstance(result, bool):
        return int(not result)
    return result if isinstance(result, int) else 0


def _help_and_cache(meta: Any, tokens: list[str]) -> Any:
    """Print the top-level help through cyclopts, recording the text for the cache."""
    from rich.console import Console

    from .helpcache import store_help

    console = Console(record=True)
    result = meta(tokens or ["--help"], console=console)
    store_help(console.export_text(styles=console.is_terminal))
    return result


_GLOBAL_VALUED = frozenset({"--app", "--url", "--token", "--output", "-o"})


def _run_help(tokens: list[str]) -> list[str]:
    """Hand ``--help`` after ``run`` to ``nexus run`` itself (it prints the workflow's options).

    cyclopts answers help flags wherever they are; ``nexus run greet --help``
    must list the options generated from ``greet``'s schema instead.
    """
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in _GLOBAL_VALUED:
            index += 2
            continue
        if token.startswith("-"):
            index += 1
            continue
        break
    if index >= len(tokens) or tokens[index] != "run":
        return tokens
    head, tail = tokens[: index + 1], tokens[index + 1 :]
    if "--" in tail:
        cut = tail.index("--")
        tail = [t if t not in ("--help", "-h") else "--run-help" for t in tail[:cut]] + tail[cut:]
    else:
        tail = [t if t not in ("--help", "-h") else "--run-help" for t in tail]
    return head + tail


def _report(exc: BaseException, tokens: list[str]) -> int:
    from cyclopts import CycloptsError

    from .errors import USAGE, print_debug_traceback, problem_from

    print_debug_traceback(exc)
    if isinstance(exc, CycloptsError):
        message, hint = _usage_problem(exc, tokens)
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.write(f"hint: {hint}\n")
        return USAGE
    if isinstance(exc, ImportError | AttributeError) and _is_lazy_failure(exc):
        sys.stderr.write(
            f"error: a command could not be loaded: {_root_cause(exc)}\n"
            "hint: reinstall the plugin that provides it, "
            "or disable it with NEXUS_DISABLE_PLUGINS\n"
        )
        return 1
    problem = problem_from(exc)
    for line in problem.lines():
        sys.stderr.write(line + "\n")
    return problem.exit_code


def _usage_problem(exc: Any, tokens: list[str]) -> tuple[str, str]:
    """A cyclopts error as ``(message, hint)``; the hint is a command that works as printed."""
    from cyclopts.exceptions import UnusedCliTokensError

    chain = [str(word) for word in (getattr(exc, "command_chain", None) or ())]
    head = _target_options(tokens)
    message = " ".join(str(exc).split()) or type(exc).__name__
    unused = [str(token) for token in (getattr(exc, "unused_tokens", None) or ())]
    if isinstance(exc, UnusedCliTokensError) and unused:
        command = " ".join(["nexus", *chain])
        extra = " ".join(repr(token) for token in unused)
        message = f"unexpected argument{'s' if len(unused) > 1 else ''} {extra} for {command}"
        app = getattr(exc, "app", None)
        if app is not None and _has_command(app, "show") and len(unused) == 1:
            return message, _join(["nexus", *head, *chain, "show", unused[0]])
    return message, _join(["nexus", *head, *chain, "--help"])


def _has_command(app: Any, name: str) -> bool:
    try:
        app[name]
    except Exception:  # cyclopts raises its own errors for an unknown name
        return False
    return True


def _target_options(tokens: list[str]) -> list[str]:
    """The ``--app``/``--url`` options of ``tokens``, to repeat in a hint."""
    out: list[str] = []
    for index, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in ("--app", "--url"):
            if eq:
                out += [name, value]
            elif index + 1 < len(tokens):
                out += [name, tokens[index + 1]]
    return out


def _join(words: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(word) for word in words)


def _is_lazy_failure(exc: BaseException) -> bool:
    return "import path" in str(exc) or "Cannot import module" in str(exc)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _flush() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        # The reader went away (`nexus events | head`): do not let the
        # interpreter print a BrokenPipeError at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
