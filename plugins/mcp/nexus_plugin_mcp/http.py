"""Streamable HTTP: the ``/mcp`` endpoint, its bearer-token gate and OAuth metadata.

:func:`make_asgi` is the factory the API plugin mounts at ``/mcp`` (through the
``nexus_api_mounts`` hook); the object it returns is an ASGI app with a
``lifespan()`` context manager that runs the ``mcp`` session manager. The
manager serves both protocols on one endpoint: 2025-11-25 clients (handshake,
``Mcp-Session-Id``, or no sessions with ``stateless = true``) and 2026-07-28
clients (every POST self-contained, so any replica can answer it).

Every request is authenticated first, with the bearer token, through the
host's auth providers. A missing or bad token is answered ``401`` with
``WWW-Authenticate: Bearer resource_metadata="..."`` pointing at the OAuth
protected resource metadata (RFC 9728), which :func:`make_metadata_asgi`
serves.

:func:`serve_http` runs a standalone server (uvicorn) with the endpoint and the
metadata, for ``python -m nexus_plugin_mcp APP --http`` and the ``mcp`` channel
with a ``port``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from nexus_core.errors import AuthenticationError
from nexus_core.security import ANONYMOUS, Credentials

from .config import MCPConfig, mcp_config
from .server import PRINCIPAL_SCOPE_KEY, NexusMCP

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = [
    "METADATA_PATH",
    "MCPHttpApp",
    "ProtectedResourceMetadata",
    "StandaloneApp",
    "make_asgi",
    "make_metadata_asgi",
    "metadata_url",
    "serve_http",
]

log = logging.getLogger("nexus.mcp")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

#: RFC 9728 well-known path; the resource's own path is appended to it.
METADATA_PATH = "/.well-known/oauth-protected-resource"


def make_asgi(app: Nexus) -> MCPHttpApp:
    """The ``HttpMountSpec`` factory: the MCP endpoint of ``app`` as an ASGI app."""
    return MCPHttpApp(app)


def make_metadata_asgi(app: Nexus) -> ProtectedResourceMetadata:
    """The ``HttpMountSpec`` factory of the OAuth protected resource metadata document."""
    return ProtectedResourceMetadata(app)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _base_url(scope: Scope) -> str:
    host = _header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def metadata_url(resource: str) -> str:
    """Where RFC 9728 puts the metadata of ``resource``: the well-known path before its path."""
    scheme, _, rest = resource.partition("://")
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}{METADATA_PATH}" + (f"/{path}" if path else "")


async def _send_json(
    send: Send, status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class MCPHttpApp:
    """The streamable HTTP endpoint: authenticate, then hand over to the session manager.

    Enter :meth:`lifespan` (the API server does, at start-up) before serving;
    the Nexus host must be running. Without a configured ``resource_url`` the
    endpoint's URL is the request's origin and ``config.path`` (``/mcp``, where
    both the API mount and the standalone server put it).
    """

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else mcp_config(app)
        self.mcp = NexusMCP(app, self.config)
        self._manager: StreamableHTTPSessionManager | None = None

    def _security_settings(self) -> TransportSecuritySettings | None:
        config = self.config
        if not (config.allowed_hosts or config.allowed_origins):
            return None
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=list(config.allowed_hosts),
            allowed_origins=list(config.allowed_origins),
        )

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the session manager (and the server's event bridges) while the block runs."""
        manager = StreamableHTTPSessionManager(
            app=self.mcp.server,
            json_response=self.config.json_response,
            stateless=self.config.stateless,
            security_settings=self._security_settings(),
            session_idle_timeout=self.config.session_idle_timeout,
        )
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    def resource_url(self, scope: Scope) -> str:
        """The canonical URL of this endpoint: configured, or the request's origin + ``path``."""
        return self.config.resource_url or _base_url(scope) + self.config.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate the request, then let the session manager answer it."""
        if scope["type"] == "lifespan":
            await _lifespan_protocol(self.lifespan, receive, send)
            return
        if scope["type"] != "http":
            return
        manager = self._manager
        if manager is None:
            await _send_json(send, 503, {"error": "the MCP endpoint is not started"})
            return
        authorization = _header(scope, b"authorization")
        token = None
        if authorization is not None:
            kind, _, value = authorization.partition(" ")
            if kind.lower() == "bearer" and value.strip():
                token = value.strip()
        credentials = Credentials(
            bearer=token,
            api_key=_header(scope, b"x-api-key"),
            client=scope["client"][0] if scope.get("client") else None,
            forwarded_for=_header(scope, b"x-forwarded-for"),
        )
        try:
            principal = await self.app.security.authenticate(credentials, "mcp")
        except AuthenticationError as exc:
            await self._unauthorized(scope, send, exc, presented=token is not None)
            return
        scope = dict(scope)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await manager.handle_request(scope, receive, send)

    async def _unauthorized(
        self, scope: Scope, send: Send, exc: AuthenticationError, *, presented: bool
    ) -> None:
        metadata = metadata_url(self.resource_url(scope))
        # RFC 6750 section 3: no error code when the request carried no token.
        params = [f'resource_metadata="{metadata}"']
        if presented:
            description = exc.message.replace('"', "'")
            params[:0] = ['error="invalid_token"', f'error_description="{description}"']
        if self.config.scopes:
            params.append(f'scope="{" ".join(self.config.scopes)}"')
        challenge = "Bearer " + ", ".join(params)
        with contextlib.suppress(Exception):  # auditing must not turn a 401 into a 500
            await self.app.security.audit(
                action="mcp.authenticate",
                outcome=exc.code,
                principal=ANONYMOUS,
                channel="mcp",
                reason=exc.message,
            )
        await _send_json(
            send,
            401,
            {"error": "invalid_token" if presented else "unauthorized", "message": exc.message},
            [(b"www-authenticate", challenge.encode())],
        )


class ProtectedResourceMetadata:
    """``GET /.well-known/oauth-protected-resource[/mcp]``: RFC 9728 metadata of the endpoint."""

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else mcp_config(app)

    def document(self, scope: Scope) -> dict[str, Any]:
        """The metadata for a request to ``scope`` (its host names the resource)."""
        config = self.config
        resource = config.resource_url or _base_url(scope) + config.path
        body: dict[str, Any] = {
            "resource": resource,
            "bearer_methods_supported": ["header"],
            "resource_name": self.app.title,
        }
        if config.authorization_servers:
            body["authorization_servers"] = list(config.authorization_servers)
        if config.scopes:
            body["scopes_supported"] = list(config.scopes)
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``GET`` with the metadata document."""
        if scope["type"] != "http":
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _send_json(send, 405, {"error": "method not allowed"}, [(b"allow", b"GET")])
            return
        await _send_json(send, 200, self.document(scope))


class StandaloneApp:
    """The MCP endpoint at ``config.path`` and its metadata, without the API server."""

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.config = config if config is not None else mcp_config(app)
        self.endpoint = MCPHttpApp(app, self.config)
        self.metadata = ProtectedResourceMetadata(app, self.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route to the endpoint or the metadata; serve the lifespan protocol."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan_protocol(self.endpoint.lifespan, receive, send)
            return
        if kind != "http":
            return
        path = scope.get("path", "")
        mcp_path = self.config.path.rstrip("/")
        if path.rstrip("/") == mcp_path:
            await self.endpoint(scope, receive, send)
        elif path.rstrip("/") in (METADATA_PATH, METADATA_PATH + mcp_path):
            await self.metadata(scope, receive, send)
        else:
            await _send_json(send, 404, {"error": f"not found; the MCP endpoint is {mcp_path}"})


async def _lifespan_protocol(
    lifespan: Callable[[], contextlib.AbstractAsyncContextManager[None]],
    receive: Receive,
    send: Send,
) -> None:
    """Serve the ASGI lifespan protocol with ``lifespan()``."""
    message = await receive()
    if message["type"] != "lifespan.startup":
        return
    try:
        async with lifespan():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()  # lifespan.shutdown
    except Exception as exc:
        log.exception("MCP endpoint failed")
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.shutdown.complete"})


async def serve_http(
    app: Nexus,
    *,
    host: str | None = None,
    port: int | None = None,
    config: MCPConfig | None = None,
    announce: Callable[[str], None] | None = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app``'s MCP endpoint over streamable HTTP until cancelled.

    The host must be running. ``port=0`` picks a free port; the endpoint URL is
    passed to ``task_status.started`` and to ``announce``.
    """
    import uvicorn

    config = config if config is not None else mcp_config(app)
    host = host or config.host
    port = config.port if port is None else port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections
    # only for sockets whose proto says TCP (with proto 0 every response would
    # wait out a delayed ACK, ~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port or 0))
    sock.listen(128)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{bound}{config.path}"
    server = uvicorn.Server(
        uvicorn.Config(
            StandaloneApp(app, config),
            lifespan="on",
            log_level="warning",
            access_log=False,
            # Open SSE streams end only when the lifespan stops the session
            # manager, which uvicorn does after the connections: don't wait long.
            timeout_graceful_shutdown=1,
        )
    )
    finished = anyio.Event()

    async def run() -> None:
        # Shielded: uvicorn shuts down (closing connections and the lifespan)
        # when asked through should_exit, not when cancelled.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                finished.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not server.started and not finished.is_set():  # noqa: ASYNC110 - uvicorn sets a flag
                await anyio.sleep(0.01)
            if not server.started:
                raise RuntimeError(f"the MCP HTTP server could not start on {url}")
            if announce is not None:
                announce(url)
            task_status.started(url)
            try:
                await finished.wait()
            finally:
                server.should_exit = True
    finally:
        sock.close()
