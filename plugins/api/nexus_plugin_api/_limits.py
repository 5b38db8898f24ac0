"""Limits on what a client may make the server hold, enforced in the HTTP protocol itself.

An ASGI application sees a request only once uvicorn has parsed (and
buffered) its request line and every header, so a cap there comes too late: a
64 MiB header is already in memory. :func:`limited_protocol` builds a subclass
of uvicorn's httptools protocol that counts bytes as they arrive and answers
before any work is done:

====================================  ======  ==========================================
the request line is over               414    ``max_request_line``
request line + headers are over        431    ``max_header_bytes``
more header fields than                431    ``max_header_count``
a body (``Content-Length`` or sent)    413    ``max_body_bytes``
headers not complete within            408    ``header_timeout`` seconds (from connect
                                              or from the request's first byte)
the body not received within           408    ``body_timeout`` seconds after the headers
====================================  ======  ==========================================

Each refusal is an ``application/problem+json`` body like every error of the
API (``code``: ``request_timeout``, ``payload_too_large``, ``uri_too_long``,
``headers_too_large``; ``errors[0].path``: ``headers``, ``body`` or
``request_line``) plus ``limit``, the setting's full name, and ``value``; then
the connection is closed (after a short lingering read, so the client reads the
answer instead of a connection reset).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import asyncio

    from .config import ApiConfig

__all__ = ["Limits", "limited_protocol", "refusal"]

log = logging.getLogger("nexus.api")

#: How long a refused connection is still read (and discarded) before it is closed.
_LINGER_SECONDS = 2.0
#: How much is read and discarded at most while lingering.
_LINGER_BYTES = 1 << 20
_encode = msgspec.json.Encoder().encode
_REASONS = {408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long"}
_REASONS[431] = "Request Header Fields Too Large"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The protocol-level limits of one server, read from :class:`~.config.ApiConfig`."""

    max_request_line: int
    max_header_bytes: int
    max_header_count: int
    max_body_bytes: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_config(cls, config: ApiConfig) -> Limits:
        """The limits set in ``nexus.channels.api``."""
        return cls(
            max_request_line=config.max_request_line,
            max_header_bytes=config.max_header_bytes,
            max_header_count=config.max_header_count,
            max_body_bytes=config.max_body_bytes,
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
        )


class _Field(msgspec.Struct):
    path: str
    reason: str


class _Refusal(msgspec.Struct, kw_only=True):
    type: str
    title: str
    status: int
    detail: str
    code: str
    limit: str
    value: float
    errors: list[_Field]


#: status -> (problem code, the part of the request it names)
_CODES = {
    408: ("request_timeout", "request"),
    413: ("payload_too_large", "body"),
    414: ("uri_too_long", "request_line"),
    431: ("headers_too_large", "headers"),
}


def refusal(status: int, limit: str, value: float, detail: str) -> bytes:
    """The whole HTTP/1.1 answer refusing a request: status line, headers, problem body."""
    code, path = _CODES[status]
    if limit == "body_timeout":
        path = "body"
    elif limit == "header_timeout":
        path = "headers"
    body = _encode(
        _Refusal(
            type=f"urn:nexus:error:{code}",
            title=_REASONS[status],
            status=status,
            detail=detail,
            code=code,
            limit=f"nexus.channels.api.{limit}",
            value=value,
            errors=[_Field(path=path, reason=detail)],
        )
    )
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def limited_protocol(limits: Limits) -> type[asyncio.Protocol] | None:
    """A uvicorn HTTP protocol class enforcing ``limits``; ``None`` without httptools.

    Without httptools (PyPy) uvicorn's h11 protocol is used with
    ``h11_max_incomplete_event_size`` (a 400 rather than 431) and Litestar's
    body limit; the timeouts then do not apply.
    """
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - CPython always has it (a dependency)
        return None

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing oversized or slow requests before the app runs."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # waiting for (the rest of) a request line and headers
            self._head_bytes = 0
            self._line_done = False
            self._tail = b""
            self._header_count = 0
            self._body_bytes = 0
            self._refused = False
            self._discarded = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._body_timer: asyncio.TimerHandle | None = None
            # Whether a head (from connect, or from a request's first byte) or a
            # body is awaited: the timers are armed or cancelled to match once
            # data_received is done, so a request that arrives whole in one read
            # (most do) costs no timer at all.
            self._head_due = False
            self._body_due = False

        # -- connection ------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._in_head = self._head_due = True
            self._settle_timers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                self._discarded += len(data)
                if self._discarded > _LINGER_BYTES:
                    self.transport.close()
                return
            if self._in_head and not self._head_fits(data):
                return
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError:
                if not self._refused:
                    raise
            except httptools.HttpParserError:
                if self._refused:
                    return
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            if not self._refused:
                self._settle_timers()

        def _head_fits(self, data: bytes) -> bool:
            """Count the bytes of the request head; refuse it once over a limit."""
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            used = len(data) if end < 0 else end + 4 - len(self._tail)
            total = self._head_bytes + used
            if not self._line_done:
                line_end = seen.find(b"\n")
                line = total if line_end < 0 else self._head_bytes + line_end - len(self._tail)
                if line > limits.max_request_line:
                    self._refuse(
                        414,
                        "max_request_line",
                        limits.max_request_line,
                        f"the request line is over {_size(limits.max_request_line)}",
                    )
                    return False
                self._line_done = line_end >= 0
            if total > limits.max_header_bytes:
                self._refuse(
                    431,
                    "max_header_bytes",
                    limits.max_header_bytes,
                    f"the request line and headers are over {_size(limits.max_header_bytes)}",
                )
                return False
            if end < 0:
                self._head_bytes = total
                self._tail = seen[-3:]
            return True

        # -- parser callbacks --------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_count = 0
            self._body_bytes = 0
            self._in_head = self._head_due = True

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_header_count:
                self._refuse(
                    431,
                    "max_header_count",
                    limits.max_header_count,
                    f"more than {limits.max_header_count} header fields",
                )
                raise _Stop
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._next_head()
            self._head_due = False
            upgrade = self.parser.should_upgrade() and self._should_upgrade()
            if not upgrade:
                length = self._content_length()
                if length is not None and length > limits.max_body_bytes:
                    self._refuse_body()
                    raise _Stop
                self._body_due = True
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            if self._body_bytes > limits.max_body_bytes:
                self._refuse_body()
                raise _Stop
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._body_due = False
            self._in_head = True  # what follows is the next request's head
            super().on_message_complete()

        # -- helpers -------------------------------------------------------------------

        def _next_head(self) -> None:
            """The head is complete: the next request's head is counted from zero."""
            self._in_head = False
            self._head_bytes = 0
            self._line_done = False
            self._tail = b""

        def _content_length(self) -> int | None:
            for name, value in self.headers:
                if name == b"content-length":
                    try:
                        return int(value)
                    except ValueError:
                        return None
            return None

        def _settle_timers(self) -> None:
            """Arm the timer of what is awaited now, cancel the others (see ``_head_due``)."""
            if self._head_due:
                if self._head_timer is None and self.transport is not None:
                    timeout = limits.header_timeout
                    self._head_timer = self.loop.call_later(timeout, self._head_too_slow)
            elif self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._body_due:
                if self._body_timer is None:
                    timeout = limits.body_timeout
                    self._body_timer = self.loop.call_later(timeout, self._body_too_slow)
            elif self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _cancel_timers(self) -> None:
            for timer in (self._head_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self._in_head or self._refused or self.transport.is_closing():
                return
            if self._head_bytes == 0:  # connected and sent nothing: close quietly
                self.transport.close()
                return
            self._refuse(
                408,
                "header_timeout",
                limits.header_timeout,
                f"the request headers were not received within {limits.header_timeout:g} s",
            )

        def _body_too_slow(self) -> None:
            self._body_timer = None
            if self._refused or self.transport.is_closing():
                return
            self._refuse(
                408,
                "body_timeout",
                limits.body_timeout,
                f"the request body was not received within {limits.body_timeout:g} s",
            )

        def _refuse_body(self) -> None:
            self._refuse(
                413,
                "max_body_bytes",
                limits.max_body_bytes,
                f"the request body is over {_size(limits.max_body_bytes)}",
            )

        def _refuse(self, status: int, limit: str, value: float, detail: str) -> None:
            """Answer ``status`` (unless a response has started), stop reading, close soon."""
            self._refused = True
            self._cancel_timers()
            cycle = self.cycle
            started = cycle is not None and cycle.response_started and not cycle.response_complete
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app (if running) sees http.disconnect
                cycle.message_event.set()
            self.pipeline.clear()
            log.info("refused a request from %s: %s (%s)", _peer(self.client), detail, status)
            transport = self.transport
            if transport.is_closing():
                return
            if started:
                transport.close()
                return
            transport.write(refusal(status, limit, value, detail))
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, transport.close)

    return LimitedHttpToolsProtocol


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
