"""Prometheus metrics for one host, in a registry of its own.

Each :class:`Metrics` owns a :class:`prometheus_client.CollectorRegistry`, never
the process-wide default, so two hosts in one process (tests, embedded apps)
do not share counts. The host calls the ``record_*``/``observe_*`` methods on
its request path; they cost a dict lookup and an increment. ``render()`` gives
the text the API plugin serves at ``/metrics``.

Plugins add their own collectors to :attr:`Metrics.registry`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
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

    The series the request path records are kept as plain numbers and handed
    to ``prometheus_client`` when it collects (a custom collector): an
    increment is a dict update, not a locked value per label set, and an
    observation finds its bucket by bisection.
    """

    def __init__(self, *, enabled: bool = True, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.enabled = enabled
        #: The registry these series live in; plugins may register collectors on it.
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self._requests = _Counts(
            "nexus_requests_total",
            "Invocations handled, by channel, workflow and outcome.",
            ("channel", "workflow", "outcome"),
        )
        self._request_duration = _Durations(
            "nexus_request_duration_seconds",
            "Invocation latency in seconds, by channel.",
            ("channel",),
        )
        self.active_sessions = Gauge(
            "nexus_active_sessions", "Sessions currently live.", registry=reg
        )
        self._executions = _Counts(
            "nexus_workflow_executions_total",
            "Workflow runs started, by workflow and channel.",
            ("workflow", "channel"),
        )
        self._errors = _Counts(
            "nexus_errors_total",
            "Errors, by channel and type.",
            ("channel", "type"),
        )
        self._node_duration = _Durations(
            "nexus_node_duration_seconds",
            "Node execution time in seconds, by node type.",
            ("node_type",),
        )
        self._takeovers = _Counts(
            "nexus_run_takeovers_total",
            "Runs taken over after their owner's lease expired, by workflow.",
            ("workflow",),
        )
        for series in (
            self._requests,
            self._request_duration,
            self._executions,
            self._errors,
            self._node_duration,
            self._takeovers,
        ):
            reg.register(series)

    def record_request(self, channel: str, workflow: str, outcome: str, seconds: float) -> None:
        """Count one invocation and observe its latency."""
        if not self.enabled:
            return
        self._requests.inc((channel, workflow, outcome))
        self._request_duration.observe((channel,), seconds)

    def record_execution(self, workflow: str, channel: str) -> None:
        """Count one workflow run started."""
        if not self.enabled:
            return
        self._executions.inc((workflow, channel))

    def record_takeover(self, workflow: str) -> None:
        """Count one run taken over from a process whose lease expired."""
        if not self.enabled:
            return
        self._takeovers.inc((workflow,))

    def record_error(self, channel: str, type: str) -> None:
        """Count one error of ``type`` (an error code or exception class name)."""
        if not self.enabled:
            return
        self._errors.inc((channel, type))

    def observe_node(self, node_type: str, seconds: float) -> None:
        """Observe one node execution time."""
        if not self.enabled:
            return
        self._node_duration.observe((node_type,), seconds)

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


#: prometheus_client's default latency buckets (seconds), +Inf implied.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Counts:
    """A counter by label values, as plain floats; a ``prometheus_client`` collector."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def describe(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.copy().items():  # a copy: a push collects in a thread
            family.add_metric(key, value)
        return [family]


class _Durations:
    """A histogram by label values (bucket counts and a sum); a ``prometheus_client`` collector."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        # label values -> [count in each bucket (not cumulative) ..., count above the last, sum]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], seconds: float) -> None:
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0.0] * (len(_BUCKETS) + 2)
        row[bisect_left(_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
        row[-1] += seconds

    def describe(self) -> list[Any]:
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labels)]

    def collect(self) -> list[Any]:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, row in self.values.copy().items():
            counts = row[:]  # one copy: the counts and the sum agree
            buckets = []
            total = 0.0
            for bound, count in zip((*_BUCKETS, math.inf), counts, strict=False):
                total += count
                buckets.append((_bound(bound), total))
            family.add_metric(list(key), buckets, sum_value=counts[-1])
        return [family]


def _bound(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == math.inf else repr(float(bound))
