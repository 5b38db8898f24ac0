"""The credentials the host issues and stores: API keys and CLI tokens.

:class:`CredentialIssuer` issues, rotates, revokes and lists them; the
:class:`~nexus_core.security.SecurityLayer` exposes its methods under the same
names (``app.security.issue_api_key(...)``). Tokens are random, shown once,
and stored by their SHA-256 (:class:`~nexus_core.storage.base.CredentialRecord`).

A CLI token issued *from* a credential (:meth:`CredentialIssuer.exchange_cli_token`,
what ``POST /auth/cli-tokens`` and ``nexus login`` against a gateway call) is
derived from it: it expires no later than that credential, and its record
names the credential as its ``parent``, so revoking the parent (or a parent's
parent) refuses the CLI token at once. A JWT cannot be revoked; the CLI token
issued from one expires when the JWT does. Issuing one needs the permission
``tokens:issue``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config import ConfigError
from ..errors import AuthenticationError
from ..storage.base import CredentialRecord, Storage
from .principal import Credentials, Principal, hash_token, new_token

if TYPE_CHECKING:
    from .layer import SecurityLayer

__all__ = ["ISSUE_PERMISSION", "STATIC_PARENT", "CredentialIssuer", "IssuedToken"]

_KEY = "nexus.services.security"
#: The permission a principal needs to exchange its credential for a CLI token.
ISSUE_PERMISSION = "tokens:issue"
#: How a derived token's ``parent`` names an API key written in the configuration.
STATIC_PARENT = "static-api-key:"
#: How many ancestors a derived token's lineage may have (each costs a storage read).
_MAX_LINEAGE = 8
_STORED_KINDS = ("api_key", "cli_token")


class IssuedToken(NamedTuple):
    """A newly issued API key or CLI token: the secret (shown once) and its stored record."""

    token: str
    record: CredentialRecord


def effective_end(record: CredentialRecord) -> float | None:
    """When a stored credential stops working: its expiry or its (planned) revocation."""
    ends = [t for t in (record.expires_at, record.revoked_at) if t is not None]
    return min(ends) if ends else None


class CredentialIssuer:
    """Issue, rotate, revoke and list the credentials of one host's security layer."""

    def __init__(self, security: SecurityLayer) -> None:
        self.security = security

    # -- plumbing --------------------------------------------------------------------

    def _storage(self) -> Storage:
        storage = self.security.app.storage
        if storage is None:
            raise RuntimeError("the Nexus host is not running: use 'async with app:'")
        return storage

    def _enabled(self, name: str) -> Any:
        security = self.security
        security.configure()
        provider = security.providers.get(name)
        if provider is None:
            raise ConfigError(
                f"the {name!r} auth provider is not enabled, so a {name} issued now could never "
                f"be used; add {name!r} to {_KEY}.providers",
                key=f"{_KEY}.providers",
            )
        return provider

    async def _issue(
        self,
        kind: str,
        prefix: str,
        principal: str | Principal,
        *,
        roles: Any,
        scopes: Any,
        tenant: str | None,
        attributes: dict[str, Any] | None,
        label: str | None,
        ttl: float | None,
        parent: str | None = None,
        not_after: float | None = None,
    ) -> IssuedToken:
        if isinstance(principal, Principal):
            if principal.anonymous:
                raise ValueError("credentials cannot be issued to the anonymous principal")
            pid = principal.id
            tenant = principal.tenant if tenant is None else tenant
            roles = principal.roles if roles is None else roles
            scopes = principal.scopes if scopes is None else scopes
            attributes = dict(principal.attributes) if attributes is None else attributes
            ends = [t for t in (not_after, principal.expires_at) if t is not None]
            not_after = min(ends) if ends else None
        else:
            pid = principal
        if not pid:
            raise ValueError("a credential needs a principal id")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = self.security.clock()
        expires = None if ttl is None else now + ttl
        if not_after is not None:
            if not_after <= now:
                raise AuthenticationError("the credential it would be issued from has expired")
            expires = not_after if expires is None else min(expires, not_after)
        token = new_token(prefix)
        record = CredentialRecord(
            id=f"{kind}_{secrets.token_urlsafe(12)}",
            kind=kind,
            token_hash=hash_token(token),
            principal=pid,
            tenant=tenant or "default",
            roles=list(roles or ()),
            scopes=list(scopes or ()),
            attributes=dict(attributes or {}),
            created_at=now,
            expires_at=expires,
            label=label,
            parent=parent,
        )
        await self._storage().put_credential(record)
        return IssuedToken(token, record)

    # -- issuing ---------------------------------------------------------------------

    async def issue_api_key(
        self,
        principal: str | Principal,
        *,
        roles: list[str] | tuple[str, ...] | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
        tenant: str | None = None,
        attributes: dict[str, Any] | None = None,
        label: str | None = None,
        ttl: float | None = None,
    ) -> IssuedToken:
        """Issue an API key; see :meth:`SecurityLayer.issue_api_key`."""
        provider = self._enabled("api_key")
        if ttl is None:
            ttl = provider.config.default_ttl
        return await self._issue(
            "api_key",
            provider.prefix,
            principal,
            roles=roles,
            scopes=scopes,
            tenant=tenant,
            attributes=attributes,
            label=label,
            ttl=ttl,
        )

    async def issue_cli_token(
        self,
        principal: str | Principal,
        *,
        roles: list[str] | tuple[str, ...] | None = None,
        tenant: str | None = None,
        label: str | None = None,
        ttl: float | None = None,
    ) -> IssuedToken:
        """Issue a CLI token to a principal; see :meth:`SecurityLayer.issue_cli_token`."""
        provider = self._enabled("cli_token")
        return await self._issue(
            "cli_token",
            provider.prefix,
            principal,
            roles=roles,
            scopes=None,
            tenant=tenant,
            attributes=None,
            label=label,
            ttl=provider.config.ttl if ttl is None else ttl,
        )

    async def exchange_cli_token(
        self,
        credentials: Credentials | None,
        channel: str,
        *,
        label: str | None = None,
        ttl: float | None = None,
    ) -> IssuedToken:
        """A CLI token derived from the credential presented; see :meth:`SecurityLayer`."""
        security = self.security
        provider = self._enabled("cli_token")
        await security.limit("token_issuance", credentials, channel)
        who = await security.authenticate(credentials, channel, audit=True)
        if who.anonymous:
            error = AuthenticationError(
                "a CLI token is issued to whoever the credentials prove: send an API key "
                "(X-API-Key) or a bearer token"
            )
            await security.audit(
                action=ISSUE_PERMISSION,
                outcome=error.code,
                principal=who,
                channel=channel,
                reason=error.message,
            )
            raise error
        await security.require(who, ISSUE_PERMISSION, channel=channel)
        parent = await self._parent(credentials, who)
        limit = provider.config.ttl if ttl is None else min(ttl, provider.config.ttl)
        issued = await self._issue(
            "cli_token",
            provider.prefix,
            who,
            roles=None,
            scopes=None,
            tenant=None,
            attributes=None,
            label=label,
            ttl=limit,
            parent=parent,
        )
        await security.audit(action="cli_token:issue", outcome="ok", principal=who, channel=channel)
        return issued

    async def _parent(self, credentials: Credentials | None, who: Principal) -> str | None:
        """The id of the credential ``who`` authenticated with (None for a JWT: not revocable)."""
        if credentials is None or who.provider not in _STORED_KINDS:
            return None
        token = credentials.api_key if credentials.api_key is not None else credentials.bearer
        if token is None:
            return None
        digest = hash_token(token)
        record = await self._storage().get_credential(who.provider, digest)
        if record is not None:
            return record.id
        if who.provider == "api_key":  # an API key written in the configuration
            return STATIC_PARENT + hash_token(digest)
        return None

    # -- checking a derived token ----------------------------------------------------------

    async def check_lineage(self, record: CredentialRecord, what: str) -> None:
        """Raise :class:`AuthenticationError` unless every credential ``record`` derives from works.

        A parent revoked, expired, unknown or (for a configured API key) no
        longer configured refuses the token, with the reason.
        """
        now = self.security.clock()
        parent, depth = record.parent, 0
        while parent is not None:
            depth += 1
            if depth > _MAX_LINEAGE:
                raise AuthenticationError(f"this {what} derives from too many credentials")
            if parent.startswith(STATIC_PARENT):
                if not self._static_configured(parent):
                    raise AuthenticationError(
                        f"this {what} was issued from an API key that is no longer configured"
                    )
                return
            found = await self._storage().get_credential_by_id(parent)
            if found is None or (found.revoked_at is not None and found.revoked_at <= now):
                raise AuthenticationError(
                    f"this {what} was issued from a credential that has been revoked"
                )
            if found.expires_at is not None and found.expires_at <= now:
                raise AuthenticationError(
                    f"this {what} was issued from a credential that has expired"
                )
            parent = found.parent

    def _static_configured(self, parent: str) -> bool:
        provider = self.security.providers.get("api_key")
        if provider is None:
            return False
        wanted = parent.removeprefix(STATIC_PARENT)
        return any(hash_token(key.sha256) == wanted for key in getattr(provider, "static", ()))

    # -- rotating, revoking, listing --------------------------------------------------------

    async def rotate_api_key(self, credential_id: str, *, grace: float = 0.0) -> IssuedToken:
        """Issue a new key like an existing one and revoke the old one after ``grace`` seconds."""
        old = await self._storage().get_credential_by_id(credential_id)
        if old is None or old.kind != "api_key":
            raise KeyError(f"no API key {credential_id!r}")
        now = self.security.clock()
        ttl = None if old.expires_at is None else max(1.0, old.expires_at - old.created_at)
        issued = await self._issue(
            "api_key",
            self._enabled("api_key").prefix,
            old.principal,
            roles=old.roles,
            scopes=old.scopes,
            tenant=old.tenant,
            attributes=old.attributes,
            label=old.label,
            ttl=ttl,
        )
        await self._revoke_with_children(old, at=now + max(0.0, grace))
        return issued

    async def revoke(self, credential_id: str, *, tenant: str | None = None) -> bool:
        """Revoke a credential now, and every CLI token derived from it; False if unknown."""
        record = await self._storage().get_credential_by_id(credential_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            return False
        return await self._revoke_with_children(record, at=self.security.clock())

    async def revoke_token(self, token: str, *, kind: str | None = None) -> bool:
        """Revoke the API key or CLI token ``token`` itself (``nexus logout`` has only that)."""
        storage = self._storage()
        digest = hash_token(token)
        for candidate in (kind,) if kind is not None else _STORED_KINDS:
            record = await storage.get_credential(candidate, digest)
            if record is not None:
                return await self._revoke_with_children(record, at=self.security.clock())
        return False

    async def _revoke_with_children(self, record: CredentialRecord, *, at: float) -> bool:
        """Revoke ``record`` at ``at`` and mark its derived tokens so too (lookups check anyway)."""
        storage = self._storage()
        revoked = await storage.revoke_credential(record.id, at=at)
        children: dict[str, list[str]] = {}
        for other in await storage.list_credentials(principal=record.principal):
            if other.parent is not None:
                children.setdefault(other.parent, []).append(other.id)
        pending, seen = [record.id], {record.id}
        while pending:
            for child in children.get(pending.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    pending.append(child)
                    await storage.revoke_credential(child, at=at)
        return revoked

    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        include_inactive: bool = False,
    ) -> list[CredentialRecord]:
        """Issued credentials (never their tokens), oldest first; active ones unless asked."""
        records = await self._storage().list_credentials(
            principal=principal, kind=kind, tenant=tenant
        )
        if include_inactive:
            return records
        now = self.security.clock()
        return [r for r in records if (end := effective_end(r)) is None or end > now]
