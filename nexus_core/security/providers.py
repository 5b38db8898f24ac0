"""The built-in auth providers: API keys, CLI tokens and anonymous access (JWT: ``jwt_provider``).

Each is registered through ``nexus_auth_providers`` (see :mod:`nexus_core.builtin`)
and built as ``factory(app, config)``, ``config`` being its table under
``nexus.services.security``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..config import AnonymousConfig, ApiKeyConfig, CliTokenConfig, ConfigError
from ..errors import AuthenticationError
from ..storage.base import CredentialRecord, Storage
from .principal import Credentials, Principal, hash_token, tokens_equal

if TYPE_CHECKING:
    from ..app import Nexus

__all__ = ["AnonymousProvider", "ApiKeyProvider", "CliTokenProvider", "StoredTokenProvider"]

_KEY = "nexus.services.security"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoredTokenProvider:
    """Random tokens issued by the host and kept in storage by their SHA-256.

    A token starting with :attr:`prefix` is this provider's: unknown, expired
    or revoked, it is an :class:`AuthenticationError`. Anything else is not.
    """

    name = "stored_token"
    kind = "stored_token"
    what = "token"

    def __init__(self, app: Nexus, prefix: str) -> None:
        if not prefix:
            raise ConfigError(
                f"{_KEY}.{self.name}.prefix: must not be empty (it tells tokens apart)",
                key=f"{_KEY}.{self.name}.prefix",
            )
        self.app = app
        self.prefix = prefix

    def _storage(self) -> Storage:
        storage = self.app.storage
        if storage is None:
            raise RuntimeError("the Nexus host is not running: use 'async with app:'")
        return storage

    def _token(self, credentials: Credentials) -> str | None:
        bearer = credentials.bearer
        return bearer if bearer is not None and bearer.startswith(self.prefix) else None

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        """The principal the token was issued to, None if it is not this provider's token."""
        token = self._token(credentials)
        if token is None:
            return None
        return await self.lookup(token)

    async def lookup(self, token: str) -> Principal:
        """Find a token of this kind in storage; raise unless it is valid now."""
        digest = hash_token(token)
        record = await self._storage().get_credential(self.kind, digest)
        if record is None or not tokens_equal(record.token_hash, digest):
            raise AuthenticationError(f"unknown {self.what}")
        now = self.app.security.clock()
        if record.revoked_at is not None and record.revoked_at <= now:
            raise AuthenticationError(f"this {self.what} has been revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationError(f"this {self.what} has expired")
        if record.parent is not None:  # derived: valid while what it was issued from is
            await self.app.security.issuer.check_lineage(record, self.what)
        return principal_of(record, self.name)


def principal_of(record: CredentialRecord, provider: str) -> Principal:
    """The principal a stored credential stands for, valid until its expiry or set revocation."""
    ends = [t for t in (record.expires_at, record.revoked_at) if t is not None]
    return Principal(
        id=record.principal,
        tenant=record.tenant,
        roles=tuple(record.roles),
        scopes=tuple(record.scopes),
        attributes=dict(record.attributes),
        provider=provider,
        expires_at=min(ends) if ends else None,
    )


class ApiKeyProvider(StoredTokenProvider):
    """``api_key``: keys sent as ``X-API-Key`` (any value) or as a bearer token with the prefix.

    Keys issued with ``app.security.issue_api_key`` are looked up in storage;
    keys written in the configuration are compared by SHA-256, in constant
    time, and may have any form.
    """

    name = "api_key"
    kind = "api_key"
    what = "API key"

    def __init__(self, app: Nexus, config: ApiKeyConfig | None = None) -> None:
        config = config or ApiKeyConfig()
        super().__init__(app, config.prefix)
        self.config = config
        for index, key in enumerate(config.keys):
            if not _SHA256.match(key.sha256):
                raise ConfigError(
                    f"{_KEY}.api_key.keys[{index}].sha256: expected the 64 lowercase hex digits "
                    'of the key\'s SHA-256 (printf %s "$KEY" | sha256sum)',
                    key=f"{_KEY}.api_key.keys[{index}].sha256",
                )
        self.static = tuple(config.keys)

    def _static(self, token: str) -> Principal | None:
        digest = hash_token(token)
        found = None
        for key in self.static:  # no early exit: the time does not depend on which matched
            if tokens_equal(key.sha256, digest):
                found = key
        if found is None:
            return None
        return Principal(
            id=found.principal,
            tenant=found.tenant,
            roles=tuple(found.roles),
            scopes=tuple(found.scopes),
            attributes=dict(found.attributes),
            provider=self.name,
        )

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        """The key's principal; None for a bearer token that is no API key."""
        if credentials.api_key is not None:
            token = credentials.api_key
        elif credentials.bearer is not None:
            token = credentials.bearer
            if not token.startswith(self.prefix):
                return self._static(token) if self.static else None
        else:
            return None
        principal = self._static(token) if self.static else None
        if principal is not None:
            return principal
        return await self.lookup(token)


class CliTokenProvider(StoredTokenProvider):
    """``cli_token``: tokens that ``nexus login`` obtains, sent as bearer tokens."""

    name = "cli_token"
    kind = "cli_token"
    what = "CLI token"

    def __init__(self, app: Nexus, config: CliTokenConfig | None = None) -> None:
        config = config or CliTokenConfig()
        super().__init__(app, config.prefix)
        self.config = config
        if config.ttl <= 0:
            raise ConfigError(
                f"{_KEY}.cli_token.ttl: must be a positive number of seconds",
                key=f"{_KEY}.cli_token.ttl",
            )


class AnonymousProvider:
    """``anonymous``: a caller without credentials gets the configured roles and tenant.

    Enable it (with authentication on) to serve some workflows publicly; grant
    its roles only what the public may do. Presented credentials are never its.
    """

    name = "anonymous"
    anonymous = True

    def __init__(self, app: Nexus, config: AnonymousConfig | None = None) -> None:
        config = config or AnonymousConfig()
        self.principal = Principal(
            id="anonymous",
            tenant=config.tenant,
            roles=tuple(config.roles),
            anonymous=True,
            provider=self.name,
        )

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        """The anonymous principal when nothing was presented, else None."""
        return None if credentials.presented else self.principal
