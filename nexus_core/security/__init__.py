"""Security: who is calling (authentication), what they may do (authorization), audit, limits.

The host calls one :class:`SecurityLayer` on every invocation from every channel;
no channel implements its own. Until providers are configured the layer lets
everyone in as the anonymous principal (the development default).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ..storage.base import AuditRecord

if TYPE_CHECKING:
    from ..app import Nexus

__all__ = ["ANONYMOUS", "Credentials", "Principal", "SecurityLayer", "hash_inputs"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller (or the anonymous one)."""

    id: str
    tenant: str = "default"
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    attributes: dict[str, Any] = {}
    provider: str | None = None
    anonymous: bool = False


ANONYMOUS = Principal(id="anonymous", roles=("anonymous",), anonymous=True)


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel received from its caller, in channel-neutral form."""

    bearer: str | None = None
    api_key: str | None = None
    client: str | None = None
    forwarded_for: str | None = None


def hash_inputs(inputs: Any) -> str:
    """A stable SHA-256 of the inputs, for audit and idempotency (never the raw values)."""
    return hashlib.sha256(msgspec.json.encode(inputs, order="sorted")).hexdigest()


class SecurityLayer:
    """Authenticate, authorize, rate-limit and audit; one instance per host."""

    def __init__(self, app: Nexus) -> None:
        self.app = app

    async def authenticate(self, credentials: Credentials | None, channel: str) -> Principal:
        """Turn credentials into a principal (anonymous while no provider is configured)."""
        return ANONYMOUS

    async def authorize(self, principal: Principal, action: str, **context: Any) -> None:
        """Raise ``PermissionDenied`` unless ``principal`` may do ``action``."""

    async def rate_limit(
        self, principal: Principal, channel: str, workflow: str, client: str | None
    ) -> None:
        """Raise ``RateLimited`` with the wait when a limit is exceeded."""

    def check_input_limits(self, inputs: Any) -> None:
        """Raise ``InputLimitExceeded`` for payloads over the configured limits."""

    async def audit(
        self,
        *,
        action: str,
        outcome: str,
        principal: Principal,
        channel: str,
        workflow: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
        input_hash: str | None = None,
    ) -> None:
        """Append one audit record (append-only, through the storage contract)."""
        storage = self.app.storage
        if storage is None:
            return
        await storage.append_audit(
            AuditRecord(
                id=secrets.token_hex(12),
                time=time.time(),
                action=action,
                outcome=outcome,
                tenant=principal.tenant,
                principal=principal.id,
                channel=channel,
                workflow=workflow,
                run_id=run_id,
                reason=reason,
                input_hash=input_hash,
            )
        )
