"""CLI tokens in process: the one place that talks to the core's token issuing.

``nexus login`` against a gateway stores a token the gateway accepts (checked
with an authenticated request). In process there is no gateway: the token is
issued and checked by the application's own security layer, which needs the
``cli_token`` provider enabled (``nexus.services.security.providers``):

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
    from nexus_core import Nexus
    from nexus_core.security import Principal

__all__ = ["can_issue", "issue", "revoke", "verify"]

_ISSUE = "issue_cli_token"
_REVOKE = "revoke_cli_token"


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


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
