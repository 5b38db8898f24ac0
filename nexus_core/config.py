"""Settings as msgspec Structs, read from defaults, a file and the environment.

Sources, lowest to highest precedence:

1. the defaults of the Structs below;
2. a file: the one named by ``path=`` or ``NEXUS_CONFIG``, else ``nexus.toml``,
   ``nexus.yaml`` or ``nexus.yml`` in the working directory, else the same
   names beside the application file being loaded (see :func:`app_directory`);
   or, instead of a file, an in-code mapping passed as ``data=``. Settings may
   sit at the top level or under a ``nexus`` table;
3. environment variables ``NEXUS_<KEY>``, with ``__`` between nested keys:
   ``NEXUS_ENVIRONMENT=production``,
   ``NEXUS_SERVICES__SECURITY__STRATEGY=abac``,
   ``NEXUS_CHANNELS__API__RATE_LIMIT=100``. A value is read as JSON when it
   parses as JSON (falling back to the plain string when that does not fit the
   setting's type) and converted leniently, so ``"100"`` suits an ``int`` and
   ``true`` a ``bool``. The names in :data:`RESERVED_ENV_VARS` belong to the
   plugin loader and the CLI and are never read as settings.

Plugins own sections through the ``nexus_config_sections`` hook: a section is a
dotted path under ``nexus`` (``"channels.api"``, ``"plugins.redis"``,
``"services.cache"``) and the :class:`ConfigStruct` that validates its table.
Every table under ``nexus.channels`` and ``nexus.plugins`` (and every
``nexus.services`` table that is not a core one) must belong to a registered
section; anything else is an error naming the key path, where it came from and
the closest known name.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import ErrorDetail, FieldError, NexusError
from .specs import ConfigSectionSpec
from .storage.base import ROLES, Role

__all__ = [
    "CONFIG_FILE_NAMES",
    "DEFAULT_STORAGE",
    "RESERVED_ENV_VARS",
    "AnonymousConfig",
    "ApiKeyConfig",
    "CliTokenConfig",
    "Config",
    "ConfigError",
    "ConfigStruct",
    "EventsConfig",
    "InputLimitsConfig",
    "JwtConfig",
    "JwtKeyConfig",
    "MonitoringConfig",
    "NexusConfig",
    "PolicyCondition",
    "PolicyRule",
    "RateLimitConfig",
    "RateLimitRule",
    "RateLimitScope",
    "RunsConfig",
    "SecurityConfig",
    "ServicesConfig",
    "StaticApiKey",
    "StorageConfig",
    "app_directory",
    "app_name",
    "check_production",
    "load_config",
    "resolve_storage_url",
]

#: Files looked for in the working directory (then beside the application
#: file), in this order, when neither ``path=`` nor ``NEXUS_CONFIG`` names one.
CONFIG_FILE_NAMES: tuple[str, ...] = ("nexus.toml", "nexus.yaml", "nexus.yml")

#: The storage URL when none is configured: a SQLite file of the application's
#: own, ``.nexus/<app>.db`` beside the config file (or the application file, or
#: in the working directory). ``{app}`` in any storage URL stands for
#: :attr:`Config.app_name`.
DEFAULT_STORAGE = "sqlite:///.nexus/{app}.db"

# The application file (or folder) the loader is importing, if any.
_APP_DIR: ContextVar[Path | None] = ContextVar("nexus_app_dir", default=None)
_APP_FILE: ContextVar[Path | None] = ContextVar("nexus_app_file", default=None)
# Folders whose legacy nexus.db was already reported (once per process).
_LEGACY_WARNED: set[Path] = set()

#: ``NEXUS_*`` variables that are switches for the plugin loader, the CLI or
#: the client, not settings: :func:`load_config` never reads them as keys.
RESERVED_ENV_VARS: frozenset[str] = frozenset(
    {
        "NEXUS_APP",  # the CLI: which app object to load ("module:attr")
        "NEXUS_CONFIG",  # the config file to read
        "NEXUS_DISABLE_PLUGINS",  # plugin loader: block list
        "NEXUS_DISABLE_PLUGIN_AUTOLOAD",  # plugin loader: no entry points
        "NEXUS_PLUGINS",  # plugin loader: allow list
        "NEXUS_REQUIRE_SERVICES",  # tests: fail instead of skipping without Redis etc.
        "NEXUS_STRICT_PLUGINS",  # plugin loader: a broken plugin stops the host
        "NEXUS_URL",  # the CLI as a client: the server to talk to
        "NEXUS_TOKEN",  # the CLI and MCP stdio: the bearer token to present
        "NEXUS_OUTPUT",  # the CLI: text or json
        "NEXUS_CLI_NO_CACHE",  # the CLI: rebuild the command table every time
        "NEXUS_DEBUG",  # the CLI: show tracebacks
    }
)

_log = logging.getLogger("nexus.config")
_ENV_PREFIX = "NEXUS_"
_ROOT = "nexus"
_CODE = "code"  # the origin of values passed as ``data=``
# Dict-typed fields of NexusConfig whose every key is a registered section.
_SECTION_CONTAINERS = frozenset({("channels",), ("plugins",)})
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_NO_SECTIONS: Mapping[str, Any] = types.MappingProxyType({})

_KeyPath = tuple[str, ...]


# -- errors -------------------------------------------------------------------


class ConfigError(NexusError):
    """The configuration is invalid: names the key path and the file or variable it came from.

    ``key`` is the dotted key path at fault (``"nexus.services.security.strategy"``),
    ``source`` the file name or ``"environment variable NEXUS_..."`` it came from,
    and ``suggestion`` the closest known key when one was misspelt.
    """

    code = "config_error"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.source = source
        self.suggestion = suggestion

    def detail(self) -> ErrorDetail:
        """Include the key path at fault and the suggestion."""
        reason = self.message
        if self.key and f"{self.key}: " in reason:
            reason = reason.split(f"{self.key}: ", 1)[1]
        errors = [FieldError(path=self.key, reason=reason)] if self.key else []
        return ErrorDetail(
            code=self.code, message=self.message, errors=errors, suggestion=self.suggestion
        )


# -- the Structs ----------------------------------------------------------------


class ConfigStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section, core or contributed by a plugin.

    Unknown keys are errors and fields are keyword-only; give every field a
    default, so a file without the section (and an older file after a new
    field is added) still loads.
    """


class StaticApiKey(ConfigStruct, kw_only=True):
    """One API key written in the configuration, by its SHA-256 (never the key itself).

    ``sha256`` is the hex digest of the key a client sends
    (``printf %s "$KEY" | sha256sum``). Keys issued at run time with
    ``app.security.issue_api_key`` live in storage instead.
    """

    principal: str
    sha256: str
    tenant: str = "default"
    roles: list[str] = []
    scopes: list[str] = []
    attributes: dict[str, Any] = {}
    label: str | None = None


class ApiKeyConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security.api_key``: the ``api_key`` provider.

    Keys are random tokens starting with ``prefix``, sent as ``X-API-Key`` or
    ``Authorization: Bearer``; stored hashed. ``default_ttl`` (seconds) is the
    lifetime of issued keys when the caller gives none (``None``: no expiry).
    """

    prefix: str = "nxk_"
    default_ttl: float | None = None
    keys: list[StaticApiKey] = []


class CliTokenConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security.cli_token``: tokens issued by ``nexus login``.

    Random tokens starting with ``prefix``, sent as ``Authorization: Bearer``,
    stored hashed, valid for ``ttl`` seconds.
    """

    prefix: str = "nxc_"
    ttl: float = 30 * 86400.0


class AnonymousConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security.anonymous``: who a caller without credentials is.

    Used when authentication is on and ``"anonymous"`` is among the enabled
    providers: callers without credentials get these roles (and nothing else).
    """

    roles: list[str] = msgspec.field(default_factory=lambda: ["anonymous"])
    tenant: str = "default"


class JwtKeyConfig(ConfigStruct, kw_only=True):
    """One static JWT verification key and the one algorithm it may be used with.

    ``HS256`` takes a shared ``secret`` (at least 32 bytes) or ``secret_env``, the
    name of the environment variable holding it; ``RS256`` (an RSA key) and
    ``ES256`` (an EC P-256 key) take a PEM public key inline (``public_key``)
    or from a file (``public_key_file``). ``kid`` matches the token header's ``kid``.
    """

    algorithm: Literal["HS256", "RS256", "ES256"]
    kid: str | None = None
    secret: str | None = None
    secret_env: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None


class JwtConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security.jwt``: the ``jwt`` provider (an identity provider's bearer tokens).

    Keys come from ``keys`` and/or a ``jwks_url`` (cached ``jwks_cache_ttl``
    seconds; an unknown ``kid`` refetches at most every ``jwks_refresh_interval``
    seconds; JWKS keys are used with ``jwks_algorithms`` only). ``issuer`` and
    ``audience`` are checked when set; ``exp``/``nbf``/``iat`` with ``leeway``
    seconds of clock skew; ``required_claims`` must be present. Claims map to
    the principal: ``subject_claim`` is its id, ``roles_claim`` its roles (a
    list or a space-separated string), ``tenant_claim`` its tenant
    (``default_tenant`` when absent), ``scopes_claim`` (off by default) its
    scopes; every other claim becomes an attribute.
    """

    keys: list[JwtKeyConfig] = []
    jwks_url: str | None = None
    jwks_algorithms: list[Literal["RS256", "ES256"]] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    jwks_cache_ttl: float = 300.0
    jwks_refresh_interval: float = 30.0
    jwks_timeout: float = 5.0
    issuer: str | None = None
    audience: list[str] = []
    leeway: float = 30.0
    required_claims: list[str] = msgspec.field(default_factory=lambda: ["exp"])
    subject_claim: str = "sub"
    roles_claim: str = "roles"
    tenant_claim: str = "tenant"
    default_tenant: str = "default"
    scopes_claim: str | None = None


class PolicyCondition(ConfigStruct, kw_only=True):
    """One ABAC condition: ``attribute`` compared with ``value`` by ``op``.

    Attributes: ``principal.id|tenant|roles|scopes|provider|anonymous``,
    ``principal.<name>`` (an attribute of the principal, dotted for nesting),
    ``channel``, ``tenant``, ``action``, ``workflow``, ``workflow.tags``,
    ``input.<field>`` (dotted), ``time.hour|minute|weekday`` (weekday 0 =
    Monday, in ``security.timezone``). A condition on a missing attribute (or
    a value it cannot compare) fails closed; see :attr:`PolicyRule.if_missing`
    (``exists`` tests presence).
    """

    attribute: str
    op: Literal[
        "eq", "ne", "in", "not_in", "lt", "le", "gt", "ge", "contains", "matches", "exists"
    ] = "eq"
    value: Any = None


class PolicyRule(ConfigStruct, kw_only=True):
    """An ABAC rule: ``effect`` applies to ``actions`` (fnmatch patterns) if its conditions hold.

    ``if_missing`` is what a condition on an attribute the principal or the
    inputs lack (or on a value it cannot compare, such as ``"900"`` against
    ``gt 500``) decides: ``"deny"`` (the default, fail closed) makes a deny
    rule apply and an allow rule not; ``"allow"`` makes a deny rule not apply
    and an allow rule count the condition as met.
    """

    effect: Literal["allow", "deny"]
    actions: list[str] = msgspec.field(default_factory=lambda: ["*"])
    conditions: list[PolicyCondition] = []
    description: str = ""
    if_missing: Literal["deny", "allow"] = "deny"


class RateLimitRule(ConfigStruct, kw_only=True):
    """A token bucket: ``requests`` per ``per`` seconds, bursts of ``burst`` (else ``requests``)."""

    requests: Annotated[float, msgspec.Meta(gt=0)]
    per: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    burst: Annotated[float, msgspec.Meta(ge=1)] | None = None


class RateLimitScope(ConfigStruct, kw_only=True):
    """Limits per principal and per client address (either may be left out)."""

    per_principal: RateLimitRule | None = None
    per_client: RateLimitRule | None = None


class RateLimitConfig(RateLimitScope, kw_only=True):
    """``nexus.services.security.rate_limits``: token buckets, kept in storage.

    Every bucket is per channel. The rule for a request is the workflow's
    (``workflows.<name>``, a bucket of its own), else the channel's
    (``channels.<name>``), else the top-level one; nothing configured, no limit.

    Four more buckets are per client address (through ``trusted_proxies``),
    across channels, and on by default with room for any normal use:
    ``failed_authentications`` (once empty, the client is refused, right
    credentials or not, until a token is back), ``session_creation``,
    ``token_issuance`` (CLI tokens) and ``run_listing``; set one to ``null``
    (YAML/JSON) or a huge ``requests`` to lift it. Refusals from one client
    are audited once per ``audit_window`` seconds with their count.
    """

    channels: dict[str, RateLimitScope] = {}
    workflows: dict[str, RateLimitScope] = {}
    failed_authentications: RateLimitRule | None = msgspec.field(
        default_factory=lambda: RateLimitRule(requests=120, per=60.0, burst=300)
    )
    session_creation: RateLimitRule | None = msgspec.field(
        default_factory=lambda: RateLimitRule(requests=600, per=60.0, burst=1200)
    )
    token_issuance: RateLimitRule | None = msgspec.field(
        default_factory=lambda: RateLimitRule(requests=30, per=60.0, burst=60)
    )
    run_listing: RateLimitRule | None = msgspec.field(
        default_factory=lambda: RateLimitRule(requests=1200, per=60.0, burst=2400)
    )
    audit_window: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class InputLimitsConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security.input_limits``: checked before validation (``None``: no limit)."""

    max_payload_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = 1_048_576
    max_depth: Annotated[int, msgspec.Meta(ge=1)] | None = 32
    max_string_length: Annotated[int, msgspec.Meta(ge=1)] | None = 262_144


class SecurityConfig(ConfigStruct, kw_only=True):
    """``nexus.services.security``: authentication, access control, limits and sessions.

    ``auth_enabled`` left as ``None`` means "default by environment": off in
    development, on in staging and production (see :attr:`NexusConfig.auth_required`).
    ``providers`` names the enabled authentication providers, tried in order
    (built in: ``api_key``, ``cli_token``, ``jwt``, ``anonymous``); a provider's
    settings are the table of its name here (``api_key``, ``jwt``...) or the
    section ``services.security.<name>`` of the plugin that provides it.
    ``roles`` maps a role to permission patterns (``workflow:*:execute``,
    ``runs:read``, ``admin``...); ``default_roles`` are given to every
    authenticated principal; ``policies`` are the ABAC rules. ``trusted_proxies``
    (addresses or CIDR networks) may set the client address through
    ``X-Forwarded-For``. ``recheck_interval`` (seconds) is how often a
    long-lived connection (WebSocket, SSE, MCP session) re-checks that its
    credential still authenticates, so a revoked key closes it within that
    time. See docs/how-to/secure-a-deployment.md.
    """

    strategy: Literal["rbac", "abac", "hybrid"] = "rbac"
    session_timeout: float = 3600.0
    auth_enabled: bool | None = None
    providers: list[str] = []
    roles: dict[str, list[str]] = {}
    default_roles: list[str] = []
    policies: list[PolicyRule] = []
    timezone: str = "UTC"
    api_key: ApiKeyConfig = msgspec.field(default_factory=ApiKeyConfig)
    cli_token: CliTokenConfig = msgspec.field(default_factory=CliTokenConfig)
    jwt: JwtConfig = msgspec.field(default_factory=JwtConfig)
    anonymous: AnonymousConfig = msgspec.field(default_factory=AnonymousConfig)
    rate_limits: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    input_limits: InputLimitsConfig = msgspec.field(default_factory=InputLimitsConfig)
    trusted_proxies: list[str] = []
    recheck_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class MonitoringConfig(ConfigStruct, kw_only=True):
    """``nexus.services.monitoring``: metrics, their export, logging and retention.

    ``export_url`` is a Prometheus Pushgateway the host pushes its metrics to
    every ``export_interval`` seconds (as job ``export_job``, grouped by
    instance id), from a worker thread; without an ``export_url`` nothing is
    pushed and ``/metrics`` is the way to read them. ``retention_days`` keeps
    runs (with their checkpoints), events and audit records that long: older
    ones are deleted by the host every ``retention_interval`` seconds, at most
    ``retention_batch`` rows per statement (``None``: kept for ever).
    """

    metrics: bool = True
    log_level: str = "INFO"
    export_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    export_url: str | None = None
    export_job: str = "nexus"
    retention_days: Annotated[float, msgspec.Meta(gt=0)] | None = None
    retention_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    retention_batch: Annotated[int, msgspec.Meta(ge=1)] = 500


class RunsConfig(ConfigStruct, kw_only=True):
    """``nexus.services.runs``: what happens to runs across restarts, and their time limit.

    ``on_restart="resume"`` picks interrupted runs up from their last
    checkpoint; ``"fail"`` marks them failed. ``default_timeout`` is in seconds
    (``None``: no limit unless the workflow sets one). At shutdown the host lets
    runs in flight finish for ``shutdown_grace`` seconds; runs still going then
    are cancelled where they stand, their leases released, and they resume
    from their checkpoints in whichever process takes them over.

    A run executes under a lease of ``lease`` seconds, renewed every
    ``heartbeat`` seconds by the process executing it; a process killed
    outright leaves its runs to be taken over once their leases expire.
    ``recover`` says which processes take over expired runs: ``"auto"`` those
    that serve (``nexus serve``, ``nexus worker``) and not ``async with app:``
    scripts or ``nexus`` commands; ``"always"``; ``"never"``. ``executor``
    names how runs are executed (``"inline"``: in the process that accepted
    them; plugins add others, see ``nexus plugins``).

    ``inline_limit`` (bytes): a run's inputs, output or node output whose
    JSON is larger goes to the blob store (``nexus.storage.blobs``) and the
    run record holds a reference to it (see :mod:`nexus_core.payloads`);
    ``None`` keeps every value inline.
    """

    on_restart: Literal["resume", "fail"] = "resume"
    default_timeout: float | None = None
    shutdown_grace: float = 5.0
    lease: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    heartbeat: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    recover: Literal["auto", "always", "never"] = "auto"
    executor: str = "inline"
    inline_limit: Annotated[int, msgspec.Meta(ge=0)] | None = 1024 * 1024

    def __post_init__(self) -> None:
        if self.heartbeat >= self.lease:
            raise ValueError(
                f"services.runs.heartbeat ({self.heartbeat:g}) must be shorter than "
                f"services.runs.lease ({self.lease:g}), or leases expire between renewals"
            )


class EventsConfig(ConfigStruct, kw_only=True):
    """``nexus.services.events``: per-subscriber queues of the event bus.

    When a subscriber's queue of ``queue_size`` events is full, ``overflow``
    either drops its oldest event or disconnects it. Events other processes
    log (the workers of ``nexus serve --workers N``, a ``nexus run`` beside a
    server) reach this process's subscribers by reading the shared log every
    ``poll_interval`` seconds; this process's own events are delivered at once.
    """

    queue_size: int = 1000
    overflow: Literal["drop_oldest", "disconnect"] = "drop_oldest"
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.1


class ServicesConfig(ConfigStruct, kw_only=True):
    """``nexus.services``: the core services.

    Plugins may add sections here (``"services.<name>"``); those are reached
    through :meth:`Config.section`.
    """

    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    runs: RunsConfig = msgspec.field(default_factory=RunsConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)


class StorageConfig(ConfigStruct, kw_only=True):
    """``nexus.storage`` as a table: a default URL and, optionally, a URL per storage role.

    ``url`` serves every role not named; ``runs``, ``events``, ``audit``,
    ``credentials``, ``sessions``, ``cache`` and ``blobs`` (the roles of
    :data:`nexus_core.storage.base.ROLES`) each name the URL of the backend
    serving that role. Roles with the same URL share one backend. Relative
    SQLite paths and ``{app}`` are resolved in each as in ``url`` (see
    :attr:`Config.storage_urls`).
    """

    url: str = DEFAULT_STORAGE
    runs: str | None = None
    events: str | None = None
    audit: str | None = None
    credentials: str | None = None
    sessions: str | None = None
    cache: str | None = None
    blobs: str | None = None


class NexusConfig(ConfigStruct, kw_only=True):
    """The ``nexus`` table: the whole configuration of one host.

    ``storage`` is a URL whose scheme picks the storage backend of every
    storage role, or a :class:`StorageConfig` table (``[nexus.storage]``) with
    a default ``url`` and a URL per role.
    ``channels`` and ``plugins`` map a name to the validated section Struct of
    the plugin that registered ``"channels.<name>"`` / ``"plugins.<name>"``
    (after :func:`load_config`, one entry per registered section).
    """

    title: str = "Nexus"
    #: The application the ``nexus`` command runs when no APP is given ("module:attr" or a file).
    app: str | None = None
    environment: Literal["development", "staging", "production"] = "development"
    storage: str | StorageConfig = DEFAULT_STORAGE
    instance_id: str | None = None
    #: Plugins (entry-point names) the host refuses to start without.
    required_plugins: list[str] = []
    channels: dict[str, Any] = {}
    services: ServicesConfig = msgspec.field(default_factory=ServicesConfig)
    plugins: dict[str, Any] = {}

    @property
    def auth_required(self) -> bool:
        """Whether authentication is on: ``services.security.auth_enabled``, or by environment."""
        enabled = self.services.security.auth_enabled
        if enabled is None:
            return self.environment != "development"
        return enabled


# -- the loaded configuration ----------------------------------------------------


class Config:
    """A loaded configuration: the core settings, every section and where each value came from."""

    def __init__(
        self,
        nexus: NexusConfig,
        *,
        path: Path | None = None,
        sections: Mapping[str, Any] = _NO_SECTIONS,
        sources: Mapping[str, str] = _NO_SECTIONS,
        directory: Path | None = None,
        app_name: str | None = None,
    ) -> None:
        #: The core settings (``nexus`` table).
        self.nexus = nexus
        #: The file read, or ``None`` (defaults, in-code data, environment only).
        self.path = path
        #: The folder relative paths in the settings are resolved against: the
        #: config file's folder, else the application file's, else ``None``
        #: (the working directory).
        self.directory = directory if directory is not None else _folder_of(path)
        #: The application's name, what ``{app}`` in a storage URL stands for
        #: (the default database is ``.nexus/<app_name>.db``): the stem of the
        #: application's file, else the slug of its title (see :func:`app_name`
        #: and :meth:`bind_app`). ``None`` until known: the title is used then.
        self.app_name = app_name
        self._sections = dict(sections)
        self._origins = dict(sources)

    def __repr__(self) -> str:
        return f"Config(path={self.path!r}, nexus={self.nexus!r})"

    def bind_app(self, title: str, file: str | os.PathLike[str] | None = None) -> None:
        """Name the application this configuration serves, unless it is named already.

        The host calls this when it is created, with its title and the file of
        the module that created it (``None`` in an interactive session): that
        sets :attr:`app_name` (the file's stem, else the slug of ``title``)
        and, when no folder is known yet (no file read, the app not loaded by
        name), makes the file's folder :attr:`directory`, so a script run as
        ``python path/app.py`` keeps its database where ``nexus serve
        path/app.py`` does. The loader names the app from its file before the
        host exists; then this changes nothing.
        """
        if self.app_name is not None:
            return
        source = Path(file) if file is not None else None
        if source is not None and not source.is_file():
            source = None
        self.app_name = app_name(title, source)
        if self.directory is None and source is not None:
            self.directory = source.resolve().parent

    @property
    def storage_url(self) -> str:
        """The default storage URL (``nexus.storage``, or its ``url``), resolved.

        ``{app}`` is replaced by :attr:`app_name` and a relative SQLite path
        made absolute against :attr:`directory` (:func:`resolve_storage_url`).
        """
        storage = self.nexus.storage
        return self._resolve(storage if isinstance(storage, str) else storage.url)

    @property
    def storage_urls(self) -> dict[Role, str]:
        """The storage URL of every role (:data:`~nexus_core.storage.base.ROLES`), resolved.

        A role not named in ``[nexus.storage]`` (every role, when
        ``nexus.storage`` is a string) has :attr:`storage_url`. When the
        default database is in effect and a ``nexus.db`` of an earlier version
        sits in :attr:`directory`, this logs (once) how to keep using it.
        """
        storage = self.nexus.storage
        table = StorageConfig(url=storage) if isinstance(storage, str) else storage
        default = self._resolve(table.url)
        if table.url == DEFAULT_STORAGE:
            _warn_legacy_database(self.directory, default)
        urls: dict[Role, str] = {}
        for role in ROLES:
            url = getattr(table, role)
            urls[role] = default if url is None else self._resolve(url)
        return urls

    def _resolve(self, url: str) -> str:
        if "{app}" in url:
            url = url.replace("{app}", self.app_name or app_name(self.nexus.title))
        return resolve_storage_url(url, self.directory)

    def section(self, name: str) -> Any:
        """Return the Struct for the dotted section path ``name`` (``"channels.api"``).

        Works for registered sections (their defaults when no table was given)
        and for core ones (``"services.security"``); a leading ``nexus.`` is
        optional. An unknown name raises :class:`ConfigError` with a suggestion.
        """
        parts = tuple(part for part in name.split(".") if part)
        if parts[:1] == (_ROOT,):
            parts = parts[1:]
        dotted = ".".join(parts)
        if dotted in self._sections:
            return self._sections[dotted]
        obj: Any = self.nexus
        for part in parts:
            if not isinstance(obj, msgspec.Struct) or part not in obj.__struct_fields__:
                obj = None
                break
            obj = getattr(obj, part)
        if isinstance(obj, msgspec.Struct):
            return obj
        known = sorted({*self._sections, *_core_section_names()})
        raise ConfigError(
            f"unknown config section {name!r}{_hint(dotted, known)}",
            key=f"{_ROOT}.{dotted}" if dotted else _ROOT,
            suggestion=_suggest(dotted, known),
        )

    def sources(self) -> dict[str, str]:
        """Where every leaf value came from, by key path (``"nexus.storage"``).

        The origin is ``"default"``, the file name, ``"code"`` (``data=``) or
        ``"env NEXUS_..."``. Sorted by key path.
        """
        return {
            _dotted(path): self._origins.get(_dotted(path), "default")
            for path in _leaf_paths(self.to_dict(), ())
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the whole configuration as builtin types, under a ``nexus`` key, as in a file."""
        table: dict[str, Any] = msgspec.to_builtins(self.nexus)
        for name in sorted(self._sections, key=lambda name: name.count(".")):
            parts = name.split(".")
            parent = table
            for part in parts[:-1]:
                parent = parent.setdefault(part, {})
            parent[parts[-1]] = msgspec.to_builtins(self._sections[name])
        return {_ROOT: table}


def app_name(title: str | None = None, file: str | os.PathLike[str] | None = None) -> str:
    """The name of an application, as its default database is named (``.nexus/<name>.db``).

    The stem of the application's ``file`` (``examples/hello.py``: ``hello``;
    a package's ``__init__.py`` or ``__main__.py``: the package's folder
    name), else the slug of its ``title`` (``"Coffee Shop"``: ``coffee-shop``),
    else ``nexus``.
    """
    if file is not None:
        path = Path(file)
        stem = path.parent.resolve().name if path.stem in {"__init__", "__main__"} else path.stem
        if stem:
            return stem
    slug = re.sub(r"[^a-z0-9]+", "-", (title or "").lower()).strip("-")
    return slug or "nexus"


def _warn_legacy_database(directory: Path | None, default: str) -> None:
    """Log once per folder that a ``nexus.db`` from before per-app databases is left unused."""
    folder = (directory or Path.cwd()).resolve()
    legacy = folder / "nexus.db"
    if folder in _LEGACY_WARNED or not legacy.is_file():
        return
    _LEGACY_WARNED.add(folder)
    _log.warning(
        "%s is no longer the default database: each application now keeps its own (%s). "
        'To keep using %s, name it explicitly: storage = "sqlite:///nexus.db" in the '
        "nexus table of the config file, or NEXUS_STORAGE=sqlite:///%s",
        legacy,
        default.removeprefix("sqlite:///"),
        legacy.name,
        legacy,
    )


def resolve_storage_url(url: str, directory: Path | None) -> str:
    """Make the relative path of a ``sqlite:///`` URL absolute against ``directory``.

    ``sqlite:///nexus.db`` with ``directory=/srv/app`` becomes
    ``sqlite:////srv/app/nexus.db``; absolute paths, ``sqlite:///:memory:``,
    other schemes and ``directory=None`` (the working directory) are returned
    unchanged.
    """
    prefix = "sqlite:///"
    if directory is None or not url.startswith(prefix):
        return url
    rest = url[len(prefix) :]
    if not rest or rest.startswith((":memory:", "/")) or "?" in rest or Path(rest).is_absolute():
        return url
    return prefix + str((directory / rest).resolve())


@contextmanager
def app_directory(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """While the block runs, configs are also looked for beside the application at ``path``.

    :func:`nexus_core.loader.load_app` wraps the import of an application
    (a file, or a module's file) in this, so a host created while it is
    imported reads ``nexus.toml`` beside the app when the working directory
    has none, and a relative storage path lands beside the config file (or the
    app) rather than in whatever directory the process was started in.
    ``path`` is the application file or its folder; ``None`` changes nothing.
    Given the file, it also names the app (:attr:`Config.app_name`: the
    file's stem), so each app of a folder has a database of its own.
    """
    if path is None:
        yield
        return
    folder = Path(path).resolve()
    file: Path | None = None
    if not folder.is_dir():
        file, folder = folder, folder.parent
    token = _APP_DIR.set(folder)
    file_token = _APP_FILE.set(file)
    try:
        yield
    finally:
        _APP_FILE.reset(file_token)
        _APP_DIR.reset(token)


def _folder_of(path: Path | None) -> Path | None:
    return None if path is None else path.resolve().parent


def check_production(
    config: Config | NexusConfig, *, storage_persistent: bool, auth_configured: bool
) -> None:
    """Refuse to start a ``production`` host without persistent storage or authentication.

    The host calls this at start-up, telling whether its storage backend keeps
    data across restarts and whether an authentication provider is set up.
    Outside ``production`` it does nothing. Raises :class:`ConfigError` naming
    every missing piece and how to fix it.
    """
    nexus = config.nexus if isinstance(config, Config) else config
    if nexus.environment != "production":
        return
    problems = []
    url = nexus.storage if isinstance(nexus.storage, str) else nexus.storage.url
    if not storage_persistent:
        problems.append(
            f"storage {url!r} does not persist data; set nexus.storage "
            "(or NEXUS_STORAGE) to a durable URL such as sqlite:///nexus.db or postgresql://..."
        )
    if not auth_configured:
        problems.append(
            "no authentication is configured; enable an auth provider "
            "(nexus.services.security.providers) and its settings"
        )
    if problems:
        raise ConfigError(
            "environment is 'production' but " + "; and ".join(problems),
            key=f"{_ROOT}.environment",
        )


# -- loading --------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    sections: Mapping[str, type | ConfigSectionSpec] = _NO_SECTIONS,
    data: Mapping[str, Any] | None = None,
    app_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Read the configuration: defaults < file (or ``data``) < ``NEXUS_*`` variables.

    ``path`` names the file (``.toml``, ``.yaml`` or ``.yml``); without it
    ``NEXUS_CONFIG`` does, else the first of :data:`CONFIG_FILE_NAMES` found in
    the working directory is read, else the first found in ``app_dir`` (by
    default the folder of the application being loaded, see
    :func:`app_directory`), if any. The result's :attr:`Config.directory`
    (the config file's folder, else ``app_dir``) is what a relative storage
    path is resolved against. ``data`` is an in-code mapping (what
    ``Nexus(config={...})`` passes) used instead of a file. ``env`` defaults to
    ``os.environ``. ``sections`` maps a dotted section path to its Struct type,
    or to the :class:`~nexus_core.specs.ConfigSectionSpec` from
    ``PluginHost.config_sections()``.

    Raises :class:`ConfigError` naming the key path and the file or variable at
    fault for an unknown key or section, a wrong type, a missing file or a
    syntax error (with its line).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    beside = Path(app_dir).resolve() if app_dir is not None else _APP_DIR.get()
    app_file = _APP_FILE.get() if app_dir is None else None
    schema = _Schema(sections)
    raw: dict[str, Any] = {}
    origins: dict[_KeyPath, str] = {}
    file_path: Path | None = None
    if data is not None:
        if path is not None:
            raise TypeError("load_config: pass either a file path or data, not both")
        table = _unwrap(msgspec.to_builtins(dict(data)), "config passed in code")
        _merge(raw, table, (), _CODE, origins)
    else:
        found = _find_file(path, environ, beside)
        if found is not None:
            file_path, label = found
            _merge(raw, _read_file(file_path, label), (), label, origins)
    for name in sorted(environ):
        if name.startswith(_ENV_PREFIX) and name not in RESERVED_ENV_VARS:
            _apply_env(raw, name, environ[name], schema, origins)
    nexus, found_sections = schema.validate(raw, origins)
    return Config(
        nexus,
        path=file_path,
        sections=found_sections,
        sources={_dotted(key): value for key, value in origins.items()},
        directory=_folder_of(file_path) if file_path is not None else beside,
        app_name=app_name(file=app_file) if app_file is not None else None,
    )


def _find_file(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str], beside: Path | None
) -> tuple[Path, str] | None:
    if path is not None:
        given, named_by = Path(path), None
    elif environ.get("NEXUS_CONFIG"):
        given, named_by = Path(environ["NEXUS_CONFIG"]), "environment variable NEXUS_CONFIG"
    else:
        for name in CONFIG_FILE_NAMES:
            if Path(name).is_file():
                return Path(name), name
        for candidate in (beside / n for n in CONFIG_FILE_NAMES) if beside is not None else ():
            if candidate.is_file():
                return candidate, str(candidate)
        return None
    label = str(given)
    if not given.is_file():
        where = f" (named by {named_by})" if named_by else ""
        raise ConfigError(f"{label}: config file not found{where}", source=label)
    return given, label


def _read_file(path: Path, label: str) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read config file: {exc}", source=label) from exc
    if suffix == ".toml":
        import tomllib

        try:
            loaded: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = getattr(exc, "lineno", None) or _line_of(str(exc))
            where = f", line {line}" if line else ""
            raise ConfigError(f"{label}{where}: invalid TOML: {exc}", source=label) from exc
    elif suffix in {".yaml", ".yml"}:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            reason = f"{problem} ({context})" if context else problem
            raise ConfigError(f"{label}{where}: invalid YAML: {reason}", source=label) from exc
        if loaded is None:
            loaded = {}
    else:
        raise ConfigError(
            f"{label}: unsupported config file type {suffix or '(none)'!r}; "
            "use .toml, .yaml or .yml",
            source=label,
        )
    return _unwrap(loaded, label)


def _line_of(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _unwrap(loaded: Any, label: str) -> dict[str, Any]:
    """Return the ``nexus`` table: the top level itself, or its ``nexus`` key when it has one."""
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{label}: expected a table of settings, got {type(loaded).__name__}", source=label
        )
    if _ROOT not in loaded:
        return loaded
    others = sorted(str(key) for key in loaded if key != _ROOT)
    if others:
        raise ConfigError(
            f"{label}: {others[0]}: unknown top-level key next to 'nexus' "
            "(put every setting under the nexus table)",
            key=others[0],
            source=label,
        )
    table = loaded[_ROOT]
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(
            f"{label}: {_ROOT}: expected a table, got {type(table).__name__}",
            key=_ROOT,
            source=label,
        )
    return table


def _merge(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: _KeyPath,
    label: str,
    origins: dict[_KeyPath, str],
) -> None:
    """Deep-merge ``src`` into ``dst``, recording ``label`` as the origin of every leaf."""
    for key, value in src.items():
        here = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, here, label, origins)
            continue
        for old in [old for old in origins if old[: len(here)] == here]:
            del origins[old]
        if isinstance(value, dict):
            dst[key] = {}
            if value:
                _merge(dst[key], value, here, label, origins)
            else:
                origins[here] = label
        else:
            dst[key] = value
            origins[here] = label


def _apply_env(
    raw: dict[str, Any],
    name: str,
    value: str,
    schema: _Schema,
    origins: dict[_KeyPath, str],
) -> None:
    source = f"environment variable {name}"
    parts = tuple(part.lower() for part in name[len(_ENV_PREFIX) :].split("__"))
    if parts[0] not in NexusConfig.__struct_fields__:
        # NEXUS_REDIS_URL and the like belong to tests and tools, not to the
        # config: only variables under a known top-level key are settings.
        _log.debug("ignoring %s: not a config key", name)
        return
    if not all(parts):
        raise ConfigError(
            f"{source}: malformed name (use NEXUS_KEY or NEXUS_TABLE__KEY, "
            "with double underscores between nested keys)",
            source=source,
        )
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    _assign_env(raw, parts, parsed, value, schema, source, f"env {name}", origins)


def _assign_env(
    raw: dict[str, Any],
    parts: _KeyPath,
    parsed: Any,
    text: str | None,
    schema: _Schema,
    source: str,
    label: str,
    origins: dict[_KeyPath, str],
) -> None:
    """Set one variable's value at ``parts``, converted to the type of that setting.

    A JSON object is spread over its keys, so each is checked (and merged over
    the file's table) on its own. ``nexus.storage`` is a URL or a table: a URL
    (``NEXUS_STORAGE``) given over a table sets its ``url``, and a key of the
    table (``NEXUS_STORAGE__CACHE``) given over a URL keeps that URL as ``url``.
    """
    if parts[:1] == ("storage",):
        stored = raw.get("storage")
        if len(parts) == 1 and isinstance(stored, dict) and not isinstance(parsed, dict):
            parts = ("storage", "url")
        elif len(parts) > 1 and isinstance(stored, str):
            raw["storage"] = {"url": stored}
            if ("storage",) in origins:
                origins[("storage", "url")] = origins.pop(("storage",))
    target = schema.type_at(parts, source)
    if isinstance(parsed, dict) and _is_table(target):
        if not parsed:  # '{}': the table exists, with its defaults
            nested: Any = {}
            for part in reversed(parts):
                nested = {part: nested}
            _merge(raw, nested, (), label, origins)
            return
        for key, item in parsed.items():
            _assign_env(raw, (*parts, str(key)), item, None, schema, source, label, origins)
        return
    candidates = [parsed] if text is None or parsed == text else [parsed, text]
    # Report the failure of the JSON form for a list or object, else of the text as typed.
    blamed = 0 if isinstance(parsed, list | dict) else len(candidates) - 1
    error: msgspec.ValidationError | None = None
    for index, candidate in enumerate(candidates):
        try:
            converted = msgspec.convert(candidate, target, strict=False)
        except msgspec.ValidationError as exc:
            if index == blamed:
                error = exc
            continue
        nested = msgspec.to_builtins(converted)
        for part in reversed(parts):
            nested = {part: nested}
        _merge(raw, nested, (), label, origins)
        return
    assert error is not None
    raise schema.error(error, parts, candidates[blamed], source)


def _is_table(tp: Any) -> bool:
    tp = _table_in(tp)
    origin = typing.get_origin(tp)
    return tp is Any or origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct))


# -- the schema: core Structs plus registered sections ------------------------------


class _Schema:
    """The core Structs and the registered sections, with key-path aware errors."""

    def __init__(self, sections: Mapping[str, type | ConfigSectionSpec]) -> None:
        self.sections: dict[_KeyPath, type[msgspec.Struct]] = {}
        for name in sorted(sections, key=lambda name: (name.count("."), name)):
            self._register(name, sections[name])

    def _register(self, name: str, factory: type | ConfigSectionSpec) -> None:
        owner = ""
        if isinstance(factory, ConfigSectionSpec):
            spec = factory
            owner = f" (plugin {spec.plugin!r})" if spec.plugin else ""
            try:
                factory = spec.load()
            except Exception as exc:
                raise ConfigError(
                    f"config section {name!r}{owner}: cannot import its Struct "
                    f"{spec.factory!r}: {type(exc).__name__}: {exc}",
                    key=f"{_ROOT}.{name}",
                ) from exc
        parts = tuple(name.split("."))
        if parts[:1] == (_ROOT,):
            parts = parts[1:]
        if not parts or not all(part.isidentifier() for part in parts):
            raise ConfigError(f"config section {name!r}{owner}: not a dotted path of names")
        if not (isinstance(factory, type) and issubclass(factory, msgspec.Struct)):
            raise ConfigError(
                f"config section {name!r}{owner}: factory must be a msgspec Struct type "
                f"(a ConfigStruct subclass), got {factory!r}",
                key=f"{_ROOT}.{name}",
            )
        parent = parts[:-1]
        parent_type = _unwrap_type(self.type_at(parent, f"config section {name!r}{owner}"))
        in_container = parent in _SECTION_CONTAINERS or parent in self.sections
        if not in_container and not _is_struct_type(parent_type):
            raise ConfigError(
                f"config section {name!r}{owner}: {_dotted(parent) or _ROOT} is not a table",
                key=f"{_ROOT}.{name}",
            )
        if _is_struct_type(parent_type) and parts[-1] in _field_types(parent_type):
            raise ConfigError(
                f"config section {name!r}{owner} clashes with the core setting {_dotted(parts)}",
                key=_dotted(parts),
            )
        self.sections[parts] = factory

    def children(self, parent: _KeyPath) -> list[str]:
        """Names of the registered sections directly under ``parent``."""
        return sorted(path[-1] for path in self.sections if path[:-1] == parent)

    def type_at(self, parts: _KeyPath, source: str) -> Any:
        """Return the type of the setting at ``parts``; unknown keys raise, naming ``source``."""
        tp: Any = NexusConfig
        for index, part in enumerate(parts):
            here = parts[: index + 1]
            if here in self.sections:
                tp = self.sections[here]
                continue
            parent = parts[:index]
            tp = _table_in(tp)
            if parent in _SECTION_CONTAINERS:
                raise self.unknown(here, source)
            if _is_struct_type(tp):
                fields = _field_types(tp)
                if part in fields:
                    tp = fields[part]
                elif _forbids_unknown(tp):
                    raise self.unknown(here, source)
                else:
                    tp = Any
            elif typing.get_origin(tp) is dict:
                tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
            elif tp is Any:
                return Any
            else:
                raise ConfigError(
                    f"{source}: {_dotted(here)}: {_dotted(parent)} is a single value, not a table",
                    key=_dotted(here),
                    source=source,
                )
        return tp

    def unknown(self, here: _KeyPath, source: str | None) -> ConfigError:
        """Build the error for a key nobody declared, listing the known ones and the closest."""
        parent = here[:-1]
        known = set(self.children(parent))
        parent_type = None
        if parent not in _SECTION_CONTAINERS:
            parent_type = _table_in(self.type_at(parent, source or "configuration"))
            if _is_struct_type(parent_type):
                known.update(_field_types(parent_type))
        is_section = parent in _SECTION_CONTAINERS or parent == ("services",)
        kind = "unknown section" if is_section else "unknown key"
        names = sorted(known)
        listed = f" (known: {', '.join(names)})" if names else " (none registered)"
        hint = _hint(here[-1], names)
        if not hint and is_section:
            hint = "; is the plugin that provides it installed and enabled?"
        prefix = f"{source}: " if source else ""
        return ConfigError(
            f"{prefix}{_dotted(here)}: {kind}{listed}{hint}",
            key=_dotted(here),
            source=source,
            suggestion=_suggest(here[-1], names),
        )

    def validate(
        self, raw: dict[str, Any], origins: Mapping[_KeyPath, str]
    ) -> tuple[NexusConfig, dict[str, Any]]:
        """Check ``raw`` against the schema; return the core settings and every section."""
        found: dict[str, Any] = {}
        # Deepest first, so a section's own sub-sections leave its table first.
        for parts in sorted(self.sections, key=len, reverse=True):
            table = _pop(raw, parts)
            found[".".join(parts)] = self._convert(
                {} if table is None else table, self.sections[parts], parts, origins
            )
        for container in _SECTION_CONTAINERS:
            leftover = raw.get(container[0])
            if isinstance(leftover, dict) and leftover:
                here = (*container, str(next(iter(leftover))))
                raise self.unknown(here, _origin(origins, here))
        nexus = self._convert(raw, NexusConfig, (), origins)
        for container in _SECTION_CONTAINERS:
            getattr(nexus, container[0]).update(
                {name: found[".".join((*container, name))] for name in self.children(container)}
            )
        return nexus, found

    def _convert(
        self, value: Any, tp: type, prefix: _KeyPath, origins: Mapping[_KeyPath, str]
    ) -> Any:
        self._check_keys(value, tp, prefix, origins)
        try:
            return msgspec.convert(value, tp)
        except msgspec.ValidationError as exc:
            raise self.error(exc, prefix, value, None, origins) from None

    def _check_keys(
        self, value: Any, tp: Any, here: _KeyPath, origins: Mapping[_KeyPath, str]
    ) -> None:
        """Reject unknown keys (with our message) and pin errors inside dicts to their key."""
        tp = _table_in(tp)
        if not isinstance(value, dict):
            return
        if _is_struct_type(tp):
            fields = _field_types(tp)
            for key, item in value.items():
                sub = (*here, str(key))
                if key in fields:
                    self._check_keys(item, fields[key], sub, origins)
                elif _forbids_unknown(tp):
                    raise self.unknown(sub, _origin(origins, sub))
        elif typing.get_origin(tp) is dict and typing.get_args(tp):
            item_type = typing.get_args(tp)[1]
            if item_type is Any:
                return
            for key, item in value.items():
                sub = (*here, str(key))
                self._check_keys(item, item_type, sub, origins)
                try:
                    msgspec.convert(item, item_type)
                except msgspec.ValidationError as exc:
                    raise self.error(exc, sub, item, None, origins) from None

    def error(
        self,
        exc: msgspec.ValidationError,
        prefix: _KeyPath,
        value: Any,
        source: str | None,
        origins: Mapping[_KeyPath, str] | None = None,
    ) -> ConfigError:
        """Turn a msgspec error at ``prefix`` into a ConfigError naming the key path and source."""
        match = _MSGSPEC_PATH.match(str(exc))
        assert match is not None
        message, sub = match.group("message"), match.group("path") or ""
        parts = list(prefix)
        bad: Any = value
        for token in re.findall(r"\.(\w+)|\[(\d+)\]", sub):
            key, index = token
            parts.append(key if key else f"[{index}]")
            try:
                bad = bad[key] if key else bad[int(index)]
            except (KeyError, IndexError, TypeError):
                bad = msgspec.UNSET
        path = tuple(parts)
        if source is None:
            source = _origin(origins or {}, path)
        reason = self._reason(message, path, bad)
        prefix_text = f"{source}: " if source else ""
        key = _dotted(path).replace(".[", "[")
        return ConfigError(f"{prefix_text}{key}: {reason}", key=key, source=source)

    def _reason(self, message: str, path: _KeyPath, bad: Any) -> str:
        shown = "" if bad is msgspec.UNSET or bad is None else f" {_short_repr(bad)}"
        try:
            tp = _unwrap_type(self.type_at(tuple(p for p in path if not p.startswith("[")), ""))
        except ConfigError:
            tp = None
        choices = _literal_choices(tp)
        if choices is not None:
            return f"expected one of {', '.join(map(repr, choices))}, got{shown}"
        expected = _EXPECTED.match(message)
        if expected:
            return f"expected {expected.group('want')}, got {expected.group('got')}{shown}"
        return message[:1].lower() + message[1:]


def _pop(raw: dict[str, Any], parts: _KeyPath) -> Any:
    parent: Any = raw
    for part in parts[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if isinstance(parent, dict):
        return parent.pop(parts[-1], None)
    return None


def _origin(origins: Mapping[_KeyPath, str], path: _KeyPath) -> str | None:
    """Name where the value at ``path`` (or under it, or above it) came from, for a message."""
    clean = tuple(part for part in path if not part.startswith("["))
    found = next(
        (origins[clean[:size]] for size in range(len(clean), -1, -1) if clean[:size] in origins),
        None,
    )
    if found is None:
        found = next((label for key, label in origins.items() if key[: len(clean)] == clean), None)
    if found == _CODE:
        return "config passed in code"
    if found is not None and found.startswith("env "):
        return f"environment variable {found[4:]}"
    return found


# -- small helpers ---------------------------------------------------------------


def _dotted(parts: _KeyPath) -> str:
    return ".".join((_ROOT, *parts))


def _unwrap_type(tp: Any) -> Any:
    """Strip ``Annotated`` and ``Optional`` (``X | None`` with a single ``X``)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1:
            return _unwrap_type(args[0])
    return tp


def _table_in(tp: Any) -> Any:
    """``tp`` unwrapped; of a union of a value and a table (``str | StorageConfig``), the table."""
    tp = _unwrap_type(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            inner = _unwrap_type(arg)
            if _is_struct_type(inner) or typing.get_origin(inner) is dict:
                return inner
    return tp


def _is_struct_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _field_types(tp: type[msgspec.Struct]) -> dict[str, Any]:
    return {field.encode_name: field.type for field in msgspec.structs.fields(tp)}


def _forbids_unknown(tp: type[msgspec.Struct]) -> bool:
    return bool(tp.__struct_config__.forbid_unknown_fields)


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


def _core_section_names() -> Iterator[str]:
    def walk(tp: type[msgspec.Struct], prefix: _KeyPath) -> Iterator[str]:
        for name, field_type in _field_types(tp).items():
            inner = _unwrap_type(field_type)
            if _is_struct_type(inner):
                yield ".".join((*prefix, name))
                yield from walk(inner, (*prefix, name))

    return walk(NexusConfig, ())


def _leaf_paths(value: Any, prefix: _KeyPath) -> Iterator[_KeyPath]:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from _leaf_paths(value[key], (*prefix, str(key)))
    elif prefix:
        yield prefix[1:] if prefix[:1] == (_ROOT,) else prefix


def _suggest(name: str, known: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, known, n=1)
    return matches[0] if matches else None


def _hint(name: str, known: list[str]) -> str:
    suggestion = _suggest(name, known)
    return f"; did you mean {suggestion!r}?" if suggestion else ""


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
