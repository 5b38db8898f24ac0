"""Security: development defaults, honest switches; helpers for the other test_security_* files."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nexus_core import AuthenticationError, Nexus, PermissionDenied
from nexus_core.config import ConfigError
from nexus_core.security import ANONYMOUS, Credentials, Principal
from nexus_core.sessions import Session

pytestmark = pytest.mark.anyio

HS_SECRET = "s" * 16 + "0123456789abcdef-very-secret"  # 44 bytes


def make_app(
    storage: str = "memory://",
    *,
    security: dict[str, Any] | None = None,
    environment: str = "development",
    plugins: tuple[object, ...] = (),
) -> Nexus:
    """A host with a few workflows; ``security`` is the nexus.services.security table."""
    # Tests leave long runs behind on purpose: stop without waiting for them.
    config: dict[str, Any] = {
        "environment": environment,
        "services": {"runs": {"shutdown_grace": 0}},
    }
    if security is not None:
        config["services"]["security"] = security
    app = Nexus("sec", storage=storage, config=config, autoload=False, env={}, plugins=plugins)

    @app.workflow
    def greet(name: str = "you") -> str:
        """Greet someone."""
        return f"Hello, {name}."

    @app.workflow
    def add(a: int = 1, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    @app.workflow
    def report(amount: float = 0.0, region: str = "eu") -> str:
        """Report an amount."""
        return f"{region}:{amount}"

    @app.workflow
    async def nap(seconds: float = 0.0) -> str:
        """Sleep a while."""
        import anyio

        await anyio.sleep(seconds)
        return "rested"

    @app.workflow
    def visit(session: Session, page: str = "home") -> list[str]:
        """Remember the pages of a session."""
        seen = [*session.state.get("pages", []), page]
        session.state["pages"] = seen
        return seen

    return app


def secured(**extra: Any) -> dict[str, Any]:
    """Authentication on with API keys, and an 'operator' role that may do everything."""
    table: dict[str, Any] = {
        "auth_enabled": True,
        "providers": ["api_key"],
        "roles": {
            "operator": ["workflow:*:execute", "runs:read", "runs:cancel", "events:read"],
            "admin": ["admin"],
            "greeter": ["workflow:greet:execute"],
        },
    }
    table.update(extra)
    return table


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# -- development: auth off ---------------------------------------------------------------


async def test_development_callers_without_credentials_are_anonymous_and_allowed() -> None:
    app = make_app()
    async with app:
        assert app.security.auth_required is False
        assert await app.security.authenticate(None, "api") is ANONYMOUS
        assert await app.security.authenticate(Credentials(client="1.2.3.4"), "api") is ANONYMOUS
        result = await app.invoke("greet", {"name": "Ada"})
        assert result.status == "completed"
        assert [wf.name for wf in await app.visible_workflows()] == sorted(app.workflows)
        await app.security.authorize(ANONYMOUS, "admin")  # nothing is enforced


async def test_development_still_refuses_bad_credentials() -> None:
    """Presented credentials are verified even with auth off: a bad token is a 401 everywhere."""
    app = make_app(security={"providers": ["api_key"]})
    async with app:
        for creds in (Credentials(api_key="wrong"), Credentials(bearer="nxk_forged")):
            with pytest.raises(AuthenticationError, match="unknown API key"):
                await app.invoke("greet", {}, credentials=creds)
        with pytest.raises(AuthenticationError, match="not accepted by any auth provider"):
            await app.invoke("greet", {}, credentials=Credentials(bearer="some.jwt.like"))
        records = await app.security.query_audit(workflow="greet")
        assert [r.outcome for r in records] == ["unauthenticated"] * 3
    bare = make_app()
    async with bare:
        with pytest.raises(AuthenticationError, match=r"\(none is enabled\)"):
            await bare.invoke("greet", {}, credentials=Credentials(bearer="anything"))


async def test_auth_on_requires_credentials() -> None:
    app = make_app(security=secured())
    async with app:
        with pytest.raises(AuthenticationError, match="authentication required"):
            await app.invoke("greet", {})
        with pytest.raises(AuthenticationError):
            await app.security.authenticate(Credentials(client="1.2.3.4"), "api", audit=True)
        # invoke records its failure; a channel's own call with audit=True records one too
        records = await app.security.query_audit(principal="anonymous")
        assert [(r.action, r.outcome) for r in records] == [
            ("invoke", "unauthenticated"),
            ("authenticate", "unauthenticated"),
        ]


async def test_anonymous_provider_gives_configured_roles() -> None:
    app = make_app(
        security=secured(
            providers=["api_key", "anonymous"],
            roles={"public": ["workflow:greet:execute"], "operator": ["admin"]},
            anonymous={"roles": ["public"], "tenant": "web"},
        )
    )
    async with app:
        who = await app.security.authenticate(None, "api")
        assert (who.id, who.tenant, who.roles, who.anonymous) == (
            "anonymous",
            "web",
            ("public",),
            True,
        )
        assert (await app.invoke("greet", {})).status == "completed"
        with pytest.raises(PermissionDenied):
            await app.invoke("add", {})
        assert [wf.name for wf in await app.visible_workflows(who)] == ["greet"]
        # the anonymous provider never claims presented credentials
        with pytest.raises(AuthenticationError):
            await app.invoke("greet", {}, credentials=Credentials(api_key="nope"))
        assert app.security.auth_configured is True  # api_key is a real provider


async def test_scopes_narrow_whatever_the_roles_say() -> None:
    app = make_app(security=secured())
    async with app:
        key, _ = await app.security.issue_api_key(
            "ci", roles=["admin"], scopes=["workflow:greet:execute"]
        )
        creds = Credentials(api_key=key)
        assert (await app.invoke("greet", {}, credentials=creds)).status == "completed"
        with pytest.raises(PermissionDenied, match="outside the scopes"):
            await app.invoke("add", {}, credentials=creds)


async def test_custom_security_layer_subclass_still_works() -> None:
    """Channels' test apps replace app.security with a subclass; the host keeps it."""
    from nexus_core.security import SecurityLayer

    class Fixed(SecurityLayer):
        async def authenticate(self, credentials: Any, channel: str, **_: Any) -> Principal:
            return Principal(id="fixed")

    app = make_app()
    app.security = Fixed(app)
    async with app:
        result = await app.invoke("greet", {})
        [run] = await app.list_runs()
        assert (result.status, run.principal) == ("completed", "fixed")


# -- honest switches -------------------------------------------------------------------------


async def _start(app: Nexus) -> None:
    async with app:
        pass


@pytest.mark.parametrize(
    ("security", "environment", "message"),
    [
        (
            {"providers": ["api_kye"]},
            "development",
            r"no auth provider 'api_kye'.*did you mean 'api_key'",
        ),
        ({"providers": ["api_key", "api_key"]}, "development", "listed twice"),
        ({"providers": ["jwt"]}, "development", "jwt provider is enabled but has no key"),
        (
            {"providers": ["jwt"], "jwt": {"keys": [{"algorithm": "HS256", "secret": "short"}]}},
            "development",
            "at least 32 random bytes",
        ),
        (
            {"providers": ["jwt"], "jwt": {"keys": [{"algorithm": "RS256", "secret": HS_SECRET}]}},
            "development",
            "RS256 verifies with a public key, not a secret",
        ),
        (
            {"providers": ["jwt"], "jwt": {"keys": [{"algorithm": "HS256"}]}},
            "development",
            "HS256 needs secret or secret_env",
        ),
        (
            {
                "providers": ["jwt"],
                "jwt": {"keys": [{"algorithm": "HS256", "secret_env": "NOPE_X"}]},
            },
            "development",
            "NOPE_X is not set",
        ),
        (
            {"providers": ["jwt"], "jwt": {"keys": [{"algorithm": "ES256", "public_key": "x"}]}},
            "development",
            "not a PEM public key",
        ),
        (
            {"providers": ["jwt"], "jwt": {"jwks_url": "ftp://idp.example/keys"}},
            "development",
            "not an http",
        ),
        ({"auth_enabled": True}, "development", "no auth provider is enabled"),
        ({}, "staging", "no auth provider is enabled"),
        ({"auth_enabled": True, "providers": ["api_key"]}, "development", "roles is empty"),
        (
            {"auth_enabled": True, "providers": ["api_key"], "strategy": "abac"},
            "development",
            "no .*policies rule allows anything",
        ),
        (
            {"auth_enabled": True, "providers": ["api_key"], "strategy": "hybrid"},
            "development",
            "neither .*roles nor an 'allow' policy",
        ),
        ({"policies": [{"effect": "allow"}]}, "development", "strategy is 'rbac', which ignores"),
        ({"strategy": "abac", "roles": {"a": ["admin"]}}, "development", "'abac', which ignores"),
        (
            {"roles": {"a": ["admin"]}, "default_roles": ["b"]},
            "development",
            "role 'b' is not defined",
        ),
        (
            {
                "strategy": "abac",
                "policies": [{"effect": "allow", "conditions": [{"attribute": "colour"}]}],
            },
            "development",
            r"policies\[0\]\.conditions\[0\]\.attribute: unknown attribute 'colour'",
        ),
        (
            {
                "strategy": "abac",
                "policies": [
                    {"effect": "allow", "conditions": [{"attribute": "channel", "op": "in"}]}
                ],
            },
            "development",
            "'in' needs a list",
        ),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "development", r"trusted_proxies\[0\]"),
        ({"timezone": "Mars/Olympus"}, "development", "unknown time zone"),
        (
            {"rate_limits": {"per_client": {"requests": 0.5}}},
            "development",
            "can never pay for one request",
        ),
        (
            {"providers": ["api_key", "cli_token"], "cli_token": {"prefix": "nxk_cli_"}},
            "development",
            "distinct prefixes",
        ),
        (
            {"providers": ["api_key"], "api_key": {"keys": [{"principal": "x", "sha256": "abc"}]}},
            "development",
            "64 lowercase hex digits",
        ),
    ],
)
async def test_settings_that_cannot_work_stop_the_start(
    security: dict[str, Any], environment: str, message: str
) -> None:
    app = make_app(security=security, environment=environment)
    with pytest.raises(ConfigError, match=message) as info:
        await _start(app)
    assert info.value.key is not None and info.value.key.startswith("nexus.services.security")
    assert app.storage is None  # nothing was left open


async def test_production_needs_a_real_provider(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    only_anonymous = make_app(
        url,
        environment="production",
        security={"providers": ["anonymous"], "roles": {"anonymous": ["workflow:greet:execute"]}},
    )
    with pytest.raises(ConfigError, match="no authentication is configured"):
        await _start(only_anonymous)
    real = make_app(url, environment="production", security=secured())
    async with real:
        assert real.security.auth_configured and real.security.auth_required


async def test_settings_of_a_disabled_provider_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sha = hashlib.sha256(b"k").hexdigest()
    app = make_app(security={"api_key": {"keys": [{"principal": "x", "sha256": sha}]}})
    with caplog.at_level(logging.WARNING, logger="nexus.security"):
        await _start(app)
    assert "api_key is set but the 'api_key' provider is not enabled" in caplog.text


async def test_issuing_for_a_disabled_provider_is_an_error() -> None:
    app = make_app()
    async with app:
        with pytest.raises(ConfigError, match="'api_key' auth provider is not enabled"):
            await app.security.issue_api_key("alice")
        with pytest.raises(ConfigError, match="'cli_token' auth provider is not enabled"):
            await app.security.issue_cli_token("alice")


async def test_a_broken_provider_plugin_is_reported_with_its_name() -> None:
    from nexus_core import AuthProviderSpec, hookimpl

    class Plugin:
        @hookimpl
        def nexus_auth_providers(self) -> list[AuthProviderSpec]:
            return [AuthProviderSpec(name="broken", factory=_broken_factory)]

    app = make_app(security={"providers": ["broken"]}, plugins=(Plugin(),))
    with pytest.raises(
        ConfigError, match=r"auth provider 'broken' of plugin .* RuntimeError: nope"
    ):
        await _start(app)


def _broken_factory(app: Any, config: Any) -> Any:
    raise RuntimeError("nope")
