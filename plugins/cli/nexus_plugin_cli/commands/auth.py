"""``nexus login`` / ``nexus logout``: a token per target, kept in the user's config folder.

The token is saved in ``credentials.json`` (mode 0600) under the target: the
gateway URL (``--url``) or the application (``--app``). Every later command
on that target sends it (``Authorization: Bearer`` remotely, the core's
credentials in process) unless ``--token`` / ``NEXUS_TOKEN`` overrides it.
"""

from __future__ import annotations

import getpass
import socket
import sys

from .. import context, state, tokens
from ..backends import Target, open_backend
from ..context import Globals
from ..errors import OK, CliError, Problem
from ..output import Console

__all__ = ["login_command", "logout_command"]


def login_command(
    *, with_token: bool = False, principal: str | None = None, g: Globals | None = None
) -> int:
    """Log in: check a token against the target and keep it for later commands.

    The token comes from --token, NEXUS_TOKEN, standard input (--with-token),
    or a prompt. In process, without a token, the application issues a CLI
    token to --principal (its security layer must enable the cli_token provider).

    Parameters
    ----------
    with_token
        Read the token from standard input.
    principal
        In process: who the issued token is for (default: your user name).
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        token = target.token
        if with_token:
            token = sys.stdin.readline().strip()
        if target.remote:
            token = token or _prompt(target)
            await _check_remote(target, token)
        else:
            token = await _local_token(target, token, principal, out)
        path = state.save_token(target.key, token)
        if out.json:
            out.result({"target": target.describe(), "logged_in": True, "file": str(path)})
        else:
            out.line(f"logged in to {target.describe()}")
            out.note(f"token saved in {path} (mode 0600)")
        return OK

    return context.execute(body)


def logout_command(*, g: Globals | None = None) -> int:
    """Log out: forget the token kept for the target (and revoke it in process, if supported)."""
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        token = state.load_token(target.key)
        revoked = False
        if token and not target.remote:
            async with open_backend(target) as backend:
                await backend.start()
                revoked = await tokens.revoke(backend.nexus, token)  # type: ignore[attr-defined]
        had = state.forget_token(target.key)
        if out.json:
            out.result({"target": target.describe(), "logged_out": had, "revoked": revoked})
        elif had:
            out.line(f"logged out of {target.describe()}")
        else:
            out.line(f"not logged in to {target.describe()}")
        return OK

    return context.execute(body)


def _prompt(target: Target) -> str:
    if not sys.stdin.isatty():
        raise CliError(
            Problem(
                code="usage",
                message="no token: pass --token TOKEN, set NEXUS_TOKEN, "
                "or pipe it with --with-token",
            )
        )
    token = getpass.getpass(f"Token for {target.describe()}: ").strip()
    if not token:
        raise CliError(Problem(code="usage", message="no token given"))
    return token


async def _check_remote(target: Target, token: str) -> None:
    """An authenticated request the gateway must accept: ``GET /workflows``."""
    probe = Target(url=target.url, token=token)
    async with open_backend(probe) as backend:
        try:
            await backend.workflows()
        except CliError as exc:
            if exc.problem.code in ("unauthenticated", "forbidden"):
                raise CliError(
                    Problem(
                        code=exc.problem.code,
                        message=f"the gateway at {target.url} refused this token: "
                        f"{exc.problem.message}",
                    )
                ) from None
            raise


async def _local_token(
    target: Target, token: str | None, principal: str | None, out: Console
) -> str:
    async with open_backend(target) as backend:
        await backend.start()  # issuing stores the token's record
        app = backend.nexus  # type: ignore[attr-defined]
        if not token:
            who = principal or getpass.getuser()
            token = await tokens.issue(
                app, principal=who, label=f"nexus login on {socket.gethostname()}"
            )
        if not token:
            raise CliError(
                Problem(
                    code="unsupported",
                    message="this application cannot issue CLI tokens in process yet",
                    hint="pass a token you were given: nexus login --token TOKEN (or --with-token)",
                )
            )
        who_is = await tokens.verify(app, token)
        out.note(f"authenticated as {who_is.id} (tenant {who_is.tenant})")
        return token
