"""``nexus.channels.mcp``: the MCP channel's settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_core.config import ConfigError, ConfigStruct

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["MCPConfig", "mcp_config"]


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


def mcp_config(app: Nexus) -> MCPConfig:
    """The host's ``channels.mcp`` section, or the defaults when it is not registered."""
    try:
        section = app.config.section("channels.mcp")
    except ConfigError:
        return MCPConfig()
    return section if isinstance(section, MCPConfig) else MCPConfig()
