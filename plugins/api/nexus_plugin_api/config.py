"""``nexus.channels.api``: the settings of the HTTP channel.

Set them in ``nexus.toml``::

    [nexus.channels.api]
    port = 8080
    cors_origins = ["https://app.example.com"]

or in the environment: ``NEXUS_CHANNELS__API__PORT=8080``.
"""

from __future__ import annotations

from nexus_core.config import ConfigError, ConfigStruct

__all__ = ["ApiConfig", "check_config"]


class ApiConfig(ConfigStruct, kw_only=True):
    """Settings of the API channel; every field has a default.

    ``cors_origins`` lists the browser origins allowed to call the API (``"*"``
    for any, refused when the environment is ``production``). ``ws_origins``
    lists the origins allowed to open ``/ws``; when empty, ``cors_origins``
    apply. A WebSocket without an ``Origin`` header (not a browser) or from the
    server's own origin is always allowed. ``rate_limit`` is requests per
    minute per client on every route (``None``: no limit at the HTTP layer;
    the host's own limits still apply to invocations). ``max_body_bytes``
    bounds request bodies (413 above it). ``docs`` serves ``/openapi.json``
    and ``/docs``. ``session_cookie`` is the name of the cookie that carries
    the session (``""`` or ``None``: header ``X-Nexus-Session`` only).
    ``graceful_timeout`` is how long a stopping server waits for in-flight
    requests (runs) to finish.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    root_path: str = ""
    cors_origins: list[str] = []
    ws_origins: list[str] = []
    rate_limit: int | None = None
    max_body_bytes: int = 1_048_576
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
    if config.rate_limit is not None and config.rate_limit < 1:
        raise ConfigError(
            f"{prefix}.rate_limit: expected a positive number of requests per minute or none, "
            f"got {config.rate_limit}",
            key=f"{prefix}.rate_limit",
        )
