"""``Nexus``, the host: the workflow registry, the lifecycle and the one invoke path."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import msgspec

from .config import Config, check_production, load_config
from .engine import RunEngine, run_event
from .errors import (
    FieldError,
    IdempotencyConflict,
    NexusError,
    PermissionDenied,
    PluginLoadFailed,
    RunNotFound,
    SessionNotFound,
    ValidationError,
    WorkflowDefinitionError,
    WorkflowNotFound,
)
from .events import EventBus, EventType, LocalEventBus, Subscription
from .health import HealthReport, readiness
from .housekeeping import start as start_housekeeping
from .metrics import Metrics
from .payloads import BlobRef, Payloads, blob_ref, run_blob_prefix
from .plugins import PluginHost, PluginInfo, PluginLoadError
from .prompts import Prompt
from .security import ANONYMOUS, Credentials, Principal, SecurityLayer, hash_inputs
from .security.policy import ANY_INPUTS
from .serving import DEFAULT_SIGNALS, serve_host, start_channel
from .sessions import Session, SessionManager
from .specs import NodeTypeSpec, import_string
from .storage.base import ROLES, RunRecord, Storage
from .storage.router import StorageRouter
from .storage.select import create_storage, select_storage
from .workflows.builder import WorkflowBuilder
from .workflows.function import workflow_from_function
from .workflows.model import NodePolicy, Workflow, WorkflowMeta
from .workflows.runtime import NodeResult, RunError, RunResult, Runtime, new_run_id

__all__ = ["Nexus", "create_storage"]

log = logging.getLogger("nexus")

F = TypeVar("F", bound=Callable[..., Any])


class Nexus:
    """The host. Register workflows once; every installed channel serves them.

    ::

        app = Nexus("shop")

        @app.workflow
        def greet(name: str, excited: bool = False) -> str:
            "Say hello."
            return f"Hello, {name}{'!' if excited else '.'}"

    ``config`` is a file path, a mapping (the ``nexus`` table) or a loaded
    :class:`~nexus_core.config.Config`; without it ``nexus.toml``/``nexus.yaml``
    in the working directory and ``NEXUS_*`` variables are read. ``storage``
    overrides the configured storage URL (or is a ``Storage`` object).
    ``plugins`` adds plugin objects or module names on top of the installed
    ones; ``autoload=False`` skips entry points (as ``NEXUS_DISABLE_PLUGIN_AUTOLOAD``).
    """

    def __init__(
        self,
        title: str | None = None,
        *,
        config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        storage: str | Storage | None = None,
        plugins: Iterable[object | str] = (),
        autoload: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = PluginHost(plugins, autoload=autoload, env=env)
        if isinstance(config, Config):
            self.config = config
        else:
            sections = self.host.config_sections()
            if isinstance(config, Mapping):
                self.config = load_config(data=config, env=env, sections=sections)
            else:
                self.config = load_config(
                    Path(config) if config is not None else None, env=env, sections=sections
                )
        self._check_required_plugins()
        self.title = title or self.config.nexus.title
        # The app's own database by default (.nexus/<app>.db): named after the
        # file that created the host (a script run directly), else the title.
        self.config.bind_app(self.title, sys._getframe(1).f_globals.get("__file__"))
        logging.getLogger("nexus").setLevel(self.config.nexus.services.monitoring.log_level.upper())
        #: This host's name in metrics and logs (``nexus.instance_id``, else the hostname).
        self.instance_id = self.config.nexus.instance_id or socket.gethostname()
        self.runtime = Runtime()
        #: Executes, records and recovers runs under leases (see :mod:`nexus_core.engine`).
        self.engine = RunEngine(self)
        self.metrics = Metrics(enabled=self.config.nexus.services.monitoring.metrics)
        self.security = SecurityLayer(self)
        #: The open storage backend while the host runs, else None.
        self.storage: Storage | None = None
        #: Channels started by :meth:`running`/:meth:`serve`, by name.
        self.channels: dict[str, Any] = {}
        self._storage_override = storage
        self._workflows: dict[str, Workflow] = {}
        self._prompts: dict[str, Prompt] = {}
        self._unannounced: list[Workflow] = []
        self._running: _Services | None = None
        # Node types added at run time (tools of discovered MCP servers...), by name.
        self._added_node_types: dict[str, NodeTypeSpec] = {}

    def __repr__(self) -> str:
        return f"<Nexus {self.title!r} workflows={len(self._workflows)}>"

    # -- plugins ---------------------------------------------------------------

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin: name, version and the hooks it implements."""
        return self.host.infos()

    @property
    def plugin_errors(self) -> list[PluginLoadError]:
        """Plugins that failed to load: distribution, version, error and how to disable them."""
        return list(self.host.errors)

    def _check_required_plugins(self) -> None:
        loaded = {info.name for info in self.host.infos()}
        missing = []
        for name in self.config.nexus.required_plugins:
            if name in loaded:
                continue
            failed = [e for e in self.host.errors if e.name == name]
            missing.append(str(failed[0]) if failed else f"plugin {name!r} is not installed")
        if missing:
            raise PluginLoadFailed(
                "required plugins are missing (nexus.required_plugins): " + "; ".join(missing)
            )

    def node_types(self) -> dict[str, NodeTypeSpec]:
        """Every node type the installed plugins contribute, and those added since, by name."""
        if not self._added_node_types:
            return self.host.node_types()
        return {**self.host.node_types(), **self._added_node_types}

    def add_node_type(self, spec: NodeTypeSpec, *, replace: bool = False) -> None:
        """Make a node type known to this host from now on (for types found at run time).

        A plugin that discovers node types while the host runs (the MCP
        plugin's ``service_discovery``: one type per tool of an external
        server) adds them here; workflows registered afterwards may use them.
        A name an installed plugin contributes is refused; an added name is
        replaced only with ``replace=True``.
        """
        if spec.name in self.host.node_types() or (
            spec.name in self._added_node_types and not replace
        ):
            raise WorkflowDefinitionError(f"a node type named {spec.name!r} already exists")
        self._added_node_types[spec.name] = spec

    async def start_task(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Start ``func(*args, task_status=...)`` in the running host's task group.

        As ``anyio.abc.TaskGroup.start``: returns what the task passes to
        ``task_status.started()``. The task is cancelled when the host stops,
        after the plugins' ``nexus_shutdown``. For plugins' background work.
        """
        return await self._services().task_group.start(func, *args)

    # -- workflows -------------------------------------------------------------

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The registered workflows, by name (read-only)."""
        return MappingProxyType(self._workflows)

    def get_workflow(self, name: str) -> Workflow:
        """The workflow called ``name``, or :class:`WorkflowNotFound` with a suggestion."""
        try:
            return self._workflows[name]
        except KeyError:
            raise WorkflowNotFound(name, self._workflows) from None

    @overload
    def workflow(self, function: F, /) -> F: ...

    @overload
    def workflow(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        title: str | None = None,
        tags: Iterable[str] = (),
        read_only: bool = False,
        destructive: bool = False,
        idempotent: bool = False,
        durable: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        blocking: bool = True,
    ) -> Callable[[F], F]: ...

    def workflow(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        title: str | None = None,
        tags: Iterable[str] = (),
        read_only: bool = False,
        destructive: bool = False,
        idempotent: bool = False,
        durable: bool = True,
        timeout: float | None = None,
        retries: int = 0,
        blocking: bool = True,
    ) -> Any:
        """Register a typed function (sync or async) as a workflow; usable bare or with options.

        The name defaults to the function's, the description to its docstring;
        the input schema comes from the signature, the output schema from the
        return annotation. ``read_only``/``destructive``/``idempotent`` become
        MCP tool annotations. A sync function runs in a worker thread unless
        ``blocking=False`` says it is quick, pure code that may run on the event
        loop (saving the thread hop). ``durable=False`` makes it ephemeral: no
        run record, no checkpoints, events to live subscribers only (see
        :class:`~nexus_core.workflows.model.WorkflowMeta`). The function itself
        is returned unchanged.
        """
        meta = WorkflowMeta(
            title=title,
            tags=tuple(tags),
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            durable=durable,
        )
        policy = NodePolicy(timeout=timeout, retries=retries)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            workflow = workflow_from_function(
                fn, name=name, description=description, meta=meta, policy=policy
            )
            for placed in workflow.nodes.values():
                placed.node.blocking = blocking
            self.register(workflow)
            return fn

        return register(function) if function is not None else register

    def register(
        self, workflow: Workflow | WorkflowBuilder, *, name: str | None = None
    ) -> Workflow:
        """Register a built workflow (or a builder, built against this host's node types)."""
        if isinstance(workflow, WorkflowBuilder):
            workflow = workflow.build(self, name=name)
        elif name is not None and name != workflow.name:
            raise WorkflowDefinitionError("pass name= to WorkflowBuilder.build, not register")
        if workflow.name in self._workflows:
            raise WorkflowDefinitionError(
                f"a workflow named {workflow.name!r} is already registered"
            )
        self._workflows[workflow.name] = workflow
        self._unannounced.append(workflow)
        if self._running is not None:
            self._running.task_group.start_soon(self._announce_pending)
        return workflow

    @property
    def prompts(self) -> Mapping[str, Prompt]:
        """The registered prompt templates, by name (read-only)."""
        return MappingProxyType(self._prompts)

    def prompt(
        self,
        function: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
    ) -> Any:
        """Register a prompt template (usable bare or with options); the function is returned.

        See :mod:`nexus_core.prompts`. The MCP channel lists and renders them.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            template = Prompt(fn, name=name, title=title, description=description)
            if template.name in self._prompts:
                raise WorkflowDefinitionError(f"a prompt named {template.name!r} already exists")
            self._prompts[template.name] = template
            return fn

        return register(function) if function is not None else register

    def builder(self, name: str, *, description: str = "") -> WorkflowBuilder:
        """A :class:`WorkflowBuilder`; pass it to :meth:`register` when done."""
        return WorkflowBuilder(name, description=description)

    async def _announce_pending(self) -> None:
        # Registration is sync; plugins hear of it here, in registration order.
        while self._unannounced:
            workflow = self._unannounced.pop(0)
            await self.host.workflow_registered(self, workflow)
            if self._running is not None:
                await self.emit(EventType.WORKFLOW_REGISTERED, data={"workflow": workflow.name})

    # -- running ---------------------------------------------------------------

    async def execute(self, name: str, inputs: Any = None, **options: Any) -> RunResult:
        """Run a workflow directly on the runtime: no session, security, storage or events.

        The embedded shortcut for scripts and tests; channels use :meth:`invoke`.
        """
        return await self.runtime.run(self.get_workflow(name), inputs, **options)

    async def invoke(
        self,
        workflow: str,
        inputs: Any = None,
        *,
        credentials: Credentials | None = None,
        channel: str = "python",
        session: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> RunResult:
        """The one request path every channel takes: a channel hands over what it received.

        authenticate ``credentials`` -> input limits -> strict validation ->
        authorize on the validated values (RBAC + ABAC: a policy sees exactly
        the plain values the workflow will receive) -> rate limit -> session
        -> run -> audit -> events -> metrics. A caller whom no inputs at all
        could let through is refused before its inputs are read, so a
        validation error never describes a workflow to a caller who may not
        run it. With ``wait=False`` the run id
        comes back at once (status ``running``) and the run goes on in the
        host; read it later with :meth:`get_run`.

        ``idempotency_key`` is the caller's own: keys are scoped to the tenant
        and the principal. The same principal with the same key gets the same
        run, which never executes twice; reusing the key with other inputs is
        an :class:`~nexus_core.errors.IdempotencyConflict`. Another principal's
        equal key is simply a different key: its own new run.

        Raises the :class:`~nexus_core.errors.NexusError` subclass a channel
        renders: ``AuthenticationError``, ``InputLimitExceeded``,
        ``ValidationError``, ``PermissionDenied``, ``RateLimited``,
        ``WorkflowNotFound``, ``SessionNotFound``... A workflow that fails is
        not an exception: the result says ``failed``. There is no way to name
        the principal here: trusted in-process code that already knows who it
        acts for calls :meth:`invoke_as`.
        """
        return await self._invoke(
            workflow, inputs, credentials, None, channel, session, idempotency_key, wait
        )

    async def invoke_as(
        self,
        principal: Principal,
        workflow: str,
        inputs: Any = None,
        *,
        channel: str = "python",
        client: str | None = None,
        session: str | None = None,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> RunResult:
        """Run ``workflow`` as ``principal``, skipping only authentication: trusted code only.

        For in-process code that already knows who it acts for (a scheduler, an
        embedded application with its own login, a test). Everything else is
        :meth:`invoke`'s path: input limits, strict validation, authorization
        on the validated values, rate limits (``client`` is the caller's
        address for per-client limits), the session, audit, events and
        metrics. Channels never call this: they hand the credentials they
        received to :meth:`invoke`, and the host authenticates them.
        """
        credentials = Credentials(client=client) if client is not None else None
        return await self._invoke(
            workflow, inputs, credentials, principal, channel, session, idempotency_key, wait
        )

    async def _invoke(
        self,
        workflow: str,
        inputs: Any,
        credentials: Credentials | None,
        principal: Principal | None,
        channel: str,
        session: str | None,
        idempotency_key: str | None,
        wait: bool,
    ) -> RunResult:
        services = self._services()  # a host that is not running says so here
        started = time.perf_counter()
        who = principal or ANONYMOUS
        security = self.security
        try:
            if principal is None:
                who = await security.authenticate(credentials, channel)
            wf = self.get_workflow(workflow)
            action = f"workflow:{wf.name}:execute"
            # A caller no inputs could let through learns nothing about them.
            await security.authorize(who, action, workflow=wf, channel=channel, inputs=ANY_INPUTS)
            security.check_input_limits(inputs)
            values = wf.validate(inputs)
            # What the workflow receives, as plain values: decided on, stored and hashed.
            plain = msgspec.to_builtins(values)
            await security.authorize(who, action, workflow=wf, channel=channel, inputs=plain)
            await security.rate_limit(who, channel, wf.name, credentials)
            sess = await self._session_for(session, channel, who, wf)
            durable = wf.meta.durable
            if not durable and idempotency_key is not None:
                raise ValidationError(
                    [
                        FieldError(
                            "idempotency_key",
                            f"workflow {wf.name!r} keeps no run record (durable=False), "
                            "so it cannot replay a run by its idempotency key",
                        )
                    ]
                )
            digest = hash_inputs(plain)
            now = time.time()
            run_id = new_run_id()
            # Large inputs of a recorded run go to the blob store (an ephemeral run keeps none).
            blobs = run_blob_prefix(who.tenant, run_id, now) if durable else ""
            stored = await services.payloads.store(plain, f"{blobs}inputs") if durable else plain
            record = RunRecord(
                id=run_id,
                workflow=wf.name,
                tenant=who.tenant,
                principal=who.id,
                session_id=sess.id if sess else None,
                channel=channel,
                inputs=stored,
                status="running",  # it starts at once: no separate "running" write
                created_at=now,
                idempotency_key=idempotency_key,
                input_hash=digest,
            )
            executor = self.engine.executor
            created = True
            if not durable:
                pass  # never stored: it executes here, now
            elif executor.inline:
                self.engine.lease_new(record, now)  # it executes here, under this process's lease
            else:
                record.status = "pending"  # stored unleased: a worker claims it
            # The key is scoped to (tenant, principal): only the caller's own run comes back.
            if durable:
                # Stored (and, for a queue executor, handed to its workers) by the executor.
                record, created = await executor.accept(self.engine, record)
                if not created and stored is not plain:
                    # The caller's earlier run holds its own copy: this one is not referred to.
                    await services.storage.delete_blob(f"{blobs}inputs")
            if not created and (record.workflow != wf.name or record.input_hash != digest):
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with other inputs or another workflow"
                )
        except NexusError as exc:
            # Every refused invocation is audited too: N invocations, N records.
            self._count_failure(exc, who, channel, workflow, started)
            await security.audit(
                action="invoke",
                outcome=exc.code,
                principal=who,
                channel=channel,
                workflow=workflow,
                reason=exc.message,
            )
            raise
        if not created:
            return self._for_caller(await self._existing(record, wait), who)
        self.metrics.record_execution(wf.name, channel)
        if not durable:
            if not wait:
                services.task_group.start_soon(
                    self.engine.execute_live, wf, values, record, sess, who
                )
                return RunResult(
                    run_id=record.id,
                    workflow=wf.name,
                    status="running",
                    session_id=record.session_id,
                )
            result = await self.engine.execute_live(wf, values, record, sess, who)
            self.metrics.record_request(
                channel, wf.name, result.status, time.perf_counter() - started
            )
            return self._for_caller(result, who)
        active = None
        if executor.inline:
            if wait:  # the caller waits anyway: executed in its task, none started
                active = await self.engine.run_here(wf, values, record, sess, who)
            else:
                active = self.engine.start(wf, values, record, sess, who)
        if not wait:
            self.metrics.record_request(channel, wf.name, "accepted", time.perf_counter() - started)
            return RunResult(
                run_id=record.id,
                workflow=wf.name,
                status=record.status,  # running here, or pending for a worker
                session_id=record.session_id,
            )
        if active is not None:
            result = await active.result()
        if active is None or active.lost:  # executed elsewhere: its answer comes from there
            result = await self.engine.wait_for(record.id)
        self.metrics.record_request(channel, wf.name, result.status, time.perf_counter() - started)
        return self._for_caller(result, who)

    def sees_tracebacks(self, principal: Principal | None) -> bool:
        """Whether ``principal`` may see the traceback of a failed run.

        ``None`` (trusted in-process code) may. With authentication off, every
        caller may in development and none in staging or production; with it
        on, a principal allowed ``runs:debug`` (a role granting it, or ``admin``).
        """
        if principal is None:
            return True
        if not self.security.auth_required:
            return self.config.nexus.environment == "development"
        return self.security.allowed(principal, "runs:debug", tenant=principal.tenant)

    def _for_caller(self, result: RunResult, principal: Principal | None) -> RunResult:
        """``result`` as ``principal`` may see it: without the traceback unless it may debug."""
        if result.error is None or result.error.traceback is None:
            return result
        if self.sees_tracebacks(principal):
            return result
        return msgspec.structs.replace(result, error=result.error.public())

    def _count_failure(
        self, exc: NexusError, who: Principal, channel: str, workflow: str, started: float
    ) -> None:
        self.metrics.record_error(channel, exc.code)
        self.metrics.record_request(
            channel,
            workflow if workflow in self._workflows else "(unknown)",
            exc.code,
            time.perf_counter() - started,
        )

    async def _session_for(
        self, session_id: str | None, channel: str, who: Principal, wf: Workflow
    ) -> Session | None:
        sessions = self._services().sessions
        if session_id:
            found = await sessions.get(session_id, tenant=who.tenant)
            if not await self.security.check_session(who, found.record):
                raise SessionNotFound("unknown or expired session")  # as if it did not exist
            return await sessions.resume(session_id, channel=channel, tenant=who.tenant)
        if any(issubclass(kind, Session) for kind in wf.injected.values()):
            return await self.create_session(channel=channel, principal=who)
        return None

    async def _existing(self, record: RunRecord, wait: bool) -> RunResult:
        """The result of the caller's run started earlier with the same idempotency key.

        Marked ``replayed``: this call did not start the run, so a channel
        whose caller goes away must not cancel it on this call's behalf.
        """
        result = await self.engine.wait_for(record.id) if wait else await self.get_run(record.id)
        return msgspec.structs.replace(result, replayed=True)

    async def get_run(self, run_id: str, *, principal: Principal | None = None) -> RunResult:
        """A run's status, result and per-node detail, from storage (any instance's runs).

        With ``principal``: only a run of its tenant that is its own or that it
        may ``runs:read``; any other is :class:`RunNotFound`, as if it did not exist.
        """
        storage = self._services().storage
        tenant = principal.tenant if principal is not None else None
        record = await storage.get_run(run_id, tenant=tenant)
        visible = record is not None and (
            principal is None or await self.security.check_run(principal, record, "runs:read")
        )
        if record is None or not visible:
            raise RunNotFound(f"no run {run_id!r}")
        checkpoints = await storage.get_checkpoints(run_id)
        result = RunResult(
            run_id=record.id,
            workflow=record.workflow,
            status=record.status,
            output=record.output,
            nodes={
                node_id: NodeResult(
                    status=c.status,  # type: ignore[arg-type]
                    output=c.output,
                    error=c.error,
                    started_at=c.started_at,
                    duration_ms=c.duration_ms,
                    attempts=c.attempts,
                )
                for node_id, c in checkpoints.items()
                if c.status != "running"  # started by an owner that resumed the run: unfinished
            },
            error=msgspec.convert(record.error, RunError) if record.error else None,
            started_at=record.started_at,
            finished_at=record.finished_at,
            session_id=record.session_id,
        )
        return self._for_caller(result, principal)

    async def open_output(
        self, run_id: str, *, principal: Principal | None = None, chunk_size: int = 1 << 20
    ) -> tuple[BlobRef | None, AsyncIterator[bytes]]:
        """A completed run's output as JSON bytes, streamed: its reference, if any, and chunks.

        The output of a run over ``services.runs.inline_limit`` is read from
        the blob store as it is sent, never whole in memory; a small one is
        encoded. Visibility is :meth:`get_run`'s (``principal``); a run that
        has not completed is :class:`~nexus_core.errors.RunNotFound` for its
        output, with its status in the message.

        .. versionadded:: 0.2
        """
        result = await self.get_run(run_id, principal=principal)
        if result.status != "completed":
            raise RunNotFound(f"run {run_id!r} has no output: it is {result.status}")
        payloads = self._services().payloads
        return blob_ref(result.output), payloads.open(result.output, chunk_size=chunk_size)

    async def list_runs(
        self,
        *,
        principal: Principal | None = None,
        credentials: Credentials | None = None,
        channel: str = "python",
        **filters: Any,
    ) -> list[RunRecord]:
        """Runs newest first; filters as :meth:`Storage.list_runs` (workflow, status, ...).

        With ``principal``: runs of its tenant, all of them if it may
        ``runs:read``, else only its own. Listing is limited per client
        address (``rate_limits.run_listing``: the address of ``credentials``,
        else of the credentials last authenticated in this task).
        """
        await self.security.limit("run_listing", credentials, channel, principal)
        tenant = principal.tenant if principal is not None else filters.pop("tenant", None)
        if principal is not None:
            filters.pop("tenant", None)
            own = self.security.runs_scope(principal)
            if own == "" or (own is not None and filters.get("principal") not in (None, own)):
                return []
            if own is not None:
                filters["principal"] = own
        return await self._services().storage.list_runs(tenant=tenant, **filters)

    async def cancel(self, run_id: str, *, principal: Principal | None = None) -> bool:
        """Cancel a run wherever it executes; False if it has already finished.

        A run executing in this process is cancelled at once; one executing in
        another process (sharing this host's storage and event log) is asked
        to stop with a ``run.cancel_requested`` event; one nobody executes (its
        lease expired) is recorded ``cancelled``. With ``principal``: a run it
        may not see is :class:`RunNotFound`; one it sees but neither owns nor
        may ``runs:cancel`` is :class:`PermissionDenied`.
        """
        storage = self._services().storage
        tenant = principal.tenant if principal is not None else None
        record = await storage.get_run(run_id, tenant=tenant)
        visible = record is not None and (
            principal is None or await self.security.check_run(principal, record, "runs:read")
        )
        if record is None or not visible:
            raise RunNotFound(f"no run {run_id!r}")
        if principal is not None and not await self.security.check_run(
            principal, record, "runs:cancel"
        ):
            raise PermissionDenied(f"{principal.id!r} may not cancel run {run_id!r}")
        return await self.engine.executor.cancel(self.engine, record)

    def executes_here(self, run_id: str) -> bool:
        """Whether the run is executing in this process now."""
        active = self.engine.active.get(run_id)
        return active is not None and not active.done

    async def wait(self, run_id: str) -> RunResult:
        """Wait for a run to finish, wherever it executes; return its result.

        Raises :class:`RunNotFound` for an unknown run.
        """
        return await self.engine.wait_for(run_id)

    # -- sessions and events -----------------------------------------------------

    def sessions_manager(self) -> SessionManager:
        """The session manager (the host must be running)."""
        return self._services().sessions

    async def create_session(
        self,
        *,
        channel: str = "python",
        principal: Principal | None = None,
        credentials: Credentials | None = None,
    ) -> Session:
        """Start a session usable from every channel; emits ``session.created``.

        Limited per client address (``rate_limits.session_creation``: the
        address of ``credentials``, else of the credentials last authenticated
        in this task; in-process calls without one are not limited).
        """
        who = principal or ANONYMOUS
        await self.security.limit("session_creation", credentials, channel, principal)
        sess = await self.sessions_manager().create(
            channel=channel, tenant=who.tenant, principal=None if who.anonymous else who.id
        )
        await self.emit(
            EventType.SESSION_CREATED, channel=channel, session_id=sess.id, tenant=who.tenant
        )
        return sess

    async def get_session(self, session_id: str, *, principal: Principal | None = None) -> Session:
        """A live session by token (scoped to the principal's tenant).

        With ``principal``: a session of its tenant that it owns, that nobody
        owns, or any of its tenant if it may ``sessions:admin``; otherwise
        :class:`SessionNotFound`.
        """
        tenant = principal.tenant if principal is not None else None
        session = await self.sessions_manager().get(session_id, tenant=tenant)
        if principal is not None and not await self.security.check_session(
            principal, session.record
        ):
            raise SessionNotFound("unknown or expired session")
        return session

    async def emit(
        self,
        type: str,
        *,
        run: RunRecord | None = None,
        channel: str | None = None,
        session_id: str | None = None,
        tenant: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Publish an event on the host's bus (logged first, so replay misses nothing)."""
        bus = self._services().events
        if bus.wants(type):
            await bus.publish(
                run_event(
                    type, run, channel=channel, session_id=session_id, tenant=tenant, data=data
                )
            )

    def subscribe(
        self,
        patterns: Iterable[str] = ("*",),
        *,
        principal: Principal | None = None,
        **options: Any,
    ) -> Subscription:
        """Subscribe to the host's events (see :meth:`EventBus.subscribe`).

        With ``principal``: it must be allowed ``events:read`` (else
        :class:`PermissionDenied`) and receives its tenant's events only (plus
        ``workflow.registered``), whatever ``filter`` is also given.
        """
        services = self._services()
        if principal is not None:
            options["filter"] = self.security.event_filter(principal, options.get("filter"))
        return services.events.subscribe(tuple(patterns), **options)

    async def visible_workflows(
        self, principal: Principal | None = None, *, channel: str | None = None
    ) -> list[Workflow]:
        """The workflows ``principal`` may execute, by name (every one while auth is off)."""
        return self.security.visible_workflows(principal or ANONYMOUS, channel=channel)

    # -- health ----------------------------------------------------------------------

    async def readiness(self) -> HealthReport:
        """Storage, every started channel and the executor's own checks (its queue) answer."""
        services = self._services()
        storage = services.storage
        checks: dict[str, Callable[[], Any]] = {"storage": storage.ping}
        if isinstance(storage, StorageRouter):
            blobs = storage.backends["blobs"]
            if blobs is not storage.backends["runs"]:
                checks["storage"] = storage.backends["runs"].ping
                checks["storage:blobs"] = blobs.ping
        for name, channel in self.channels.items():
            checks[f"channel:{name}"] = channel.ready
        checks.update(self.engine.executor.checks())
        return await readiness(checks)

    # -- lifecycle -------------------------------------------------------------

    def _services(self) -> _Services:
        if self._running is None:
            raise RuntimeError(
                "the Nexus host is not running: use 'async with app:' (or app.serve())"
            )
        return self._running

    def _open_storage(self) -> Storage:
        override = self._storage_override
        if override is not None and not isinstance(override, str):
            return override
        if override is not None:
            return select_storage(self.host, dict.fromkeys(ROLES, override), url=override)
        # A relative SQLite path in the settings lands beside the config file (or the app).
        return select_storage(self.host, self.config.storage_urls, url=self.config.storage_url)

    def check_startup(self) -> Storage:
        """Check, without starting, everything start-up refuses; return the unopened storage.

        The storage backend, the production rules and the security settings:
        a problem raises ``ConfigError``. ``nexus config check`` and the
        gateway's ``/config/check`` call this, so they refuse exactly what
        start-up refuses.
        """
        storage = self._open_storage()
        check_production(
            msgspec.structs.replace(self.config.nexus, storage=storage.url),
            storage_persistent=storage.persistent,
            auth_configured=self.security.auth_configured,
        )
        self.security.configure()
        return storage

    def _open_bus(self) -> EventBus:
        """The usable bus of highest priority (see :meth:`EventBus.usable`)."""
        buses = sorted(self.host.event_buses().values(), key=lambda s: -s.priority)
        for spec in buses:
            try:
                if spec.usable is not None and not import_string(spec.usable)(self):
                    continue  # declined before its module is imported
                factory = spec.load()
                if not factory.usable(self):
                    continue
                bus: EventBus = factory.from_app(self)
            except Exception as exc:
                raise PluginLoadFailed(
                    f"event bus {spec.name!r} of plugin {spec.plugin!r} could not be created: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            return bus
        return LocalEventBus.from_app(self)  # every bus declined: the in-process one serves

    @contextlib.asynccontextmanager
    async def running(
        self, channels: Iterable[str] = (), *, recover: bool | None = None
    ) -> AsyncIterator[Nexus]:
        """Run the host (storage, events, sessions, plugins) and the named channels.

        ``async with app:`` is ``running()`` with no channels: what an embedded
        program or a test wants. ``serve()`` starts every installed channel.
        ``recover`` says whether this process takes over runs whose lease
        expired (other processes' crashed runs, or its own from before a
        restart); None follows ``services.runs.recover``, whose ``"auto"``
        recovers when channels are served.
        """
        channels = tuple(channels)
        if recover is None:
            policy = self.config.nexus.services.runs.recover
            recover = policy == "always" or (policy == "auto" and bool(channels))
        if self._running is not None:
            raise RuntimeError("this Nexus host is already running")
        storage = self.check_startup()  # what cannot work stops the start here
        self.engine.prepare()  # the executor: an unknown name stops the start here too
        self.storage = storage  # the bus keeps its event log here
        try:
            bus = self._open_bus()
        except BaseException:
            self.storage = None
            raise
        await storage.open()
        try:
            async with _single_errors(), anyio.create_task_group() as tg:
                await bus.start()
                # Events and audit records are written behind from here on.
                await tg.start(bus.run)
                await tg.start(self.security.run)
                sessions = SessionManager(
                    storage, ttl=self.config.nexus.services.security.session_timeout
                )
                payloads = Payloads(storage, self.config.nexus.services.runs.inline_limit)
                self._running = _Services(storage, bus, sessions, tg, payloads)
                try:
                    await self.security.start()
                    await self.host.startup(self)
                    await self._announce_pending()
                    self.engine.recovering = recover
                    await tg.start(self.engine.run)  # heartbeat, cancel requests, recovery
                    tg.start_soon(self._expire_sessions_forever)
                    start_housekeeping(self, tg)  # retention_days, metrics export
                    for name in channels:
                        await self._start_channel(name, tg)
                    # Start-up's own events reach the log, not the first subscribers.
                    await bus.flush()
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.engine.drain(self.config.nexus.services.runs.shutdown_grace)
                        await self._announce_pending()
                        await self.host.shutdown(self)
                        await self.security.flush_audit()
                        await bus.flush()
                        await self.security.stop()
                        await bus.stop()
                    tg.cancel_scope.cancel()
        finally:
            self._running = None
            self.channels = {}
            self.storage = None
            with anyio.CancelScope(shield=True):
                await storage.close()

    async def serve(
        self,
        channels: Iterable[str] | None = None,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
    ) -> None:
        """Run the host with every enabled channel (or the named ones) until stopped.

        The first ``SIGINT``/``SIGTERM`` stops every channel gracefully and
        returns (no traceback); see :mod:`nexus_core.serving`.
        """
        await serve_host(self, channels, signals=signals)

    async def _start_channel(self, name: str, tg: anyio.abc.TaskGroup) -> None:
        await start_channel(self, name, tg)  # failures name the channel's plugin

    async def expire_sessions(self) -> list[str]:
        """Delete expired sessions now, emit ``session.expired`` for each; return their ids.

        The host also does this on its own every ``session_timeout / 10`` seconds
        (between 1 s and 60 s).
        """
        sessions = self.sessions_manager()
        expired = await sessions.expire()
        for session_id in expired:
            await self.emit(EventType.SESSION_EXPIRED, session_id=session_id)
        self.metrics.set_active_sessions(await sessions.count())
        return expired

    async def _expire_sessions_forever(self) -> None:
        interval = max(1.0, min(60.0, self.sessions_manager().ttl / 10))
        failing = False
        while True:
            try:
                await self.expire_sessions()
            except Exception as exc:  # a session store down for a while must not stop the host
                if not failing:  # one warning per outage, not one per tick
                    log.warning("expiring sessions failed (%s: %s)", type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("expiring sessions works again")
                failing = False
            await anyio.sleep(interval)

    async def __aenter__(self) -> Nexus:
        self._context = self.running()
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._context.__aexit__(*exc_info)


@contextlib.asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """Re-raise a task group's lone error as itself, not wrapped in an ExceptionGroup.

    Users of ``async with app:`` should see the ``ValueError`` their code
    raised, not a group of one.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


class _Services:
    """What exists only while the host runs."""

    __slots__ = ("events", "payloads", "sessions", "storage", "task_group")

    def __init__(
        self,
        storage: Storage,
        events: EventBus,
        sessions: SessionManager,
        task_group: anyio.abc.TaskGroup,
        payloads: Payloads,
    ) -> None:
        self.storage = storage
        self.events = events
        self.sessions = sessions
        self.task_group = task_group
        #: Large run values by reference, in the blob role (``services.runs.inline_limit``).
        self.payloads = payloads
