"""Security: who is calling (authentication), what they may do (authorization), audit, limits.

The host calls one :class:`SecurityLayer` on every invocation from every
channel; no channel implements its own. Authentication providers (API keys,
CLI tokens, JWT, anonymous, or a plugin's) come through the
``nexus_auth_providers`` hook and are enabled by name in
``nexus.services.security.providers``. See docs/how-to/secure-a-deployment.md.
"""

from __future__ import annotations

from .credentials import ISSUE_PERMISSION, CredentialIssuer
from .layer import PUBLIC_EVENT_TYPES, IssuedToken, SecurityLayer
from .policy import AccessPolicy, Decision
from .principal import (
    ANONYMOUS,
    AuthProvider,
    Credentials,
    Principal,
    hash_inputs,
    hash_token,
    header_extras,
    new_token,
    tokens_equal,
)

__all__ = [
    "ANONYMOUS",
    "ISSUE_PERMISSION",
    "PUBLIC_EVENT_TYPES",
    "AccessPolicy",
    "AuthProvider",
    "CredentialIssuer",
    "Credentials",
    "Decision",
    "IssuedToken",
    "Principal",
    "SecurityLayer",
    "hash_inputs",
    "hash_token",
    "header_extras",
    "new_token",
    "tokens_equal",
]
