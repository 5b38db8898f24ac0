"""``nexus session new|use|show``: a session shared by every channel, current for later runs.

``nexus session new`` starts a session and makes it current: every later
``nexus run`` on the same target (``--app`` or ``--url``) runs in it, until
``nexus session use`` picks another (or ``--clear`` forgets it). The session
id is a bearer-like token; it is kept in the user's config folder (mode 0600).
"""

from __future__ import annotations

from typing import Annotated, Any

from cyclopts import App, Parameter

from .. import context, state
from ..backends import open_backend
from ..context import Globals
from ..errors import OK, usage_error
from ..output import Console
from ..render import when

__all__ = ["app", "new_session", "show_session", "use_session"]

#: Session ids are URL-safe tokens and may start with "-": never read one as an option.
SessionId = Annotated[str | None, Parameter(allow_leading_hyphen=True)]

app = App(name="session", help="Start a session, choose the current one, or show it.")


def _print(out: Console, session: dict[str, Any], current: bool) -> None:
    if out.json:
        out.result({**session, "current": current})
        return
    out.line(f"session   {session['id']}{'  (current)' if current else ''}")
    out.line(f"channels  {', '.join(session['channels']) or '-'}")
    if session.get("principal"):
        out.line(f"principal {session['principal']}")
    out.line(f"created   {when(session.get('created_at')) or '-'}")
    out.line(f"expires   {when(session.get('expires_at')) or '-'}")
    out.line(f"state     {session.get('state') or {}}")


@app.command(name="new")
def new_session(*, g: Globals | None = None) -> int:
    """Start a session and make it the current one for this target."""
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        async with open_backend(target) as backend:
            session = await backend.create_session()
        state.set_current_session(target.key, session["id"])
        if out.json:
            out.result({**session, "current": True})
        else:
            out.line(session["id"])
            out.note("current session set: later runs on this target use it")
        return OK

    return context.execute(body)


@app.command(name="use")
def use_session(
    session_id: SessionId = None, /, *, clear: bool = False, g: Globals | None = None
) -> int:
    """Make a session current for later runs (it must exist), or --clear the current one.

    Parameters
    ----------
    session_id
        The session to use.
    clear
        Forget the current session instead.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        if clear:
            state.set_current_session(target.key, None)
            out.note("no current session")
            if out.json:
                out.result({"current": None})
            return OK
        if not session_id:
            raise usage_error("give a SESSION_ID, or --clear", hint="nexus session new starts one")
        async with open_backend(target) as backend:
            session = await backend.session(session_id)
        state.set_current_session(target.key, session["id"])
        _print(out, session, True)
        return OK

    return context.execute(body)


@app.command(name="show")
def show_session(session_id: SessionId = None, /, *, g: Globals | None = None) -> int:
    """Show a session (default: the current one): channels, expiry and state.

    Parameters
    ----------
    session_id
        The session to show.
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        current = state.current_session(target.key)
        wanted = session_id or current
        if not wanted:
            raise usage_error(
                "no current session", hint="start one with: nexus session new (or name one)"
            )
        async with open_backend(target) as backend:
            session = await backend.session(wanted)
        _print(out, session, session["id"] == current)
        return OK

    return context.execute(body)
