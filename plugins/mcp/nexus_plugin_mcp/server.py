"""The MCP server of a Nexus host: workflows as tools, runs as resources, prompts.

:class:`NexusMCP` builds an ``mcp`` low-level :class:`~mcp.server.Server` whose
handlers call the host's one request path (``app.invoke``), so security,
validation, execution, audit and events are the core's, and the tool schemas
are the workflows' msgspec schemas, as in every other channel. The same server
serves stdio (:mod:`.stdio`) and streamable HTTP (:mod:`.http`), in both the
2025-11-25 handshake protocol and the stateless 2026-07-28 one.

A tool call hands the core the caller's :class:`~nexus_core.security.Credentials`
(``app.invoke(..., credentials=..., channel="mcp")``): the core authenticates,
validates, authorizes and rate-limits it as on every channel. Everything else
is done as the principal the core authenticated from the same credentials:
the tool list is ``app.visible_workflows(principal, channel="mcp")``, runs are
read with ``principal=``, and resource subscriptions subscribe to the host's
events on the caller's behalf (``app.subscribe(principal=...)``: its tenant
only, with ``events:read``), one subscription per client, so one tenant never
hears of another's runs. A subscription ends, with the reason, once its
credentials stop authenticating (``app.security.until_invalid``).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
import msgspec
from mcp.server import InitializationOptions, NotificationOptions, Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from nexus_core.errors import (
    AuthenticationError,
    NexusError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
    WorkflowNotFound,
)
from nexus_core.events import SubscriberLagged
from nexus_core.plugin import blob_ref
from nexus_core.security import Credentials, Principal

from . import __version__
from .config import MCPConfig, mcp_config
from .prompts import prompts_of

if TYPE_CHECKING:
    from mcp.server.connection import Connection
    from mcp.server.context import ServerRequestContext
    from nexus_core import Nexus, Workflow
    from nexus_core.events import Event, Subscription
    from nexus_core.plugin import RunResult

__all__ = [
    "BLOB_REF_SCHEMA",
    "CREDENTIALS_SCOPE_KEY",
    "ERROR_META",
    "FORBIDDEN",
    "IDEMPOTENCY_META",
    "PRINCIPAL_SCOPE_KEY",
    "RATE_LIMITED",
    "RUN_ID_META",
    "RUN_URI",
    "SESSION_META",
    "UNAUTHENTICATED",
    "WORKFLOW_URI",
    "NexusMCP",
    "output_schema",
    "tool_definition",
]

log = logging.getLogger("nexus.mcp")

#: Where the HTTP layer leaves the authenticated principal in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "nexus.principal"
#: Where the HTTP layer leaves the request's credentials in the ASGI scope.
CREDENTIALS_SCOPE_KEY = "nexus.credentials"
#: Resource URI prefixes.
WORKFLOW_URI = "nexus://workflows/"
RUN_URI = "nexus://runs/"
_RESULT = "/result"
#: JSON-RPC error code for a missing or bad token on stdio (implementation-defined band).
UNAUTHENTICATED = -32010
#: JSON-RPC error code for a request the principal may not make (a subscription without
#: ``events:read``).
FORBIDDEN = -32011
#: JSON-RPC error code for a client refused for a while (too many failed authentications).
RATE_LIMITED = -32012
#: ``_meta`` keys: on results (run id, error detail, session) and on requests
#: (a session to resume, an idempotency key).
RUN_ID_META = "nexus/runId"
ERROR_META = "nexus/error"
SESSION_META = "nexus/sessionId"
IDEMPOTENCY_META = "nexus/idempotencyKey"

_TERMINAL = frozenset({"run.completed", "run.failed", "run.cancelled"})
_RUN_EVENTS = ("run.*", "node.finished", "node.failed")
_JSON = "application/json"
_encoder = msgspec.json.Encoder()
#: At most this many ``subscriptions/listen`` streams with resource subscriptions at once.
_MAX_STREAMS = 1024

#: Whose subscriptions a watch holds: (tenant, principal id).
_Who = tuple[str, str]
_T = TypeVar("_T")
#: A watch whose credentials are re-checked elsewhere (the HTTP session's).
_NO_RECHECK = object()


#: The schema of a run output stored by reference (``services.runs.inline_limit``).
BLOB_REF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The output, too large to send inline: read the resource linked in the "
    "result's content (nexus://runs/<run id>/result).",
    "properties": {
        "$blob": {
            "type": "object",
            "properties": {
                "key": {"type": "string"},
                "size": {"type": "integer"},
                "sha256": {"type": "string"},
                "media_type": {"type": "string"},
            },
            "required": ["key", "size", "sha256"],
        }
    },
    "required": ["$blob"],
}


def output_schema(workflow: Workflow, *, by_reference: bool = False) -> tuple[dict[str, Any], bool]:
    """The tool ``outputSchema`` of ``workflow`` and whether its output is wrapped.

    MCP wants an object at the root. An object schema is used as it is; any
    other (a string, a list, a union) becomes
    ``{"type": "object", "properties": {"result": <schema>}, "required": ["result"]}``
    and the structured content is wrapped the same way (``{"result": value}``).
    Shared ``$defs`` stay at the root so their ``$ref`` still resolve.
    ``by_reference`` (the host stores large outputs by reference): the
    output may also be a reference (:data:`BLOB_REF_SCHEMA`).
    """
    schema = workflow.output_schema
    defs = schema.get("$defs")
    inner = {key: value for key, value in schema.items() if key != "$defs"}
    if schema.get("type") == "object":
        if not by_reference:
            return schema, False
        either: dict[str, Any] = {"type": "object", "anyOf": [inner, BLOB_REF_SCHEMA]}
        if defs is not None:
            either["$defs"] = defs
        return either, False
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {"result": {"anyOf": [inner, BLOB_REF_SCHEMA]} if by_reference else inner},
        "required": ["result"],
    }
    if "$defs" in schema:
        wrapped["$defs"] = schema["$defs"]
    return wrapped, True


def tool_definition(workflow: Workflow, *, by_reference: bool = False) -> dict[str, Any]:
    """The MCP ``Tool`` (wire form) of a workflow: schemas, description, annotations.

    ``by_reference``: see :func:`output_schema`.
    """
    meta = workflow.meta
    out_schema, _ = output_schema(workflow, by_reference=by_reference)
    annotations: dict[str, Any] = {
        "readOnlyHint": meta.read_only,
        "destructiveHint": meta.destructive,
        "idempotentHint": meta.idempotent,
    }
    tool: dict[str, Any] = {
        "name": workflow.name,
        "inputSchema": workflow.input_schema,
        "outputSchema": out_schema,
        "annotations": annotations,
    }
    if meta.title:
        tool["title"] = meta.title
        annotations["title"] = meta.title
    if workflow.description:
        tool["description"] = workflow.description
    if meta.tags:
        tool["_meta"] = {"nexus/tags": list(meta.tags)}
    return tool


class _ToolEntry:
    """A workflow's tool, computed once per workflow object."""

    __slots__ = ("definition", "workflow", "wrapped")

    def __init__(self, workflow: Workflow, by_reference: bool = False) -> None:
        self.workflow = workflow
        self.definition = tool_definition(workflow, by_reference=by_reference)
        self.wrapped = output_schema(workflow)[1]


class _RunWatch:
    """The run resources one principal subscribed to on one 2025-11-25 connection."""

    __slots__ = ("scope", "uris")

    def __init__(self) -> None:
        self.uris: set[str] = set()
        self.scope = anyio.CancelScope()


class _StreamBus:
    """The bus of one listen stream: the shared bus's events plus this stream's own.

    ``publish`` reaches this stream only; ``subscribe`` registers the listener
    on both buses (the ``mcp`` :class:`SubscriptionBus` protocol).
    """

    def __init__(self, shared: InMemorySubscriptionBus) -> None:
        self._shared = shared
        self._own = InMemorySubscriptionBus()

    async def publish(self, event: ServerEvent) -> None:
        """Deliver ``event`` to this stream's listener."""
        await self._own.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Register ``listener`` on both buses; return the idempotent unsubscribe."""
        leave_shared = self._shared.subscribe(listener)
        leave_own = self._own.subscribe(listener)

        def unsubscribe() -> None:
            leave_shared()
            leave_own()

        return unsubscribe


class _NexusServer(Server[dict[str, Any]]):
    """The low-level server, advertising list-changed notifications on 2025-11-25."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        """Default to announcing tools and resources list changes."""
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
        )


class NexusMCP:
    """The MCP face of one Nexus host.

    ``server`` is the ``mcp`` low-level server to run on a transport.
    ``credentials`` are used for requests that carry none of their own (stdio,
    where the token comes from ``NEXUS_TOKEN``); on HTTP the principal
    authenticated by :mod:`.http` from the request's bearer token is used.
    The host must be running while the server serves.
    """

    def __init__(
        self,
        app: Nexus,
        config: MCPConfig | None = None,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        self.app = app
        self.config = config if config is not None else mcp_config(app)
        self.credentials = credentials
        self.bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self.bus)
        self._tools: dict[str, _ToolEntry] = {}
        # 2025-11-25 connections: each one's resource subscriptions, per principal (a
        # watch on the host's events scoped to that principal), and who listed the
        # catalog (they hear list changes). Weak: a closed connection drops out.
        self._watches: weakref.WeakKeyDictionary[Connection, dict[_Who, _RunWatch]] = (
            weakref.WeakKeyDictionary()
        )
        self._catalog_readers: weakref.WeakSet[Connection] = weakref.WeakSet()
        # 2026-07-28 listen streams with resource subscriptions, each on its own bus.
        self._streams: set[ListenHandler] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self.server = _NexusServer(
            app.title,
            version=__version__,
            title=app.title,
            instructions=(
                f"Each tool runs a workflow of {app.title}. Runs are readable as "
                f"resources ({RUN_URI}<run id>, the id is in each result's _meta)."
            ),
            lifespan=self._lifespan,
            get_tool_input_schema=self._input_schema,
            # mcp's runner sends a dict result as is (_dump_result); its annotations want a model.
            on_list_tools=self._list_tools,  # type: ignore[arg-type]
            on_call_tool=self._call_tool,  # type: ignore[arg-type]
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=self._listen_handler,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
        )
        if not self.config.telemetry:
            self.server.middleware = []

    # -- lifecycle ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as tg:
            await tg.start(self._catalog_bridge)
            self._task_group = tg
            try:
                yield {}
            finally:
                self._task_group = None
                self._listen.close()
                for handler in list(self._streams):
                    handler.close()
                tg.cancel_scope.cancel()

    async def _catalog_bridge(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Workflows registered while serving: tell clients the tool list changed."""
        async with self.app.subscribe(("workflow.registered",)) as sub:
            task_status.started()
            async for _event in sub:
                await self._publish(
                    (ToolsListChanged(), ResourcesListChanged()),
                    "notifications/tools/list_changed",
                    "notifications/resources/list_changed",
                )

    def _run_events(self, principal: Principal, uris: set[str]) -> Subscription:
        """The host's run events ``principal`` may see, for the run URIs in ``uris`` (live set).

        Subscribed on the principal's behalf (``app.subscribe(principal=...)``):
        its tenant's events only, and ``events:read`` is needed. With a
        distributed event bus, events of runs on other replicas arrive too.
        """

        def wanted(event: Event) -> bool:
            return event.run_id is not None and f"{RUN_URI}{event.run_id}" in uris

        try:
            return self.app.subscribe(_RUN_EVENTS, principal=principal, filter=wanted)
        except PermissionDenied as exc:
            raise MCPError(
                FORBIDDEN, f"resource subscriptions need the events:read permission: {exc.message}"
            ) from None

    async def _run_updates(
        self,
        principal: Principal,
        uris: set[str],
        subscription: Subscription,
        *,
        task_status: anyio.abc.TaskStatus[AsyncIterator[str]],
    ) -> None:
        """Hand ``task_status`` the URIs in ``uris`` whose runs change, as they change.

        ``subscription`` is :meth:`_run_events` (taken by the caller, so a
        refusal is the caller's error and nothing later is missed); it is
        closed when this ends, which is when the caller's scope does. A
        subscriber that lagged behind is subscribed again, and every URI is
        reported once, since some change may have been missed.
        """
        send, receive = anyio.create_memory_object_stream[str](256)
        task_status.started(receive)
        async with send:
            while True:
                try:
                    async with subscription:
                        async for event in subscription:
                            uri = f"{RUN_URI}{event.run_id}"
                            if uri in uris:
                                await send.send(uri)
                    return  # the host stopped
                except SubscriberLagged:
                    log.warning("MCP resource updates of %r lagged; catching up", principal.id)
                    try:
                        subscription = self._run_events(principal, uris)
                    except MCPError as exc:  # no longer allowed: the updates end
                        log.warning("MCP resource updates of %r end: %s", principal.id, exc)
                        return
                    for uri in list(uris):
                        await send.send(uri)

    async def _start_updates(
        self,
        tg: anyio.abc.TaskGroup,
        principal: Principal,
        uris: set[str],
        subscription: Subscription,
    ) -> AsyncIterator[str]:
        """Run :meth:`_run_updates` in ``tg``; ``subscription`` is closed if that fails."""
        try:
            updates: AsyncIterator[str] = await tg.start(
                self._run_updates, principal, uris, subscription
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await subscription.aclose()
            raise
        return updates

    async def _watch(
        self,
        connection: Connection,
        principal: Principal,
        credentials: Credentials | None,
        *,
        recheck: bool,
    ) -> _RunWatch:
        """The watch of ``principal``'s subscriptions on a 2025-11-25 connection (started once).

        It forwards ``notifications/resources/updated`` until the connection
        closes (its exit stack cancels the watch) or the server stops. With
        ``recheck`` (stdio) it also ends once ``credentials`` stop
        authenticating as ``principal``: the client is told why in a
        ``notifications/message``, and a new subscription is refused with the
        reason. Over HTTP the endpoint re-checks the whole session instead
        (following a refreshed token), closing it and so this watch.
        """
        watches = self._watches.setdefault(connection, {})
        who = (principal.tenant, principal.id)
        watch = watches.get(who)
        if watch is not None:
            return watch
        if self._task_group is None:
            raise MCPError(INTERNAL_ERROR, "the server is not running")
        watch = _RunWatch()
        subscription = self._run_events(principal, watch.uris)
        try:
            await self._task_group.start(
                self._forward_updates,
                connection,
                watch,
                principal,
                credentials if recheck else _NO_RECHECK,
                subscription,
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await subscription.aclose()
            raise
        watches[who] = watch
        connection.exit_stack.callback(watch.scope.cancel)
        return watch

    async def _forward_updates(
        self,
        connection: Connection,
        watch: _RunWatch,
        principal: Principal,
        credentials: object,
        subscription: Subscription,
        *,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        """Send ``notifications/resources/updated`` to ``connection`` until the watch ends.

        ``credentials`` are re-checked beside it unless they are ``_NO_RECHECK``.
        """
        with watch.scope:
            async with anyio.create_task_group() as tg:
                updates = await self._start_updates(tg, principal, watch.uris, subscription)
                task_status.started()

                async def recheck(credentials: Credentials | None) -> None:
                    reason = await self.until_invalid(credentials, principal)
                    watches = self._watches.get(connection, {})
                    if watches.get((principal.tenant, principal.id)) is watch:
                        del watches[(principal.tenant, principal.id)]
                    await _notify(
                        connection,
                        "notifications/message",
                        {
                            "level": "error",
                            "logger": "nexus.mcp",
                            "data": f"resource subscriptions ended: {reason}",
                        },
                    )
                    tg.cancel_scope.cancel()

                if credentials is not _NO_RECHECK:
                    assert credentials is None or isinstance(credentials, Credentials)
                    tg.start_soon(recheck, credentials)
                async for uri in updates:
                    await _notify(connection, "notifications/resources/updated", {"uri": uri})

    async def _publish(self, events: tuple[ServerEvent, ...], *methods: str) -> None:
        for event in events:
            await self.bus.publish(event)
        for connection in list(self._catalog_readers):
            for method in methods:
                await _notify(connection, method, None)

    # -- who is calling ------------------------------------------------------------

    def credentials_of(self, ctx: Any) -> Credentials | None:
        """What the caller of this request presented: the HTTP request's, else ``credentials``."""
        request = ctx.request
        if request is not None:
            found = request.scope.get(CREDENTIALS_SCOPE_KEY)
            if isinstance(found, Credentials):
                return found
        return self.credentials

    async def principal(self, ctx: Any) -> Principal:
        """The caller: authenticated by the core from this request's credentials.

        On HTTP the endpoint (:mod:`.http`) has had the core authenticate the
        request already and left the principal in the scope. Raises
        ``MCPError`` (code :data:`UNAUTHENTICATED`) for a missing or bad token.
        """
        request = ctx.request
        if request is not None:
            found = request.scope.get(PRINCIPAL_SCOPE_KEY)
            if isinstance(found, Principal):
                return found
        try:
            return await self.app.security.authenticate(self.credentials_of(ctx), "mcp")
        except AuthenticationError as exc:
            raise _unauthenticated(ctx, exc) from None
        except RateLimited as exc:  # too many failed authentications from this client
            raise MCPError(
                RATE_LIMITED, f"rate limited: retry in {exc.retry_after:g}s ({exc.message})"
            ) from None

    async def until_invalid(self, credentials: Credentials | None, principal: Principal) -> str:
        """Return once ``credentials`` stop authenticating as ``principal``: the reason.

        The core's ``app.security.until_invalid`` on channel ``mcp``; should the
        re-check itself fail, the connection is not trusted further (fails closed).
        """
        try:
            return await self.app.security.until_invalid(credentials, "mcp", principal)
        except Exception:
            log.exception("re-checking the MCP credentials of %r failed", principal.id)
            return "the credentials could not be re-checked"

    async def _may_execute(self, principal: Principal, workflow: Workflow) -> bool:
        try:
            await self.app.security.authorize(
                principal, f"workflow:{workflow.name}:execute", workflow=workflow, channel="mcp"
            )
        except PermissionDenied:
            return False
        return True

    async def _visible(self, principal: Principal) -> list[Workflow]:
        return await self.app.visible_workflows(principal, channel="mcp")

    def _entry(self, workflow: Workflow) -> _ToolEntry:
        entry = self._tools.get(workflow.name)
        if entry is None or entry.workflow is not workflow:
            by_reference = self.app.config.nexus.services.runs.inline_limit is not None
            entry = self._tools[workflow.name] = _ToolEntry(workflow, by_reference)
        return entry

    def _remember_reader(self, ctx: Any) -> None:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            connection = _connection_of(ctx)
            if connection is not None:
                self._catalog_readers.add(connection)

    # -- tools -------------------------------------------------------------------

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        workflow = self.app.workflows.get(name)
        return workflow.input_schema if workflow is not None else None

    async def _list_tools(
        self, ctx: ServerRequestContext[dict[str, Any]], params: Any
    ) -> dict[str, Any]:
        principal = await self.principal(ctx)
        self._remember_reader(ctx)
        tools = [self._entry(wf).definition for wf in await self._visible(principal)]
        # Filtered by the caller's permissions: never shared, never stale.
        return {"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}

    async def _call_tool(
        self, ctx: ServerRequestContext[dict[str, Any]], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        app = self.app
        name = params.name
        meta = ctx.meta or {}
        session = meta.get(SESSION_META)
        key = meta.get(IDEMPOTENCY_META)
        try:
            # The one request path: the core authenticates these credentials itself.
            started = await app.invoke(
                name,
                params.arguments or {},
                credentials=self.credentials_of(ctx),
                channel="mcp",
                session=session if isinstance(session, str) else None,
                idempotency_key=key if isinstance(key, str) else None,
                wait=False,
            )
        except AuthenticationError as exc:
            raise _unauthenticated(ctx, exc) from None
        except WorkflowNotFound as exc:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {exc.message}") from None
        except ValidationError as exc:
            # Every bad argument, each on its own line with its path (and in _meta).
            listed = "".join(f"\n  {e.path or '(arguments)'}: {e.reason}" for e in exc.errors)
            text = f"invalid arguments for {name!r}:{listed}" if listed else exc.message
            return _tool_error(text, exc)
        except RateLimited as exc:
            return _tool_error(f"rate limited: retry in {exc.retry_after:g}s", exc)
        except NexusError as exc:
            return _tool_error(f"{exc.code}: {exc.message}", exc)
        run_id = started.run_id
        # The run starts only when this task next yields: subscribing now misses nothing.
        token = meta.get("progress_token")
        try:
            if started.status not in ("pending", "running"):
                result = started  # an earlier run with the same idempotency key
            elif token is None:
                result = await app.wait(run_id)
            else:
                result = await self._wait_with_progress(ctx, run_id, app.get_workflow(name))
        except anyio.get_cancelled_exc_class():
            # notifications/cancelled (2025-11-25) or a closed response stream
            # (2026-07-28) cancelled this request: cancel the run too, unless
            # an earlier call with the same idempotency key started it.
            if not started.replayed:
                with anyio.CancelScope(shield=True):
                    await app.cancel(run_id)
            raise
        return self._tool_result(self._entry(app.get_workflow(name)), result, self._rest_base(ctx))

    def _rest_base(self, ctx: Any) -> str | None:
        """The gateway's address as this HTTP request reached it, when the API channel runs here.

        A large output is then also linked at ``GET /runs/{id}/result``, which
        streams it: MCP messages carry no 50 MB values well.
        """
        request = ctx.request
        if request is None or "api" not in self.app.channels:
            return None
        scope = request.scope
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not host:
            return None
        return f"{scope.get('scheme', 'http')}://{host}"

    async def _wait_with_progress(self, ctx: Any, run_id: str, workflow: Workflow) -> RunResult:
        """Wait for the run, reporting progress per node from its events."""
        app = self.app
        total = float(len(workflow.nodes))
        session = ctx.session
        ended = anyio.Event()

        async def forward(sub: AsyncIterator[Event]) -> None:
            done = 0
            await session.report_progress(0.0, total, f"run {run_id} started")
            async for event in sub:
                kind = event.type
                if kind in ("node.finished", "node.failed"):
                    done += 1
                    node = event.data.get("node")
                    status = event.data.get("status", "failed")
                    await session.report_progress(float(done), total, f"node {node!r} {status}")
                elif kind in _TERMINAL:
                    break
            ended.set()

        subscription = app.subscribe(("node.*", "run.*"), filter=lambda e: e.run_id == run_id)
        async with subscription, anyio.create_task_group() as tg:
            tg.start_soon(forward, subscription)
            result = await app.wait(run_id)
            with anyio.move_on_after(1.0):
                await ended.wait()  # the last node's progress goes out before the result
            tg.cancel_scope.cancel()
        return result

    @staticmethod
    def _tool_result(
        entry: _ToolEntry, result: RunResult, rest_base: str | None = None
    ) -> dict[str, Any]:
        run_meta: dict[str, Any] = {RUN_ID_META: result.run_id}
        if result.session_id:
            run_meta[SESSION_META] = result.session_id
        if result.status == "completed":
            output = msgspec.to_builtins(result.output)
            structured = {"result": output} if entry.wrapped else output
            ref = blob_ref(output)
            if ref is not None:
                # Too large to send inline: links to where it is read (HTTP streams it).
                uris = [f"{RUN_URI}{result.run_id}{_RESULT}"]
                if rest_base is not None:
                    uris.insert(0, f"{rest_base}/runs/{result.run_id}{_RESULT}")
                content: list[dict[str, Any]] = [
                    {
                        "type": "resource_link",
                        "uri": uri,
                        "name": f"{entry.workflow.name}-{result.run_id}-result.json",
                        "description": f"The output of run {result.run_id} ({ref.size} bytes "
                        "of JSON, sha256 " + ref.sha256 + ").",
                        "mimeType": _JSON,
                        "size": ref.size,
                    }
                    for uri in uris
                ]
            else:
                content = [{"type": "text", "text": _encoder.encode(structured).decode()}]
            return {
                "content": content,
                "structuredContent": structured,
                "isError": False,
                "resultType": "complete",
                "_meta": run_meta,
            }
        error = result.error
        name = entry.workflow.name
        if result.status == "cancelled":
            message = f"workflow {name!r} was cancelled (run {result.run_id})"
        elif error is None:
            message = f"workflow {name!r} ended {result.status} (run {result.run_id})"
        elif error.node:
            message = (
                f"workflow {name!r} failed at node {error.node!r}: {error.type}: {error.message}"
            )
        else:
            message = f"workflow {name!r} failed: {error.type}: {error.message}"
        if error is not None:
            # Never the traceback: an agent gets the error; runs:debug reads the run elsewhere.
            run_meta[ERROR_META] = msgspec.to_builtins(error.public())
        return {
            "content": [{"type": "text", "text": message}],
            "isError": True,
            "resultType": "complete",
            "_meta": run_meta,
        }

    # -- resources -------------------------------------------------------------------

    async def _list_resources(
        self, ctx: ServerRequestContext[dict[str, Any]], params: Any
    ) -> types.ListResourcesResult:
        principal = await self.principal(ctx)
        self._remember_reader(ctx)
        resources = [
            types.Resource(
                uri=f"{WORKFLOW_URI}{wf.name}",
                name=wf.name,
                title=wf.meta.title,
                description=wf.description or None,
                mime_type=_JSON,
            )
            for wf in await self._visible(principal)
        ]
        return types.ListResourcesResult(resources=resources)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[dict[str, Any]], params: Any
    ) -> types.ListResourceTemplatesResult:
        await self.principal(ctx)
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=f"{RUN_URI}{{run_id}}",
                    name="run",
                    title="Workflow run",
                    description="Status, output, error and per-node detail of a workflow run.",
                    mime_type=_JSON,
                ),
                types.ResourceTemplate(
                    uri_template=f"{RUN_URI}{{run_id}}{_RESULT}",
                    name="run-result",
                    title="Workflow run output",
                    description="A completed run's output as JSON (a large one is linked here "
                    "from the tool result instead of sent inline).",
                    mime_type=_JSON,
                ),
                types.ResourceTemplate(
                    uri_template=f"{WORKFLOW_URI}{{name}}",
                    name="workflow",
                    title="Workflow definition",
                    description="A workflow's description, schemas, nodes and connections.",
                    mime_type=_JSON,
                ),
            ]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[dict[str, Any]], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        principal = await self.principal(ctx)
        uri = params.uri
        text = await self._resource_text(principal, uri)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type=_JSON, text=text)]
        )

    async def _resource_text(self, principal: Principal, uri: str) -> str:
        if uri.startswith(WORKFLOW_URI):
            workflow = await self._workflow_for(principal, uri.removeprefix(WORKFLOW_URI))
            return _encoder.encode(self._describe(workflow)).decode()
        if uri.startswith(RUN_URI) and uri.endswith(_RESULT):
            run_id = uri.removeprefix(RUN_URI).removesuffix(_RESULT)
            try:
                _ref, chunks = await self.app.open_output(run_id, principal=principal)
                data = b"".join([chunk async for chunk in chunks])
            except NotFound as exc:
                raise MCPError(INVALID_PARAMS, f"Resource not found: {exc.message}") from None
            return data.decode()
        if uri.startswith(RUN_URI):
            try:
                run = await self.app.get_run(uri.removeprefix(RUN_URI), principal=principal)
            except NotFound as exc:
                raise MCPError(INVALID_PARAMS, f"Resource not found: {exc.message}") from None
            return _encoder.encode(run).decode()
        raise MCPError(
            INVALID_PARAMS,
            f"Resource not found: {uri!r} (known: {WORKFLOW_URI}<name>, {RUN_URI}<run id>)",
        )

    async def _workflow_for(self, principal: Principal, name: str) -> Workflow:
        workflow = self.app.workflows.get(name)
        if workflow is None or not await self._may_execute(principal, workflow):
            raise MCPError(INVALID_PARAMS, f"Resource not found: no workflow {name!r}")
        return workflow

    def _describe(self, workflow: Workflow) -> dict[str, Any]:
        entry = self._entry(workflow)
        return {
            "name": workflow.name,
            "title": workflow.meta.title,
            "description": workflow.description,
            "input_schema": workflow.input_schema,
            "output_schema": workflow.output_schema,
            "tool": entry.definition,
            "meta": msgspec.to_builtins(workflow.meta),
            "nodes": [{"id": key, "type": p.type_name} for key, p in workflow.nodes.items()],
            "connections": [msgspec.to_builtins(c) for c in workflow.connections],
        }

    async def _check_subscribable(self, principal: Principal, uri: str) -> None:
        # Reading is the permission to subscribe; it also rejects unknown URIs.
        await self._resource_text(principal, uri)

    async def _subscribe(
        self, ctx: ServerRequestContext[dict[str, Any]], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        principal = await self.principal(ctx)
        await self._check_subscribable(principal, params.uri)
        connection = _connection_of(ctx)
        if connection is None:
            raise MCPError(INTERNAL_ERROR, "this transport cannot deliver resource updates")
        watch = await self._watch(
            connection, principal, self.credentials_of(ctx), recheck=ctx.request is None
        )
        watch.uris.add(params.uri)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[dict[str, Any]], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        await self.principal(ctx)
        connection = _connection_of(ctx)
        if connection is not None:
            for watch in self._watches.get(connection, {}).values():
                watch.uris.discard(params.uri)
        return types.EmptyResult()

    async def _listen_handler(
        self,
        ctx: ServerRequestContext[dict[str, Any]],
        params: types.SubscriptionsListenRequestParams,
    ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen``: list changes from the shared bus; run updates of its own.

        A stream with resource subscriptions gets a bus of its own, fed by a
        subscription to the host's events on the caller's behalf, so no stream
        ever hears of another principal's runs.
        """
        principal = await self.principal(ctx)
        uris = set(params.notifications.resource_subscriptions or ())
        for uri in uris:
            await self._check_subscribable(principal, uri)
        return await self._while_valid(
            ctx, principal, lambda: self._serve_listen(ctx, params, principal, uris)
        )

    async def _while_valid(
        self, ctx: Any, principal: Principal, serve: Callable[[], Awaitable[_T]]
    ) -> _T:
        """``await serve()``, ended early once the caller's credentials stop authenticating.

        Then (they expired, were revoked) it raises an ``MCPError`` with the
        reason, which ends a listen stream with that error.
        """
        credentials = self.credentials_of(ctx)
        done: list[_T] = []
        failed: list[Exception] = []
        ended: list[str] = []
        async with anyio.create_task_group() as tg:

            async def recheck() -> None:
                ended.append(await self.until_invalid(credentials, principal))
                tg.cancel_scope.cancel()

            tg.start_soon(recheck)
            try:
                done.append(await serve())
            except Exception as exc:  # raised below, outside the task group (not in a group)
                failed.append(exc)
            finally:
                tg.cancel_scope.cancel()
        if failed:
            raise failed[0]
        if ended:
            raise MCPError(UNAUTHENTICATED, f"the subscription ended: {ended[0]}")
        return done[0]

    async def _serve_listen(
        self,
        ctx: ServerRequestContext[dict[str, Any]],
        params: types.SubscriptionsListenRequestParams,
        principal: Principal,
        uris: set[str],
    ) -> types.SubscriptionsListenResult:
        """One listen stream: the shared bus, plus run updates of its own when it asks."""
        if not uris:
            return await self._listen(ctx, params)
        if len(self._streams) >= _MAX_STREAMS:
            raise MCPError(INTERNAL_ERROR, "Subscription limit reached")
        bus = _StreamBus(self.bus)
        handler = ListenHandler(bus)

        async def forward(updates: AsyncIterator[str]) -> None:
            async for uri in updates:
                await bus.publish(ResourceUpdated(uri=uri))

        subscription = self._run_events(principal, uris)  # a refusal is this request's error
        self._streams.add(handler)
        try:
            async with anyio.create_task_group() as tg:
                updates = await self._start_updates(tg, principal, uris, subscription)
                tg.start_soon(forward, updates)
                try:
                    result = await handler(ctx, params)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._streams.discard(handler)
        return result

    # -- prompts -------------------------------------------------------------------------

    async def _list_prompts(
        self, ctx: ServerRequestContext[dict[str, Any]], params: Any
    ) -> types.ListPromptsResult:
        await self.principal(ctx)
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=item.name,
                    title=item.title,
                    description=item.description or None,
                    arguments=[
                        types.PromptArgument(
                            name=arg.name, description=arg.description, required=arg.required
                        )
                        for arg in item.arguments
                    ],
                )
                for item in prompts_of(self.app).values()
            ]
        )

    async def _get_prompt(
        self, ctx: ServerRequestContext[dict[str, Any]], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        await self.principal(ctx)
        prompts = prompts_of(self.app)
        item = prompts.get(params.name)
        if item is None:
            known = ", ".join(sorted(prompts)) or "none"
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {params.name!r} (known: {known})")
        try:
            messages = await item.render(params.arguments)
        except ValidationError as exc:
            raise MCPError(
                INVALID_PARAMS, f"invalid arguments for prompt {item.name!r}: {exc.message}"
            ) from None
        return types.GetPromptResult(
            description=item.description or None,
            messages=[
                types.PromptMessage(
                    role=message.role, content=types.TextContent(type="text", text=message.content)
                )
                for message in messages
            ],
        )


def _unauthenticated(ctx: Any, exc: AuthenticationError) -> MCPError:
    """The JSON-RPC error of a request whose credentials the core refused."""
    if ctx.request is not None:  # HTTP: the request's own bearer token
        hint = "send a valid bearer token"
    else:
        hint = (
            "set NEXUS_TOKEN to a valid token, or log in (again) with: nexus login; "
            "nexus logout forgets a saved token"
        )
    return MCPError(UNAUTHENTICATED, f"authentication failed: {exc.message} ({hint})")


def _tool_error(message: str, exc: NexusError) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": message}],
        "isError": True,
        "resultType": "complete",
        "_meta": {ERROR_META: msgspec.to_builtins(exc.detail())},
    }


def _connection_of(ctx: Any) -> Connection | None:
    # ServerRequestContext exposes the per-request ServerSession only; its
    # connection (standalone outbound, exit stack) is the one stable handle of
    # a 2025-11-25 connection. mcp 2.3 keeps it on a private attribute.
    return getattr(ctx.session, "_connection", None)


async def _notify(connection: Connection, method: str, params: dict[str, Any] | None) -> None:
    try:
        await connection.outbound.notify(method, params)
    except Exception:  # advisory: a dropped connection must not stop the others
        log.debug("could not deliver %s", method, exc_info=True)
