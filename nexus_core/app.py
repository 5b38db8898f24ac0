"""``Nexus``, the host: the workflow registry, the lifecycle and the one invoke path."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, overload

import anyio
import anyio.abc

from .errors import WorkflowDefinitionError, WorkflowNotFound
from .plugins import PluginHost, PluginInfo, PluginLoadError
from .specs import NodeTypeSpec
from .workflows.builder import WorkflowBuilder
from .workflows.function import workflow_from_function
from .workflows.model import NodePolicy, Workflow, WorkflowMeta
from .workflows.runtime import RunResult, Runtime

__all__ = ["Nexus"]

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

    ``plugins`` adds plugin objects or module names on top of the installed
    ones; ``autoload=False`` skips entry points (as ``NEXUS_DISABLE_PLUGIN_AUTOLOAD``).
    """

    def __init__(
        self,
        title: str = "Nexus",
        *,
        plugins: Iterable[object | str] = (),
        autoload: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.title = title
        self.host = PluginHost(plugins, autoload=autoload, env=env)
        self.runtime = Runtime()
        self._workflows: dict[str, Workflow] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._unannounced: list[Workflow] = []

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

    def node_types(self) -> dict[str, NodeTypeSpec]:
        """Every node type the installed plugins contribute, by name."""
        return self.host.node_types()

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
        timeout: float | None = None,
        retries: int = 0,
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
        timeout: float | None = None,
        retries: int = 0,
    ) -> Any:
        """Register a typed function (sync or async) as a workflow; usable bare or with options.

        The name defaults to the function's, the description to its docstring;
        the input schema comes from the signature, the output schema from the
        return annotation. ``read_only``/``destructive``/``idempotent`` become
        MCP tool annotations. The function itself is returned unchanged.
        """
        meta = WorkflowMeta(
            title=title,
            tags=tuple(tags),
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
        )
        policy = NodePolicy(timeout=timeout, retries=retries)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(
                workflow_from_function(
                    fn, name=name, description=description, meta=meta, policy=policy
                )
            )
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
        if self._task_group is not None:
            self._task_group.start_soon(self._announce_pending)
        return workflow

    def builder(self, name: str, *, description: str = "") -> WorkflowBuilder:
        """A :class:`WorkflowBuilder`; pass it to :meth:`register` when done."""
        return WorkflowBuilder(name, description=description)

    async def _announce_pending(self) -> None:
        # Registration is sync; plugins hear of it here, in registration order.
        while self._unannounced:
            await self.host.workflow_registered(self, self._unannounced.pop(0))

    # -- running ---------------------------------------------------------------

    async def execute(self, name: str, inputs: Any = None, **options: Any) -> RunResult:
        """Run a workflow directly on the runtime (no session, security or storage).

        Channels use :meth:`invoke`; this is the embedded, in-process shortcut.
        """
        return await self.runtime.run(self.get_workflow(name), inputs, **options)

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Nexus:
        self._stack = anyio.create_task_group()
        self._task_group = await self._stack.__aenter__()
        try:
            await self.host.startup(self)
            await self._announce_pending()
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._stack.__aexit__(None, None, None)
            self._task_group = None
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._announce_pending()
                await self.host.shutdown(self)
        finally:
            self._task_group.cancel_scope.cancel()
            self._task_group = None
            await self._stack.__aexit__(*exc_info)
