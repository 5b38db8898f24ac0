"""Server-Sent Events and the WebSocket protocol.

SSE (``GET /events``, ``GET /runs/{id}/events``): each event is sent as::

    id: <event id>
    event: <event type>
    data: <the event as JSON>

A client that reconnects with ``Last-Event-ID`` first receives every matching
event it missed (read from the host's event log), then the live stream. A
``subscription.lagged`` marker (the client fell behind and events were
dropped) has no ``id``, so it never becomes the resume point; reconnecting with
the last id replays what was dropped. A comment line is sent every
``sse_keepalive`` seconds of silence. The first frame, ``retry: 3000``, is
sent once the subscription is in place: from then on nothing is missed.

WebSocket (``/ws``): JSON text messages. The client sends

* ``{"type": "run", "id": "r1", "workflow": "greet", "inputs": {...}}``
  (optional ``session``, ``idempotency_key``, ``wait``: false to get the
  pending run at once);
* ``{"type": "subscribe", "id": "s1", "types": ["run.*"]}`` (optional
  ``run_id``, ``last_event_id``);
* ``{"type": "unsubscribe", "subscription": "s1"}``;
* ``{"type": "cancel", "id": "c1", "run_id": "..."}``.

The server answers each with ``{"type": "result", "id": ..., ...}`` (``run``
for a run or a cancel, ``subscription`` for a subscribe) or ``{"type":
"error", "id": ..., "error": <problem>}``, and sends ``{"type": "event",
"subscription": "s1", "event": {...}}`` for each event. Requests are handled
concurrently: a long run does not hold up the others. The connection is
authenticated once, at connect (``Authorization``/``X-API-Key`` headers, or
``?access_token=`` for browsers, which cannot set headers on a WebSocket), and
a browser's ``Origin`` must be allowed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
from nexus_core.errors import (
    AuthenticationError,
    ErrorDetail,
    FieldError,
    NexusError,
    PermissionDenied,
    ValidationError,
)
from nexus_core.events import Event, EventType, SubscriberLagged
from nexus_core.plugin import RunResult, convert

from ._http import RequestInfo, read_request
from .problems import InvalidJSON, Problem, problem_from_detail, problem_from_exception

if TYPE_CHECKING:
    import anyio.abc
    from litestar import WebSocket
    from nexus_core.security import Principal

    from ._state import ApiState

__all__ = [
    "DENIALS",
    "WS_CREDENTIALS_ENDED",
    "CancelMessage",
    "ClientMessage",
    "DeniedHandshakeFilter",
    "ErrorMessage",
    "EventMessage",
    "ResultMessage",
    "RunMessage",
    "SubscribeMessage",
    "UnsubscribeMessage",
    "event_stream",
    "origin_allowed",
    "run_event_stream",
    "serve_websocket",
]

log = logging.getLogger("nexus.api")

_TERMINAL = frozenset(
    {EventType.RUN_COMPLETED.value, EventType.RUN_FAILED.value, EventType.RUN_CANCELLED.value}
)
_LAGGED = EventType.SUBSCRIPTION_LAGGED.value
_encode = msgspec.json.Encoder(enc_hook=str).encode
_decode = msgspec.json.Decoder().decode
_END = object()
#: The first frame of every stream, sent once subscribed: the reconnection delay (ms).
_READY = b"retry: 3000\n\n"
#: The close code of a WebSocket whose credentials no longer authenticate (policy violation).
WS_CREDENTIALS_ENDED = 1008


# -- Server-Sent Events ---------------------------------------------------------------


def _frame(event: Event) -> bytes:
    kind = event.type.replace("\r", " ").replace("\n", " ").encode()
    data = _encode(event)
    if event.type == _LAGGED or not event.id.isdigit():
        # No log position (a lag marker, an ephemeral run's event): no id line,
        # so the client's Last-Event-ID stays on the last logged event.
        return b"event: " + kind + b"\ndata: " + data + b"\n\n"
    return b"id: " + event.id.encode() + b"\nevent: " + kind + b"\ndata: " + data + b"\n\n"


# How long a stream of a run found already ended waits for that run's last events.
_ENDED_GRACE = 2.0


async def _next(sub: AsyncIterator[Event], silence: float) -> Any:
    """The next event, ``None`` after ``silence`` seconds without one, or ``_END``."""
    with anyio.move_on_after(silence):
        try:
            return await sub.__anext__()
        except StopAsyncIteration:
            return _END
        except SubscriberLagged:
            return _END
    return None


def _ended(reason: str) -> bytes:
    """The last frame of a stream whose credentials no longer authenticate."""
    detail = ErrorDetail(code=AuthenticationError.code, message=reason)
    problem = problem_from_detail(detail, 401)
    return b"event: error\ndata: " + _encode(problem) + b"\n\n"


async def event_stream(
    state: ApiState,
    who: Principal,
    patterns: list[str],
    last_event_id: str | None,
    info: RequestInfo | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of ``GET /events``: the events ``who`` may see, matching ``patterns``.

    With ``info`` (the request's credentials) the stream ends with an
    ``event: error`` frame (a 401 problem with the reason) once they no longer
    authenticate as ``who`` (revoked, expired).
    """
    keepalive = state.config.sse_keepalive
    if state.closing:
        return
    sub = state.subscribe(patterns, who, last_event_id=last_event_id)
    state.subscriptions.add(sub)
    watch = state.watch(info, who, sub) if info is not None else None
    try:
        yield _READY  # subscribed: a client may rely on receiving what happens from now on
        while True:
            event = await _next(sub, keepalive)
            if event is _END:
                break
            yield b": keepalive\n\n" if event is None else _frame(event)
        if watch is not None and watch.reason is not None:
            yield _ended(watch.reason)
    finally:
        if watch is not None:
            watch.stop()
        state.subscriptions.discard(sub)
        with anyio.CancelScope(shield=True):
            await sub.aclose()


async def run_event_stream(
    state: ApiState,
    who: Principal,
    run_id: str,
    last_event_id: str | None,
    info: RequestInfo | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of ``GET /runs/{id}/events``: the run's events from its start; ends with it.

    Without ``Last-Event-ID`` the run's history is read from the event log
    after subscribing, and live events already read are skipped, so nothing
    falls in between. With ``info``, ends like :func:`event_stream` when the
    credentials no longer authenticate.
    """
    app = state.app
    keepalive = state.config.sse_keepalive
    if state.closing:
        return
    sub = state.subscribe(
        ("*",), who, last_event_id=last_event_id, keep=lambda event: event.run_id == run_id
    )
    state.subscriptions.add(sub)
    watch = state.watch(info, who, sub) if info is not None else None
    try:
        yield _READY
        seen: set[str] = set()
        deadline: float | None = None
        if last_event_id is None and app.storage is not None:
            after: str | None = None
            while True:
                page = await app.storage.read_events(after=after, limit=1000, run_id=run_id)
                for event in page:
                    seen.add(event.id)
                    yield _frame(event)
                    if event.type in _TERMINAL:
                        return
                if len(page) < 1000:
                    break
                after = page[-1].id
            record = await app.get_run(run_id, principal=who)
            if record.status in ("completed", "failed", "cancelled"):
                # Ended while the history was read: its last events are being
                # logged or are queued live. Wait briefly for them, not forever
                # (a run failed at start-up recovery may end without them).
                deadline = anyio.current_time() + _ENDED_GRACE
        while True:
            silence = keepalive if deadline is None else deadline - anyio.current_time()
            if silence <= 0:
                return
            event = await _next(sub, silence)
            if event is _END:
                break
            if event is None:
                if deadline is None:
                    yield b": keepalive\n\n"
                continue
            if event.id in seen:
                continue
            yield _frame(event)
            if event.type in _TERMINAL:
                return
        if watch is not None and watch.reason is not None:
            yield _ended(watch.reason)
    finally:
        if watch is not None:
            watch.stop()
        state.subscriptions.discard(sub)
        with anyio.CancelScope(shield=True):
            await sub.aclose()


# -- WebSocket protocol -----------------------------------------------------------------


class RunMessage(msgspec.Struct, tag="run", tag_field="type", kw_only=True):
    """Client: run a workflow; answered by a ``result`` with ``run``."""

    workflow: str
    inputs: Any = None
    id: str | None = None
    session: str | None = None
    idempotency_key: str | None = None
    wait: bool = True


class SubscribeMessage(msgspec.Struct, tag="subscribe", tag_field="type", kw_only=True):
    """Client: receive events whose type matches ``types`` (of one run, with ``run_id``)."""

    id: str | None = None
    types: list[str] = msgspec.field(default_factory=lambda: ["*"])
    run_id: str | None = None
    last_event_id: str | None = None


class UnsubscribeMessage(msgspec.Struct, tag="unsubscribe", tag_field="type", kw_only=True):
    """Client: stop a subscription."""

    subscription: str
    id: str | None = None


class CancelMessage(msgspec.Struct, tag="cancel", tag_field="type", kw_only=True):
    """Client: cancel a run."""

    run_id: str
    id: str | None = None


ClientMessage = RunMessage | SubscribeMessage | UnsubscribeMessage | CancelMessage


class ResultMessage(
    msgspec.Struct, tag="result", tag_field="type", kw_only=True, omit_defaults=True
):
    """Server: the answer to a client message (``id`` is the client's)."""

    id: str | None = None
    run: RunResult | None = None
    subscription: str | None = None
    cancelled: bool | None = None


class EventMessage(msgspec.Struct, tag="event", tag_field="type", kw_only=True):
    """Server: an event of a subscription."""

    subscription: str
    event: Event


class ErrorMessage(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """Server: a client message failed; ``error`` is the same problem body as over REST."""

    error: Problem
    id: str | None = None


def origin_allowed(state: ApiState, headers: dict[str, str], scheme: str) -> bool:
    """Whether a WebSocket's ``Origin`` may connect.

    No ``Origin`` (not a browser) and the server's own origin are allowed;
    others must be listed in ``ws_origins`` (or ``cors_origins`` when that is
    empty), where ``"*"`` allows any.
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    allowed = state.config.ws_origins or state.config.cors_origins
    if "*" in allowed or origin in allowed:
        return True
    host = headers.get("host")
    if host is None:
        return False
    parts = urlsplit(origin)
    secure = scheme in ("wss", "https")
    return parts.netloc == host and (parts.scheme == "https") == secure


class DeniedHandshakeFilter(logging.Filter):
    """Drops uvicorn's false alarm after a handshake refused with an HTTP response.

    uvicorn (0.3x to 0.5x) logs "ASGI callable returned without completing
    handshake." after a ``websocket.http.response`` refusal although the
    response went out; one line is dropped per refusal made here.
    """

    _MESSAGE = "ASGI callable returned without completing handshake."

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the message when a refusal is pending."""
        if self.pending and record.getMessage() == self._MESSAGE:
            self.pending -= 1
            return False
        return True


#: Installed on ``uvicorn.error`` by the channel while it serves.
DENIALS = DeniedHandshakeFilter()


async def _deny(
    socket: WebSocket[Any, Any, Any], status: int, problem: Problem, headers: dict[str, str]
) -> None:
    """Refuse the handshake with an HTTP answer when the server can send one, else close."""
    await socket.receive()  # websocket.connect
    if "websocket.http.response" in (socket.scope.get("extensions") or {}):
        DENIALS.pending += 1
        body = _encode(problem)
        raw_headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ]
        start: Any = {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": raw_headers,
        }
        end: Any = {"type": "websocket.http.response.body", "body": body}
        await socket.send(start)
        await socket.send(end)
    else:
        await socket.close(code=1008, reason=problem.code)


class _Connection:
    """One accepted WebSocket: its principal, subscriptions and a lock for sending."""

    def __init__(
        self, state: ApiState, socket: WebSocket[Any, Any, Any], who: Principal, info: RequestInfo
    ) -> None:
        self.state = state
        self.socket = socket
        self.who = who
        self.info = info
        self.lock = anyio.Lock()
        self.subs: dict[str, anyio.CancelScope] = {}
        self.counter = itertools.count(1)

    async def send(self, message: msgspec.Struct) -> None:
        data = _encode(message).decode()
        frame: Any = {"type": "websocket.send", "text": data}
        async with self.lock:
            try:
                await self.socket.send(frame)
            except Exception:  # the client is gone; the receive loop ends the connection
                log.debug("dropped a WebSocket message to a closed connection", exc_info=True)

    async def fail(self, exc: BaseException, request_id: str | None) -> None:
        problem, _ = problem_from_exception(exc, "/ws")
        await self.send(ErrorMessage(id=request_id, error=problem))

    async def handle(self, raw: str | bytes, tg: anyio.abc.TaskGroup) -> None:
        request_id: str | None = None
        try:
            try:
                data = _decode(raw)
            except msgspec.DecodeError as exc:
                raise InvalidJSON(str(exc)) from None
            except RecursionError:
                raise InvalidJSON("nested too deeply") from None
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                request_id = data["id"]
            message = convert(data, ClientMessage)
        except NexusError as exc:
            await self.fail(exc, request_id)
            return
        if isinstance(message, RunMessage):
            tg.start_soon(self.run, message)
        elif isinstance(message, SubscribeMessage):
            await self.subscribe(message, tg)
        elif isinstance(message, UnsubscribeMessage):
            scope = self.subs.pop(message.subscription, None)
            if scope is None:
                await self.fail(
                    ValidationError([_field("subscription", "no such subscription")]), message.id
                )
                return
            scope.cancel()
            await self.send(ResultMessage(id=message.id, subscription=message.subscription))
        else:
            tg.start_soon(self.cancel, message)

    async def run(self, message: RunMessage) -> None:
        try:
            info = self.info
            result = await self.state.app.invoke(
                message.workflow,
                message.inputs,
                credentials=info.credentials(),
                channel="api",
                session=message.session or info.header_session,
                idempotency_key=message.idempotency_key,
                wait=message.wait,
            )
        except Exception as exc:
            await self.fail(exc, message.id)
            return
        await self.send(ResultMessage(id=message.id, run=result))

    async def cancel(self, message: CancelMessage) -> None:
        try:
            cancelled = await self.state.app.cancel(message.run_id, principal=self.who)
            run = await self.state.app.get_run(message.run_id, principal=self.who)
        except Exception as exc:
            await self.fail(exc, message.id)
            return
        await self.send(ResultMessage(id=message.id, run=run, cancelled=cancelled))

    async def subscribe(self, message: SubscribeMessage, tg: anyio.abc.TaskGroup) -> None:
        name = message.id or f"s{next(self.counter)}"
        if name in self.subs:
            await self.fail(
                ValidationError([_field("id", "a subscription with this id is open")]), message.id
            )
            return
        if not message.types:
            await self.fail(
                ValidationError([_field("types", "name at least one type")]), message.id
            )
            return
        run_id = message.run_id
        keep = None if run_id is None else (lambda event: event.run_id == run_id)
        try:
            sub = self.state.subscribe(
                message.types, self.who, last_event_id=message.last_event_id, keep=keep
            )
        except NexusError as exc:
            await self.fail(exc, message.id)
            return
        except ValueError as exc:
            await self.fail(ValidationError([_field("types", str(exc))]), message.id)
            return
        scope = anyio.CancelScope()
        self.subs[name] = scope
        await self.send(ResultMessage(id=message.id, subscription=name))
        tg.start_soon(self._forward, name, sub, scope)

    async def _forward(self, name: str, sub: Any, scope: anyio.CancelScope) -> None:
        self.state.subscriptions.add(sub)
        try:
            with scope:
                async for event in sub:
                    await self.send(EventMessage(subscription=name, event=event))
        except SubscriberLagged as exc:
            await self.fail(exc, name)
        finally:
            self.subs.pop(name, None)
            self.state.subscriptions.discard(sub)
            with anyio.CancelScope(shield=True):
                await sub.aclose()


def _field(path: str, reason: str) -> FieldError:
    return FieldError(path=path, reason=reason)


async def serve_websocket(state: ApiState, socket: WebSocket[Any, Any, Any]) -> None:
    """Check the origin, authenticate, accept, then serve the protocol until either side closes."""
    info = read_request(socket.scope, state.config.session_cookie)
    scheme = socket.scope.get("scheme", "ws")
    if state.closing:
        detail = ErrorDetail(code="unavailable", message="the server is shutting down")
        await _deny(socket, 503, problem_from_detail(detail, 503, "/ws"), {})
        return
    if not origin_allowed(state, info.headers, scheme):
        error = PermissionDenied(f"origin {info.headers.get('origin')!r} is not allowed")
        problem, _ = problem_from_exception(error, "/ws")
        await _deny(socket, 403, problem, {})
        return
    query = parse_qs(socket.scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("access_token") or []
    token = tokens[0] if tokens else None
    if token and "authorization" not in info.headers:
        info.headers["authorization"] = f"Bearer {token}"
    try:
        who = await state.authenticate(info)
    except (AuthenticationError, PermissionDenied) as exc:
        problem, headers = problem_from_exception(exc, "/ws")
        await _deny(socket, problem.status, problem, headers)
        return
    await socket.accept()
    connection = _Connection(state, socket, who, info)
    outer = anyio.CancelScope()
    state.sockets.add(outer)
    close_code = 1000
    ended: list[str] = []

    async def watch(tg: anyio.abc.TaskGroup) -> None:
        ended.append(await state.until_invalid(info, who))
        tg.cancel_scope.cancel()

    try:
        with outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, tg)
                while True:
                    message: Any = await socket.receive()
                    kind = message["type"]
                    if kind == "websocket.disconnect":
                        close_code = 0
                        break
                    if kind != "websocket.receive":
                        continue
                    text = message.get("text")
                    raw: str | bytes = text if text is not None else message.get("bytes") or b""
                    await connection.handle(raw, tg)
                tg.cancel_scope.cancel()
        if outer.cancelled_caught:
            close_code = 1001  # going away: the server is shutting down
    finally:
        state.sockets.discard(outer)
    reason = ""
    if ended and close_code:
        # The credentials no longer authenticate: say why, then close (policy violation).
        await connection.fail(AuthenticationError(ended[0]), None)
        close_code = WS_CREDENTIALS_ENDED
        reason = _close_reason(ended[0])
    if close_code:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await socket.close(code=close_code, reason=reason or None)
            except Exception:  # the client may be gone already
                log.debug("closing a WebSocket failed", exc_info=True)


def _close_reason(reason: str) -> str:
    """``reason`` cut to the 123 bytes a close frame may carry."""
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:120].decode(errors="ignore") + "..."
