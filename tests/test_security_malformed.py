"""Malformed tokens and headers are a 401 with a reason, audited: never another exception."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_security import HS_SECRET, make_app, secured

from nexus_core import AuthenticationError, Nexus, RateLimited
from nexus_core.security import Credentials, Principal

pytestmark = pytest.mark.anyio

CLIENT = "198.51.100.7"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Any, claims: Any, *, raw_header: bytes | None = None) -> str:
    """A token signed with the right HS256 secret, whatever its header and claims say."""
    head = b64(raw_header if raw_header is not None else json.dumps(header).encode())
    body = b64(claims if isinstance(claims, bytes) else json.dumps(claims).encode())
    signing = f"{head}.{body}".encode()
    signature = hmac.new(HS_SECRET.encode(), signing, hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def jwt_app() -> Nexus:
    return make_app(
        security=secured(
            providers=["jwt", "api_key", "cli_token"],
            jwt={"keys": [{"algorithm": "HS256", "secret": HS_SECRET}]},
        )
    )


def good_claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ada", "roles": ["operator"], "exp": int(time.time()) + 600, **extra}


HEADER_CASES: dict[str, tuple[Any, str]] = {
    "crit": ({"alg": "HS256", "crit": ["exp"]}, "'crit'"),
    "crit-empty": ({"alg": "HS256", "crit": []}, "'crit'"),
    "crit-not-a-list": ({"alg": "HS256", "crit": "b64"}, "'crit'"),
    "b64": ({"alg": "HS256", "b64": False, "crit": ["b64"]}, "'crit'"),
    "kid-int": ({"alg": "HS256", "kid": 5}, "'kid' must be a string"),
    "kid-list": ({"alg": "HS256", "kid": ["a"]}, "'kid' must be a string"),
    "kid-huge": ({"alg": "HS256", "kid": "k" * 300}, "'kid' is over"),
    "header-huge": ({"alg": "HS256", "pad": "p" * 6000}, "over 4096 characters"),
    "jku": ({"alg": "HS256", "jku": "http://evil.example/jwks"}, "'jku'"),
    "x5u": ({"alg": "HS256", "x5u": "http://evil.example/cert"}, "'x5u'"),
    "x5c": ({"alg": "HS256", "x5c": ["MIIB"]}, "'x5c'"),
    "jwk": ({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}, "'jwk'"),
    "alg-none": ({"alg": "none"}, "is not accepted"),
    "alg-list": ({"alg": ["HS256"]}, "is not accepted"),
    "alg-int": ({"alg": 256}, "is not accepted"),
    "alg-missing": ({"typ": "JWT"}, "is not accepted"),
    "typ-int": ({"alg": "HS256", "typ": 7}, "'typ' must be a string"),
}

CLAIM_CASES: dict[str, tuple[Any, str]] = {
    "exp-text": (good_claims(exp="soon"), "invalid token"),
    "exp-huge-float": (good_claims(exp=1e400), "invalid token"),
    "iat-list": (good_claims(iat=[1]), "invalid token"),
    "nbf-null": (good_claims(nbf=None), "invalid token"),
    "sub-int": (good_claims(sub=7), "Subject must be a string"),
    "sub-missing": ({"roles": ["operator"], "exp": int(time.time()) + 600}, "'sub' claim"),
    "roles-dict": (good_claims(roles={"admin": True}), "'roles' claim"),
    "roles-mixed": (good_claims(roles=["operator", 1]), "'roles' claim"),
    "tenant-list": (good_claims(tenant=["a"]), "'tenant' claim"),
    "aud-int": (good_claims(aud=5), "audience"),
    "claims-array": ([1, 2], "invalid token"),
    "claims-string": ("x", "invalid token"),
    "claims-not-utf8": (b"\xff\xfe", "invalid token"),
    "claims-not-json": (b"{not json", "invalid token"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
async def test_a_refused_header_is_a_401_with_a_reason_and_audited(case: str) -> None:
    header, reason = HEADER_CASES[case]
    app = jwt_app()
    async with app:
        token = forge(header, good_claims())
        creds = Credentials(bearer=token, client=CLIENT)
        with pytest.raises(AuthenticationError, match=reason.replace("(", r"\(")) as caught:
            await app.invoke("greet", {"name": "x"}, credentials=creds)
        with pytest.raises(AuthenticationError):
            await app.security.authenticate(creds, "api", audit=True)
        records = await app.security.query_audit(principal="anonymous")
        assert [(r.action, r.outcome, r.reason) for r in records][:1] == [
            ("invoke", "unauthenticated", caught.value.message)
        ]
        assert sum(r.count for r in records) == 2  # the second counted with the first's window
        # and the host is fine: a good token still works
        ok = await app.invoke(
            "greet",
            {"name": "Ada"},
            credentials=Credentials(bearer=forge({"alg": "HS256", "typ": "JWT"}, good_claims())),
        )
        assert ok.status == "completed"


@pytest.mark.parametrize("case", sorted(CLAIM_CASES))
async def test_claims_of_the_wrong_type_are_a_401_with_a_reason(case: str) -> None:
    claims, reason = CLAIM_CASES[case]
    app = jwt_app()
    async with app:
        creds = Credentials(bearer=forge({"alg": "HS256"}, claims))
        with pytest.raises(AuthenticationError, match=reason) as caught:
            await app.security.authenticate(creds, "api", audit=True)
        [record] = await app.security.query_audit(principal="anonymous")
        assert (record.outcome, record.reason) == ("unauthenticated", caught.value.message)


@pytest.mark.parametrize(
    "bearer",
    [
        "a.b.c",
        "%%%.%%%.%%%",
        "..",
        b64(b"[1,2]") + ".e30.sig",
        b64(b"not json") + ".e30.sig",
        b64(b'{"alg": "HS256"') + ".e30.sig",
        "\u00e9\u00e9.\u00e9.\u00e9",
        "\ud800.x.y",
        "x" * 20_000,
        b64(json.dumps({"alg": "HS256", "pad": "p" * 6000}).encode()) + ".e30.sig",
    ],
    ids=[
        "not-base64",
        "symbols",
        "empty-segments",
        "header-array",
        "header-not-json",
        "header-truncated",
        "non-ascii",
        "lone-surrogate",
        "huge",
        "huge-header",
    ],
)
async def test_tokens_that_are_not_jwts_at_all_are_a_401(bearer: str) -> None:
    app = jwt_app()
    async with app:
        with pytest.raises(AuthenticationError) as caught:
            await app.security.authenticate(Credentials(bearer=bearer), "api")
        assert caught.value.message
        with pytest.raises(AuthenticationError):
            await app.security.authenticate(Credentials(api_key=bearer), "api")


async def test_a_provider_that_crashes_on_input_refuses_instead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plugin's provider raising anything but AuthenticationError is a 401, logged in one line."""
    from nexus_core import AuthProviderSpec, hookimpl

    class Fragile:
        name = "fragile"

        def __init__(self, app: Any, config: Any) -> None:
            pass

        async def authenticate(self, credentials: Credentials, channel: str) -> Principal | None:
            if credentials.bearer is None:
                return None
            return Principal(id=credentials.bearer.encode("ascii").decode())  # UnicodeEncodeError

    class Plugin:
        @hookimpl
        def nexus_auth_providers(self) -> list[AuthProviderSpec]:
            return [AuthProviderSpec(name="fragile", factory=Fragile)]

    app = make_app(security=secured(providers=["fragile"]), plugins=(Plugin(),))
    async with app:
        assert (await app.security.authenticate(Credentials(bearer="bob"), "api")).id == "bob"
        with pytest.raises(AuthenticationError, match=r"could not be verified \(fragile"):
            await app.security.authenticate(Credentials(bearer="b\u00f6b"), "api")
    assert "UnicodeEncodeError" in caplog.text and "Traceback" not in caplog.text


# -- property: whatever the header and claims, a principal or an AuthenticationError ---------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_names = st.sampled_from(
    ["alg", "kid", "typ", "crit", "jku", "x5u", "x5c", "jwk", "cty", "b64", "zip"]
)
claim_names = st.sampled_from(
    ["sub", "exp", "nbf", "iat", "aud", "iss", "roles", "tenant", "jti", "scope"]
)
headers = st.fixed_dictionaries(
    {"alg": st.one_of(st.just("HS256"), json_values)},
    optional={"kid": json_values, "typ": json_values},
).flatmap(
    lambda base: st.dictionaries(header_names, json_values, max_size=3).map(
        lambda extra: {**base, **extra}
    )
)
claims = st.one_of(
    st.dictionaries(claim_names, json_values, max_size=6),
    st.builds(
        lambda extra: {**good_claims(), **extra},
        st.dictionaries(claim_names, json_values, max_size=3),
    ),
    json_values,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(header=headers, body=claims)
async def test_fuzzed_headers_and_claims_never_escape_as_anything_else(
    header: Any, body: Any
) -> None:
    app = FUZZ_APP
    token = forge(header, body)
    provider = app.security.providers["jwt"]
    for attempt in (
        lambda: provider.authenticate(Credentials(bearer=token), "api"),
        lambda: app.security.authenticate(Credentials(bearer=token, client=CLIENT), "api"),
    ):
        refusal = ""
        try:
            who = await attempt()
        except AuthenticationError as exc:
            refusal = exc.message or "(no reason)"
        except RateLimited as exc:  # the fuzzer is one client failing a lot: the limit working
            refusal = exc.message
        if refusal:
            assert refusal != "(no reason)"
        else:
            assert who is None or (isinstance(who.id, str) and who.id)


FUZZ_APP: Nexus = jwt_app()


@pytest.fixture(autouse=True)
async def _fuzz_host(request: pytest.FixtureRequest) -> Any:
    if request.node.name.startswith("test_fuzzed"):
        async with FUZZ_APP:
            yield
    else:
        yield
