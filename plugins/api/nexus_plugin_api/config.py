"""``nexus.channels.api``: the settings of the HTTP channel.

Set them in ``nexus.toml``::

    [nexus.channels.api]
    port = 8080
    cors_origins = ["https://app.example.com"]

or in the environment: ``NEXUS_CHANNELS__API__PORT=8080``.
"""

from __future__ import annotations

import logging

from nexus_core.plugin import ConfigError, ConfigStruct

__all__ = ["ApiConfig", "check_config"]

log = logging.getLogger("nexus.api")


class ApiConfig(ConfigStruct, kw_only=True):
    """Settings of the API channel; every field has a default.

    ``cors_origins`` lists the browser origins allowed to call the API (``"*"``
    for any, refused when the environment is ``production``). ``ws_origins``
    lists the origins allowed to open ``/ws``; when empty, ``cors_origins``
    apply. A WebSocket without an ``Origin`` header (not a browser) or from the
    server's own origin is always allowed. ``docs`` serves ``/openapi.json``
    and ``/docs`` (with authentication on, they list only what the caller may
    run). ``session_cookie`` is the name of the cookie that carries the
    session (``""`` or ``None``: header ``X-Nexus-Session`` only).
    ``graceful_timeout`` is how long a stopping server waits for in-flight
    requests (runs) to finish.

    Limits, enforced as the bytes arrive, before any work (see
    :mod:`nexus_plugin_api._limits`): ``max_request_line`` (414),
    ``max_header_bytes`` for the request line and headers together and
    ``max_header_count`` (431), ``max_body_bytes`` (413, also the largest
    WebSocket message), ``header_timeout`` seconds for the headers to arrive
    and ``body_timeout`` seconds for the body after them (408).
    ``max_connections`` caps concurrent connections and requests (503 above;
    ``None``: no cap).

    ``metrics_token``: when set, ``GET /metrics`` needs ``Authorization:
    Bearer <metrics_token>``; when unset and authentication is on, it needs a
    principal allowed ``metrics:read``. ``public_url`` is the externally
    visible base URL (``https://api.example.com``), used wherever the server
    names itself (the OpenAPI ``servers`` entry); nothing is ever taken from
    the ``Host`` header.

    ``rate_limit`` is deprecated and ignored: the host rate-limits every
    channel (``nexus.services.security.rate_limits``, per principal and per
    client address, trusted proxies honoured).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    root_path: str = ""
    cors_origins: list[str] = []
    ws_origins: list[str] = []
    rate_limit: int | None = None
    max_body_bytes: int = 1_048_576
    max_request_line: int = 8_192
    max_header_bytes: int = 32_768
    max_header_count: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int | None = None
    metrics_token: str | None = None
    public_url: str | None = None
    docs: bool = True
    session_cookie: str | None = "nexus_session"
    sse_keepalive: float = 15.0
    graceful_timeout: float = 30.0
    access_log: bool = False
    backlog: int = 2048


def check_config(config: ApiConfig, *, environment: str) -> None:
    """Refuse settings that are unsafe or meaningless; raise :class:`ConfigError` naming the key."""
    prefix = "nexus.channels.api"
    if environment == "production":
        for key in ("cors_origins", "ws_origins"):
            if "*" in getattr(config, key):
                raise ConfigError(
                    f"{prefix}.{key}: a wildcard origin '*' is refused when environment is "
                    "'production'; list the allowed origins",
                    key=f"{prefix}.{key}",
                )
    if not 0 <= config.port <= 65535:
        raise ConfigError(
            f"{prefix}.port: expected 0..65535, got {config.port}", key=f"{prefix}.port"
        )
    if config.workers < 1:
        raise ConfigError(
            f"{prefix}.workers: expected at least 1, got {config.workers}", key=f"{prefix}.workers"
        )
    if config.max_body_bytes < 1:
        raise ConfigError(
            f"{prefix}.max_body_bytes: expected a positive size, got {config.max_body_bytes}",
            key=f"{prefix}.max_body_bytes",
        )
    for key in ("max_request_line", "max_header_bytes", "max_header_count"):
        if getattr(config, key) < 1:
            raise ConfigError(
                f"{prefix}.{key}: expected a positive number, got {getattr(config, key)}",
                key=f"{prefix}.{key}",
            )
    if config.max_request_line > config.max_header_bytes:
        raise ConfigError(
            f"{prefix}.max_request_line: {config.max_request_line} is over max_header_bytes "
            f"({config.max_header_bytes}), which counts the request line too",
            key=f"{prefix}.max_request_line",
        )
    for key in ("header_timeout", "body_timeout"):
        if not getattr(config, key) > 0:
            raise ConfigError(
                f"{prefix}.{key}: expected a positive number of seconds, "
                f"got {getattr(config, key)}",
                key=f"{prefix}.{key}",
            )
    if config.max_connections is not None and config.max_connections < 1:
        raise ConfigError(
            f"{prefix}.max_connections: expected a positive number or none, "
            f"got {config.max_connections}",
            key=f"{prefix}.max_connections",
        )
    if config.public_url is not None and not config.public_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{prefix}.public_url: expected an http:// or https:// URL, got {config.public_url!r}",
            key=f"{prefix}.public_url",
        )
    if config.rate_limit is not None:
        log.warning(
            "%s.rate_limit = %s is deprecated and ignored: set nexus.services.security.rate_limits "
            "(per_client, per_principal) instead",
            prefix,
            config.rate_limit,
        )
