"""Who is calling: principals, the credentials channels pass in, and the provider protocol."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ANONYMOUS",
    "EXCLUDED_HEADERS",
    "MAX_EXTRAS",
    "MAX_EXTRA_LENGTH",
    "AuthProvider",
    "Credentials",
    "Principal",
    "hash_inputs",
    "hash_token",
    "header_extras",
    "new_token",
    "tokens_equal",
]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller (or the anonymous one).

    ``roles`` grant permissions (RBAC); ``scopes``, when not empty, narrow what
    the credential may do to the matching actions whatever the roles say;
    ``attributes`` feed ABAC conditions (``principal.<name>``). ``provider``
    names the auth provider that vouched for it. ``expires_at`` (seconds since
    the epoch) is when the credential that proved it stops being valid, when
    the provider knows (a JWT's ``exp``, a stored token's expiry); a
    long-lived connection ends then (see ``SecurityLayer.until_invalid``).
    """

    id: str
    tenant: str = "default"
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    attributes: dict[str, Any] = {}
    provider: str | None = None
    anonymous: bool = False
    expires_at: float | None = None


#: The caller without credentials while authentication is off (the development default).
ANONYMOUS = Principal(id="anonymous", roles=("anonymous",), anonymous=True)


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel received from its caller, in channel-neutral form.

    ``bearer`` is an ``Authorization: Bearer`` token (an API key, a CLI token
    or a JWT), ``api_key`` an ``X-API-Key`` header; ``client`` is the address
    of the peer that connected and ``forwarded_for`` its ``X-Forwarded-For``
    header, believed only when the peer is a configured trusted proxy.

    ``extras`` carries any other header or claim a provider needs, by name
    (HTTP headers lower-cased, as ``{"x-shared-secret": "..."}``); each channel
    documents what it puts there. Extras do not count as :attr:`presented`: a
    provider that reads one and finds it wrong raises ``AuthenticationError``.
    """

    bearer: str | None = None
    api_key: str | None = None
    client: str | None = None
    forwarded_for: str | None = None
    extras: dict[str, str] = {}

    @property
    def presented(self) -> bool:
        """Whether the caller sent a token or key at all."""
        return self.bearer is not None or self.api_key is not None


#: Headers :func:`header_extras` leaves out: credentials that have their own
#: field (or must not travel further), ``X-Forwarded-For`` (believed only from a
#: trusted proxy, in ``forwarded_for``) and the hop-by-hop headers of RFC 9110.
EXCLUDED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: At most this many headers go into ``Credentials.extras`` (the first ones sent).
MAX_EXTRAS = 32
#: A header whose name or (joined) value is longer than this is left out, not cut.
MAX_EXTRA_LENGTH = 4096


def header_extras(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """The request headers an auth provider may read, for :attr:`Credentials.extras`.

    ``headers`` are (name, value) pairs as sent (an ASGI scope's ``headers``,
    bytes decoded as latin-1, or strings). Names are lower-cased; a repeated
    header's values are joined with ``", "``. Left out: the headers in
    :data:`EXCLUDED_HEADERS`, those the ``Connection`` header names (hop-by-hop
    too), names or values longer than :data:`MAX_EXTRA_LENGTH`, and every
    header after the first :data:`MAX_EXTRAS` names. The API and MCP (HTTP)
    channels fill ``extras`` with it; a channel of your own may too.
    """
    found: dict[str, str] = {}
    hop: set[str] = set()
    for raw_name, raw_value in headers:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if name == "connection":
            hop.update(token.strip().lower() for token in value.split(","))
        if name in EXCLUDED_HEADERS or len(name) > MAX_EXTRA_LENGTH:
            continue
        if name in found:
            found[name] = f"{found[name]}, {value}"
        elif len(found) < MAX_EXTRAS:
            found[name] = value
    return {
        name: value
        for name, value in found.items()
        if name not in hop and len(value) <= MAX_EXTRA_LENGTH
    }


@runtime_checkable
class AuthProvider(Protocol):
    """Turns credentials into a principal. Contributed through ``nexus_auth_providers``.

    ``authenticate`` returns ``None`` when the credentials are not its kind
    (the next enabled provider is tried) and raises
    :class:`~nexus_core.errors.AuthenticationError` when they are its kind but
    invalid (expired, revoked, bad signature): that ends authentication with a
    401. It must never let an exception other than ``AuthenticationError``
    escape for bad input. Optional members: ``async start()`` / ``async
    stop()`` (run with the host) and ``anonymous = True`` for providers that
    admit callers without proving who they are (they do not count as
    "authentication configured" for production).
    """

    name: str

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        """The principal these credentials prove, None if not this provider's kind."""
        ...


def hash_inputs(inputs: Any) -> str:
    """A stable SHA-256 of the inputs, for audit and idempotency (never the raw values)."""
    return hashlib.sha256(msgspec.json.encode(inputs, order="sorted")).hexdigest()


def new_token(prefix: str = "") -> str:
    """A new random token (256 bits) with a recognisable prefix (``nxk_``, ``nxc_``)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored (fine for high-entropy tokens)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
