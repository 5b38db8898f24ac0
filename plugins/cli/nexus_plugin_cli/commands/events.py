"""``nexus events``: follow the live event stream, filtered by type, resuming from an id."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from cyclopts import Parameter

from .. import context
from ..backends import open_backend
from ..checks import between
from ..context import Globals
from ..errors import OK
from ..output import Console, dumps
from ..render import when

__all__ = ["events_command", "format_event"]


def events_command(
    *,
    type: Annotated[
        list[str] | None, Parameter(name=["--type", "-t"], consume_multiple=False)
    ] = None,
    since: str | None = None,
    count: Annotated[int | None, Parameter(validator=between(1))] = None,
    idle: Annotated[float | None, Parameter(validator=between(0))] = None,
    g: Globals | None = None,
) -> int:
    """Follow events as they happen (runs, nodes, sessions, workflows).

    Parameters
    ----------
    type
        Only events of this type; a pattern such as 'run.*'. Repeat for several.
    since
        First replay the events after this id (from a previous line); '0' replays all.
    count
        Stop after this many events.
    idle
        Stop after this many seconds without an event.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)
    patterns = type or ["*"]

    async def body(out: Console) -> int:
        seen = 0
        async with open_backend(context.target()) as backend:
            stream = await backend.events(patterns, since=since)
            try:
                while count is None or seen < count:
                    event: dict[str, Any] | None = None
                    with anyio.move_on_after(idle):  # None: no limit
                        event = await anext(stream, None)
                    if event is None:
                        break  # the stream ended, or nothing arrived for --idle seconds
                    seen += 1
                    if out.json:
                        out.record(event)
                    else:
                        out.line(format_event(event))
            finally:
                await stream.aclose()
        return OK

    return context.execute(body)


def format_event(event: dict[str, Any]) -> str:
    """One line: ``id  time  type  run=...  node=...  key=value``."""
    data = dict(event.get("data") or {})
    parts = [str(event.get("id") or "-"), when(event.get("time")) or "-", str(event.get("type"))]
    if event.get("run_id"):
        parts.append(f"run={event['run_id']}")
    if event.get("session_id"):
        parts.append(f"session={event['session_id'][:12]}…")
    if event.get("channel"):
        parts.append(f"channel={event['channel']}")
    parts += [f"{key}={data.pop(key)}" for key in ("workflow", "node", "status") if key in data]
    for key, value in data.items():
        if value is None or key in ("output",):
            continue
        parts.append(f"{key}={dumps(value, indent=None)}")
    return "  ".join(parts)
