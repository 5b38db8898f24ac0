"""The HTTP application: a Litestar app whose every request goes through the host.

``create_app(app)`` builds it for a running host; the API channel serves it
with uvicorn. Routes:

==================================  =========================================================
``GET /workflows``                 workflows with their input and output JSON Schemas
``GET /workflows/{name}``          one workflow
``POST /workflows/{name}/runs``    run it with the JSON body as inputs (waits; or
                                   ``Prefer: respond-async`` -> 202 + ``Location``)
``GET /runs``                      runs, filtered (workflow, status, session_id), paginated
``GET /runs/{id}``                 status, output, per-node detail
``DELETE /runs/{id}``              cancel
``GET /runs/{id}/events``          the run's events (SSE)
``POST /sessions``                 a new session (also in ``X-Nexus-Session`` and a cookie)
``GET /sessions/{id}``             a session
``GET /events?types=run.*``        the host's events (SSE, ``Last-Event-ID`` to resume)
``/ws``                            the WebSocket protocol (see :mod:`.realtime`)
``GET /health/live``, ``/ready``   probes
``GET /metrics``                   Prometheus text
``GET /plugins``                   loaded plugins, load errors, channels
``POST /auth/cli-tokens``          exchange an API key (or bearer token) for a CLI token
``DELETE /auth/cli-tokens/current`` revoke the CLI token presented (``nexus logout``)
``GET /config``, ``/config/check`` the effective configuration (masked), a re-check
                                   of its file (``admin`` when auth is on; see :mod:`.admin`)
``GET /openapi.json``, ``/docs``   OpenAPI 3.1 and an interactive page
==================================  =========================================================

Plus whatever other plugins mount through ``nexus_api_mounts``.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from litestar import Litestar, Request, Response, WebSocket, asgi, delete, get, post, websocket
from litestar.config.cors import CORSConfig
from litestar.exceptions import ClientException
from litestar.params import FromPath
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send
from nexus_core.errors import (
    AuthenticationError,
    FieldError,
    NotFound,
    SessionNotFound,
    ValidationError,
    WorkflowNotFound,
)
from nexus_core.plugin import (
    HealthReport,
    HttpMountSpec,
    collect_specs,
    convert,
    describe,
    liveness,
)

from . import admin
from ._http import BytesResponse, RequestInfo, decode_object, read_body, read_request
from ._state import ApiState
from .config import ApiConfig
from .models import (
    ChannelInfo,
    CliToken,
    CliTokenRequest,
    CliTokenRevoked,
    PluginList,
    RunList,
    RunSummary,
    SessionBody,
    WorkflowInfo,
    WorkflowList,
)
from .openapi import build_openapi
from .problems import (
    PROBLEM_JSON,
    Unsupported,
    problem_body,
    problem_from_exception,
)
from .realtime import event_stream, run_event_stream, serve_websocket

if TYPE_CHECKING:
    from nexus_core import Nexus, Workflow
    from nexus_core.plugin import Session

__all__ = ["RESERVED_PREFIXES", "Mount", "collect_mounts", "create_app"]

log = logging.getLogger("nexus.api")

JSON = "application/json"
_JSON_BYTES = JSON.encode()
_PROBLEM_BYTES = PROBLEM_JSON.encode()
#: A valid Host header, as Litestar's router checks it.
_HOST = re.compile(r"\A[0-9A-Za-z!$&'()*+,;=\-._~:\[\]@%]*\Z")
#: First path segments the API's own routes use; a mount may not claim them.
RESERVED_PREFIXES = frozenset(
    {
        "workflows",
        "runs",
        "sessions",
        "events",
        "ws",
        "health",
        "metrics",
        "plugins",
        "auth",
        "config",
        "docs",
        "openapi.json",
    }
)
_encode = msgspec.json.Encoder(enc_hook=str).encode

#: The Swagger UI files ``/docs`` uses, served from the ``swagger-ui-bundle-v2``
#: package at ``/docs/assets/`` (no CDN: the page works offline), with their types.
_DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-bundle.js.map": "application/json",
    "favicon-16x16.png": "image/png",
    "favicon-32x32.png": "image/png",
}
_docs_cache: dict[str, bytes] = {}


async def _docs_asset(name: str) -> bytes | None:
    """A Swagger UI file's bytes (read once, off the event loop), or None if not one of ours."""
    if name not in _DOCS_ASSETS:
        return None
    cached = _docs_cache.get(name)
    if cached is None:
        from swagger_ui_bundle import swagger_ui_path

        cached = _docs_cache[name] = await anyio.Path(str(swagger_ui_path), name).read_bytes()
    return cached


_TERMINAL = ("completed", "failed", "cancelled")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} - API</title>
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: {openapi}, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null
    }});
  </script>
</body>
</html>
"""


class _Litestar(Litestar):
    """Litestar, answering the run route itself and without the pydantic and attrs plugins.

    ``POST /workflows/{name}/runs`` is answered before Litestar routes the
    request (when :attr:`answer_run` is set: no CORS to apply): the route's
    own handler calls the same function, so both answer alike, but routing,
    the exception middleware and the handler's request and signature
    objects were about a fifth of an ephemeral run's CPU over HTTP
    (bench/http.py). A path that is not exactly the route goes to Litestar.

    The API's routes take and give msgspec types and raw ASGI mounts only, so
    Litestar's plugins for pydantic and attrs models have nothing to do here;
    importing pydantic for them was a tenth of a second of ``nexus serve``'s
    start-up wherever pydantic is installed (the ``mcp`` package needs it).
    Should Litestar rename that hook, the override is simply never called:
    slower, never wrong.
    """

    #: The run route's answer, taken before routing; None: Litestar routes every request.
    answer_run: RunAnswerer | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer the run route at once; hand everything else to Litestar."""
        answer = self.answer_run
        if answer is not None and scope["type"] == "http" and scope["method"] == "POST":
            name = _run_route_name(scope)
            if name is not None:
                scope["path_params"] = {"name": name}
                try:
                    response = await answer(scope, receive)
                except Exception as exc:
                    response = _problem_response(exc, scope["path"])
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    @staticmethod
    def _get_default_plugins(plugins: list[Any]) -> list[Any]:
        from litestar.plugins.core import MsgspecDIPlugin

        plugins.append(MsgspecDIPlugin())
        return plugins


def _run_route_name(scope: Scope) -> str | None:
    """The workflow of a ``/workflows/{name}/runs`` path (after the root path), else None."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if root:
        if not path.startswith(root):
            return None
        path = path[len(root) :]
    if not (path.startswith("/workflows/") and path.endswith("/runs")):
        return None
    name = path[11:-5]
    return name if name and "/" not in name else None


class Mount(msgspec.Struct, kw_only=True):
    """An ASGI application another plugin mounts, ready to serve."""

    path: str
    app: Any
    plugin: str


def collect_mounts(app: Nexus) -> list[Mount]:
    """Collect ``nexus_api_mounts`` through the core's ``collect_specs``; build each mount's app.

    Two mounts on one path are a :class:`~nexus_core.errors.PluginConflictError`
    naming both plugins (the core's one conflict policy); a mount on one of
    the API's own routes is a ``ValueError`` naming the plugin; a hook that
    returns something other than :class:`~nexus_core.specs.HttpMountSpec` is
    reported as any failing plugin hook is (see ``collect_specs``).
    """
    if not app.host.has_impls("nexus_api_mounts"):
        return []
    specs = collect_specs(app, "nexus_api_mounts", HttpMountSpec, key=_mount_path, app=app)
    mounts = []
    for path, spec in specs.items():
        if path == "/" or path.split("/")[1] in RESERVED_PREFIXES:
            raise ValueError(
                f"plugin {spec.plugin!r}: cannot mount {spec.name!r} on {spec.path!r}, "
                "which is one of the API's own routes"
            )
        mounts.append(Mount(path=path, app=spec.load()(app), plugin=spec.plugin))
    return mounts


def _mount_path(spec: HttpMountSpec) -> tuple[str]:
    return ("/" + spec.path.strip("/"),)


def _mount_handler(mount: Mount) -> Any:
    target = mount.app
    prefix = mount.path

    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        # Litestar leaves the remainder in "path", always with a trailing slash;
        # give the mounted app the remainder as sent and the mount in root_path.
        path = scope["path"]
        raw = scope.get("raw_path")
        if path != "/" and path.endswith("/") and raw is not None and not raw.endswith(b"/"):
            path = path[:-1]
        child = dict(scope)
        child["path"] = path
        child["root_path"] = scope.get("root_path", "") + prefix
        await target(child, receive, send)

    forward.__name__ = f"mount_{prefix.strip('/').replace('/', '_')}"
    return asgi(prefix, is_mount=True, copy_scope=True, name=f"mount:{prefix}")(forward)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type=JSON, headers=headers)


def _workflow_info(wf: Workflow) -> WorkflowInfo:
    meta = wf.meta
    return WorkflowInfo(
        name=wf.name,
        description=wf.description,
        input_schema=wf.input_schema,
        output_schema=wf.output_schema,
        runs_url=f"/workflows/{wf.name}/runs",
        title=meta.title,
        tags=list(meta.tags),
        read_only=meta.read_only,
        destructive=meta.destructive,
        idempotent=meta.idempotent,
    )


def _session_body(session: Session) -> SessionBody:
    record = session.record
    return SessionBody(
        session_id=record.id,
        channels=list(record.channels),
        created_at=record.created_at,
        expires_at=record.expires_at,
        state=msgspec.to_builtins(record.state, enc_hook=str),
    )


class _RunQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    workflow: str | None = None
    status: str | None = None
    session_id: str | None = None
    limit: int = 50
    before: str | None = None


_STATUSES = ("pending", "running", "completed", "failed", "cancelled")


def _run_query(params: dict[str, str]) -> _RunQuery:
    query: _RunQuery = convert(params, _RunQuery)
    if not 1 <= query.limit <= 200:
        raise ValidationError([FieldError(path="limit", reason="expected 1 to 200")])
    if query.status is not None and query.status not in _STATUSES:
        raise ValidationError(
            [FieldError(path="status", reason=f"expected one of {', '.join(_STATUSES)}")]
        )
    return query


def _exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    problem, headers = problem_from_exception(exc, request.url.path)
    return Response(
        problem_body(problem), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


def _problem_response(exc: Exception, path: str) -> BytesResponse:
    """:func:`_exception_handler`'s answer, for the run route answered before routing."""
    problem, headers = problem_from_exception(exc, path)
    raw = [(b"content-type", _PROBLEM_BYTES)]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return BytesResponse(problem.status, problem_body(problem), raw)


#: What answers ``POST /workflows/{name}/runs``: the scope (with its ``path_params``) and receive.
RunAnswerer = Callable[[Scope, Receive], Awaitable[BytesResponse]]


def _session_headers(
    cookie: str | None, info: RequestInfo, session_id: str | None
) -> dict[str, str] | None:
    """The headers telling the client its session (and the cookie, if the API sets one)."""
    if session_id is None:
        if cookie and info.cookie_session and info.header_session is None:
            return {"Set-Cookie": f"{cookie}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"}
        return None
    headers = {"X-Nexus-Session": session_id}
    if cookie and info.cookie_session != session_id:
        headers["Set-Cookie"] = f"{cookie}={session_id}; Path=/; HttpOnly; SameSite=Lax"
    return headers


def run_answerer(api: ApiState) -> RunAnswerer:
    """The answer to ``POST /workflows/{name}/runs``, the hot path, as one function.

    Headers read once, the body read and decoded once, one invoke, one
    encode, and the answer sent as the bytes it is: no Request, signature or
    Response objects (a sixth of an ephemeral run's CPU over HTTP,
    bench/http.py). Errors are raised, for the caller to answer as problems.
    """
    app = api.app
    cookie = api.config.session_cookie
    max_body = api.config.max_body_bytes

    async def answer_run(scope: Scope, receive: Receive) -> BytesResponse:
        name: str = scope["path_params"]["name"]
        info = read_request(scope, cookie)
        host = info.headers.get("host")
        if host is not None and not _HOST.match(host):
            raise ClientException("Invalid host header")  # as Litestar's router says it
        inputs = decode_object(await read_body(scope, receive, max_body))
        workflow = app.workflows.get(name)
        durable = workflow is None or workflow.meta.durable
        # An ephemeral run has no resource to poll: the preference is not applied.
        respond_async = info.respond_async and durable
        session = info.session
        # Only an auth provider reads the other headers: none enabled, none copied.
        credentials = info.credentials(extras=bool(app.security.providers))
        try:
            result = await app.invoke(
                name,
                inputs,
                credentials=credentials,
                channel="api",
                session=session,
                idempotency_key=info.idempotency_key,
                wait=not respond_async,
            )
        except SessionNotFound:
            if info.header_session is not None or session is None:
                raise
            # A stale cookie: run without it (the answer clears the cookie).
            result = await app.invoke(
                name,
                inputs,
                credentials=credentials,
                channel="api",
                idempotency_key=info.idempotency_key,
                wait=not respond_async,
            )
        headers = [(b"content-type", _JSON_BYTES)]
        for key, value in (_session_headers(cookie, info, result.session_id) or {}).items():
            headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        if durable:
            headers.append((b"location", f"/runs/{result.run_id}".encode("latin-1")))
        status = 200
        if respond_async and result.status in ("pending", "running"):
            headers.append((b"preference-applied", b"respond-async"))
            status = 202
        return BytesResponse(status, _encode(result), headers)

    return answer_run


def _routes(api: ApiState, answer_run: RunAnswerer) -> list[Any]:
    app = api.app
    config = api.config
    cookie = config.session_cookie

    authenticate = api.authenticate

    session_headers = functools.partial(_session_headers, cookie)

    # -- workflows and runs ------------------------------------------------------

    @get("/workflows", name="list_workflows")
    async def list_workflows(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        items = [_workflow_info(wf) for wf in await api.visible_workflows(who)]
        return _json(WorkflowList(items=sorted(items, key=lambda w: w.name)))

    @get("/workflows/{name:str}", name="get_workflow")
    async def get_workflow(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        visible = {wf.name: wf for wf in await api.visible_workflows(who)}
        if name not in visible:
            raise WorkflowNotFound(name, visible)
        return _json(_workflow_info(visible[name]))

    # The hot path's own handler (see run_answerer); a host served by our
    # channel without CORS answers it before Litestar routes (_Litestar).
    @post("/workflows/{name:str}/runs", name="run_workflow", status_code=200)
    async def run_workflow(request: Request[Any, Any, Any]) -> ASGIApp:
        return await answer_run(request.scope, request.receive)

    @get("/runs", name="list_runs")
    async def list_runs(request: Request[Any, Any, Any]) -> Response[bytes]:
        info = read_request(request.scope, cookie)
        who = await authenticate(info)
        query = _run_query(dict(request.query_params))
        records = await app.list_runs(
            principal=who,
            credentials=info.credentials(),
            channel="api",
            workflow=query.workflow,
            status=query.status,
            session_id=query.session_id,
            limit=query.limit,
            before=query.before,
        )
        items = [
            RunSummary(
                run_id=r.id,
                workflow=r.workflow,
                status=r.status,
                created_at=r.created_at,
                channel=r.channel,
                session_id=r.session_id,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in records
        ]
        following = items[-1].run_id if len(items) == query.limit else None
        return _json(RunList(items=items, next=following))

    @get("/runs/{run_id:str}", name="get_run")
    async def get_run(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        return _json(await app.get_run(run_id, principal=who))

    @get("/runs/{run_id:str}/result", name="get_run_result")
    async def get_run_result(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Stream:
        # The output's JSON, streamed from the blob store when it was stored by reference.
        who = await authenticate(read_request(request.scope, cookie))
        ref, chunks = await app.open_output(run_id, principal=who)
        headers = {"Cache-Control": "no-store"}
        if ref is not None:
            headers["Content-Length"] = str(ref.size)
            headers["X-Content-SHA256"] = ref.sha256
        return Stream(chunks, media_type="application/json", headers=headers)

    @delete("/runs/{run_id:str}", name="cancel_run", status_code=200)
    async def cancel_run(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        run = await app.get_run(run_id, principal=who)
        if run.status in _TERMINAL:
            return _json(run)
        # Wherever it executes: this process, another worker or gateway on the same storage.
        await app.cancel(run_id, principal=who)
        with anyio.move_on_after(2.0):
            await app.wait(run_id)
        run = await app.get_run(run_id, principal=who)
        return _json(run, 200 if run.status in _TERMINAL else 202)

    # -- sessions ------------------------------------------------------------------

    @post("/sessions", name="create_session", status_code=201)
    async def create_session(request: Request[Any, Any, Any]) -> Response[bytes]:
        info = read_request(request.scope, cookie)
        who = await authenticate(info)
        session = await app.create_session(
            channel="api", principal=who, credentials=info.credentials()
        )
        headers = session_headers(info, session.id) or {}
        headers["Location"] = f"/sessions/{session.id}"
        return _json(_session_body(session), 201, headers)

    @get("/sessions/{session_id:str}", name="get_session")
    async def get_session(
        request: Request[Any, Any, Any], session_id: FromPath[str]
    ) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        return _json(_session_body(await app.get_session(session_id, principal=who)))

    # -- events --------------------------------------------------------------------

    @get("/events", name="events")
    async def events(request: Request[Any, Any, Any]) -> Stream:
        info = read_request(request.scope, cookie)
        who = await authenticate(info)
        raw = ",".join(request.query_params.getall("types", [])) or "*"
        patterns = [p.strip() for p in raw.split(",") if p.strip()] or ["*"]
        last = info.headers.get("last-event-id") or request.query_params.get("last_event_id")
        await api.subscribe(patterns, who).aclose()  # 403 now rather than a broken stream
        body = event_stream(api, who, patterns, last or None, info)
        return Stream(body, media_type="text/event-stream", headers=_SSE_HEADERS)

    @get("/runs/{run_id:str}/events", name="run_events")
    async def run_events(request: Request[Any, Any, Any], run_id: FromPath[str]) -> Stream:
        info = read_request(request.scope, cookie)
        who = await authenticate(info)
        await app.get_run(run_id, principal=who)  # 404 before the stream starts
        last = info.headers.get("last-event-id") or request.query_params.get("last_event_id")
        body = run_event_stream(api, who, run_id, last or None, info)
        return Stream(body, media_type="text/event-stream", headers=_SSE_HEADERS)

    @websocket("/ws", name="ws")
    async def ws(socket: WebSocket[Any, Any, Any]) -> None:
        await serve_websocket(api, socket)

    # -- operations ----------------------------------------------------------------

    @get("/health/live", name="health_live")
    async def health_live() -> Response[bytes]:
        return _json(await liveness())

    @get("/health/ready", name="health_ready")
    async def health_ready() -> Response[bytes]:
        report: HealthReport = await app.readiness()
        return _json(report, 200 if report.ok else 503)

    @get("/metrics", name="metrics")
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        await _metrics_allowed(api, read_request(request.scope, cookie))
        body, content_type = app.metrics.render()
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @get("/plugins", name="plugins")
    async def plugins(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        if app.security.auth_required and who.anonymous:
            raise AuthenticationError("the plugin list needs an authenticated caller")
        channels = [msgspec.convert(describe(c), ChannelInfo) for c in app.channels.values()]
        return _json(PluginList(items=app.plugins, errors=app.plugin_errors, channels=channels))

    # -- login and configuration ------------------------------------------------------

    @post("/auth/cli-tokens", name="issue_cli_token", status_code=201)
    async def issue_cli_token(request: Request[Any, Any, Any]) -> Response[bytes]:
        # The core authenticates, checks tokens:issue, limits, derives and audits; the
        # caller is authenticated here first only so that a 401 comes before a body error.
        info = read_request(request.scope, cookie)
        if (await authenticate(info)).anonymous:
            raise AuthenticationError(
                "a CLI token is issued to whoever the credentials prove: send an API key "
                "(X-API-Key) or a bearer token"
            )
        body: CliTokenRequest = convert(decode_object(await request.body()), CliTokenRequest)
        if "cli_token" not in app.security.providers:
            raise Unsupported(
                "this gateway does not issue CLI tokens: enable the cli_token auth provider "
                "(nexus.services.security.providers)"
            )
        token, record = await app.security.exchange_cli_token(
            info.credentials(), "api", label=body.label or "issued over the API"
        )
        issued = CliToken(
            token=token,
            id=record.id,
            expires_at=record.expires_at,
            principal=record.principal,
            tenant=record.tenant,
        )
        return _json(issued, 201, {"Cache-Control": "no-store"})

    @delete("/auth/cli-tokens/current", name="revoke_cli_token", status_code=200)
    async def revoke_cli_token(request: Request[Any, Any, Any]) -> Response[bytes]:
        info = read_request(request.scope, cookie)
        who = await authenticate(info)
        if who.anonymous:
            raise AuthenticationError(
                "present the CLI token to revoke: Authorization: Bearer <token>"
            )
        bearer = info.credentials().bearer
        revoked = False
        if who.provider == "cli_token" and bearer:
            revoked = await app.security.revoke_cli_token(bearer)
            await app.security.audit(
                action="cli_token:revoke", outcome="ok", principal=who, channel="api"
            )
        return _json(CliTokenRevoked(revoked=revoked, principal=who.id))

    @get("/config", name="get_config")
    async def get_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        await admin.require_admin(app, who)
        return _json(admin.view(app), headers={"Cache-Control": "no-store"})

    @get("/config/check", name="check_config")
    async def check_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        who = await authenticate(read_request(request.scope, cookie))
        await admin.require_admin(app, who)
        return _json(await admin.check_config(app), headers={"Cache-Control": "no-store"})

    handlers: list[Any] = [
        list_workflows,
        get_workflow,
        run_workflow,
        list_runs,
        get_run,
        get_run_result,
        cancel_run,
        create_session,
        get_session,
        events,
        run_events,
        ws,
        health_live,
        health_ready,
        metrics,
        plugins,
        issue_cli_token,
        revoke_cli_token,
        get_config,
        check_config,
    ]

    if config.docs:

        @get("/openapi.json", name="openapi")
        async def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
            # Built for the caller: only the workflows it may run (all of them with auth off).
            who = await authenticate(read_request(request.scope, cookie))
            visible = await api.visible_workflows(who)
            key = tuple((wf.name, id(wf)) for wf in visible)
            cached = api.openapi_cache.get(key)
            if cached is None:
                base = (config.public_url or "").rstrip("/") + config.root_path
                document = build_openapi(app, root_path=base, workflows=visible)
                cached = _encode(document)
                if len(api.openapi_cache) >= 64:  # one document per distinct set of workflows
                    api.openapi_cache.clear()
                api.openapi_cache[key] = cached
            return Response(cached, media_type=JSON, headers={"Cache-Control": "private"})

        @get("/docs", name="docs")
        async def docs(request: Request[Any, Any, Any]) -> Response[str]:
            await authenticate(read_request(request.scope, cookie))
            url = json.dumps(f"{config.root_path}/openapi.json").replace("<", "\\u003c")
            assets = escape(f"{config.root_path}/docs/assets")
            html = _DOCS_HTML.format(title=escape(app.title), openapi=url, assets=assets)
            return Response(html, media_type="text/html")

        @get("/docs/assets/{name:str}", name="docs_asset")
        async def docs_asset(
            request: Request[Any, Any, Any], name: FromPath[str]
        ) -> Response[bytes]:
            # Behind the same credentials as /docs (a browser sends the same cookie).
            await authenticate(read_request(request.scope, cookie))
            body = await _docs_asset(name)
            if body is None:
                raise NotFound(f"no docs asset {name!r}")
            return Response(
                body,
                media_type=_DOCS_ASSETS[name],
                headers={"Cache-Control": "private, max-age=86400"},
            )

        handlers += [openapi, docs, docs_asset]
    return handlers


async def _metrics_allowed(api: ApiState, info: RequestInfo) -> None:
    """``/metrics`` needs ``metrics_token`` when set, else (auth on) ``metrics:read``."""
    app = api.app
    token = api.config.metrics_token
    if token:
        presented = info.credentials().bearer or ""
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise AuthenticationError(
                "the metrics need the metrics token: Authorization: Bearer <metrics_token>"
            )
        return
    if not app.security.auth_required:
        return
    who = await api.authenticate(info)
    await app.security.require(who, "metrics:read", channel="api")  # a denial is audited


def create_app(
    app: Nexus,
    config: ApiConfig | None = None,
    *,
    state: ApiState | None = None,
    mounts: list[Mount] | None = None,
) -> Litestar:
    """Build the Litestar application serving ``app`` (which must be running when requests come).

    ``mounts`` defaults to what the plugins return from ``nexus_api_mounts``;
    their ``lifespan()`` is entered in the application's lifespan. The
    :class:`~._state.ApiState` is ``result.state["nexus_api"]``.
    """
    config = config if config is not None else ApiConfig()
    api = state if state is not None else ApiState(app, config)
    mounts = collect_mounts(app) if mounts is None else mounts
    answer_run = run_answerer(api)
    handlers = _routes(api, answer_run) + [_mount_handler(m) for m in mounts]

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for mount in mounts:
                enter: Callable[[], Any] | None = getattr(mount.app, "lifespan", None)
                if callable(enter):
                    await stack.enter_async_context(enter())
            # Watchers beside the SSE streams (their credentials still valid?).
            async with anyio.create_task_group() as tasks:
                api.tasks = tasks
                try:
                    yield
                finally:
                    api.tasks = None
                    tasks.cancel_scope.cancel()

    cors = None
    if config.cors_origins:
        wildcard = "*" in config.cors_origins
        cors = CORSConfig(
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-API-Key",
                "Idempotency-Key",
                "Prefer",
                "X-Nexus-Session",
                "Last-Event-ID",
            ],
            expose_headers=[
                "Location",
                "X-Nexus-Session",
                "Retry-After",
                "Preference-Applied",
                "WWW-Authenticate",
            ],
            allow_credentials=not wildcard,
        )
    litestar = _Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers={Exception: _exception_handler},
        cors_config=cors,
        openapi_config=None,
        request_max_body_size=config.max_body_bytes,
        logging_config=None,
        debug=False,
    )
    litestar.state["nexus_api"] = api
    if cors is None:  # CORS headers are Litestar's to add: then it routes the run route too
        litestar.answer_run = answer_run
    return litestar
