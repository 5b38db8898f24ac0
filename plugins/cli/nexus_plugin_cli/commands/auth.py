"""``nexus login`` / ``nexus logout``: a token per gateway, and one for local mode.

The token is kept by the core's :mod:`nexus_core.userconfig` in the user's
config folder (``tokens/``, mode 0600): one file per gateway URL (``--url``)
and one for local mode (``--app``, whatever the application), which
``nexus mcp`` over stdio also reads. Every later command on that target sends
it (``Authorization: Bearer`` remotely, the core's credentials in process)
unless ``--token`` / ``NEXUS_TOKEN`` overrides it.

Against a gateway, ``nexus login --url URL --api-key KEY`` exchanges an API
key for a CLI token (``POST /auth/cli-tokens``) and ``nexus logout --url URL``
revokes it there (``DELETE /auth/cli-tokens/current``).
"""

from __future__ import annotations

import getpass
import socket
import sys
from typing import Annotated, Any

from cyclopts import Parameter

from .. import context, tokens
from ..backends import Target, open_backend
from ..context import Globals
from ..errors import OK, CliError, Problem, problem_from, usage_error
from ..output import Console

__all__ = ["login_command", "logout_command"]


def login_command(
    *,
    api_key: Annotated[str | None, Parameter(name="--api-key")] = None,
    with_api_key: Annotated[bool, Parameter(negative=())] = False,
    with_token: Annotated[bool, Parameter(negative=())] = False,
    principal: str | None = None,
    g: Globals | None = None,
) -> int:
    """Log in: keep a token for the target (a gateway, or the application in process).

    Against a gateway (--url), an API key is exchanged for a CLI token the
    gateway issues (--api-key KEY, --with-api-key to read it from standard
    input, or a prompt on a terminal); a token you already have is checked and kept
    instead (--token, NEXUS_TOKEN, or --with-token to read it from standard
    input). In process, without a token, the application issues a CLI token
    to --principal (its security layer must enable the cli_token provider).

    Parameters
    ----------
    api_key
        Against a gateway: the API key to exchange for a CLI token.
    with_api_key
        Against a gateway: read the API key to exchange from standard input.
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
        exchange = api_key is not None or with_api_key
        if with_token and exchange:
            raise usage_error("give either an API key or --with-token, not both")
        if with_token:
            token = sys.stdin.readline().strip()
        key = sys.stdin.readline().strip() if with_api_key else api_key
        extra: dict[str, Any] = {}
        if target.remote:
            if exchange or not token:
                key = key or _prompt(target, "API key")
                issued = await _exchange(target, key)
                token = issued["token"]
                extra = {
                    "principal": issued.get("principal"),
                    "tenant": issued.get("tenant"),
                    "expires_at": issued.get("expires_at"),
                }
                out.note(_who(extra))
            else:
                await _check_remote(target, token)
        else:
            if exchange:
                raise usage_error(
                    "--api-key is for logging in to a gateway (--url); in process the "
                    "application issues the token itself (nexus login --principal NAME)"
                )
            token = await _local_token(target, token, principal, out)
        path = tokens.save(target, token)
        if out.json:
            out.result({"target": target.describe(), "logged_in": True, "file": str(path), **extra})
        else:
            out.line(f"logged in to {target.describe()}")
            until = extra.get("expires_at")
            valid = f", valid until {_when(until)}" if isinstance(until, int | float) else ""
            out.note(f"token saved in {path} (mode 0600){valid}")
        return OK

    return context.execute(body)


def logout_command(*, g: Globals | None = None) -> int:
    """Log out: forget the token kept for the target, and revoke it where it was issued.

    A CLI token is revoked on the gateway (or by the application in process);
    an API key stored with --token is only forgotten, never revoked.
    """
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        token = tokens.saved(target)
        revoked = False
        if token and target.remote:
            from ..remote import RemoteBackend

            try:
                async with RemoteBackend(Target(url=target.url)) as backend:
                    revoked = await backend.revoke_current_token(token)
            except Exception as exc:  # the local file goes anyway
                reason = problem_from(exc).message
                out.note(f"warning: the gateway did not revoke the token: {reason}")
        elif token:
            async with open_backend(target) as backend:
                app = await backend.host()  # type: ignore[attr-defined]
                revoked = await tokens.revoke(app, token)
        had = tokens.forget(target)
        if out.json:
            out.result({"target": target.describe(), "logged_out": had, "revoked": revoked})
        elif had:
            out.line(f"logged out of {target.describe()}")
        else:
            out.line(f"not logged in to {target.describe()}")
        return OK

    return context.execute(body)


def _prompt(target: Target, what: str) -> str:
    if not sys.stdin.isatty():
        raise CliError(
            Problem(
                code="usage",
                message=f"no credentials for {target.describe()}: pass --api-key KEY "
                "(or --with-api-key to read it from standard input), or a token you were "
                "given with --token TOKEN, NEXUS_TOKEN or --with-token",
            )
        )
    value = getpass.getpass(f"{what} for {target.describe()}: ").strip()
    if not value:
        raise CliError(Problem(code="usage", message=f"no {what} given"))
    return value


def _who(issued: dict[str, Any]) -> str:
    tenant = issued.get("tenant")
    return f"authenticated as {issued.get('principal')}" + (f" (tenant {tenant})" if tenant else "")


def _when(timestamp: float) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


async def _exchange(target: Target, api_key: str) -> dict[str, Any]:
    """``POST /auth/cli-tokens`` with the API key: the gateway's answer."""
    from ..remote import RemoteBackend

    label = f"nexus login on {socket.gethostname()} as {getpass.getuser()}"
    async with RemoteBackend(Target(url=target.url)) as backend:
        return await backend.issue_cli_token(api_key, label=label)


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
        # Issuing stores the token's record; no credentials are needed yet to get one.
        app = await backend.host()  # type: ignore[attr-defined]
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
