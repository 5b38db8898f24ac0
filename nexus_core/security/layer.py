"""The security layer: one per host, called on every request from every channel."""

from __future__ import annotations

import contextvars
import difflib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.abc
import msgspec

from .._writebehind import WriteBehind
from ..config import ConfigError, SecurityConfig
from ..errors import AuthenticationError, PermissionDenied
from ..storage.base import AuditRecord, CredentialRecord, RunRecord, SessionRecord, Storage
from .limits import InputLimits, RateLimiter, client_address, parse_networks
from .policy import AccessPolicy, Decision
from .principal import ANONYMOUS, AuthProvider, Credentials, Principal, hash_token, new_token

if TYPE_CHECKING:
    from ..app import Nexus
    from ..events import Event
    from ..workflows.model import Workflow

__all__ = ["PUBLIC_EVENT_TYPES", "IssuedToken", "SecurityLayer"]

log = logging.getLogger("nexus.security")

_KEY = "nexus.services.security"
_MISSING_INPUTS: Any = msgspec.UNSET
#: Events of no tenant that any principal may see.
PUBLIC_EVENT_TYPES = frozenset({"workflow.registered"})
# The peer and X-Forwarded-For of the credentials last authenticated in this context,
# so rate_limit(client=<peer>) can use the address resolved through trusted proxies.
_seen: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar(
    "nexus_security_seen", default=None
)


class IssuedToken(NamedTuple):
    """A newly issued API key or CLI token: the secret (shown once) and its stored record."""

    token: str
    record: CredentialRecord


class SecurityLayer:
    """Authenticate, authorize, rate-limit, limit inputs and audit; one instance per host.

    Built from ``nexus.services.security`` by :meth:`configure` when the host
    starts (a setting that cannot work is a :class:`ConfigError` then).
    With authentication off (the development default) callers without
    credentials are the anonymous principal and every action is allowed;
    credentials that *are* presented are still verified, so a bad token is
    refused in development too. With it on, callers must authenticate through
    an enabled provider and actions are denied unless the policy allows them.
    """

    def __init__(self, app: Nexus) -> None:
        self.app = app
        #: The wall clock (seconds since the epoch) of expiry checks and time conditions.
        self.clock: Callable[[], float] = time.time
        #: The enabled auth providers by name, in the order they are tried.
        self.providers: dict[str, AuthProvider] = {}
        self.policy: AccessPolicy | None = None
        self._limits: InputLimits | None = None
        self._rates: RateLimiter | None = None
        self._trusted: tuple[Any, ...] = ()
        self._configured = False
        self._started: list[Any] = []
        # While the host runs, audit records are written behind: nobody on the
        # request path waits for them; readers and the host flush first.
        self._audit: WriteBehind[AuditRecord] = WriteBehind(self._write_audit, what="audit records")

    # -- configuration ---------------------------------------------------------------

    @property
    def config(self) -> SecurityConfig:
        """The ``nexus.services.security`` settings."""
        return self.app.config.nexus.services.security

    @property
    def auth_required(self) -> bool:
        """Whether authentication (and so access control) is on."""
        return self.app.config.nexus.auth_required

    @property
    def auth_configured(self) -> bool:
        """Whether a provider that proves identity (not ``anonymous``) is enabled."""
        if self._configured:
            return any(not getattr(p, "anonymous", False) for p in self.providers.values())
        return any(name != "anonymous" for name in self.config.providers)

    def configure(self) -> None:
        """Build providers, policy and limits from the configuration (idempotent).

        Raises :class:`ConfigError` for an unknown or duplicate provider, a
        provider whose settings cannot work (JWT without keys...), a policy
        that would deny everything once authentication is on, or settings that
        would silently do nothing.
        """
        if self._configured:
            return
        config = self.config
        required = self.auth_required
        policy = AccessPolicy(
            strategy=config.strategy,
            roles=config.roles,
            default_roles=config.default_roles,
            policies=config.policies,
            timezone=config.timezone,
            enforce=required,
        )
        providers = self._build_providers(config)
        if required and not providers:
            raise ConfigError(
                f"authentication is on (environment {self.app.config.nexus.environment!r}, "
                f"auth_enabled={config.auth_enabled}) but no auth provider is enabled, so no "
                f'request could get in; set {_KEY}.providers, e.g. ["api_key"]',
                key=f"{_KEY}.providers",
            )
        policy.check(auth_required=required)
        trusted = parse_networks(config.trusted_proxies)
        limits = InputLimits(config.input_limits)
        rates = RateLimiter(config.rate_limits)
        self._warn_unused(config, providers)
        self.policy, self._limits, self._rates, self._trusted = policy, limits, rates, trusted
        self.providers = providers
        self._configured = True
        log.info(
            "authentication %s; providers: %s; access control: %s",
            "on" if required else "off (development: callers without credentials are anonymous)",
            ", ".join(providers) or "none",
            config.strategy if required else "not enforced",
        )

    def _build_providers(self, config: SecurityConfig) -> dict[str, AuthProvider]:
        specs = self.app.host.auth_providers()
        providers: dict[str, AuthProvider] = {}
        for index, name in enumerate(config.providers):
            key = f"{_KEY}.providers[{index}]"
            if name in providers:
                raise ConfigError(f"{key}: provider {name!r} is listed twice", key=key)
            spec = specs.get(name)
            if spec is None:
                known = sorted(specs)
                match = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {match[0]!r}?" if match else ""
                raise ConfigError(
                    f"{key}: no auth provider {name!r} is installed "
                    f"(installed: {', '.join(known) or 'none'}){hint}",
                    key=key,
                    suggestion=match[0] if match else None,
                )
            try:
                section = self.app.config.section(f"services.security.{name}")
            except ConfigError:
                section = None
            try:
                provider = spec.load()(self.app, section)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"{key}: auth provider {name!r} of plugin {spec.plugin!r} could not be "
                    f"created: {type(exc).__name__}: {exc}",
                    key=key,
                ) from exc
            providers[name] = provider
        prefixes = {
            name: p.prefix  # type: ignore[attr-defined]
            for name, p in providers.items()
            if isinstance(getattr(p, "prefix", None), str)
        }
        for a, pa in prefixes.items():
            for b, pb in prefixes.items():
                if a != b and pb.startswith(pa):
                    raise ConfigError(
                        f"{_KEY}: the token prefix of {a!r} ({pa!r}) also starts {b!r}'s "
                        f"({pb!r}); give them distinct prefixes",
                        key=f"{_KEY}.{a}.prefix",
                    )
        return providers

    def _warn_unused(self, config: SecurityConfig, providers: dict[str, AuthProvider]) -> None:
        unused = []
        if "jwt" not in providers and (config.jwt.keys or config.jwt.jwks_url):
            unused.append("jwt")
        if "api_key" not in providers and config.api_key.keys:
            unused.append("api_key")
        for name in unused:
            log.warning(
                "%s.%s is set but the %r provider is not enabled, so it does nothing; "
                "add %r to %s.providers",
                _KEY,
                name,
                name,
                name,
                _KEY,
            )

    async def start(self) -> None:
        """Configure (if not yet) and start the providers that have a ``start()``."""
        self.configure()
        for provider in self.providers.values():
            start = getattr(provider, "start", None)
            if start is not None:
                await start()
                self._started.append(provider)

    async def stop(self) -> None:
        """Stop the started providers (errors are logged)."""
        while self._started:
            provider = self._started.pop()
            try:
                await provider.stop()
            except Exception:
                log.exception("auth provider %r failed to stop", getattr(provider, "name", "?"))

    def _policy(self) -> AccessPolicy:
        self.configure()
        assert self.policy is not None
        return self.policy

    # -- authentication -----------------------------------------------------------------

    def provider(self, name: str) -> AuthProvider:
        """The enabled provider called ``name`` (``KeyError`` if it is not enabled)."""
        self.configure()
        return self.providers[name]

    async def authenticate(
        self, credentials: Credentials | None, channel: str, *, audit: bool = False
    ) -> Principal:
        """Turn credentials into a principal, trying the enabled providers in order.

        Presented credentials that no provider accepts are an
        :class:`AuthenticationError` whether or not authentication is on.
        Without credentials: a provider that admits such callers
        (``anonymous``) decides, else the anonymous principal while
        authentication is off, else :class:`AuthenticationError`. With
        ``audit=True`` a failure is recorded (``invoke`` records its own, so
        channels pass it only on their other routes).
        """
        self.configure()
        creds = credentials or Credentials()
        _seen.set((creds.client, creds.forwarded_for))
        try:
            for name, provider in self.providers.items():
                principal = await provider.authenticate(creds, channel)
                if principal is not None:
                    if not principal.id:
                        raise AuthenticationError(f"auth provider {name!r} returned no identity")
                    if principal.provider is None:
                        principal = _with_provider(principal, name)
                    return principal
            if creds.presented:
                enabled = ", ".join(self.providers) or "none is enabled"
                raise AuthenticationError(
                    f"the credentials presented are not accepted by any auth provider ({enabled})"
                )
            if not self.auth_required:
                return ANONYMOUS
            raise AuthenticationError(
                "authentication required: send an API key (X-API-Key) or a bearer token"
            )
        except AuthenticationError as exc:
            if audit:
                await self.audit(
                    action="authenticate",
                    outcome=exc.code,
                    principal=ANONYMOUS,
                    channel=channel,
                    reason=exc.message,
                )
            raise

    async def until_invalid(
        self, credentials: Credentials | None, channel: str, principal: Principal
    ) -> str:
        """Return once ``credentials`` no longer authenticate as ``principal``; the reason.

        Channels run this beside a long-lived connection (WebSocket, SSE
        stream, MCP session) in a task group and close the connection with the
        returned reason. It wakes at ``principal.expires_at`` (the credential
        expired: returns at once, whatever leeway authentication allows) and
        every ``recheck_interval`` seconds to authenticate the credentials
        again, so a revoked API key or CLI token ends the connection within
        that interval. A successful recheck writes no audit record; the end
        writes one. For an anonymous principal, or with authentication off, it
        never returns (cancel it with the connection).
        """
        self.configure()
        if principal.anonymous or not self.auth_required:
            await anyio.sleep_forever()
        interval = self.config.recheck_interval
        expires = principal.expires_at
        while True:
            now = self.clock()
            if expires is not None and now >= expires:
                reason = "the credential expired"
                break
            await anyio.sleep(interval if expires is None else min(interval, expires - now))
            if expires is not None and self.clock() >= expires:
                continue
            try:
                current = await self.authenticate(credentials, channel)
            except AuthenticationError as exc:
                reason = exc.message
                break
            except Exception:  # storage or JWKS trouble: keep the connection, try again later
                log.warning("re-checking the credentials of %r failed", principal.id, exc_info=True)
                continue
            if _identity(current) != _identity(principal):
                reason = f"the credential no longer authenticates as {principal.id!r}"
                break
            if current.expires_at is not None:  # a key rotated meanwhile: revoked after a grace
                expires = (
                    current.expires_at if expires is None else min(expires, current.expires_at)
                )
        await self.audit(
            action="authenticate",
            outcome=AuthenticationError.code,
            principal=principal,
            channel=channel,
            reason=f"connection closed: {reason}",
        )
        return reason

    # -- authorization ---------------------------------------------------------------------

    def decide(self, principal: Principal, action: str, **context: Any) -> Decision:
        """The decision for ``principal`` doing ``action`` (see :mod:`nexus_core.security.policy`).

        ``context`` may hold ``workflow`` (a Workflow or name), ``channel``,
        ``inputs`` (raw or parsed), ``tenant`` (the resource's) or ``run`` /
        ``session`` records (their tenant is used).
        """
        tenant = context.get("tenant")
        for name in ("run", "session"):
            record = context.get(name)
            if record is not None:
                tenant = record.tenant
        return self._policy().decide(
            principal,
            action,
            clock=self.clock,
            channel=context.get("channel"),
            workflow=context.get("workflow"),
            inputs=context.get("inputs", _MISSING_INPUTS),
            tenant=tenant,
        )

    def allowed(self, principal: Principal, action: str, **context: Any) -> bool:
        """Whether ``principal`` may do ``action`` (see :meth:`decide`)."""
        return self.decide(principal, action, **context).allowed

    async def authorize(self, principal: Principal, action: str, **context: Any) -> None:
        """Raise ``PermissionDenied`` unless ``principal`` may do ``action``.

        Does not audit: ``invoke`` records the denial; other callers use
        :meth:`audit` (the host's run and session lookups do).
        """
        decision = self.decide(principal, action, **context)
        if not decision.allowed:
            raise PermissionDenied(decision.reason)

    def visible_workflows(
        self, principal: Principal, *, channel: str | None = None
    ) -> list[Workflow]:
        """The registered workflows ``principal`` may execute, by name.

        Conditions on inputs cannot hold before there are inputs: a workflow
        only an input-dependent ``allow`` rule opens is not listed.
        """
        return [
            wf
            for name, wf in sorted(self.app.workflows.items())
            if self.allowed(principal, f"workflow:{name}:execute", workflow=wf, channel=channel)
        ]

    def _owns(self, principal: Principal, owner: str | None, tenant: str) -> bool:
        return (
            not principal.anonymous
            and owner is not None
            and owner == principal.id
            and tenant == principal.tenant
        )

    async def check_run(self, principal: Principal, record: RunRecord, action: str) -> bool:
        """Whether ``principal`` may do ``action`` (``runs:read``, ``runs:cancel``) on a run.

        A principal may always read and cancel its own runs (anonymous callers
        own none); other runs of its tenant need the permission. A denial is
        audited.
        """
        if record.tenant != principal.tenant:
            return False
        if self._owns(principal, record.principal, record.tenant):
            return True
        decision = self.decide(principal, action, run=record, workflow=record.workflow)
        if not decision.allowed:
            await self.audit(
                action=action,
                outcome=PermissionDenied.code,
                principal=principal,
                channel="python",
                workflow=record.workflow,
                run_id=record.id,
                reason=decision.reason,
            )
        return decision.allowed

    def runs_scope(self, principal: Principal) -> str | None:
        """What runs :meth:`Nexus.list_runs` shows: all of the tenant (None) or one principal's.

        Returns the principal id to filter on, or ``""`` when nothing is visible.
        """
        if self.allowed(principal, "runs:read", tenant=principal.tenant):
            return None
        return "" if principal.anonymous else principal.id

    async def check_session(self, principal: Principal, record: SessionRecord) -> bool:
        """Whether ``principal`` may use a session: its tenant's, and its own or ``sessions:admin``.

        A session nobody owns (made anonymously) is usable by whoever holds its token.
        """
        if record.tenant != principal.tenant:
            return False
        if record.principal is None or self._owns(principal, record.principal, record.tenant):
            return True
        decision = self.decide(principal, "sessions:admin", session=record)
        if not decision.allowed:
            await self.audit(
                action="sessions:admin",
                outcome=PermissionDenied.code,
                principal=principal,
                channel="python",
                reason=decision.reason,
            )
        return decision.allowed

    def event_filter(
        self, principal: Principal, keep: Callable[[Event], bool] | None = None
    ) -> Callable[[Event], bool]:
        """A subscription filter: events of the principal's tenant (and public ones).

        Raises :class:`PermissionDenied` unless the principal may ``events:read``
        (the denial is audited in the background).
        """
        decision = self.decide(principal, "events:read", tenant=principal.tenant)
        if not decision.allowed:
            running = self.app._running
            if running is not None:
                running.task_group.start_soon(
                    lambda: self.audit(
                        action="events:read",
                        outcome=PermissionDenied.code,
                        principal=principal,
                        channel="python",
                        reason=decision.reason,
                    )
                )
            raise PermissionDenied(decision.reason)
        tenant = principal.tenant

        def visible(event: Event) -> bool:
            if event.tenant is None:
                ok = event.type in PUBLIC_EVENT_TYPES
            else:
                ok = event.tenant == tenant
            return ok and (keep is None or keep(event))

        return visible

    # -- limits ----------------------------------------------------------------------------

    def client_address(self, credentials: Credentials | None) -> str | None:
        """The caller's address, through ``X-Forwarded-For`` only from a trusted proxy."""
        self.configure()
        if credentials is None:
            return None
        return client_address(credentials.client, credentials.forwarded_for, self._trusted)

    async def rate_limit(
        self,
        principal: Principal,
        channel: str,
        workflow: str,
        client: str | Credentials | None,
    ) -> None:
        """Raise ``RateLimited`` with the wait when a bucket is empty.

        ``client`` is the caller's credentials (best) or its peer address; a
        peer address equal to that of the credentials last authenticated in
        this task is resolved through trusted proxies like the credentials.
        """
        self.configure()
        assert self._rates is not None
        if not self._rates.active:
            return
        if isinstance(client, Credentials):
            address = self.client_address(client)
        else:
            address = client
            seen = _seen.get()
            if client is not None and seen is not None and seen[0] == client:
                address = client_address(client, seen[1], self._trusted)
        storage = self.app.storage
        if storage is None:
            raise RuntimeError("the Nexus host is not running: use 'async with app:'")
        await self._rates.check(storage, principal, channel, workflow, address)

    def check_input_limits(self, inputs: Any) -> None:
        """Raise ``InputLimitExceeded`` for payloads over the configured limits."""
        self.configure()
        assert self._limits is not None
        self._limits.check(inputs)

    # -- audit ----------------------------------------------------------------------------

    async def audit(
        self,
        *,
        action: str,
        outcome: str,
        principal: Principal,
        channel: str,
        workflow: str | None = None,
        run_id: str | None = None,
        reason: str | None = None,
        input_hash: str | None = None,
    ) -> None:
        """Append one audit record (append-only, through the storage contract).

        While the host runs (:meth:`run`), the record is queued and written
        behind; :meth:`flush_audit` waits for it, and :meth:`query_audit` does.
        """
        storage = self.app.storage
        if storage is None:
            return
        record = AuditRecord(
            id=secrets.token_hex(12),
            time=time.time(),
            action=action,
            outcome=outcome,
            tenant=principal.tenant,
            principal=principal.id,
            channel=channel,
            workflow=workflow,
            run_id=run_id,
            reason=reason,
            input_hash=input_hash,
        )
        if self._audit.running:
            self._audit.put(record)
        else:
            await storage.append_audit(record)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write audit records in the background until cancelled (the host runs this)."""
        await self._audit.run(task_status=task_status)

    async def flush_audit(self) -> None:
        """Wait until every audit record appended before this call is stored."""
        await self._audit.flush()

    async def _write_audit(self, records: list[AuditRecord]) -> None:
        storage = self.app.storage
        if storage is None:
            raise RuntimeError("the host's storage is closed")
        await storage.append_audits(records)

    async def query_audit(
        self,
        *,
        principal: str | Principal | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        tenant: str | None = None,
        limit: int = 100,
        viewer: Principal | None = None,
    ) -> list[AuditRecord]:
        """Audit records oldest first, by principal, workflow and time (``since`` <= t < ``until``).

        With ``viewer`` the query is on its behalf: it needs ``audit:read`` and
        sees its own tenant only.
        """
        if viewer is not None:
            await self._require(viewer, "audit:read")
            tenant = viewer.tenant
        who = principal.id if isinstance(principal, Principal) else principal
        await self._audit.flush()  # read your own writes
        return await self._storage().query_audit(
            tenant=tenant, principal=who, workflow=workflow, since=since, until=until, limit=limit
        )

    async def _require(self, principal: Principal, action: str) -> None:
        decision = self.decide(principal, action, tenant=principal.tenant)
        if not decision.allowed:
            await self.audit(
                action=action,
                outcome=PermissionDenied.code,
                principal=principal,
                channel="python",
                reason=decision.reason,
            )
            raise PermissionDenied(decision.reason)

    # -- credentials ---------------------------------------------------------------------

    def _storage(self) -> Storage:
        storage = self.app.storage
        if storage is None:
            raise RuntimeError("the Nexus host is not running: use 'async with app:'")
        return storage

    def _enabled(self, name: str) -> Any:
        self.configure()
        provider = self.providers.get(name)
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
    ) -> IssuedToken:
        if isinstance(principal, Principal):
            if principal.anonymous:
                raise ValueError("credentials cannot be issued to the anonymous principal")
            pid = principal.id
            tenant = principal.tenant if tenant is None else tenant
            roles = principal.roles if roles is None else roles
            scopes = principal.scopes if scopes is None else scopes
            attributes = dict(principal.attributes) if attributes is None else attributes
        else:
            pid = principal
        if not pid:
            raise ValueError("a credential needs a principal id")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = self.clock()
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
            expires_at=None if ttl is None else now + ttl,
            label=label,
        )
        await self._storage().put_credential(record)
        return IssuedToken(token, record)

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
        """Issue an API key; returns ``(key, record)``. The key is shown only here.

        ``principal`` is an id or a :class:`Principal` (whose tenant, roles,
        scopes and attributes are the defaults). ``ttl`` in seconds defaults to
        ``api_key.default_ttl``. A principal may hold several keys (rotation).
        """
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
        """Issue a CLI token to a logged-in principal (``nexus login``): ``(token, record)``.

        Pass the :class:`Principal` the login proved, so the token carries its
        tenant, roles, scopes and attributes. ``ttl`` defaults to ``cli_token.ttl``.
        """
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

    async def rotate_api_key(self, credential_id: str, *, grace: float = 0.0) -> IssuedToken:
        """Issue a new key like an existing one and revoke the old one after ``grace`` seconds."""
        old = await self._storage().get_credential_by_id(credential_id)
        if old is None or old.kind != "api_key":
            raise KeyError(f"no API key {credential_id!r}")
        now = self.clock()
        ttl = None if old.expires_at is None else max(1.0, old.expires_at - old.created_at)
        token, record = await self._issue(
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
        await self._storage().revoke_credential(credential_id, at=now + max(0.0, grace))
        return IssuedToken(token, record)

    async def revoke(self, credential_id: str, *, tenant: str | None = None) -> bool:
        """Revoke an API key or CLI token now; False if unknown (or of another ``tenant``)."""
        storage = self._storage()
        if tenant is not None:
            record = await storage.get_credential_by_id(credential_id)
            if record is None or record.tenant != tenant:
                return False
        return await storage.revoke_credential(credential_id, at=self.clock())

    async def revoke_token(self, token: str, *, kind: str | None = None) -> bool:
        """Revoke the API key or CLI token ``token`` itself (``nexus logout`` has only that)."""
        storage = self._storage()
        digest = hash_token(token)
        for candidate in (kind,) if kind is not None else ("api_key", "cli_token"):
            record = await storage.get_credential(candidate, digest)
            if record is not None:
                return await storage.revoke_credential(record.id, at=self.clock())
        return False

    async def revoke_cli_token(self, token: str) -> bool:
        """Revoke a CLI token by its value (what ``nexus logout`` calls)."""
        return await self.revoke_token(token, kind="cli_token")

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
        now = self.clock()
        return [
            r
            for r in records
            if (r.revoked_at is None or r.revoked_at > now)
            and (r.expires_at is None or r.expires_at > now)
        ]


def _identity(principal: Principal) -> tuple[Any, ...]:
    return (principal.id, principal.tenant, principal.roles, principal.scopes, principal.provider)


def _with_provider(principal: Principal, name: str) -> Principal:
    return msgspec.structs.replace(principal, provider=name)
