"""Streamable HTTP: the ``/mcp`` endpoint, its bearer-token gate and OAuth metadata.

:func:`make_asgi` is the factory the API plugin mounts at ``/mcp`` (through the
``nexus_api_mounts`` hook); the object it returns is an ASGI app with a
``lifespan()`` context manager that runs the ``mcp`` session manager. The
manager serves both protocols on one endpoint: 2025-11-25 clients (handshake,
``Mcp-Session-Id``, or no sessions with ``stateless = true``) and 2026-07-28
clients (every POST self-contained, so any replica can answer it).

Every request's :class:`~nexus_core.security.Credentials` (bearer token,
``X-API-Key``, peer address, ``X-Forwarded-For``, the other headers in
``extras``) are handed to the core, which authenticates them (a tool call
hands them to ``app.invoke``). A missing
or bad token is answered ``401`` with ``WWW-Authenticate: Bearer
resource_metadata="..."`` pointing at the OAuth protected resource metadata
(RFC 9728), which :func:`make_metadata_asgi` serves. Its URL comes from
``resource_url`` in the configuration, else from the address the server is
listening on: never from the request's ``Host`` header.

A 2025-11-25 session (``Mcp-Session-Id``) belongs to the principal that
opened it: a request with another principal's session id is answered ``404``
as if the session did not exist, so nobody reads another's notifications or
progress. Beside each session the core re-checks its credentials
(``app.security.until_invalid``); once they expire or are revoked the session
is told why (``notifications/message``) and closed, and later requests with
its id are answered ``404`` with that reason.

:func:`serve_http` runs a standalone server (uvicorn) with the endpoint and the
metadata, for ``python -m nexus_plugin_mcp APP --http`` and the ``mcp`` channel
with a ``port``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from mcp.server.streamable_http import (
    GET_STREAM_KEY,
    MCP_SESSION_ID_HEADER,
    EventMessage,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import INVALID_REQUEST, JSONRPCNotification
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from nexus_core.errors import AuthenticationError, RateLimited
from nexus_core.security import Credentials, Principal, header_extras

from .config import MCPConfig, mcp_config
from .server import CREDENTIALS_SCOPE_KEY, PRINCIPAL_SCOPE_KEY, NexusMCP

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

_NOT_STARTED = (
    "the MCP endpoint is not started: its lifespan did not run. Mounted inside another "
    "ASGI app? Enter the API app's lifespan() in yours (docs/how-to/embed-nexus.md)"
)

log = logging.getLogger("nexus.mcp")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: RFC 9728 well-known path; the resource's own path is appended to it.
METADATA_PATH = "/.well-known/oauth-protected-resource"
#: How many closed sessions' reasons are remembered (for their later requests).
_CLOSED_KEPT = 4096
_SESSION_HEADER = MCP_SESSION_ID_HEADER.lower().encode("latin-1")
_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("latin-1")
#: Who a session belongs to: (tenant, principal id, anonymous).
_Owner = tuple[str, str, bool]


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
    """The origin of the address this server listens on: ``scope["server"]``, never ``Host``.

    ``Host`` is whatever the client wrote; the server address is the
    socket's own. Set ``resource_url`` to announce a public name instead.
    """
    name, port = scope.get("server") or ("localhost", None)
    name = f"[{name}]" if ":" in str(name) else str(name)
    scheme = scope.get("scheme", "http")
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{name}" if port in (None, default) else f"{scheme}://{name}:{port}"


def _owner(principal: Principal) -> _Owner:
    return (principal.tenant, principal.id, principal.anonymous)


class _Session:
    """A 2025-11-25 HTTP session: whose it is, and the re-check of its credentials."""

    __slots__ = ("credentials", "owner", "principal", "recheck")

    def __init__(self, principal: Principal, credentials: Credentials) -> None:
        self.owner = _owner(principal)
        self.principal = principal
        self.credentials = credentials
        self.recheck = anyio.CancelScope()


class _SessionManager(StreamableHTTPSessionManager):
    """The ``mcp`` session manager, telling the endpoint when a session ends.

    However a session ends (client ``DELETE``, idle timeout, crash, closed
    here), the manager discards it; ``on_discard`` hears of it then.
    """

    def __init__(self, *args: Any, on_discard: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_discard = on_discard

    async def _discard_session(
        self, session_id: str, transport: StreamableHTTPServerTransport
    ) -> None:
        self._on_discard(session_id)
        await super()._discard_session(session_id, transport)

    async def close_session(self, session_id: str, message: str) -> None:
        """Tell the session's client ``message`` (``notifications/message``), then end it.

        The notice goes out on the session's open ``GET`` stream, which is
        then ended gracefully (its writer drains it first); the session is
        terminated after, which ends any other stream it has open.
        """
        transport = self._server_instances.get(session_id)
        if transport is None:
            return
        streams = getattr(transport, "_request_streams", {})
        standalone = streams.get(GET_STREAM_KEY)
        if standalone is not None:
            notice = JSONRPCNotification(
                jsonrpc="2.0",
                method="notifications/message",
                params={"level": "error", "logger": "nexus.mcp", "data": message},
            )
            with anyio.move_on_after(2), contextlib.suppress(Exception):
                await standalone[0].send(EventMessage(notice, None))
                standalone[0].close()  # the stream's writer sends what it holds, then ends
                while streams.get(GET_STREAM_KEY) is standalone:  # noqa: ASYNC110 - no event
                    await anyio.sleep(0.01)
        await self._discard_session(session_id, transport)


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


async def _too_many(send: Send, exc: RateLimited) -> None:
    """``429`` with ``Retry-After`` (whole seconds, at least 1) and the reason."""
    wait = max(1, math.ceil(exc.retry_after))
    body = {"error": "rate_limited", "message": exc.message, "retry_after": exc.retry_after}
    await _send_json(send, 429, body, [(b"retry-after", str(wait).encode())])


class MCPHttpApp:
    """The streamable HTTP endpoint: the core authenticates, then the session manager answers.

    Enter :meth:`lifespan` (the API server does, at start-up) before serving;
    the Nexus host must be running. Without a configured ``resource_url`` the
    endpoint's URL is the origin of the address the server listens on and
    ``config.path`` (``/mcp``, where both the API mount and the standalone
    server put it).
    """

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else mcp_config(app)
        self.mcp = NexusMCP(app, self.config)
        self._manager: _SessionManager | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        #: Open 2025-11-25 sessions by id.
        self._sessions: dict[str, _Session] = {}
        #: Sessions closed because their credentials stopped authenticating: owner, reason.
        self._closed: OrderedDict[str, tuple[_Owner, str]] = OrderedDict()

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
        manager = _SessionManager(
            app=self.mcp.server,
            json_response=self.config.json_response,
            stateless=self.config.stateless,
            security_settings=self._security_settings(),
            session_idle_timeout=self.config.session_idle_timeout,
            on_discard=self._forget,
        )
        async with manager.run(), anyio.create_task_group() as tg:
            self._manager, self._task_group = manager, tg
            try:
                yield
            finally:
                self._manager = self._task_group = None
                tg.cancel_scope.cancel()

    def resource_url(self, scope: Scope) -> str:
        """The canonical URL of this endpoint: configured, or the server's address + ``path``."""
        return self.config.resource_url or _base_url(scope) + self.config.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request's credentials to the core, then let the session manager answer."""
        if scope["type"] == "lifespan":
            await _lifespan_protocol(self.lifespan, receive, send)
            return
        if scope["type"] != "http":
            return
        manager = self._manager
        if manager is None:
            await _send_json(send, 503, {"error": _NOT_STARTED})
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
            extras=header_extras(scope.get("headers", ())),
        )
        try:
            principal = await self.app.security.authenticate(credentials, "mcp", audit=True)
        except AuthenticationError as exc:
            await self._unauthorized(scope, send, exc, presented=credentials.presented)
            return
        except RateLimited as exc:  # too many failed authentications from this client
            await _too_many(send, exc)
            return
        session_id = _header(scope, _SESSION_HEADER)
        if session_id is None and self._opens_session(scope):
            # Each session holds a task and a re-check: opening them is limited per client.
            try:
                await self.app.security.limit("session_creation", credentials, "mcp", principal)
            except RateLimited as exc:
                await _too_many(send, exc)
                return
        if session_id is not None and not await self._admit(session_id, principal, credentials):
            await self._session_refused(scope, send, session_id, principal)
            return
        scope = dict(scope)
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope[CREDENTIALS_SCOPE_KEY] = credentials
        if session_id is None and not self.config.stateless:
            send = self._binding(send, principal, credentials)
        await manager.handle_request(scope, receive, send)

    # -- sessions, bound to their principal ------------------------------------------------

    def _opens_session(self, scope: Scope) -> bool:
        """Whether the request may open a 2025-11-25 session (a POST without one, handshake era)."""
        if self.config.stateless or scope.get("method") != "POST":
            return False
        version = _header(scope, _VERSION_HEADER)
        return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS

    async def _admit(self, session_id: str, principal: Principal, credentials: Credentials) -> bool:
        """Whether ``principal`` may use session ``session_id``; newer credentials are kept."""
        session = self._sessions.get(session_id)
        if session is None:
            # Unknown here: the session manager answers (404 for an unknown id).
            return session_id not in self._closed
        if session.owner != _owner(principal):
            return False
        if credentials != session.credentials:
            # A refreshed token (or another credential) of the same principal: from now
            # on the session lives as long as these do.
            session.credentials, session.principal = credentials, principal
            session.recheck.cancel()
            self._recheck(session_id, session)
        return True

    def _binding(self, send: Send, principal: Principal, credentials: Credentials) -> Send:
        """``send``, binding the session a response opens to ``principal``."""

        async def bind(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message.get("status", 500) < 400:
                for key, value in message.get("headers", ()):
                    if key.lower() == _SESSION_HEADER:
                        self._open(value.decode("latin-1"), principal, credentials)
                        break
            await send(message)

        return bind

    def _open(self, session_id: str, principal: Principal, credentials: Credentials) -> None:
        if session_id in self._sessions:
            return
        session = _Session(principal, credentials)
        self._sessions[session_id] = session
        self._recheck(session_id, session)

    def _recheck(self, session_id: str, session: _Session) -> None:
        """Watch the session's credentials; close it with the reason when they end."""
        tg = self._task_group
        if tg is None:
            return
        scope = session.recheck = anyio.CancelScope()

        async def recheck() -> None:
            with scope:
                reason = await self.mcp.until_invalid(session.credentials, session.principal)
                with anyio.CancelScope(shield=True):
                    await self._close(session_id, session, reason)

        tg.start_soon(recheck)

    async def _close(self, session_id: str, session: _Session, reason: str) -> None:
        log.info("closing MCP session of %r: %s", session.principal.id, reason)
        # First refuse the session's requests (with the reason), then end what is open.
        self._sessions.pop(session_id, None)
        self._closed[session_id] = (session.owner, reason)
        while len(self._closed) > _CLOSED_KEPT:
            self._closed.popitem(last=False)
        manager = self._manager
        if manager is not None:
            await manager.close_session(session_id, f"the MCP session was closed: {reason}")

    def _forget(self, session_id: str) -> None:
        """The session ended (however): stop re-checking it."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.recheck.cancel()

    async def _session_refused(
        self, scope: Scope, send: Send, session_id: str, principal: Principal
    ) -> None:
        """``404``: the session is not one of this principal's (or was closed, with why)."""
        closed = self._closed.get(session_id)
        if closed is not None and closed[0] == _owner(principal):
            message = (
                f"Session not found: the MCP session was closed: {closed[1]}; "
                "initialize a new session"
            )
        else:
            # Another principal's session: answered as an unknown one, so the refusal
            # tells nothing about it. Audited, since someone presented an id not theirs.
            message = (
                "Session not found: no MCP session with this Mcp-Session-Id is open for "
                "the caller; initialize a new session"
            )
            with contextlib.suppress(Exception):
                await self.app.security.audit(
                    action="mcp.session",
                    outcome="not_found",
                    principal=principal,
                    channel="mcp",
                    reason="a request carried the Mcp-Session-Id of another principal",
                )
        body = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": INVALID_REQUEST, "message": message},
        }
        await _send_json(send, 404, body)

    async def _unauthorized(
        self, scope: Scope, send: Send, exc: AuthenticationError, *, presented: bool
    ) -> None:
        metadata = metadata_url(self.resource_url(scope))
        # RFC 6750 section 3: no error code when the request carried no token.
        params = [f'resource_metadata="{metadata}"']
        if presented:
            # A quoted-string of printable ASCII: nothing from the token can break the header.
            cleaned = "".join(c if " " <= c <= "~" else "?" for c in exc.message[:300])
            description = cleaned.replace('"', "'").replace("\\", "/")
            params[:0] = ['error="invalid_token"', f'error_description="{description}"']
        if self.config.scopes:
            params.append(f'scope="{" ".join(self.config.scopes)}"')
        challenge = "Bearer " + ", ".join(params)
        await _send_json(
            send,
            401,
            {"error": "invalid_token" if presented else "unauthorized", "message": exc.message},
            [(b"www-authenticate", challenge.encode("ascii", "replace"))],
        )


class ProtectedResourceMetadata:
    """``GET /.well-known/oauth-protected-resource[/mcp]``: RFC 9728 metadata of the endpoint."""

    def __init__(self, app: Nexus, config: MCPConfig | None = None) -> None:
        self.app = app
        self.config = config if config is not None else mcp_config(app)

    def document(self, scope: Scope) -> dict[str, Any]:
        """The metadata: ``resource_url``, else the server's own address (never ``Host``)."""
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
    capture_signals: bool = True,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app``'s MCP endpoint over streamable HTTP until cancelled.

    The host must be running. ``port=0`` picks a free port; the endpoint URL is
    passed to ``task_status.started`` and to ``announce``. ``capture_signals``
    lets uvicorn stop on Ctrl-C (standalone); as a channel of ``nexus serve``
    the host handles signals for every channel, so the channel passes False.
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
            # uvicorn's records go through the process's one handler, format and
            # level (nexus_core.logs): no handlers of its own, and no log_level,
            # which would set the level of every uvicorn in the process (the API's).
            log_config=None,
            access_log=False,
            # The peer address is the socket's: X-Forwarded-For is the core's to believe,
            # from nexus.services.security.trusted_proxies only (not uvicorn's own list).
            proxy_headers=False,
            # Open SSE streams end only when the lifespan stops the session
            # manager, which uvicorn does after the connections: don't wait long.
            timeout_graceful_shutdown=1,
        )
    )
    if not capture_signals:
        # uvicorn would take SIGINT from the host, then raise it again on exit.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
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
