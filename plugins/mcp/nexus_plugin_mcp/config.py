"""``nexus.channels.mcp``: the MCP channel's settings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from nexus_core.plugin import ConfigError, ConfigStruct

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["DiscoveredServer", "MCPConfig", "mcp_config"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class DiscoveredServer(ConfigStruct, kw_only=True):
    """One external MCP server of ``channels.mcp.service_discovery``.

    ``name`` prefixes its tools' node types (``"<name>.<tool>"``). Exactly one
    of ``command`` (a stdio server's argv, with ``env`` added to its
    environment and ``cwd`` its working directory) and ``url`` (streamable
    HTTP, with ``headers`` and a bearer token from the environment variable
    ``token_env``). ``timeout`` bounds connecting and listing, and each tool
    call, in seconds. A server that cannot be reached at start is logged and
    retried in the background; with ``required = true`` it stops the start.
    ``mode`` is the ``mcp`` client's negotiation (``"auto"`` or ``"legacy"``).
    """

    name: str
    command: list[str] | None = None
    url: str | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    headers: dict[str, str] = {}
    token_env: str | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    required: bool = False
    mode: Literal["auto", "legacy"] = "auto"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_' and '-'")
        if (self.url is None) == (self.command is None):
            raise ValueError(f"server {self.name!r}: set exactly one of 'command' and 'url'")
        if self.command is not None and not self.command:
            raise ValueError(f"server {self.name!r}: the command is empty")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"server {self.name!r}: expected an http(s) URL, got {self.url!r}")

    @property
    def label(self) -> str:
        """The server for a message: its URL or its command line."""
        return self.url or " ".join(self.command or ())


class MCPConfig(ConfigStruct, kw_only=True):
    """Settings of the MCP channel (``[nexus.channels.mcp]`` in ``nexus.toml``).

    ``port``
        serve streamable HTTP on its own port when the host starts the ``mcp``
        channel (``nexus serve``). ``None`` (the default): the endpoint is
        mounted at ``/mcp`` on the API server when nexus-plugin-api is
        installed, and stdio is served by ``nexus mcp APP``.
    ``host``
        the interface the standalone server binds.
    ``path``
        where the standalone server answers MCP requests.
    ``stateless``
        serve 2025-11-25 clients without ``Mcp-Session-Id`` sessions, so any
        replica behind a load balancer can answer any request. 2026-07-28
        clients are always served statelessly.
    ``json_response``
        answer with one JSON body instead of an SSE stream (no progress
        notifications then).
    ``resource_url``
        the canonical URL of the MCP endpoint, announced in the protected
        resource metadata and in ``WWW-Authenticate``; when unset, the
        address the server listens on (never a request's ``Host`` header).
    ``authorization_servers`` / ``scopes``
        published in the OAuth protected resource metadata (RFC 9728).
    ``allowed_hosts`` / ``allowed_origins``
        turn on the ``mcp`` package's DNS-rebinding protection with these
        ``Host`` / ``Origin`` values (``"localhost:*"`` patterns allowed).
    ``session_idle_timeout``
        seconds after which an idle 2025-11-25 HTTP session is closed.
    ``telemetry``
        keep the ``mcp`` package's OpenTelemetry middleware (a span per
        message; a no-op until an exporter is installed).
    ``service_discovery``
        external MCP servers (:class:`DiscoveredServer`: a stdio ``command``
        or an HTTP ``url``) the host connects to at start; each of their
        tools becomes a node type ``"<name>.<tool>"`` for workflows registered
        from then on (see :mod:`nexus_plugin_mcp.discovery`).
    ``capability_caching`` / ``capability_cache_ttl``
        keep each server's tool list for ``capability_cache_ttl`` seconds
        (refetched when older, and at once on ``notifications/tools/list_changed``);
        off, the list is fetched again before every tool call.
    """

    host: str = "127.0.0.1"
    port: int | None = None
    path: str = "/mcp"
    stateless: bool = False
    json_response: bool = False
    resource_url: str | None = None
    authorization_servers: list[str] = []
    scopes: list[str] = []
    allowed_hosts: list[str] = []
    allowed_origins: list[str] = []
    session_idle_timeout: float = 1800.0
    telemetry: bool = True
    service_discovery: list[DiscoveredServer] = []
    capability_caching: bool = True
    capability_cache_ttl: Annotated[float, msgspec.Meta(gt=0)] = 300.0

    def __post_init__(self) -> None:
        names = [server.name for server in self.service_discovery]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"service_discovery: server name {twice[0]!r} is used twice")


def mcp_config(app: Nexus) -> MCPConfig:
    """The host's ``channels.mcp`` section, or the defaults when it is not registered."""
    try:
        section = app.config.section("channels.mcp")
    except ConfigError:
        return MCPConfig()
    return section if isinstance(section, MCPConfig) else MCPConfig()
