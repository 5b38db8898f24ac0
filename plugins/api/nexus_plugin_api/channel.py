"""The ``api`` channel: serves the HTTP application with uvicorn inside the host's task group.

The host starts it (``app.running(channels=["api"])``, ``app.serve()``); it binds
``host:port`` from ``nexus.channels.api`` unless :func:`~.serving.serve` handed it
an already-bound socket (several workers share one).
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import socket
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from nexus_core.plugin import ChannelCapabilities, ConfigError

from ._limits import Limits, limited_protocol
from ._state import ApiState
from .config import ApiConfig, check_config

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["ApiChannel", "bind_socket", "inherited_sockets"]

log = logging.getLogger("nexus.api")

#: Sockets bound by ``serve()`` for the channel the host is about to start.
inherited_sockets: contextvars.ContextVar[list[socket.socket] | None] = contextvars.ContextVar(
    "nexus_api_sockets", default=None
)


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind a listening TCP socket (``port=0``: any free port); errors name the address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"nexus.channels.api.host: cannot resolve {host!r}: {exc.strerror}",
            key="nexus.channels.api.host",
        ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"nexus.channels.api.port: cannot listen on {host}:{port}: {exc.strerror or exc}",
            key="nexus.channels.api.port",
        ) from exc
    sock.set_inheritable(True)
    return sock


class ApiChannel:
    """The HTTP channel: REST, WebSocket, SSE, OpenAPI, health and metrics on one port.

    ``run`` serves until cancelled (then stops at once) or until :meth:`stop`
    (then drains: no new connections, open streams end, requests in flight,
    which wait for their runs, get ``graceful_timeout`` seconds to finish).
    """

    name = "api"
    capabilities = ChannelCapabilities(
        invoke=True, stream_events=True, sessions=True, interactive=False
    )

    def __init__(self, app: Nexus, config: ApiConfig | None = None) -> None:
        config = config if config is not None else ApiConfig()
        check_config(config, environment=app.config.nexus.environment)
        self.app = app
        self.config = config
        self.state = ApiState(app, config)
        self.port: int | None = None
        self._sockets = inherited_sockets.get()
        self._server: Any = None
        self._stopped = anyio.Event()

    def __repr__(self) -> str:
        return f"<ApiChannel {self.url or 'not listening'}>"

    @property
    def url(self) -> str | None:
        """``http://host:port`` once listening."""
        if self.port is None:
            return None
        host = self.config.host if not self._sockets else self._sockets[0].getsockname()[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or stopped; ``task_status.started()`` once listening."""
        import uvicorn

        from .asgi import create_app
        from .realtime import DENIALS

        config = self.config
        owned = self._sockets is None
        sockets = self._sockets or [bind_socket(config.host, config.port, config.backlog)]
        self.port = sockets[0].getsockname()[1]
        try:
            asgi_app = create_app(self.app, config, state=self.state)
            protocol = limited_protocol(Limits.from_config(config))
            uv_config = uvicorn.Config(
                asgi_app,
                http=protocol if protocol is not None else "auto",
                h11_max_incomplete_event_size=config.max_header_bytes,
                limit_concurrency=config.max_connections,
                lifespan="on",
                log_config=None,
                access_log=config.access_log,
                proxy_headers=False,  # the security layer decides whom to trust
                server_header=False,
                timeout_graceful_shutdown=math.ceil(config.graceful_timeout),
                ws_max_size=config.max_body_bytes,
                backlog=config.backlog,
                root_path=config.root_path,
            )
            uv_config.load()
            server = self._server = uvicorn.Server(uv_config)
            server.lifespan = uv_config.lifespan_class(uv_config)
            try:
                await server.startup(sockets=sockets)
            except SystemExit:
                raise RuntimeError(
                    "the API server could not start: its lifespan (a mounted app) failed; "
                    "see the log above"
                ) from None
        except BaseException:
            if owned:
                for sock in sockets:
                    sock.close()
            raise
        log.info(
            "Nexus API of %r serving on %s (docs: %s/docs)", self.app.title, self.url, self.url
        )
        self._warn_if_open(sockets[0])
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(DENIALS)
        uvicorn_log.addFilter(_not_cancelled)
        task_status.started()
        try:
            await self._serve(server, sockets if owned else None)
        finally:
            uvicorn_log.removeFilter(DENIALS)
            uvicorn_log.removeFilter(_not_cancelled)

    def _warn_if_open(self, sock: socket.socket) -> None:
        """Development mode (auth off) on an address others can reach: say what that means."""
        if self.app.security.auth_required:
            return
        address = sock.getsockname()[0]
        try:
            loopback = ipaddress.ip_address(address.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            log.warning(
                "authentication is off and the API listens on %s, which is not a loopback "
                "address: anyone on the network can run every workflow. Turn authentication on "
                "(nexus.services.security.auth_enabled = true, or environment = staging or "
                "production) or listen on 127.0.0.1",
                address,
            )

    async def _serve(self, server: Any, sockets: list[socket.socket] | None) -> None:
        try:
            await server.main_loop()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.state.close_streams()
                server.force_exit = True
                await server.shutdown(sockets=sockets)
            self._stopped.set()
            raise
        try:
            await self.state.close_streams()
            await server.shutdown(sockets=sockets)
            if server.force_exit and getattr(server, "lifespan", None) is not None:
                # uvicorn skips the lifespan's shutdown when forced (a second
                # Ctrl-C); left waiting, its task would be cancelled at exit.
                with anyio.move_on_after(2):
                    await server.lifespan.shutdown()
        finally:
            self._stopped.set()
            log.info("Nexus API stopped")

    def stop(self, *, force: bool = False) -> None:
        """Stop gracefully (``force``: without waiting for requests in flight)."""
        self.state.closing = True
        server = self._server
        if server is None:
            self._stopped.set()
            return
        server.should_exit = True
        if force:
            server.force_exit = True

    async def wait_stopped(self) -> None:
        """Return once :meth:`run` has finished shutting down."""
        await self._stopped.wait()

    async def ready(self) -> bool:
        """Listening and not shutting down."""
        server = self._server
        return bool(server is not None and server.started and not self.state.closing)


def _not_cancelled(record: logging.LogRecord) -> bool:
    """Drop uvicorn's ERROR tracebacks of a ``CancelledError``: a forced stop, not a fault.

    A second Ctrl-C stops without waiting for requests in flight; their tasks
    (and the lifespan's) end cancelled, which uvicorn would log as errors.
    """
    import asyncio

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, asyncio.CancelledError)
