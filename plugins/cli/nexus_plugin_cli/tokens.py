"""CLI tokens: where they are kept, and the core's issuing and checking in process.

Saved tokens live in the user's config folder through the core's
:mod:`nexus_core.userconfig`: one per gateway URL and one for local mode, so
other channels find the login without importing this plugin (``nexus mcp``
over stdio reads the local one). :func:`saved`, :func:`save` and
:func:`forget` take the command's :class:`~nexus_plugin_cli.backends.Target`.

``nexus login`` against a gateway exchanges an API key for a CLI token
(``POST /auth/cli-tokens``) or stores a token it was given, once the gateway
accepts it. In process there is no gateway: the token is issued and checked
by the application's own security layer, which needs the ``cli_token``
provider enabled (``nexus.services.security.providers``):

* :func:`issue` calls ``app.security.issue_cli_token(principal, label=...)``
  (returning ``(token, record)``); it returns None on a core without it
  (``nexus login`` then asks for ``--token``);
* :func:`verify` authenticates a token through ``app.security.authenticate``
  on channel ``cli``, exactly as every later command will;
* :func:`revoke` calls ``app.security.revoke_cli_token(token)`` when present.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from nexus_core import Nexus
    from nexus_core.security import Principal

    from .backends import Target

__all__ = ["can_issue", "forget", "issue", "revoke", "save", "saved", "verify"]

_ISSUE = "issue_cli_token"
_REVOKE = "revoke_cli_token"


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def saved(target: Target) -> str | None:
    """The token ``nexus login`` kept for ``target`` (its gateway, or local mode), if any."""
    from nexus_core.plugin import read_token

    return read_token(target.url)


def save(target: Target, token: str) -> Path:
    """Keep ``token`` for ``target`` (mode 0600); return the file."""
    from nexus_core.plugin import write_token

    return write_token(token, target.url)


def forget(target: Target) -> bool:
    """Delete the token kept for ``target``; whether there was one."""
    from nexus_core.plugin import delete_token

    return delete_token(target.url)


def can_issue(app: Nexus) -> bool:
    """Whether this core can issue CLI tokens itself."""
    return callable(getattr(app.security, _ISSUE, None))


async def issue(app: Nexus, *, principal: str, label: str) -> str | None:
    """A new CLI token for ``principal`` from the core (None when this core cannot issue one).

    The host must be running (the token's record is stored). Raises the
    core's ``ConfigError`` when the ``cli_token`` provider is not enabled.
    """
    method = getattr(app.security, _ISSUE, None)
    if not callable(method):
        return None
    issued = await _maybe(method(principal, label=label))
    return str(getattr(issued, "token", issued))


async def verify(app: Nexus, token: str) -> Principal:
    """The principal ``token`` authenticates as on channel ``cli`` (raises if refused)."""
    from nexus_core.security import Credentials

    return await app.security.authenticate(Credentials(bearer=token, client="cli"), "cli")


async def revoke(app: Nexus, token: str) -> bool:
    """Revoke ``token`` in the core when it supports that; whether it did."""
    method = getattr(app.security, _REVOKE, None)
    if not callable(method):
        return False
    await _maybe(method(token))
    return True
