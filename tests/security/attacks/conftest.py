"""A secured gateway to attack: the deployment docs/how-to/secure-a-deployment.md describes.

The ``secured`` fixture (one per test module) serves ``secured_app.py`` with
``python -m nexus_plugin_api`` on a free port, in ``staging`` with JWT (HS256
and RS256), API keys and CLI tokens, two tenants (``acme``, ``globex``), six
roles, the how-to's two ABAC rules on ``refund`` and a rate limit generous
enough for the suite. Tests attack it from outside and then check
:meth:`SecuredGateway.assert_healthy`.

What a test gets::

    secured.url                      # http://127.0.0.1:PORT
    secured.key("operator")          # an API key of a role, tenant acme
    secured.key("operator", tenant="globex")
    secured.key("support-lead")      # role support with attribute level=lead
    secured.key("support-agent")     # level=agent; "support-nolevel": no level at all
    secured.jwt("ann", roles=["operator"], ttl=60)        # HS256
    secured.jwt("ann", algorithm="RS256", tenant="globex")
    secured.issue("eve", roles=["operator"], ttl=30)      # a fresh key, for tests that revoke
    secured.revoke(issued.id)        # revoke an issued credential now
    secured.audit(principal="eve")   # audit records, flushed
    secured.env                      # environment for subprocesses (CLI, MCP stdio)
    secured.config                   # the configuration written, as a dict

A module that needs other settings (the doc's exact rate limits, a short
``recheck_interval``) overrides the ``secured_overrides`` fixture with a dict
deep-merged into the configuration. Credentials are issued through the core
(``app.security``) by a control host on the same database, whose own
``instance_id`` keeps it from touching the gateway's runs.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cross.cross_support import Gateway, base_env, gateway, require_plugins

HERE = Path(__file__).resolve().parent
APP = HERE / "secured_app.py"
TENANTS = ("acme", "globex")
HS256_SECRET = "attack-suite-hs256-secret-of-more-than-32-bytes"
RS256_KID = "attack-rs256"

#: Six roles, as in the how-to, plus what the attack tests need to name.
ROLES: dict[str, list[str]] = {
    "admin": ["admin"],
    "operator": [
        "workflow:*:execute",
        "runs:read",
        "runs:cancel",
        "events:read",
        "sessions:admin",
        "tokens:*",
    ],
    "support": ["workflow:greet:execute", "workflow:refund:execute", "events:read", "tokens:*"],
    "viewer": ["runs:read", "events:read"],
    "auditor": ["audit:read"],
    "guest": ["workflow:greet:execute"],
}

#: The named keys issued before the gateway starts: name -> (role, attributes).
NAMED_KEYS: dict[str, tuple[str, dict[str, Any]]] = {
    **{role: (role, {}) for role in ROLES},
    "support-lead": ("support", {"level": "lead"}),
    "support-agent": ("support", {"level": "agent"}),
    "support-nolevel": ("support", {}),
}

T = TypeVar("T")


def _config(workdir: Path, rs256_public: Path) -> dict[str, Any]:
    return {
        "nexus": {
            "environment": "staging",
            "storage": f"sqlite:///{workdir / 'nexus.db'}",
            "services": {
                "security": {
                    "providers": ["jwt", "api_key", "cli_token"],
                    "strategy": "hybrid",
                    "roles": ROLES,
                    "jwt": {
                        "keys": [
                            {"algorithm": "HS256", "secret": HS256_SECRET},
                            {
                                "algorithm": "RS256",
                                "kid": RS256_KID,
                                "public_key_file": str(rs256_public),
                            },
                        ],
                        "roles_claim": "roles",
                        "tenant_claim": "tenant",
                    },
                    "policies": [
                        {
                            "description": "big refunds need a team lead",
                            "effect": "deny",
                            "actions": ["workflow:refund:execute"],
                            "conditions": [
                                {"attribute": "input.amount", "op": "gt", "value": 500},
                                {"attribute": "principal.level", "op": "ne", "value": "lead"},
                            ],
                        },
                        {
                            "description": "no refunds through the AI agent channel",
                            "effect": "deny",
                            "actions": ["workflow:refund:execute"],
                            "conditions": [{"attribute": "channel", "op": "eq", "value": "mcp"}],
                        },
                    ],
                    "rate_limits": {
                        "per_principal": {"requests": 100_000, "per": 60},
                        "per_client": {"requests": 100_000, "per": 60},
                    },
                }
            },
        }
    }


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on an event loop of its own, in a thread: callable from sync or async tests."""
    import anyio

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, work).result()


@dataclass(frozen=True)
class Issued:
    """A credential issued for a test: the token to send and the record's id to revoke it by."""

    token: str
    id: str
    principal: str
    tenant: str


@dataclass
class SecuredGateway:
    """The running secured gateway and what a test needs to attack it."""

    gateway: Gateway
    workdir: Path
    env: dict[str, str]
    config: dict[str, Any]
    keys: dict[tuple[str, str], Issued] = field(default_factory=dict)
    _rs256_private: bytes = b""

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.gateway.url

    @property
    def ws_url(self) -> str:
        """The gateway's base URL for WebSockets."""
        return "ws" + self.gateway.url.removeprefix("http")

    def key(self, name: str, *, tenant: str = "acme") -> str:
        """The API key issued before start for ``name`` (a role or a NAMED_KEYS entry)."""
        return self.keys[(name, tenant)].token

    def jwt(
        self,
        subject: str,
        *,
        roles: list[str] | tuple[str, ...] = ("operator",),
        tenant: str = "acme",
        ttl: float = 300,
        algorithm: str = "HS256",
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A JWT the gateway accepts (unless ``ttl``, headers or claims say otherwise)."""
        import jwt as pyjwt

        now = time.time()
        payload = {
            "sub": subject,
            "roles": list(roles),
            "tenant": tenant,
            "iat": int(now),
            "exp": int(now + ttl),
            **claims,
        }
        if algorithm == "RS256":
            header = {"kid": RS256_KID, **(headers or {})}
            return pyjwt.encode(payload, self._rs256_private, algorithm="RS256", headers=header)
        return pyjwt.encode(payload, HS256_SECRET, algorithm="HS256", headers=dict(headers or {}))

    # -- the control host: issue, revoke, read the audit log -----------------------------

    def _control(self) -> Any:
        from nexus_core import Nexus

        config = _merge(self.config, {"nexus": {"instance_id": "attack-harness-control"}})
        return Nexus("control", config=config, env=self.env)

    def _with_host(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async def main() -> T:
            host = self._control()
            async with host:
                return await work(host)

        return _in_thread(main)

    def issue(
        self,
        principal: str,
        *,
        roles: list[str] | tuple[str, ...] = ("operator",),
        tenant: str = "acme",
        attributes: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Issued:
        """Issue a fresh API key (stored in the gateway's database) and return it."""

        async def work(host: Any) -> Issued:
            token, record = await host.security.issue_api_key(
                principal,
                roles=list(roles),
                tenant=tenant,
                attributes=dict(attributes or {}),
                ttl=ttl,
            )
            return Issued(token, record.id, principal, tenant)

        return self._with_host(work)

    def revoke(self, credential_id: str) -> bool:
        """Revoke an issued credential now, as an operator would."""
        return self._with_host(lambda host: host.security.revoke(credential_id))

    def audit(self, **filters: Any) -> list[Any]:
        """Audit records (``query_audit`` filters: principal, workflow, since, tenant, limit)."""
        filters.setdefault("limit", 100_000)
        return self._with_host(lambda host: host.security.query_audit(**filters))

    # -- health --------------------------------------------------------------------------

    def assert_healthy(self) -> None:
        """The gateway process is alive and answers /health/ready with 200."""
        import httpx

        assert self.gateway.process.poll() is None, self.gateway.output()[-4000:]
        answer = httpx.get(f"{self.url}/health/ready", timeout=30)
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def secured_overrides() -> dict[str, Any]:
    """Settings deep-merged into the secured configuration; override it in a module."""
    return {}


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    secured_overrides: dict[str, Any],
) -> Iterator[SecuredGateway]:
    """A real secured gateway on a free port, with keys issued for every role and tenant."""
    require_plugins("nexus_plugin_api")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    workdir = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = workdir / "rs256.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = _merge(_config(workdir, public_file), secured_overrides)
    config_file = workdir / "nexus.yaml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = base_env(workdir, NEXUS_CONFIG=str(config_file))
    secured = SecuredGateway(
        gateway=None,  # type: ignore[arg-type]  # set below, once keys exist
        workdir=workdir,
        env=env,
        config=config,
        _rs256_private=private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )

    async def issue_named(host: Any) -> dict[tuple[str, str], Issued]:
        issued = {}
        for tenant in TENANTS:
            for name, (role, attributes) in NAMED_KEYS.items():
                token, record = await host.security.issue_api_key(
                    f"{name}@{tenant}", roles=[role], tenant=tenant, attributes=attributes
                )
                issued[(name, tenant)] = Issued(token, record.id, record.principal, tenant)
        return issued

    secured.keys = secured._with_host(issue_named)
    with gateway(APP, workdir, env) as served:
        secured.gateway = served
        yield secured
