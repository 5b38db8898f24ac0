"""Reading what a request carries (credentials, session, preferences) in one pass over headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from litestar.exceptions import ClientException
from litestar.types import (
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)
from nexus_core.security import Credentials, header_extras

from .problems import InvalidJSON

__all__ = ["BytesResponse", "RequestInfo", "decode_object", "read_body", "read_request"]

_decode = msgspec.json.Decoder().decode
_WANTED = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"x-forwarded-for",
        b"prefer",
        b"idempotency-key",
        b"x-nexus-session",
        b"cookie",
        b"last-event-id",
        b"origin",
        b"host",
    }
)


class RequestInfo:
    """The headers the API acts on, read once from the ASGI scope."""

    __slots__ = ("client", "cookie_session", "header_session", "headers", "raw_headers")

    def __init__(
        self,
        headers: dict[str, str],
        client: str | None,
        header_session: str | None,
        cookie_session: str | None,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.headers = headers
        #: Every header as sent, for :attr:`Credentials.extras <nexus_core.security.Credentials>`.
        self.raw_headers = raw_headers or []
        self.client = client
        self.header_session = header_session
        self.cookie_session = cookie_session

    @property
    def session(self) -> str | None:
        """The session asked for: the ``X-Nexus-Session`` header, else the cookie."""
        return self.header_session or self.cookie_session

    @property
    def respond_async(self) -> bool:
        """Whether ``Prefer: respond-async`` was sent."""
        prefer = self.headers.get("prefer")
        return prefer is not None and "respond-async" in prefer.lower()

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` header (stripped), if any."""
        key = self.headers.get("idempotency-key")
        return key.strip() or None if key is not None else None

    def credentials(self, *, extras: bool = True) -> Credentials:
        """The caller's credentials in channel-neutral form.

        ``extras`` holds the other headers a provider may read
        (:func:`nexus_core.security.header_extras`: lower-cased, without
        credentials, cookies or hop-by-hop headers, bounded); with
        ``extras=False`` (no provider is enabled to read them) it is empty.
        """
        bearer = None
        auth = self.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        api_key = self.headers.get("x-api-key")
        return Credentials(
            bearer=bearer,
            api_key=api_key.strip() or None if api_key is not None else None,
            client=self.client,
            forwarded_for=self.headers.get("x-forwarded-for"),
            extras=header_extras(self.raw_headers) if extras else {},
        )


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            value = value.strip().strip('"')
            return value or None
    return None


def read_request(scope: Mapping[str, Any], cookie_name: str | None) -> RequestInfo:
    """Read the headers the API acts on from an HTTP or WebSocket scope."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        if raw_name in _WANTED:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name in found:  # repeated headers: join, as RFC 9110 allows
                value = f"{found[name]}, {value}" if name != "cookie" else f"{found[name]}; {value}"
            found[name] = value
    client = scope.get("client")
    header_session = found.get("x-nexus-session")
    cookie = found.get("cookie")
    cookie_session = _cookie(cookie, cookie_name) if cookie and cookie_name else None
    return RequestInfo(
        found,
        client[0] if client else None,
        header_session.strip() or None if header_session is not None else None,
        cookie_session,
        scope["headers"],
    )


def decode_object(body: bytes) -> Any:
    """Decode a JSON request body once; an empty body is ``{}``.

    Raises :class:`~.problems.InvalidJSON` (400, naming the body) when it does
    not parse. Whether it is an object is the workflow's validation to say.
    """
    if not body or body.isspace():
        return {}
    try:
        return _decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidJSON(str(exc)) from None
    except RecursionError:
        raise InvalidJSON("nested too deeply") from None


async def read_body(scope: Mapping[str, Any], receive: Receive, limit: int) -> bytes:
    """Read a request's whole body from ``receive``, refusing one over ``limit`` bytes (413).

    The same limit the server's protocol enforces (``max_body_bytes``), kept
    here too for an application served by another ASGI server. A client that
    goes away mid-body ends the request (the answer has nobody to go to).
    """
    for raw_name, raw_value in scope["headers"]:
        if raw_name == b"content-length":
            if raw_value.isdigit() and int(raw_value) > limit:
                raise ClientException("the request body is too large", status_code=413)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientException("the client disconnected before its body was sent")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ClientException("the request body is too large", status_code=413)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BytesResponse:
    """A whole response as an ASGI application: ``status``, ``headers`` and ``body`` sent as given.

    For a hot path that has its body encoded already (a route handler
    annotated ``-> ASGIApp`` returns it and Litestar sends it as is);
    ``content-length`` is added.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the response."""
        headers = self.headers
        headers.append((b"content-length", str(len(self.body)).encode()))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self.status,
            "headers": headers,
        }
        await send(start)
        body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": self.body,
            "more_body": False,
        }
        await send(body)
