"""The auth provider contract suite: every provider (built in or a plugin's) runs it.

A provider plugin reuses it with a few lines in its own tests::

    import pytest
    from nexus_core.security import Credentials
    from nexus_core.testing.auth import AuthProviderContract


    class TestMyProvider(AuthProviderContract):
        provider_name = "my_sso"  # as listed in nexus.services.security.providers

        def plugins(self):
            return [my_plugin]  # the object (or module name) implementing nexus_auth_providers

        def security_config(self):
            return {}  # more keys of nexus.services.security, if the provider needs them

        async def valid_credentials(self, app):
            return [(Credentials(bearer=await mint_a_token("alice")), "alice")]

        async def invalid_credentials(self, app):
            return [Credentials(bearer=mint_an_expired_token("alice"))]

The suite builds a running host (``memory://`` storage, authentication on,
the provider enabled alone, ``default_roles`` allowing every workflow) with
one workflow, ``echo``, and checks through the provider itself,
``app.security.authenticate`` and ``app.invoke``:

* valid credentials give a :class:`~nexus_core.security.Principal` with the
  expected id, a tenant, and the provider's name; they run a workflow, and the
  audit record names that principal;
* invalid credentials (the provider's kind, but bad) raise
  :class:`~nexus_core.errors.AuthenticationError`, never another exception,
  with a message that does not echo the secret; ``invoke`` audits the failure;
* credentials of another kind (:meth:`~AuthProviderContract.foreign_credentials`)
  and no credentials at all give ``None`` (unless :attr:`accepts_no_credentials`);
* random junk (hypothesis) is ``None`` or ``AuthenticationError``, never a
  principal and never another exception;
* concurrent calls agree.

Needs pytest, anyio's pytest plugin and hypothesis: ``pip install nexus-core[test]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..app import Nexus
from ..errors import AuthenticationError
from ..security import AuthProvider, Credentials, Principal

__all__ = ["AuthProviderContract"]

_JUNK = st.text(min_size=1, max_size=200) | st.sampled_from(
    [
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "Bearer x",
        "nxk_",
        "nxc_",
        "nxk_" + "A" * 43,
        "nxc_" + "A" * 43,
        "null",
        "\x00",
        "é" * 10,
    ]
)

# One host serves every example: it is not changed by authenticating.
_JUNK_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class AuthProviderContract:
    """Mix into a ``Test*`` class; set :attr:`provider_name` and override the hooks below."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: The provider's name, as listed in ``nexus.services.security.providers``.
    provider_name: ClassVar[str] = ""
    #: True for providers that admit callers without credentials (``anonymous``).
    accepts_no_credentials: ClassVar[bool] = False

    # -- what a provider's test class supplies --------------------------------------------

    def plugins(self) -> list[object]:
        """Plugins to load: the one contributing the provider (none for built-in ones)."""
        return []

    def security_config(self) -> dict[str, Any]:
        """Extra keys of ``nexus.services.security`` (the provider's own table, roles...)."""
        return {}

    async def valid_credentials(self, app: Nexus) -> list[tuple[Credentials, str]]:
        """Credentials the provider accepts, each with the principal id it must yield."""
        pytest.skip("define valid_credentials() to run this test")

    async def invalid_credentials(self, app: Nexus) -> list[Credentials]:
        """Credentials of the provider's kind that it must refuse (expired, revoked, forged...)."""
        return []

    async def foreign_credentials(self, app: Nexus) -> list[Credentials]:
        """Credentials that are not the provider's kind at all: it must return None."""
        return [Credentials(bearer="not-a-token-of-any-kind")]

    # -- fixtures ---------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The async library the tests run on."""
        return "asyncio"

    @pytest.fixture
    async def app(self) -> AsyncIterator[Nexus]:
        """A running host with the provider enabled alone and authentication on."""
        security: dict[str, Any] = {
            "auth_enabled": True,
            "providers": [self.provider_name],
            "roles": {"contract": ["workflow:*:execute", "runs:read"]},
            "default_roles": ["contract"],
        }
        security.update(self.security_config())
        host = Nexus(
            "auth-contract",
            config={"services": {"security": security}},
            storage="memory://",
            plugins=self.plugins(),
            autoload=False,
            env={},
        )

        @host.workflow
        def echo(text: str = "hi") -> str:
            """Say it back."""
            return text

        async with host:
            yield host

    @pytest.fixture
    def provider(self, app: Nexus) -> AuthProvider:
        """The provider object the host built."""
        return app.security.provider(self.provider_name)

    # -- the contract -------------------------------------------------------------------------

    async def test_is_an_auth_provider(self, provider: AuthProvider) -> None:
        """It has a ``name`` and an ``authenticate`` coroutine (:class:`AuthProvider`)."""
        assert self.provider_name, "set provider_name on the test class"
        assert isinstance(provider, AuthProvider)
        assert isinstance(provider.name, str)
        assert provider.name

    async def test_valid_credentials_give_the_principal(
        self, app: Nexus, provider: AuthProvider
    ) -> None:
        """Valid credentials give a principal: the expected id, a tenant, the provider's name."""
        for credentials, expected in await self.valid_credentials(app):
            direct = await provider.authenticate(credentials, "test")
            assert isinstance(direct, Principal), f"{credentials!r} gave {direct!r}"
            assert direct.id == expected
            assert isinstance(direct.tenant, str)
            assert direct.tenant
            who = await app.security.authenticate(credentials, "test")
            assert who.id == expected
            assert who.provider == (direct.provider or self.provider_name)
            assert not who.anonymous or self.accepts_no_credentials

    async def test_valid_credentials_run_a_workflow_and_are_audited(self, app: Nexus) -> None:
        """``invoke`` with valid credentials runs; the audit record names the principal."""
        for credentials, expected in await self.valid_credentials(app):
            result = await app.invoke("echo", {"text": "x"}, credentials=credentials, channel="t")
            assert result.status == "completed", result
            records = await app.security.query_audit(principal=expected, workflow="echo")
            assert records
            assert records[-1].run_id == result.run_id
            assert records[-1].outcome == "completed"

    async def test_invalid_credentials_are_refused(
        self, app: Nexus, provider: AuthProvider
    ) -> None:
        """Its kind but invalid: ``AuthenticationError`` (not echoing the secret), then audited."""
        for credentials in await self.invalid_credentials(app):
            with pytest.raises(AuthenticationError) as info:
                await provider.authenticate(credentials, "test")
            for secret in (credentials.bearer, credentials.api_key):
                if secret and len(secret) >= 8:
                    assert secret not in info.value.message
            before = len(await app.security.query_audit(limit=10_000))
            with pytest.raises(AuthenticationError):
                await app.invoke("echo", {}, credentials=credentials, channel="t")
            after = await app.security.query_audit(limit=10_000)
            assert len(after) == before + 1
            assert after[-1].outcome == AuthenticationError.code

    async def test_foreign_credentials_are_not_its_own(
        self, app: Nexus, provider: AuthProvider
    ) -> None:
        """Credentials of another kind give None (the next provider would be tried)."""
        for credentials in await self.foreign_credentials(app):
            assert await provider.authenticate(credentials, "test") is None

    async def test_no_credentials(self, app: Nexus, provider: AuthProvider) -> None:
        """No credentials give None (or a principal, for providers that admit anonymous callers)."""
        got = await provider.authenticate(Credentials(client="203.0.113.9"), "test")
        if self.accepts_no_credentials:
            assert isinstance(got, Principal)
        else:
            assert got is None
            with pytest.raises(AuthenticationError):
                await app.invoke("echo", {}, channel="t")

    @_JUNK_SETTINGS
    @given(token=_JUNK, as_key=st.booleans())
    async def test_junk_is_never_a_principal(
        self, app: Nexus, provider: AuthProvider, token: str, as_key: bool
    ) -> None:
        """Random tokens and keys: None or AuthenticationError, never a principal or a crash."""
        valid = {c.bearer or c.api_key for c, _ in await self._valid_or_none(app)}
        if token in valid:
            return
        credentials = Credentials(api_key=token) if as_key else Credentials(bearer=token)
        try:
            got = await provider.authenticate(credentials, "test")
        except AuthenticationError:
            return
        assert got is None, f"{credentials!r} gave {got!r}"

    async def _valid_or_none(self, app: Nexus) -> list[tuple[Credentials, str]]:
        try:
            return await self.valid_credentials(app)
        except pytest.skip.Exception:
            return []

    async def test_concurrent_calls_agree(self, app: Nexus, provider: AuthProvider) -> None:
        """Many concurrent authentications of the same credentials give the same principal."""
        pairs = await self.valid_credentials(app)
        results: list[str] = []

        async def one(credentials: Credentials) -> None:
            principal = await app.security.authenticate(credentials, "test")
            results.append(principal.id)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                for credentials, _expected in pairs:
                    tg.start_soon(one, credentials)
        assert sorted(results) == sorted(expected for _ in range(10) for _, expected in pairs)
