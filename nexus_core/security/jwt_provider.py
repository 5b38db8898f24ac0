"""``jwt``: bearer tokens signed by an identity provider (HS256, RS256, ES256), with PyJWT.

Keys are static (``nexus.services.security.jwt.keys``) or fetched from a JWKS
URL and cached. Each key is bound to exactly one algorithm when it is loaded,
and a token is only ever verified with keys bound to the algorithm its header
names, with that algorithm alone: ``alg: none`` and algorithm confusion (an
HS256 token "signed" with an RSA public key) find no key and are rejected.
``exp``, ``nbf`` and ``iat`` are checked with ``leeway``; ``iss`` and ``aud``
when configured (a token with an ``aud`` is refused when no audience is set).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..config import ConfigError, JwtConfig, JwtKeyConfig
from ..errors import AuthenticationError
from .principal import Credentials, Principal

if TYPE_CHECKING:
    from ..app import Nexus

__all__ = ["JWTProvider", "VerificationKey"]

log = logging.getLogger("nexus.security.jwt")

_KEY = "nexus.services.security.jwt"
_ALGORITHMS = frozenset({"HS256", "RS256", "ES256"})
_MIN_HMAC_BYTES = 32  # RFC 7518 section 3.2: at least the size of the hash output
_MIN_RSA_BITS = 2048


class VerificationKey:
    """A key bound to the one algorithm it may verify."""

    __slots__ = ("algorithm", "key", "kid", "source")

    def __init__(self, kid: str | None, algorithm: str, key: Any, source: str) -> None:
        self.kid = kid
        self.algorithm = algorithm
        self.key = key
        self.source = source

    def __repr__(self) -> str:
        return f"<VerificationKey kid={self.kid!r} alg={self.algorithm} from {self.source}>"


def _check_public_key(key: Any, algorithm: str, where: str) -> None:
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(f"{where}: RS256 needs an RSA public key", key=where)
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigError(
                f"{where}: the RSA key has {key.key_size} bits; {_MIN_RSA_BITS} at least",
                key=where,
            )
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        raise ConfigError(f"{where}: ES256 needs an EC P-256 public key", key=where)


def _load_static(index: int, config: JwtKeyConfig) -> VerificationKey:
    where = f"{_KEY}.keys[{index}]"
    alg = config.algorithm
    if alg == "HS256":
        if config.public_key or config.public_key_file:
            raise ConfigError(
                f"{where}: an HS256 key is a shared secret, not a public key", key=where
            )
        secret = config.secret
        if config.secret_env:
            if secret is not None:
                raise ConfigError(f"{where}: set secret or secret_env, not both", key=where)
            secret = os.environ.get(config.secret_env)
            if not secret:
                raise ConfigError(
                    f"{where}.secret_env: environment variable {config.secret_env} is not set",
                    key=f"{where}.secret_env",
                )
        if not secret:
            raise ConfigError(f"{where}: HS256 needs secret or secret_env", key=where)
        if len(secret.encode()) < _MIN_HMAC_BYTES:
            raise ConfigError(
                f"{where}: the HS256 secret is {len(secret.encode())} bytes; at least "
                f"{_MIN_HMAC_BYTES} random bytes are needed",
                key=where,
            )
        return VerificationKey(config.kid, alg, secret.encode(), where)
    if config.secret or config.secret_env:
        raise ConfigError(f"{where}: {alg} verifies with a public key, not a secret", key=where)
    pem = config.public_key
    if config.public_key_file:
        if pem:
            raise ConfigError(f"{where}: set public_key or public_key_file, not both", key=where)
        try:
            pem = Path(config.public_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{where}.public_key_file: cannot read {config.public_key_file}: {exc}",
                key=f"{where}.public_key_file",
            ) from exc
    if not pem:
        raise ConfigError(f"{where}: {alg} needs public_key or public_key_file", key=where)
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"{where}: not a PEM public key: {exc}", key=where) from exc
    _check_public_key(key, alg, where)
    return VerificationKey(config.kid, alg, key, where)


def _jwk_algorithm(jwk: dict[str, Any]) -> str | None:
    kty = jwk.get("kty")
    if kty == "RSA":
        return "RS256"
    if kty == "EC" and jwk.get("crv") == "P-256":
        return "ES256"
    return None  # "oct" (shared secrets) never come from a JWKS


class JWTProvider:
    """Verifies JWT bearer tokens and maps their claims to a principal."""

    name = "jwt"

    def __init__(self, app: Nexus, config: JwtConfig | None = None) -> None:
        self.app = app
        self.config = config = config or JwtConfig()
        self.static = tuple(_load_static(i, key) for i, key in enumerate(config.keys))
        if not self.static and not config.jwks_url:
            raise ConfigError(
                f"the jwt provider is enabled but has no key: set {_KEY}.keys or {_KEY}.jwks_url",
                key=_KEY,
            )
        if config.jwks_url is not None:
            url = httpx.URL(config.jwks_url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ConfigError(
                    f"{_KEY}.jwks_url: {config.jwks_url!r} is not an http(s) URL",
                    key=f"{_KEY}.jwks_url",
                )
            if not config.jwks_algorithms:
                raise ConfigError(
                    f"{_KEY}.jwks_algorithms: empty, so no JWKS key could ever be used",
                    key=f"{_KEY}.jwks_algorithms",
                )
        for name in ("jwks_cache_ttl", "jwks_refresh_interval", "jwks_timeout", "leeway"):
            if getattr(config, name) < 0:
                raise ConfigError(f"{_KEY}.{name}: must not be negative", key=f"{_KEY}.{name}")
        self._jwks: tuple[VerificationKey, ...] = ()
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._tried_at: float | None = None  # monotonic time of the last attempt
        self._lock = anyio.Lock()
        self._client: httpx.AsyncClient | None = None
        #: How many times the JWKS was fetched (for tests and metrics).
        self.fetches = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and fetch the JWKS once (a failure is logged, not fatal)."""
        if self.config.jwks_url is None:
            return
        self._client = httpx.AsyncClient(timeout=self.config.jwks_timeout)
        try:
            await self._refresh()
        except AuthenticationError as exc:
            log.warning(
                "JWKS %s not reachable at start (%s); JWT tokens signed by its keys are "
                "rejected until it is",
                self.config.jwks_url,
                exc.message,
            )

    async def stop(self) -> None:
        """Close the HTTP client."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- keys --------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Fetch the JWKS; raise AuthenticationError when it cannot be had."""
        url = self.config.jwks_url
        assert url is not None
        self._tried_at = time.monotonic()
        client = self._client
        if client is None:  # used without start(): a client for this call
            client = self._client = httpx.AsyncClient(timeout=self.config.jwks_timeout)
        try:
            response = await client.get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the JWKS from %s: %s", url, exc)
            raise AuthenticationError("the token's signing keys cannot be fetched now") from exc
        keys: list[VerificationKey] = []
        for jwk in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            alg = _jwk_algorithm(jwk)
            if alg is None or alg not in self.config.jwks_algorithms:
                continue
            if jwk.get("alg", alg) != alg:
                continue  # a key that says it is for another algorithm is not used for this one
            try:
                key = jwt.PyJWK(jwk, algorithm=alg).key
                _check_public_key(key, alg, "jwks")
            except (jwt.PyJWKError, jwt.InvalidKeyError, ConfigError, ValueError) as exc:
                log.warning("skipping a JWKS key (kid=%r): %s", jwk.get("kid"), exc)
                continue
            kid = jwk.get("kid")
            keys.append(VerificationKey(kid if isinstance(kid, str) else None, alg, key, url))
        self._jwks = tuple(keys)
        self._fetched_at = time.monotonic()
        self.fetches += 1

    async def _jwks_keys(self, kid: str | None) -> tuple[VerificationKey, ...]:
        config = self.config
        if config.jwks_url is None:
            return ()
        async with self._lock:
            now = time.monotonic()
            stale = self._fetched_at is None or now - self._fetched_at >= config.jwks_cache_ttl
            unknown = kid is not None and all(k.kid != kid for k in self._jwks)
            may_retry = (
                self._tried_at is None or now - self._tried_at >= config.jwks_refresh_interval
            )
            if (stale or unknown) and may_retry:
                try:
                    await self._refresh()
                except AuthenticationError:
                    if not self._jwks:
                        raise
                    # keep serving the cached keys while the JWKS is unreachable
            elif self._fetched_at is None:
                raise AuthenticationError("the token's signing keys cannot be fetched now")
        return self._jwks

    async def keys_for(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """The keys that may verify a token with this header: bound to ``alg``, matching ``kid``.

        Raises :class:`AuthenticationError` when there is none (saying so when
        the JWKS cannot be fetched).
        """
        unavailable: AuthenticationError | None = None
        try:
            fetched = await self._jwks_keys(kid)
        except AuthenticationError as exc:
            fetched, unavailable = (), exc
        keys = [
            k
            for k in (*self.static, *fetched)
            if k.algorithm == alg and (kid is None or k.kid is None or k.kid == kid)
        ]
        if not keys:
            if unavailable is not None:
                raise unavailable
            raise AuthenticationError(
                f"no {alg} key is configured for this token"
                + (f" (kid {kid[:64]!r})" if kid else "")
            )
        return keys

    # -- authentication ------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
        """The principal of a valid JWT; None for a bearer token that is no JWT.

        A token whose first segment is a JSON object is a JWT: from then on
        anything wrong with it (a header this provider does not accept, a
        signature, a claim of the wrong type) is an :class:`AuthenticationError`
        with the reason, never another exception.
        """
        token = credentials.bearer
        if not token or token.count(".") != 2:
            return None
        header = _header(token)
        if header is None:
            return None  # not a JWT: another provider's token
        alg, kid = _check_header(header)
        keys = await self.keys_for(kid, alg)
        try:
            claims = self._verify(token, keys)
            return self._principal(claims)
        except AuthenticationError:
            raise
        except Exception as exc:  # PyJWT on input it did not expect: refuse, never crash
            raise AuthenticationError(f"invalid token: {type(exc).__name__}") from exc

    def _verify(self, token: str, keys: list[VerificationKey]) -> dict[str, Any]:
        config = self.config
        error: Exception | None = None
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=config.audience or None,
                    issuer=config.issuer,
                    leeway=config.leeway,
                    options={"require": list(config.required_claims), "strict_aud": False},
                )
            except jwt.InvalidSignatureError as exc:
                error = exc  # maybe another key with the same kid/alg
                continue
            except jwt.ExpiredSignatureError as exc:
                raise AuthenticationError("the token has expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise AuthenticationError("the token is not valid yet") from exc
            except jwt.InvalidIssuerError as exc:
                raise AuthenticationError("the token was issued by another issuer") from exc
            except jwt.InvalidAudienceError as exc:
                raise AuthenticationError("the token is meant for another audience") from exc
            except jwt.MissingRequiredClaimError as exc:
                raise AuthenticationError(f"the token lacks the {exc.claim!r} claim") from exc
            except jwt.InvalidTokenError as exc:
                raise AuthenticationError(f"invalid token: {exc}") from exc
            return claims
        raise AuthenticationError("the token's signature does not verify") from error

    def _principal(self, claims: dict[str, Any]) -> Principal:
        config = self.config
        subject = claims.get(config.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError(f"the token has no {config.subject_claim!r} claim")
        tenant = claims.get(config.tenant_claim)
        if tenant is not None and not isinstance(tenant, str):
            raise AuthenticationError(f"the token's {config.tenant_claim!r} claim is not a string")
        taken = {config.subject_claim, config.roles_claim, config.tenant_claim}
        scopes: tuple[str, ...] = ()
        if config.scopes_claim is not None:
            taken.add(config.scopes_claim)
            scopes = _strings(claims.get(config.scopes_claim), config.scopes_claim)
        return Principal(
            id=subject,
            tenant=tenant or config.default_tenant,
            roles=_strings(claims.get(config.roles_claim), config.roles_claim),
            scopes=scopes,
            attributes={k: v for k, v in claims.items() if k not in taken},
            provider=self.name,
            expires_at=_expiry(claims.get("exp")),
        )


#: Header parameters refused outright: keys named by the token itself (we only ever
#: use configured keys), and extensions this provider does not implement.
_REFUSED_HEADERS = {
    "crit": "critical extensions ('crit') are not supported",
    "jku": "a key URL in the token ('jku') is not accepted: keys are configured",
    "x5u": "a certificate URL in the token ('x5u') is not accepted: keys are configured",
    "x5c": "a certificate chain in the token ('x5c') is not accepted",
    "jwk": "a key embedded in the token ('jwk') is not accepted",
    "b64": "unencoded payloads ('b64') are not supported",
}
_MAX_KID = 256
_MAX_HEADER_CHARS = 4096


def _header(token: str) -> dict[str, Any] | None:
    """The token's JOSE header, or None when the first segment is not a JSON object."""
    segment = token.partition(".")[0]
    if len(segment) > _MAX_HEADER_CHARS:
        raise AuthenticationError(f"invalid token header: over {_MAX_HEADER_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, TypeError, RecursionError):  # bad base64 or JSON: not a JWT
        return None
    return header if isinstance(header, dict) else None


def _check_header(header: dict[str, Any]) -> tuple[str, str | None]:
    """The header's ``alg`` and ``kid``; :class:`AuthenticationError` for anything refused."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        shown = alg[:20] if isinstance(alg, str) else type(alg).__name__
        raise AuthenticationError(f"token algorithm {shown!r} is not accepted")
    for name, reason in _REFUSED_HEADERS.items():
        if name in header:
            raise AuthenticationError(f"invalid token header: {reason}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthenticationError("invalid token header: 'kid' must be a string")
    if kid is not None and len(kid) > _MAX_KID:
        raise AuthenticationError(f"invalid token header: 'kid' is over {_MAX_KID} characters")
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise AuthenticationError("invalid token header: 'typ' must be a string")
    return alg, kid


def _expiry(value: Any) -> float | None:
    """The ``exp`` claim as seconds since the epoch (PyJWT has checked it is a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _strings(value: Any, claim: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthenticationError(f"the token's {claim!r} claim is not a list of strings")
