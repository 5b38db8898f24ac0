"""The security layer: one per host, called on every request from every channel."""

from __future__ import annotations

import contextvars
import difflib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec

from .._batching import Batcher
from .._ids import token_hex
from ..config import ConfigError, SecurityConfig
from ..errors import AuthenticationError, NexusError, PermissionDenied, RateLimited
from ..storage.base import AuditRecord, CredentialRecord, RunRecord, SessionRecord, Storage
from .abuse import AuthBlocks, RefusalTally, refused, take
from .credentials import CredentialIssuer, IssuedToken
from .limits import InputLimits, RateLimiter, client_address, parse_networks
from .policy import AccessPolicy, Decision
from .principal import ANONYMOUS, AuthProvider, Credentials, Principal

if TYPE_CHECKING:
    from ..app import Nexus
    from ..events import Event
    from ..workflows.model import Workflow

__all__ = ["MAX_CREDENTIAL_LENGTH", "PUBLIC_EVENT_TYPES", "IssuedToken", "SecurityLayer"]

log = logging.getLogger("nexus.security")

_KEY = "nexus.services.security"
_MISSING_INPUTS: Any = msgspec.UNSET
#: Events of no tenant that any principal may see.
PUBLIC_EVENT_TYPES = frozenset({"workflow.registered"})
# The peer and X-Forwarded-For of the credentials last authenticated in this context:
# rate_limit(client=<peer>) resolves that peer through trusted proxies with it, and
# limit() falls back on it when a caller (create_session, list_runs) passes no credentials.
_seen: contextvars.ContextVar[tuple[str | None, str | None] | None] = contextvars.ContextVar(
    "nexus_security_seen", default=None
)
# The reason of the refusal last counted in aggregate in this context: the
# caller's own audit of it (invoke's, a channel's) is then not written.
_tallied: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nexus_security_tallied", default=None
)
#: The longest token or key accepted (characters); a longer one is refused unread.
MAX_CREDENTIAL_LENGTH = 16_384
#: The per-address limits and the action their refusals are audited as.
_LIMIT_ACTIONS = {
    "failed_authentications": "authenticate",
    "session_creation": "sessions:create",
    "token_issuance": "tokens:issue",
    "run_listing": "runs:list",
}
_REFUSALS = frozenset({AuthenticationError.code, RateLimited.code})
#: Every decision while authentication is off (the policy's own answer then).
_NOT_ENFORCED = Decision(True, "authentication is off")


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
        #: Issuing, rotating, revoking and listing stored credentials.
        self.issuer = CredentialIssuer(self)
        self._blocks = AuthBlocks()
        self._tally = RefusalTally(60.0, clock=lambda: self.clock())
        # While the host runs, audit records are written behind: nobody on the
        # request path waits for them; readers and the host flush first.
        # Otherwise concurrent records are appended together (group commit).
        # No gathering yield of its own, as the event bus (storage batches its writes).
        self._audit: Batcher[AuditRecord, None] = Batcher(
            self._write_audit, what="audit records", gather=False
        )

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
        self._tally.window = config.rate_limits.audit_window
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
        """Write the refusals counted so far; stop the started providers (errors are logged)."""
        try:
            await self._write_refusals(everything=True)
            await self._audit.flush()
        except Exception:
            log.exception("counted refusals could not be audited")
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
        :class:`AuthenticationError` whether or not authentication is on, and
        so is anything malformed (a provider that fails on it refuses it with
        a reason; it never crashes the host). Without credentials: a provider
        that admits such callers (``anonymous``) decides, else the anonymous
        principal while authentication is off, else
        :class:`AuthenticationError`. With ``audit=True`` a failure is
        recorded (``invoke`` records its own, so channels pass it only on
        their other routes).

        Failures from a client address cost a token of its
        ``rate_limits.failed_authentications`` bucket; once it is empty the
        client is refused with :class:`RateLimited` until a token is back,
        whatever it sends. Refusals from one address after the first of an
        ``audit_window`` are counted and audited together (see
        :mod:`nexus_core.security.abuse`).
        """
        self.configure()
        creds = credentials or Credentials()
        _seen.set((creds.client, creds.forwarded_for))
        _tallied.set(None)
        address = client_address(creds.client, creds.forwarded_for, self._trusted)
        error: NexusError
        try:
            if address is not None:
                wait = self._blocks.wait(address)
                rule = self.config.rate_limits.failed_authentications
                if wait > 0 and rule is not None:
                    raise refused("failed_authentications", address, rule, wait)
            return await self._identify(creds, channel)
        except AuthenticationError as exc:
            error = exc if address is None else await self._count_failure(exc, address)
        except RateLimited as exc:
            error = exc
        await self._refusal(error, address, channel, audit=audit)
        raise error

    async def _identify(self, creds: Credentials, channel: str) -> Principal:
        for what, value in (("bearer token", creds.bearer), ("API key", creds.api_key)):
            if value is not None and len(value) > MAX_CREDENTIAL_LENGTH:
                raise AuthenticationError(
                    f"the {what} is {len(value)} characters long, over the limit of "
                    f"{MAX_CREDENTIAL_LENGTH}"
                )
        for name, provider in self.providers.items():
            try:
                principal = await provider.authenticate(creds, channel)
            except AuthenticationError:
                raise
            except Exception as exc:  # a provider must not fail on bad input: refuse, stay up
                log.warning(
                    "auth provider %r failed on the credentials presented (%s: %.200s); refused",
                    name,
                    type(exc).__name__,
                    exc,
                )
                raise AuthenticationError(
                    f"the credentials could not be verified ({name}: {type(exc).__name__})"
                ) from None
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

    async def _count_failure(self, error: AuthenticationError, address: str) -> NexusError:
        """Take a token of ``address``'s failed-authentication bucket; block it when empty."""
        rule = self.config.rate_limits.failed_authentications
        storage = self.app.storage
        if rule is None or storage is None:
            return error
        try:
            wait = await take(storage, "failed_authentications", rule, address)
        except Exception:
            log.warning("cannot count a failed authentication of %s", address, exc_info=True)
            return error
        if wait <= 0:
            return error
        self._blocks.block(address, wait)
        return refused("failed_authentications", address, rule, wait)

    async def _refusal(
        self,
        error: NexusError,
        address: str | None,
        channel: str,
        *,
        audit: bool,
        action: str = "authenticate",
        principal: Principal = ANONYMOUS,
    ) -> None:
        """Audit a refusal: the first of its window per address at once, later ones counted."""
        first = address is None or self._tally.count(
            address, channel, error.code, error.message, action, principal.id, principal.tenant
        )
        if first and audit:
            await self.audit(
                action=action,
                outcome=error.code,
                principal=principal,
                channel=channel,
                reason=error.message,
            )
        if not first or audit:
            _tallied.set(error.message)  # counted or written: whoever audits it next does not

    async def limit(
        self,
        name: str,
        credentials: Credentials | None = None,
        channel: str = "python",
        principal: Principal | None = None,
    ) -> None:
        """Take a token of the caller's per-address bucket ``name``; :class:`RateLimited` if empty.

        ``name`` is ``session_creation``, ``token_issuance`` or ``run_listing``
        (``rate_limits.<name>``). The address is that of ``credentials``
        (through trusted proxies), else of the credentials last authenticated
        in this task; without one (in-process calls) nothing is limited. A
        refusal is audited, in aggregate per address and window.
        """
        self.configure()
        rule = getattr(self.config.rate_limits, name)
        storage = self.app.storage
        if rule is None or storage is None:
            return
        if credentials is not None:
            address = self.client_address(credentials)
        else:
            seen = _seen.get()
            address = None if seen is None else client_address(seen[0], seen[1], self._trusted)
        if address is None:
            return
        wait = await take(storage, name, rule, address)
        if wait > 0:
            error = refused(name, address, rule, wait)
            await self._refusal(
                error,
                address,
                channel,
                audit=True,
                action=_LIMIT_ACTIONS[name],
                principal=principal or ANONYMOUS,
            )
            raise error

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
        that interval. A recheck is the host's own: the client's
        failed-authentication limits neither block nor count it, so no flood
        from its address can keep it from happening. A successful recheck
        writes no audit record; the end writes one. For an anonymous
        principal, or with authentication off, it never returns (cancel it
        with the connection).
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
                current = await self._identify(credentials or Credentials(), channel)
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
        policy = self._policy()
        if not policy.enforce:  # what the policy decides, without reading the context
            return _NOT_ENFORCED
        tenant = context.get("tenant")
        for name in ("run", "session"):
            record = context.get(name)
            if record is not None:
                tenant = record.tenant
        return policy.decide(
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

    async def enforce(
        self,
        principal: Principal,
        action: str,
        *,
        audit: bool = True,
        raise_denied: bool = True,
        audit_channel: str | None = None,
        **context: Any,
    ) -> Decision:
        """Decide, audit a refusal, raise: the one way every check of the layer ends.

        ``context`` is what :meth:`decide` takes. A denial is audited (unless
        ``audit=False``: ``invoke`` records its own) on ``audit_channel`` (else
        the context's ``channel``, else ``python``), naming the workflow and
        run when the context has them, then raised as :class:`PermissionDenied`
        (unless ``raise_denied=False``: the decision is returned).
        """
        decision = self.decide(principal, action, **context)
        if decision.allowed:
            return decision
        if audit:
            await self.audit(**_denial(principal, action, decision, audit_channel, context))
        if raise_denied:
            raise PermissionDenied(decision.reason)
        return decision

    async def require(
        self, principal: Principal, action: str, *, channel: str | None = None, **context: Any
    ) -> None:
        """Raise ``PermissionDenied`` unless ``principal`` may do ``action`` (audited when not)."""
        await self.enforce(principal, action, channel=channel, **context)

    async def authorize(self, principal: Principal, action: str, **context: Any) -> None:
        """Raise ``PermissionDenied`` unless ``principal`` may do ``action``.

        Does not audit: ``invoke`` records the denial; other callers use
        :meth:`require`, which does.
        """
        await self.enforce(principal, action, audit=False, **context)

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
        decision = await self.enforce(
            principal, action, raise_denied=False, run=record, workflow=record.workflow
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
        decision = await self.enforce(
            principal, "sessions:admin", raise_denied=False, session=record
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
        if not decision.allowed:  # the sync twin of enforce(): audited in the background
            running = self.app._running
            if running is not None:
                record = _denial(principal, "events:read", decision, None, {})
                running.task_group.start_soon(lambda: self.audit(**record))
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

        ``client`` is the caller's credentials (their address is resolved
        through trusted proxies) or an address already resolved. Every
        channel hands ``invoke`` its credentials, forwarded-for included.
        """
        self.configure()
        assert self._rates is not None
        if not self._rates.active:
            return
        address = self.client_address(client) if isinstance(client, Credentials) else client
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
        record = self.audit_record(
            action=action,
            outcome=outcome,
            principal=principal,
            channel=channel,
            workflow=workflow,
            run_id=run_id,
            reason=reason,
            input_hash=input_hash,
        )
        if record is not None:
            await self.write_audit(record)

    async def write_audit(self, record: AuditRecord) -> None:
        """Append ``record`` (from :meth:`audit_record`) as :meth:`audit` does.

        .. versionadded:: 0.3
        """
        if self._audit.running:
            self._audit.put(record)
        else:
            await self._audit.submit(record)

    def audit_record(
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
    ) -> AuditRecord | None:
        """The record :meth:`audit` would append, for a caller that writes it itself.

        None when there is nothing to write (no storage, or a refusal already
        counted in aggregate). The host writes a durable run's record in the
        run's final write this way.

        .. versionadded:: 0.3
        """
        if self.app.storage is None:
            return None
        if outcome in _REFUSALS and reason is not None and _tallied.get() == reason:
            _tallied.set(None)  # already counted in aggregate (or written) by the layer
            return None
        return AuditRecord(
            id=token_hex(12),
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

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write audit records in the background until cancelled (the host runs this).

        Counted refusals are written when their window ends (checked a few
        times per window), when the audit log is queried and when the host stops.
        """
        async with anyio.create_task_group() as tg:
            await tg.start(self._audit.run)
            tg.start_soon(self._sweep_refusals)
            task_status.started()

    async def _sweep_refusals(self) -> None:
        while True:
            await anyio.sleep(max(0.05, self._tally.window / 4))
            await self._write_refusals(everything=False)

    async def _write_refusals(self, *, everything: bool) -> None:
        records = self._tally.drain(everything=everything)
        if not records:
            return
        if self._audit.running:
            for record in records:
                self._audit.put(record)
        elif self.app.storage is not None:
            await self.app.storage.append_audits(records)

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
            await self.require(viewer, "audit:read", tenant=viewer.tenant)
            tenant = viewer.tenant
        who = principal.id if isinstance(principal, Principal) else principal
        await self._write_refusals(everything=True)  # counts so far, in their own records
        await self._audit.flush()  # read your own writes
        return await self._storage().query_audit(
            tenant=tenant, principal=who, workflow=workflow, since=since, until=until, limit=limit
        )

    def _storage(self) -> Storage:
        storage = self.app.storage
        if storage is None:
            raise RuntimeError("the Nexus host is not running: use 'async with app:'")
        return storage

    # -- credentials (issued by :class:`~nexus_core.security.credentials.CredentialIssuer`) ---

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
        scopes and attributes are the defaults; a key issued to a Principal
        expires no later than the credential that proved it). ``ttl`` in
        seconds defaults to ``api_key.default_ttl``. A principal may hold
        several keys (rotation).
        """
        return await self.issuer.issue_api_key(
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
        """Issue a CLI token in process, as trusted code (local ``nexus login``): ``(token, rec)``.

        Pass the :class:`Principal` the login proved, so the token carries its
        tenant, roles, scopes and attributes (and expires no later than it).
        ``ttl`` defaults to ``cli_token.ttl``. Channels exchanging a caller's
        credential use :meth:`exchange_cli_token`, which checks ``tokens:issue``.
        """
        return await self.issuer.issue_cli_token(
            principal, roles=roles, tenant=tenant, label=label, ttl=ttl
        )

    async def exchange_cli_token(
        self,
        credentials: Credentials | None,
        channel: str,
        *,
        label: str | None = None,
        ttl: float | None = None,
    ) -> IssuedToken:
        """A CLI token derived from the credential a caller presents (``POST /auth/cli-tokens``).

        Limited per client address (``rate_limits.token_issuance``), then the
        credentials are authenticated (a failure is audited), the principal
        needs ``tokens:issue`` (a denial is audited), and the token is issued
        with the principal's identity. It expires no later than the
        credential (a JWT's ``exp``, an API key's expiry or planned revocation,
        another CLI token's expiry) and records it as its parent, so revoking
        the parent refuses the token at once. ``ttl`` may only shorten
        ``cli_token.ttl``. The issuance is audited (``cli_token:issue``).
        """
        return await self.issuer.exchange_cli_token(credentials, channel, label=label, ttl=ttl)

    async def rotate_api_key(self, credential_id: str, *, grace: float = 0.0) -> IssuedToken:
        """Issue a new key like an existing one and revoke the old one after ``grace`` seconds.

        CLI tokens derived from the old key stop working with it.
        """
        return await self.issuer.rotate_api_key(credential_id, grace=grace)

    async def revoke(self, credential_id: str, *, tenant: str | None = None) -> bool:
        """Revoke an API key or CLI token now, and every CLI token derived from it.

        False if unknown (or of another ``tenant``).
        """
        return await self.issuer.revoke(credential_id, tenant=tenant)

    async def revoke_token(self, token: str, *, kind: str | None = None) -> bool:
        """Revoke the API key or CLI token ``token`` itself (``nexus logout`` has only that)."""
        return await self.issuer.revoke_token(token, kind=kind)

    async def revoke_cli_token(self, token: str) -> bool:
        """Revoke a CLI token by its value (what ``nexus logout`` calls)."""
        return await self.issuer.revoke_token(token, kind="cli_token")

    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        include_inactive: bool = False,
    ) -> list[CredentialRecord]:
        """Issued credentials (never their tokens), oldest first; active ones unless asked."""
        return await self.issuer.list_credentials(
            principal=principal, kind=kind, tenant=tenant, include_inactive=include_inactive
        )


def _denial(
    principal: Principal,
    action: str,
    decision: Decision,
    channel: str | None,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The audit record's fields for a denied decision."""
    workflow = context.get("workflow")
    run = context.get("run")
    return {
        "action": action,
        "outcome": PermissionDenied.code,
        "principal": principal,
        "channel": channel or context.get("channel") or "python",
        "workflow": getattr(workflow, "name", workflow),
        "run_id": getattr(run, "id", None),
        "reason": decision.reason,
    }


def _identity(principal: Principal) -> tuple[Any, ...]:
    return (principal.id, principal.tenant, principal.roles, principal.scopes, principal.provider)


def _with_provider(principal: Principal, name: str) -> Principal:
    return msgspec.structs.replace(principal, provider=name)
