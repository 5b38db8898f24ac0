"""One small interface, two implementations: the application in process, or a gateway.

Every command talks to a :class:`Backend` and never to the core or to HTTP
directly, so ``--app`` and ``--url`` give the same results and the same
errors. Both return plain JSON-ready dicts in the shapes below (the shapes the
API plugin's REST API answers with):

* workflow: ``{"name", "description", "input_schema", "output_schema"}``
* run: ``{"run_id", "workflow", "status", "output", "error", "nodes", "session_id",
  "started_at", "finished_at"}`` (``error`` is ``{"type", "message", "node"}``)
* run summary (lists): ``{"run_id", "workflow", "status", "channel", "session_id",
  "created_at", "started_at", "finished_at"}``
* session: ``{"id", "channels", "created_at", "expires_at", "state"}``
* event: ``{"id", "type", "time", "channel", "session_id", "run_id", "data"}``
* plugins: ``{"plugins": [{"name", "version", "hooks", "builtin"}], "errors": [...]}``
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from .errors import Problem

__all__ = [
    "HIDDEN",
    "TERMINAL",
    "Backend",
    "EventCallback",
    "Target",
    "event_view",
    "nexus_command",
    "open_backend",
    "resolve_target",
    "run_summary",
    "run_view",
    "session_view",
]

#: The :meth:`Backend.refusal` code of a workflow that exists but is not shown to the caller.
HIDDEN = "hidden"
#: Run statuses after which nothing changes.
TERMINAL = frozenset({"completed", "failed", "cancelled"})

#: Called with each event of a run while it executes (progress display).
EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True)
class Target:
    """What the command talks to: a gateway URL or a local application reference."""

    url: str | None = None
    app: str | None = None
    token: str | None = None

    @property
    def remote(self) -> bool:
        """Whether this is a gateway (``--url``)."""
        return self.url is not None

    @property
    def key(self) -> str:
        """A stable name for saved tokens and sessions (``url:...`` or ``app:...``)."""
        if self.url is not None:
            return "url:" + self.url.rstrip("/")
        app = self.app or ""
        path = app.partition(":")[0] if app else ""
        if path and (path.endswith(".py") or os.path.isfile(path)):
            return "app:" + os.path.abspath(path) + app[len(path) :]
        return f"app:{os.getcwd()}::{app or '(nexus.toml)'}"

    def describe(self) -> str:
        """For messages: the gateway URL, or the application."""
        if self.url is not None:
            return self.url
        return self.app or "the application of nexus.toml"


def resolve_target(
    url: str | None = None, app: str | None = None, token: str | None = None
) -> Target:
    """Choose local or remote: ``--url`` beats ``--app``; then ``NEXUS_URL``, then ``NEXUS_APP``."""
    if url is None and app is None:
        url = os.environ.get("NEXUS_URL") or None
        app = os.environ.get("NEXUS_APP") or None
    if url is not None and app is not None:
        from .errors import usage_error

        raise usage_error("give either --url (a gateway) or --app (in process), not both")
    token = token or os.environ.get("NEXUS_TOKEN") or None
    return Target(url=url.rstrip("/") if url else None, app=app, token=token)


class Backend(abc.ABC):
    """What every command needs; an async context manager around the connection or host."""

    target: Target

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Get ready for concurrent use (the local backend starts its host here).

        Call it before using the backend from several tasks (batch, shell,
        event streams): the in-process host must be entered and left by the
        same task.
        """

    # -- workflows ---------------------------------------------------------------

    @abc.abstractmethod
    async def workflows(self) -> list[dict[str, Any]]:
        """Every workflow, sorted by name."""

    @abc.abstractmethod
    async def workflow(self, name: str) -> dict[str, Any]:
        """One workflow with its schemas; ``workflow_not_found`` (with a suggestion) if unknown."""

    async def refusal(self, name: str) -> Problem | None:
        """Why running ``name`` is refused when :meth:`workflow` does not show it, or None.

        A gateway shows a caller only the workflows it may run, so a workflow
        that exists but is forbidden looks unknown there; running it says
        which it is. None: it is unknown (or nothing more can be said); a
        problem with code :data:`HIDDEN`: it exists, and only running it with
        the caller's inputs can say whether they may.
        """
        return None

    # -- runs --------------------------------------------------------------------

    @abc.abstractmethod
    async def invoke(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        session: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
        on_event: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Run a workflow; return the run (pending when ``wait`` is False).

        ``on_event`` is called with the run's events (node started/finished...)
        while it executes.
        """

    @abc.abstractmethod
    async def run(self, run_id: str) -> dict[str, Any]:
        """A run with its nodes; ``run_not_found`` if unknown."""

    @abc.abstractmethod
    def output_chunks(self, run_id: str) -> AsyncIterator[bytes]:
        """A completed run's output as JSON bytes, streamed (a large one from the blob store)."""

    @abc.abstractmethod
    async def runs(
        self, *, workflow: str | None = None, status: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Run summaries, newest first."""

    @abc.abstractmethod
    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run; return ``{"run_id", "cancelled", "status"}``."""

    @abc.abstractmethod
    async def resume(self, run_id: str, *, on_event: EventCallback | None = None) -> dict[str, Any]:
        """Follow an unfinished run to its end; return the finished run.

        An interrupted run is resumed from its checkpoints first.
        """

    # -- sessions ----------------------------------------------------------------

    @abc.abstractmethod
    async def create_session(self) -> dict[str, Any]:
        """Start a session usable from every channel."""

    @abc.abstractmethod
    async def session(self, session_id: str) -> dict[str, Any]:
        """A live session; ``session_not_found`` if unknown or expired."""

    # -- events and plugins ----------------------------------------------------------

    @abc.abstractmethod
    async def events(
        self, patterns: Sequence[str], *, since: str | None = None, follow: bool = True
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Events whose type matches ``patterns``; await it for the stream, then close that.

        First the events after ``since`` (all of them for ``"0"``), then, with
        ``follow``, the live stream.
        """

    @abc.abstractmethod
    async def plugins(self) -> dict[str, Any]:
        """The loaded plugins and those that failed to load."""


_OPENED: list[Target] = []  # the targets this process opened, last one last


def nexus_command(*words: str, target: Target | None = None) -> str:
    """``nexus [--url URL | --app APP] WORDS...``: a command for a hint, that works as printed.

    The target (default: the last one this process opened) is named unless it
    came from ``NEXUS_URL`` / ``NEXUS_APP``, which the same shell still has.
    """
    import shlex

    if target is None and _OPENED:
        target = _OPENED[-1]
    head = ["nexus"]
    if target is not None:
        if target.url is not None:
            if target.url != (os.environ.get("NEXUS_URL") or "").rstrip("/"):
                head += ["--url", target.url]
        elif target.app is not None and target.app != os.environ.get("NEXUS_APP"):
            head += ["--app", target.app]
    return " ".join([*(shlex.quote(w) for w in head), *words])


def open_backend(target: Target) -> Backend:
    """The backend for ``target`` (not entered yet: use ``async with``)."""
    _OPENED.append(target)
    if target.remote:
        from .remote import RemoteBackend

        return RemoteBackend(target)
    from .local import LocalBackend

    return LocalBackend(target)


# -- shapes ------------------------------------------------------------------------------

_RUN_KEYS = (
    "run_id",
    "workflow",
    "status",
    "output",
    "error",
    "nodes",
    "session_id",
    "started_at",
    "finished_at",
)
_SUMMARY_KEYS = (
    "run_id",
    "workflow",
    "status",
    "channel",
    "session_id",
    "created_at",
    "started_at",
    "finished_at",
)
_SESSION_KEYS = ("id", "channels", "created_at", "expires_at", "state")


def run_view(data: dict[str, Any]) -> dict[str, Any]:
    """A run in the one shape both backends return (every key present)."""
    out = {key: data.get(key) for key in _RUN_KEYS}
    if out["run_id"] is None:
        out["run_id"] = data.get("id")
    nodes = out["nodes"] or {}
    out["nodes"] = {
        node_id: {
            "status": node.get("status"),
            "output": node.get("output"),
            "error": node.get("error"),
            "duration_ms": node.get("duration_ms"),
            "attempts": node.get("attempts", 0),
        }
        for node_id, node in nodes.items()
        if isinstance(node, dict)
    }
    error = out["error"]
    if isinstance(error, dict):
        shown: dict[str, Any] = {
            "type": error.get("type"),
            "message": error.get("message"),
            "node": error.get("node"),
        }
        if error.get("traceback"):  # only for callers allowed runs:debug
            shown["traceback"] = error["traceback"]
        out["error"] = shown
    return out


def run_summary(data: dict[str, Any]) -> dict[str, Any]:
    """A run summary (for lists) in the one shape both backends return."""
    out = {key: data.get(key) for key in _SUMMARY_KEYS}
    if out["run_id"] is None:
        out["run_id"] = data.get("id")
    return out


def session_view(data: dict[str, Any]) -> dict[str, Any]:
    """A session in the one shape both backends return."""
    out = {key: data.get(key) for key in _SESSION_KEYS}
    if out["id"] is None:
        out["id"] = data.get("session_id") or data.get("token")
    out["channels"] = list(out["channels"] or [])
    out["state"] = dict(out["state"] or {})
    return out


def event_view(data: dict[str, Any]) -> dict[str, Any]:
    """An event in the one shape both backends return."""
    return {
        "id": data.get("id"),
        "type": data.get("type"),
        "time": data.get("time"),
        "channel": data.get("channel"),
        "session_id": data.get("session_id"),
        "run_id": data.get("run_id"),
        "data": data.get("data") or {},
    }
