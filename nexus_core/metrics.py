"""Prometheus metrics for one host, in a registry of its own.

Each :class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry`, never
the process-wide default, so two hosts in one process (tests, embedded apps)
do not share counts. The host calls the ``record_*``/``observe_*`` methods on
its request path; they cost a dict lookup and an increment. ``render()`` gives
the text the API plugin serves at ``/metrics``.

Plugins add their own collectors to :attr:`Metrics.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # prometheus_client costs ~70 ms to import: only hosts that count pay it
    from prometheus_client import CollectorRegistry

__all__ = ["Metrics"]


class Metrics:
    """The host's metrics. ``Metrics(enabled=False)`` records nothing and renders nothing.

    Series (all labels are strings):

    - ``nexus_requests_total{channel,workflow,outcome}``: invocations by outcome
      (``"ok"``, ``"error"``, ``"denied"``, ...).
    - ``nexus_request_duration_seconds{channel}``: invocation latency.
    - ``nexus_active_sessions``: live sessions.
    - ``nexus_workflow_executions_total{workflow,channel}``: runs started.
    - ``nexus_errors_total{channel,type}``: errors by type (an error code or class name).
    - ``nexus_node_duration_seconds{node_type}``: node execution time.
    - ``nexus_run_takeovers_total{workflow}``: runs this host took over after
      their owner's lease expired.
    """

    def __init__(self, *, enabled: bool = True, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.enabled = enabled
        #: The registry these series live in; plugins may register collectors on it.
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        reg = self.registry
        self.requests = Counter(
            "nexus_requests_total",
            "Invocations handled, by channel, workflow and outcome.",
            ("channel", "workflow", "outcome"),
            registry=reg,
        )
        self.request_duration = Histogram(
            "nexus_request_duration_seconds",
            "Invocation latency in seconds, by channel.",
            ("channel",),
            registry=reg,
        )
        self.active_sessions = Gauge(
            "nexus_active_sessions", "Sessions currently live.", registry=reg
        )
        self.executions = Counter(
            "nexus_workflow_executions_total",
            "Workflow runs started, by workflow and channel.",
            ("workflow", "channel"),
            registry=reg,
        )
        self.errors = Counter(
            "nexus_errors_total",
            "Errors, by channel and type.",
            ("channel", "type"),
            registry=reg,
        )
        self.node_duration = Histogram(
            "nexus_node_duration_seconds",
            "Node execution time in seconds, by node type.",
            ("node_type",),
            registry=reg,
        )

        self.takeovers = Counter(
            "nexus_run_takeovers_total",
            "Runs taken over after their owner's lease expired, by workflow.",
            ("workflow",),
            registry=reg,
        )

    def _child(self, metric: Any, key: tuple[Any, ...]) -> Any:
        # key[0] is the metric's tag; the rest are its label values.
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*key[1:])
        return child

    def record_request(self, channel: str, workflow: str, outcome: str, seconds: float) -> None:
        """Count one invocation and observe its latency."""
        if not self.enabled:
            return
        self._child(self.requests, ("r", channel, workflow, outcome)).inc()
        self._child(self.request_duration, ("d", channel)).observe(seconds)

    def record_execution(self, workflow: str, channel: str) -> None:
        """Count one workflow run started."""
        if not self.enabled:
            return
        self._child(self.executions, ("x", workflow, channel)).inc()

    def record_takeover(self, workflow: str) -> None:
        """Count one run taken over from a process whose lease expired."""
        if not self.enabled:
            return
        self._child(self.takeovers, ("t", workflow)).inc()

    def record_error(self, channel: str, type: str) -> None:
        """Count one error of ``type`` (an error code or exception class name)."""
        if not self.enabled:
            return
        self._child(self.errors, ("e", channel, type)).inc()

    def observe_node(self, node_type: str, seconds: float) -> None:
        """Observe one node execution time."""
        if not self.enabled:
            return
        self._child(self.node_duration, ("n", node_type)).observe(seconds)

    def set_active_sessions(self, n: int) -> None:
        """Set the number of live sessions."""
        if not self.enabled:
            return
        self.active_sessions.set(n)

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if not self.enabled:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def push(
        self,
        url: str,
        *,
        job: str = "nexus",
        grouping_key: dict[str, str] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the HTTP timeout of the push, in its thread
    ) -> None:
        """Push every series to the Prometheus Pushgateway at ``url`` (replacing the group).

        Runs ``prometheus_client.push_to_gateway`` in a worker thread, so the
        event loop never waits on the network. Errors (the gateway down, a
        refused push) are raised to the caller; nothing is pushed when metrics
        are disabled.
        """
        if not self.enabled:
            return
        import functools

        import anyio.to_thread
        from prometheus_client import push_to_gateway

        push = functools.partial(
            push_to_gateway,
            url,
            job=job,
            registry=self.registry,
            grouping_key=grouping_key,
            timeout=timeout,
        )
        await anyio.to_thread.run_sync(push)
