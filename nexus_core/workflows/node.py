"""The node base class: typed config, typed inputs, typed outputs, one ``run``.

A node type is a subclass::

    class Add(Node):
        type_name = "Add"

        class Inputs(msgspec.Struct):
            a: int
            b: int

        class Outputs(msgspec.Struct):
            sum: int

        def run(self, inputs: Inputs) -> Outputs:
            return self.Outputs(sum=inputs.a + inputs.b)

``run`` may be ``async``. A synchronous ``run`` is called in a worker thread so
the event loop never blocks, unless the class sets ``blocking = False`` (pure,
quick code such as a field mapping). ``run`` may take a second parameter, the
:class:`NodeContext`, for the run id, a logger or the runtime itself.

An output field whose value is ``msgspec.UNSET`` feeds nothing: connections
from it are not taken, which is how a switch routes.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ..errors import ValidationError, WorkflowDefinitionError
from .schema import convert, fields_of

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["NoConfig", "Node", "NodeContext", "current_context"]


class NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The config of a node that takes none."""


class NodeContext:
    """What a running node may know about its run, and whether it is asked to stop.

    A synchronous node runs in a worker thread, which nothing can interrupt:
    when its run is cancelled (a cancel request, Ctrl-C on ``nexus run``, a
    timeout, the host stopping) the runtime stops waiting for it and sets
    :attr:`stop_requested`. Long-running sync code checks it, or sleeps with
    :meth:`wait_for_stop`, and returns early::

        def crawl(pages: list[str]) -> int:
            context = current_context()
            for page in pages:
                if context is not None and context.stop_requested:
                    break
                fetch(page)
            return len(pages)
    """

    __slots__ = ("_stop", "_stopped", "node_id", "run_id", "runtime", "state")

    def __init__(self, runtime: Runtime, run_id: str, node_id: str, state: Any = None) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.node_id = node_id
        self.state = state
        self._stopped = False
        # Made by the first wait_for_stop only: most nodes never sleep on it,
        # and a threading.Event (a lock and a condition) is dear per node.
        self._stop: threading.Event | None = None

    @property
    def stop_requested(self) -> bool:
        """Whether the run no longer waits for this node (cancelled, timed out, host stopping)."""
        return self._stopped

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once when a stop is requested.

        Returns :attr:`stop_requested`: a cancellable ``time.sleep`` for sync nodes.
        """
        with _STOP_EVENTS:
            if self._stop is None:
                self._stop = threading.Event()
            stop = self._stop
        # Looked at after the event exists: a stop requested before it was made is seen here,
        # one requested after sets it.
        if self._stopped:
            return True
        return stop.wait(timeout)

    def request_stop(self) -> None:
        """Ask the node to stop (the runtime calls it when it stops waiting for the node)."""
        self._stopped = True
        with _STOP_EVENTS:
            stop = self._stop
        if stop is not None:
            stop.set()


#: Guards the lazy creation of NodeContext stop events (a node thread and the loop may race).
_STOP_EVENTS = threading.Lock()


_CURRENT: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar(
    "nexus_node_context", default=None
)


def current_context() -> NodeContext | None:
    """The :class:`NodeContext` of the node running in this thread or task, if any.

    For code that does not take the context as a parameter (a function
    workflow, a helper it calls): ``current_context().stop_requested``.
    """
    return _CURRENT.get()


class Node:
    """Base class of every node type.

    Class attributes a subclass sets:

    ``type_name``
        the name ``WorkflowBuilder.add_node`` uses (default: the class name).
    ``Config``
        a msgspec Struct of static settings, validated when the workflow is built.
    ``Inputs`` / ``Outputs``
        msgspec Structs (or dataclasses, TypedDicts). ``Inputs = None`` accepts any
        keyword inputs untyped. An instance may replace both in ``__init__`` when
        its types depend on its config (a switch's cases, a sub-workflow).
    ``blocking``
        whether a sync ``run`` must go to a worker thread (default True).
    """

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[msgspec.Struct]] = NoConfig
    Inputs: Any = None
    Outputs: Any = None
    #: An instance may override it (a function node: whether its function blocks).
    blocking: bool = True

    _is_async: ClassVar[bool] = False
    _wants_context: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.type_name or "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__
        if "description" not in cls.__dict__ and cls.__doc__:
            cls.description = inspect.cleandoc(cls.__doc__).split("\n\n")[0]
        run = cls.__dict__.get("run")
        if run is not None:
            cls._is_async = inspect.iscoroutinefunction(run)
            params = list(inspect.signature(run).parameters)
            cls._wants_context = len(params) >= 3

    def __init__(self, config: Any = None) -> None:
        #: An instance of :attr:`Config` (typed ``Any``: each subclass has its own).
        self.config: Any = config if config is not None else self.Config()
        #: Whether :meth:`invoke` returns a coroutine (the runtime awaits it).
        self.is_async = self._is_async
        #: Whether a synchronous :meth:`invoke` must run in a worker thread.
        self.blocking = type(self).blocking

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Do the node's work on ``inputs``; return an ``Outputs`` value (or a mapping).

        A subclass defines ``run(self, inputs)`` or ``run(self, inputs, context)``
        (sync or async); :meth:`invoke` passes the :class:`NodeContext` only to
        the second form. The base signature is open so that either form
        type-checks as an override.
        """
        raise NotImplementedError(f"{type(self).__name__}.run")

    def invoke(self, kwargs: dict[str, Any], context: NodeContext) -> Any:
        """Build ``Inputs`` from keyword values and call :meth:`run` (what the runtime calls).

        Override only to bypass the ``Inputs`` object, as function nodes do.
        """
        inputs = self.Inputs(**kwargs) if self.Inputs is not None else kwargs
        if self._wants_context:
            return self.run(inputs, context)
        return self.run(inputs)

    # -- used by the builder --------------------------------------------------

    @classmethod
    def from_parameters(
        cls, node_id: str, parameters: Mapping[str, Any]
    ) -> tuple[Node, dict[str, Any]]:
        """Split Kailash-style ``add_node`` parameters into config and static inputs.

        Keys that are ``Config`` fields configure the node; the rest must be input
        fields and become fixed input values. Anything else is an error naming the
        node and the key.
        """
        config_fields = set(cls.Config.__struct_fields__)
        raw_config = {k: v for k, v in parameters.items() if k in config_fields}
        try:
            config = convert(raw_config, cls.Config)
        except ValidationError as exc:
            error = exc.errors[0]
            raise WorkflowDefinitionError(
                f"node {node_id!r} ({cls.type_name}): config {error.path!r}: {error.reason}",
                node=node_id,
                field=error.path,
            ) from None
        node = cls(config)
        static = {k: v for k, v in parameters.items() if k not in config_fields}
        inputs = node.input_fields()
        if inputs is not None:
            for key in static:
                if key not in inputs:
                    known = sorted(config_fields | set(inputs))
                    raise WorkflowDefinitionError(
                        f"node {node_id!r} ({cls.type_name}) has no parameter {key!r}; "
                        f"known: {', '.join(known) or 'none'}",
                        node=node_id,
                        field=key,
                    )
        return node, static

    def input_fields(self) -> dict[str, tuple[Any, bool]] | None:
        """Input name -> (type, required); None when inputs are untyped."""
        return fields_of(self.Inputs)

    def output_fields(self) -> dict[str, tuple[Any, bool]] | None:
        """Output name -> (type, required); None when outputs are untyped."""
        return fields_of(self.Outputs)
