"""Where the command's output goes: results on stdout, notes and errors on stderr.

``--output text`` (the default) prints a run's output as JSON and lists as
aligned columns; ``--output json`` prints every result as one JSON document
(or one JSON object per line for streams: events, batch results) and no
progress, for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from .errors import Problem

__all__ = ["Console", "dumps"]


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """JSON text of builtins (non-ASCII kept as is; anything else as its ``str``)."""
    if indent is None:
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return json.dumps(value, ensure_ascii=False, default=str, indent=indent)


class Console:
    """The command's two streams and its output mode."""

    def __init__(
        self,
        output: str = "text",
        *,
        quiet: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.output = output
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    @property
    def json(self) -> bool:
        """Whether ``--output json`` was asked."""
        return self.output == "json"

    @property
    def interactive(self) -> bool:
        """Whether standard error is a terminal (Rich progress) rather than a pipe or file."""
        return _isatty(self.stderr)

    def result(self, value: Any) -> None:
        """Print one JSON document on stdout."""
        self._write(self.stdout, dumps(value))

    def record(self, value: Any) -> None:
        """Print one compact JSON object on one line (JSON Lines) and flush."""
        self._write(self.stdout, dumps(value, indent=None))

    def line(self, text: str = "") -> None:
        """Print a line on stdout."""
        self._write(self.stdout, text)

    def note(self, text: str) -> None:
        """Print a line on stderr, unless ``--quiet``."""
        if not self.quiet:
            self._write(self.stderr, text)

    def warn(self, text: str) -> None:
        """Print a warning on stderr, always."""
        self._write(self.stderr, f"warning: {text}")

    def problem(self, problem: Problem) -> int:
        """Report an error; return its exit code.

        The message goes to stderr; with ``--output json`` the error object
        (``{"error": {"code": ..., "message": ...}}``) also goes to stdout.
        """
        if self.json:
            self.record({"error": problem.to_dict()})
        for text in problem.lines():
            self._write(self.stderr, text)
        return problem.exit_code

    def table(self, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
        """Print rows as left-aligned columns under ``headers``."""
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in cells:
            for index, value in enumerate(row):
                widths[index] = max(widths[index], len(value))
        self.line(
            "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
        )
        for row in cells:
            self.line("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())

    def lines(self, texts: Iterable[str]) -> None:
        """Print several lines on stdout."""
        for text in texts:
            self.line(text)

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:  # `nexus events | head`: the reader left
            raise SystemExit(0) from None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return " ".join(value.split())
    return dumps(value, indent=None)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
