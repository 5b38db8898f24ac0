"""The HTTP face of the voice channel: ``POST /voice`` and the ``/voice/stream`` WebSocket.

:func:`make_asgi` is the factory the API plugin mounts (``nexus_api_mounts``),
so the channel runs under ``nexus serve``. It is a plain ASGI application
(only the API plugin imports Litestar):

``POST /voice``
    the body is audio (WAV, or anything sox reads: FLAC, Ogg, AIFF, AU, raw
    16 kHz PCM as ``audio/L16``). The answer is the spoken reply as
    ``audio/wav``, with ``X-Nexus-Transcript``, ``X-Nexus-Outcome``,
    ``X-Nexus-Run`` and ``X-Nexus-Session`` headers; or, with ``Accept:
    application/json``, a JSON :class:`~nexus_plugin_voice.service.VoiceReply`
    (transcript, run, reply text) and no audio.
``GET /voice/grammar``
    the caller's grammar in JSGF (only the workflows it may run).
``/voice/stream`` (WebSocket)
    binary frames of 16 kHz mono 16-bit PCM (a first frame may carry a WAV
    header at that format); ``{"type": "end"}`` ends an utterance. The server
    sends ``{"type": "partial", "text": ...}`` as it hears, then ``{"type":
    "result", ...}`` (the VoiceReply) and the reply WAV as one binary frame.
    Several utterances may follow on one connection.

Credentials and session are read as the API reads them (``Authorization:
Bearer``, ``X-API-Key``, ``X-Nexus-Session`` or the session cookie). Bad input
(empty, truncated, unreadable, too large, too long) gets a 4xx JSON body
``{"error": code, "message": ..., "field": "body"}`` and the server goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import msgspec
from nexus_core.errors import AuthenticationError
from nexus_core.security import Credentials

from .audio import AudioError, _wav_chunks, to_pcm
from .config import voice_config
from .engines import SAMPLE_RATE, EngineError

if TYPE_CHECKING:
    from nexus_core import Nexus

    # The service (grammars, engines) is imported on the first request, not
    # when `nexus serve` mounts this app: a server that never hears a voice
    # request starts without it.
    from .service import VoiceReply, VoiceService

__all__ = ["VoiceApp", "make_asgi"]

log = logging.getLogger("nexus.voice")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

_encode = msgspec.json.Encoder().encode


def make_asgi(app: Nexus) -> VoiceApp:
    """The ``HttpMountSpec`` factory: the voice channel of ``app`` as an ASGI app."""
    return VoiceApp(app)


class _Request:
    """The headers the channel acts on."""

    def __init__(self, scope: Scope, cookie_name: str | None) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        client = scope.get("client")
        bearer = None
        auth = headers.get("authorization")
        if auth:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        api_key = (headers.get("x-api-key") or "").strip() or None
        self.credentials = Credentials(
            bearer=bearer,
            api_key=api_key,
            client=client[0] if client else None,
            forwarded_for=headers.get("x-forwarded-for"),
        )
        session = (headers.get("x-nexus-session") or "").strip() or None
        if session is None and cookie_name and "cookie" in headers:
            for part in headers["cookie"].split(";"):
                key, sep, value = part.strip().partition("=")
                if sep and key == cookie_name and value.strip():
                    session = value.strip().strip('"')
        self.session = session

    @property
    def wants_json(self) -> bool:
        accept = self.headers.get("accept", "")
        return "application/json" in accept and "audio/" not in accept


async def _send(
    send: Send, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *((k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send, status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> None:
    body = json.dumps({"error": code, "message": message, "field": "body"}).encode()
    await _send(send, status, body, "application/json", headers)


def _reply_headers(reply: VoiceReply) -> list[tuple[str, str]]:
    headers = [
        ("x-nexus-transcript", reply.transcript),
        ("x-nexus-outcome", reply.outcome),
    ]
    if reply.run is not None:
        headers.append(("x-nexus-run", str(reply.run.get("run_id"))))
    if reply.session_id:
        headers.append(("x-nexus-session", reply.session_id))
    return headers


class VoiceApp:
    """``POST /voice``, ``GET /voice/grammar`` and the ``/voice/stream`` WebSocket."""

    def __init__(self, app: Nexus, service: VoiceService | None = None) -> None:
        self.app = app
        self._service = service
        self._loading = anyio.Lock()
        try:
            api = app.config.section("channels.api")
            self.cookie: str | None = getattr(api, "session_cookie", None)
        except Exception:
            self.cookie = None

    @property
    def service(self) -> VoiceService:
        """The host's voice service (engines and grammars), made on first use."""
        if self._service is None:
            from .service import voice_service

            self._service = voice_service(self.app)
        return self._service

    async def ready(self) -> VoiceService:
        """The voice service, its engines loaded in a worker thread the first time."""
        if self._service is None:
            async with self._loading:
                if self._service is None:
                    await anyio.to_thread.run_sync(lambda: self.service)
        return self.service

    @property
    def config(self) -> Any:
        """The channel's settings."""
        if self._service is not None:
            return self._service.config
        return voice_config(self.app)  # without loading the engines

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Load the engines before the server accepts requests, if ``preload`` says so."""
        if voice_config(self.app).preload:
            await self.ready()
        yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route a request."""
        kind = scope["type"]
        path = scope.get("path", "/").rstrip("/") or "/"
        if kind == "lifespan":
            return
        if kind == "websocket":
            if path == "/stream":
                await self._stream(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        method = scope.get("method", "GET")
        try:
            if path == "/":
                if method != "POST":
                    await _error(
                        send, 405, "method_not_allowed", "POST audio here", [("allow", "POST")]
                    )
                    return
                await self._voice(scope, receive, send)
            elif path == "/grammar" and method in ("GET", "HEAD"):
                await self._grammar(scope, send)
            else:
                await _error(
                    send, 404, "not_found", "the voice channel serves POST /, /grammar, /stream"
                )
        except EngineError as exc:
            await _error(send, 503, "engine_unavailable", str(exc))

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise AudioError(400, "disconnected", "the client went away mid-request")
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise AudioError(
                    413,
                    "too_large",
                    f"the audio is larger than the limit of {limit} bytes "
                    "(channels.voice.max_bytes)",
                )
            chunks.append(body)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _voice(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(scope, self.cookie)
        service = await self.ready()
        config = service.config
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_bytes:
            # Read and drop the body first (the API server caps it with
            # max_body_bytes), so the client reads the answer, not a reset.
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            await _error(
                send,
                413,
                "too_large",
                f"the audio is {int(declared)} bytes, larger than the limit of {config.max_bytes} "
                "(channels.voice.max_bytes)",
            )
            return
        try:
            principal = await service.authenticate(request.credentials)
        except AuthenticationError as exc:
            await _error(send, 401, exc.code, exc.message)
            return
        try:
            data = await self._read_body(receive, config.max_bytes)
            pcm = await to_pcm(
                data,
                content_type=request.headers.get("content-type"),
                max_seconds=config.max_seconds,
            )
        except AudioError as exc:
            await _error(send, exc.status, exc.code, exc.message)
            return
        reply = await service.handle(
            pcm, credentials=request.credentials, principal=principal, session=request.session
        )
        if request.wants_json:
            await _send(send, 200, _encode(reply), "application/json", _reply_headers(reply))
            return
        stream = getattr(service.tts, "stream", None)
        if stream is None:
            audio = await service.speak(reply.reply)
            await _send(send, 200, audio, "audio/wav", _reply_headers(reply))
            return
        # Stream the reply as the engine speaks it: the first bytes leave at once.
        async with contextlib.aclosing(stream(reply.reply)) as chunks:
            first = await chunks.__anext__()
            headers = [
                (k.encode("latin-1"), v.encode("latin-1", "replace"))
                for k, v in _reply_headers(reply)
            ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"audio/wav"),
                        (b"cache-control", b"no-store"),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _grammar(self, scope: Scope, send: Send) -> None:
        request = _Request(scope, self.cookie)
        try:
            service = await self.ready()
            principal = await service.authenticate(request.credentials)
        except AuthenticationError as exc:
            await _error(send, 401, exc.code, exc.message)
            return
        grammar = await service.grammar_for(principal)
        await _send(send, 200, grammar.jsgf().encode(), "text/plain; charset=utf-8")

    # -- WebSocket ---------------------------------------------------------------------

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request = _Request(scope, self.cookie)
        service = await self.ready()
        await send({"type": "websocket.accept"})

        async def send_json(body: Any) -> None:
            await send({"type": "websocket.send", "text": _encode(body).decode()})

        try:
            principal = await service.authenticate(request.credentials)
        except AuthenticationError as exc:
            await send_json(
                {"type": "error", "status": 401, "error": exc.code, "message": exc.message}
            )
            await send({"type": "websocket.close", "code": 4401})
            return
        session = request.session
        config = service.config
        while True:
            grammar = await service.grammar_for(principal)
            stream = service.stream(grammar)
            received = 0
            last_partial: str | None = None
            first = True
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    data = message.get("bytes")
                    if data is None:
                        text = message.get("text") or ""
                        try:
                            command = json.loads(text)
                        except ValueError:
                            command = None
                        if isinstance(command, dict) and command.get("type") == "end":
                            break
                        if isinstance(command, dict) and command.get("type") == "start":
                            session = command.get("session") or session
                            continue
                        await send_json(
                            {
                                "type": "error",
                                "status": 400,
                                "error": "bad_message",
                                "message": 'send audio as binary frames and {"type": "end"} '
                                "to end the utterance",
                            }
                        )
                        continue
                    if first and data.startswith(b"RIFF"):
                        try:
                            fmt, offset, _size = _wav_chunks(data)
                        except AudioError as exc:
                            await send_json(
                                {
                                    "type": "error",
                                    "status": exc.status,
                                    "error": exc.code,
                                    "message": exc.message,
                                }
                            )
                            await send({"type": "websocket.close", "code": 1003})
                            return
                        if fmt != (1, SAMPLE_RATE, 16):
                            await send_json(
                                {
                                    "type": "error",
                                    "status": 415,
                                    "error": "unsupported_audio",
                                    "message": "stream 16 kHz mono 16-bit PCM "
                                    "(or a WAV at that format)",
                                }
                            )
                            await send({"type": "websocket.close", "code": 1003})
                            return
                        data = data[offset:]
                    first = False
                    received += len(data)
                    if (
                        received > config.max_bytes
                        or received / (2 * SAMPLE_RATE) > config.max_seconds
                    ):
                        await send_json(
                            {
                                "type": "error",
                                "status": 413,
                                "error": "audio_too_long",
                                "message": f"an utterance may last {config.max_seconds:g} s "
                                f"and take {config.max_bytes} bytes",
                            }
                        )
                        await send({"type": "websocket.close", "code": 1009})
                        return
                    partial = await stream.feed(data)
                    if partial and partial != last_partial:
                        last_partial = partial
                        await send_json({"type": "partial", "text": partial})
            finally:
                transcript = await stream.finish()
            reply = await service.respond(
                transcript,
                grammar,
                credentials=request.credentials,
                principal=principal,
                session=session,
            )
            session = reply.session_id or session
            await send_json({"type": "result", **msgspec.to_builtins(reply)})
            try:
                audio = await service.speak(reply.reply)
            except EngineError as exc:
                await send_json(
                    {
                        "type": "error",
                        "status": 503,
                        "error": "engine_unavailable",
                        "message": str(exc),
                    }
                )
                continue
            await send({"type": "websocket.send", "bytes": audio})
