"""JWT: every mutation of a valid token is refused; JWKS over a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from test_security import HS_SECRET, ec_key, make_app, public_pem, rsa_key

from nexus_core import AuthenticationError, Nexus
from nexus_core.security import Credentials

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example"
AUDIENCE = "nexus-api"
RS_KEY = rsa_key()
RS_KID = "rs-1"
OTHER_RS_KEY = rsa_key()
ES_KEY = ec_key()
ES_KID = "es-1"


# -- a real JWKS endpoint --------------------------------------------------------------------------


class JwksServer:
    """stdlib http.server in a thread on an ephemeral port, serving a mutable JWKS."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.status = 200
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def publish(self, *keys: tuple[Any, str, str]) -> None:
        """Serve these (private key, kid, alg) public halves."""
        self.keys = []
        for key, kid, alg in keys:
            algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish((RS_KEY, RS_KID, "RS256"), (ES_KEY, ES_KID, "ES256"))
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def jwt_security(jwks_url: str | None = None, **jwt_extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "keys": [
            {"algorithm": "HS256", "secret": HS_SECRET},  # no kid: a candidate for every HS256
            {"algorithm": "ES256", "kid": "es-static", "public_key": public_pem(ES_KEY)},
        ],
        "issuer": ISSUER,
        "audience": [AUDIENCE],
        "leeway": 10,
        "roles_claim": "groups",
        "tenant_claim": "org",
    }
    if jwks_url:
        table["jwks_url"] = jwks_url
    table.update(jwt_extra)
    return {
        "auth_enabled": True,
        "providers": ["jwt"],
        "roles": {"staff": ["workflow:*:execute"]},
    } | {"jwt": table}


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "groups": ["staff"],
        "org": "acme",
        "email": "alice@example.com",
    }
    base.update(extra)
    return base


#: How each algorithm's valid tokens are signed (key, kid header).
SIGNERS: dict[str, tuple[Any, str | None]] = {
    "RS256": (RS_KEY, RS_KID),
    "ES256": (ES_KEY, ES_KID),
    "HS256": (HS_SECRET, None),
}


def sign(alg: str, payload: dict[str, Any], *, key: Any = None, kid: Any = "default") -> str:
    signer, default_kid = SIGNERS[alg]
    headers = (
        {}
        if kid is None or (kid == "default" and default_kid is None)
        else {"kid": default_kid if kid == "default" else kid}
    )
    return jwt.encode(payload, signer if key is None else key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    head, body, sig = token.split(".")
    return json.loads(_unb64(head)), json.loads(_unb64(body)), _unb64(sig)


def _assemble(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


# -- the valid token works -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
async def test_valid_tokens_map_claims_to_the_principal(jwks: JwksServer, alg: str) -> None:
    app = make_app(security=jwt_security(jwks.url))
    async with app:
        token = sign(alg, claims())
        who = await app.security.authenticate(Credentials(bearer=token), "api")
        assert (who.id, who.tenant, who.roles, who.provider) == ("alice", "acme", ("staff",), "jwt")
        assert who.attributes["email"] == "alice@example.com"
        assert "sub" not in who.attributes and "groups" not in who.attributes
        assert who.scopes == ()  # OAuth scopes are not mapped unless scopes_claim is set
        result = await app.invoke("greet", {}, credentials=Credentials(bearer=token))
        assert result.status == "completed"
        [run] = await app.list_runs(tenant="acme")
        assert (run.principal, run.tenant) == ("alice", "acme")


async def test_static_es256_key_by_kid() -> None:
    app = make_app(security=jwt_security())
    async with app:
        token = sign("ES256", claims(), kid="es-static")
        assert (await app.security.authenticate(Credentials(bearer=token), "mcp")).id == "alice"


async def test_roles_as_a_space_separated_string_and_scopes_claim() -> None:
    app = make_app(security=jwt_security(scopes_claim="scope"))
    async with app:
        token = sign("HS256", claims(groups="staff extra", scope="workflow:greet:execute"))
        who = await app.security.authenticate(Credentials(bearer=token), "api")
        assert who.roles == ("staff", "extra") and who.scopes == ("workflow:greet:execute",)


# -- every mutation is refused, through app.invoke -------------------------------------------------

MUTATIONS = [
    "signature_bit",
    "signature_truncated",
    "signature_empty",
    "claim_changed",
    "header_alg_none",
    "header_alg_other",
    "hs256_with_public_key",
    "kid_unknown",
    "other_key_same_kid",
    "expired",
    "nbf_future",
    "iat_future",
    "wrong_issuer",
    "wrong_audience",
    "no_audience",
    "no_exp",
    "no_sub",
    "segment_byte",
]

CLAIM_CHANGES: list[dict[str, Any]] = [
    {"sub": "mallory"},
    {"groups": ["staff", "admin"]},
    {"org": "other-tenant"},
    {"exp": int(time.time()) + 10**6},
    {"aud": "something-else"},
]


def mutate(alg: str, mutation: str, data: st.DataObject) -> str:
    good = sign(alg, claims())
    header, payload, signature = _segments(good)
    now = int(time.time())
    if mutation == "signature_bit":
        index = data.draw(st.integers(0, len(signature) - 1), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        flipped = bytearray(signature)
        flipped[index] ^= 1 << bit
        head, body, _ = good.split(".")
        return f"{head}.{body}.{_b64(bytes(flipped))}"
    if mutation == "signature_truncated":
        cut = data.draw(st.integers(1, len(signature) - 1), label="cut")
        head, body, _ = good.split(".")
        return f"{head}.{body}.{_b64(signature[:cut])}"
    if mutation == "signature_empty":
        head, body, _ = good.split(".")
        return f"{head}.{body}."
    if mutation == "claim_changed":
        change = data.draw(st.sampled_from(CLAIM_CHANGES), label="change")
        return _assemble(header, {**payload, **change}, signature)
    if mutation == "header_alg_none":
        variant = data.draw(st.sampled_from(["none", "None", "NONE", "nOnE"]), label="alg")
        return _assemble({**header, "alg": variant}, payload, b"")
    if mutation == "header_alg_other":
        others = sorted({"RS256", "ES256", "HS256", "HS512", "RS512", "PS256", "EdDSA"} - {alg})
        other = data.draw(st.sampled_from(others), label="alg")
        return _assemble({**header, "alg": other}, payload, signature)
    if mutation == "hs256_with_public_key":
        # algorithm confusion: an HS256 token whose "secret" is the RSA/EC public key
        pem = public_pem(RS_KEY if alg != "ES256" else ES_KEY).encode()
        kid = data.draw(st.sampled_from([RS_KID, ES_KID, None]), label="kid")
        head = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
        return _hmac_signed(head, payload, pem)
    if mutation == "kid_unknown":
        kid = data.draw(st.text(min_size=1, max_size=12), label="kid")
        if alg == "HS256":  # the HS key has no kid, so any kid may use it: sign with another secret
            return _hmac_signed({**header, "kid": kid}, payload, b"y" * 40)
        return _assemble({**header, "kid": kid + "-x"}, payload, signature)
    if mutation == "other_key_same_kid":
        if alg == "RS256":
            return sign(alg, claims(), key=OTHER_RS_KEY)
        if alg == "ES256":
            return sign(alg, claims(), key=ec_key())
        return sign(alg, claims(), key="z" * 40)
    if mutation == "expired":
        age = data.draw(st.integers(11, 10**6), label="age")
        return sign(alg, claims(exp=now - age, iat=now - age - 60, nbf=now - age - 60))
    if mutation == "nbf_future":
        ahead = data.draw(st.integers(12, 10**6), label="ahead")
        return sign(alg, claims(nbf=now + ahead))
    if mutation == "iat_future":
        return sign(alg, claims(iat=now + data.draw(st.integers(60, 10**6), label="ahead")))
    if mutation == "wrong_issuer":
        iss = data.draw(st.sampled_from(["https://evil.example", ISSUER + "/", "", "idp"]))
        return sign(alg, claims(iss=iss))
    if mutation == "wrong_audience":
        aud = data.draw(st.sampled_from(["other", ["other"], AUDIENCE.upper(), ""]))
        return sign(alg, claims(aud=aud))
    if mutation == "no_audience":
        return sign(alg, {k: v for k, v in claims().items() if k != "aud"})
    if mutation == "no_exp":
        return sign(alg, {k: v for k, v in claims().items() if k != "exp"})
    if mutation == "no_sub":
        return sign(alg, {k: v for k, v in claims().items() if k != "sub"})
    assert mutation == "segment_byte"
    position = data.draw(st.integers(0, len(good) - 1), label="position")
    replacement = data.draw(st.sampled_from("AQgw_-.=+/x"), label="char")
    if good[position] == replacement:
        replacement = "B" if replacement != "B" else "C"
    return good[:position] + replacement + good[position + 1 :]


@pytest.fixture
async def jwt_app(jwks: JwksServer) -> Any:
    app = make_app(security=jwt_security(jwks.url))
    async with app:
        yield app


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    alg=st.sampled_from(sorted(SIGNERS)),
    mutation=st.sampled_from(MUTATIONS),
    data=st.data(),
)
async def test_every_mutation_of_a_valid_token_is_rejected(
    jwt_app: Nexus, alg: str, mutation: str, data: st.DataObject
) -> None:
    good = sign(alg, claims())
    assert (await jwt_app.security.authenticate(Credentials(bearer=good), "api")).id == "alice"
    token = mutate(alg, mutation, data)
    if token == good:
        return
    with pytest.raises(AuthenticationError):
        await jwt_app.invoke("greet", {}, credentials=Credentials(bearer=token), channel="api")


async def test_confusion_and_none_give_clear_reasons(jwt_app: Nexus) -> None:
    _, payload, _ = _segments(sign("RS256", claims()))
    none = _assemble({"alg": "none", "typ": "JWT"}, payload, b"")
    with pytest.raises(AuthenticationError, match="algorithm 'none' is not accepted"):
        await jwt_app.security.authenticate(Credentials(bearer=none), "api")
    confused = _hmac_signed({"alg": "HS256", "kid": RS_KID}, payload, public_pem(RS_KEY).encode())
    with pytest.raises(AuthenticationError, match="signature does not verify"):
        await jwt_app.security.authenticate(Credentials(bearer=confused), "api")
    expired = sign("RS256", claims(exp=int(time.time()) - 3600))
    with pytest.raises(AuthenticationError, match="expired"):
        await jwt_app.security.authenticate(Credentials(bearer=expired), "api")
    audit = await jwt_app.security.query_audit()
    assert audit == []  # authenticate() alone does not audit; invoke does


async def test_leeway_tolerates_small_clock_skew(jwt_app: Nexus) -> None:
    now = int(time.time())
    token = sign("RS256", claims(exp=now - 5, nbf=now + 5))  # within the 10 s leeway
    assert (await jwt_app.security.authenticate(Credentials(bearer=token), "api")).id == "alice"


# -- JWKS caching ----------------------------------------------------------------------------------


async def test_jwks_is_fetched_once_and_cached(jwks: JwksServer) -> None:
    app = make_app(security=jwt_security(jwks.url))
    async with app:
        assert jwks.requests == 1  # at start
        for _ in range(5):
            await app.security.authenticate(Credentials(bearer=sign("RS256", claims())), "api")
        assert jwks.requests == 1


async def test_unknown_kid_refetches_at_most_every_refresh_interval(jwks: JwksServer) -> None:
    app = make_app(security=jwt_security(jwks.url, jwks_refresh_interval=3600))
    async with app:
        assert jwks.requests == 1
        rotated = rsa_key()
        jwks.publish((rotated, "rs-2", "RS256"), (RS_KEY, RS_KID, "RS256"))
        # a new kid, but the last fetch was just now: no refetch yet
        with pytest.raises(AuthenticationError, match="no RS256 key"):
            await app.security.authenticate(
                Credentials(bearer=sign("RS256", claims(), key=rotated, kid="rs-2")), "api"
            )
        assert jwks.requests == 1
    fast = make_app(security=jwt_security(jwks.url, jwks_refresh_interval=0))
    async with fast:
        provider: Any = fast.security.provider("jwt")
        before = jwks.requests
        newer = rsa_key()
        jwks.publish((newer, "rs-3", "RS256"), (RS_KEY, RS_KID, "RS256"))
        token = sign("RS256", claims(), key=newer, kid="rs-3")
        assert (await fast.security.authenticate(Credentials(bearer=token), "api")).id == "alice"
        assert jwks.requests == before + 1
        # known kids do not refetch
        await fast.security.authenticate(Credentials(bearer=token), "api")
        assert jwks.requests == before + 1 and provider.fetches == 2


async def test_jwks_cache_ttl_expires(jwks: JwksServer) -> None:
    app = make_app(security=jwt_security(jwks.url, jwks_cache_ttl=0, jwks_refresh_interval=0))
    async with app:
        for _ in range(3):
            await app.security.authenticate(Credentials(bearer=sign("RS256", claims())), "api")
        assert jwks.requests == 4


async def test_jwks_down_keeps_cached_keys_and_refuses_unknown_ones(jwks: JwksServer) -> None:
    app = make_app(security=jwt_security(jwks.url, jwks_cache_ttl=0, jwks_refresh_interval=0))
    async with app:
        jwks.status = 503
        token = sign("RS256", claims())
        assert (await app.security.authenticate(Credentials(bearer=token), "api")).id == "alice"
    jwks.status = 503
    cold = make_app(security=jwt_security(jwks.url))
    async with cold:  # unreachable at start: logged, not fatal; tokens refused meanwhile
        with pytest.raises(AuthenticationError, match="cannot be fetched"):
            await cold.security.authenticate(Credentials(bearer=sign("RS256", claims())), "api")
        jwks.status = 200
        provider: Any = cold.security.provider("jwt")
        provider._tried_at = None  # let the next request retry at once
        token = sign("RS256", claims())
        assert (await cold.security.authenticate(Credentials(bearer=token), "api")).id == "alice"


async def test_jwks_keys_are_bound_to_their_algorithm(jwks: JwksServer) -> None:
    """An HS256 'oct' key in a JWKS is never used, and a key's alg must match the token's."""
    jwks.keys.append({"kty": "oct", "k": _b64(b"k" * 40), "kid": "hs-in-jwks", "alg": "HS256"})
    jwks.keys.append({**jwks.keys[0], "kid": "rs-as-es", "alg": "ES256"})
    app = make_app(security=jwt_security(jwks.url, keys=[]))
    async with app:
        _, payload, _ = _segments(sign("RS256", claims()))
        forged = _hmac_signed({"alg": "HS256", "kid": "hs-in-jwks"}, payload, b"k" * 40)
        with pytest.raises(AuthenticationError, match="no HS256 key"):
            await app.security.authenticate(Credentials(bearer=forged), "api")
        mislabelled = sign("RS256", claims(), kid="rs-as-es")
        with pytest.raises(AuthenticationError, match="no RS256 key"):
            await app.security.authenticate(Credentials(bearer=mislabelled), "api")


async def test_only_configured_jwks_algorithms(jwks: JwksServer) -> None:
    app = make_app(security=jwt_security(jwks.url, keys=[], jwks_algorithms=["RS256"]))
    async with app:
        with pytest.raises(AuthenticationError, match="no ES256 key"):
            await app.security.authenticate(Credentials(bearer=sign("ES256", claims())), "api")
        assert (
            await app.security.authenticate(Credentials(bearer=sign("RS256", claims())), "api")
        ).id == "alice"
