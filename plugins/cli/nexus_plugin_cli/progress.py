"""Node-by-node progress of a run, drawn from its events, on standard error.

On a terminal a Rich spinner names the nodes running and a line is printed
for each node as it finishes; elsewhere (a pipe, a file, CI) the same facts
are written as plain lines. ``--output json`` and ``--quiet`` show none.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

__all__ = ["PlainProgress", "Progress", "RichProgress", "make_progress"]


class Progress:
    """Receives a run's events (``node.started``, ``node.finished``, ``run.*``...)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __call__(self, event: dict[str, Any]) -> None:
        """Dispatch one event to the methods below."""
        kind = event.get("type") or ""
        data = event.get("data") or {}
        node = data.get("node")
        if kind == "node.started" and node:
            self.node_started(node)
        elif kind == "node.finished" and node:
            self.node_finished(node, data.get("status") or "completed", data.get("duration_ms"))
        elif kind == "node.failed" and node:
            self.node_failed(node, str(data.get("error") or "failed"))
        elif kind == "run.started":
            self.run_started(event.get("run_id") or "", data)

    def run_started(self, run_id: str, data: dict[str, Any]) -> None:
        """A run began (or resumed)."""

    def node_started(self, node: str) -> None:
        """A node began."""

    def node_finished(self, node: str, status: str, duration_ms: float | None) -> None:
        """A node completed (or was skipped)."""

    def node_failed(self, node: str, error: str) -> None:
        """A node failed."""

    def close(self) -> None:
        """Stop drawing."""


def _duration(ms: float | None) -> str:
    if ms is None:
        return ""
    return f" ({ms:.0f} ms)" if ms >= 1 else f" ({ms:.2f} ms)"


class PlainProgress(Progress):
    """One plain line per fact, for pipes and files."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def run_started(self, run_id: str, data: dict[str, Any]) -> None:
        """``run ID started``."""
        verb = "resumed" if data.get("resumed") else "started"
        self._line(f"run {run_id} {verb}")

    def node_started(self, node: str) -> None:
        """``node NAME started``."""
        self._line(f"node {node} started")

    def node_finished(self, node: str, status: str, duration_ms: float | None) -> None:
        """``node NAME completed (3 ms)``."""
        self._line(f"node {node} {status}{_duration(duration_ms)}")

    def node_failed(self, node: str, error: str) -> None:
        """``node NAME failed: reason``."""
        self._line(f"node {node} failed: {error}")


class RichProgress(Progress):
    """A spinner naming the running nodes, and a line per finished node."""

    def __init__(self, stream: TextIO, workflow: str) -> None:
        from rich.console import Console
        from rich.markup import escape

        self.escape = escape
        self.console = Console(file=stream, highlight=False)
        self.workflow = workflow
        self.running: dict[str, float] = {}
        self.status = self.console.status(f"running [bold]{escape(workflow)}[/]", spinner="dots")
        self.status.start()
        self._closed = False

    def _update(self) -> None:
        names = ", ".join(self.running) or "…"
        self.status.update(f"running [bold]{self.escape(self.workflow)}[/]: {self.escape(names)}")

    def run_started(self, run_id: str, data: dict[str, Any]) -> None:
        """Name the run id."""
        verb = "resumed" if data.get("resumed") else "started"
        self.console.print(f"[dim]run {run_id} {verb}[/]")

    def node_started(self, node: str) -> None:
        """Show the node as running."""
        self.running[node] = time.monotonic()
        self._update()

    def node_finished(self, node: str, status: str, duration_ms: float | None) -> None:
        """Print ``✓ node (3 ms)``."""
        self.running.pop(node, None)
        mark = "[green]✓[/]" if status == "completed" else "[yellow]-[/]"
        text = self.escape(f"{status}{_duration(duration_ms)}")
        self.console.print(f"{mark} {self.escape(node)} [dim]{text}[/]")
        self._update()

    def node_failed(self, node: str, error: str) -> None:
        """Print ``✗ node: reason``."""
        self.running.pop(node, None)
        self.console.print(f"[red]✗[/] {self.escape(node)}: {self.escape(error)}")
        self._update()

    def close(self) -> None:
        """Stop the spinner."""
        if not self._closed:
            self._closed = True
            self.status.stop()


def make_progress(console: Any, workflow: str) -> Progress | None:
    """The progress display for ``console`` (a :class:`~.output.Console`), or None for none."""
    if console.json or console.quiet:
        return None
    if console.interactive:
        return RichProgress(console.stderr, workflow)
    return PlainProgress(console.stderr)
