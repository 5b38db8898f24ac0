"""Prometheus metrics per host, liveness and readiness checks."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nexus_core.health import CheckResult, HealthReport, liveness, readiness
from nexus_core.metrics import Metrics


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- metrics -------------------------------------------------------------------


def test_render_shows_every_series_with_its_labels() -> None:
    m = Metrics()
    m.record_request("api", "greet", "ok", 0.2)
    m.record_request("api", "greet", "ok", 0.4)
    m.record_request("cli", "greet", "error", 1.5)
    m.record_execution("greet", "api")
    m.record_error("api", "validation_error")
    m.observe_node("http_request", 0.05)
    m.set_active_sessions(7)

    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert b'nexus_requests_total{channel="api",outcome="ok",workflow="greet"} 2.0' in body

    got = samples(m)
    assert (
        got[
            ("nexus_requests_total", (("channel", "api"), ("outcome", "ok"), ("workflow", "greet")))
        ]
        == 2
    )
    assert (
        got[
            (
                "nexus_requests_total",
                (("channel", "cli"), ("outcome", "error"), ("workflow", "greet")),
            )
        ]
        == 1
    )
    assert got[("nexus_request_duration_seconds_count", (("channel", "api"),))] == 2
    assert got[("nexus_request_duration_seconds_sum", (("channel", "api"),))] == pytest.approx(0.6)
    assert got[("nexus_request_duration_seconds_bucket", (("channel", "cli"), ("le", "2.5")))] == 1
    assert got[("nexus_request_duration_seconds_bucket", (("channel", "cli"), ("le", "1.0")))] == 0
    assert (
        got[("nexus_workflow_executions_total", (("channel", "api"), ("workflow", "greet")))] == 1
    )
    assert got[("nexus_errors_total", (("channel", "api"), ("type", "validation_error")))] == 1
    assert got[("nexus_node_duration_seconds_count", (("node_type", "http_request"),))] == 1
    assert got[("nexus_active_sessions", ())] == 7

    m.set_active_sessions(3)
    assert samples(m)[("nexus_active_sessions", ())] == 3


def test_two_hosts_do_not_share_counts_nor_the_global_registry() -> None:
    a, b = Metrics(), Metrics()
    a.record_execution("greet", "api")
    a.record_execution("greet", "api")
    b.record_execution("greet", "api")
    key = ("nexus_workflow_executions_total", (("channel", "api"), ("workflow", "greet")))
    assert samples(a)[key] == 2
    assert samples(b)[key] == 1
    assert a.registry is not b.registry
    assert b"nexus_" not in generate_latest(REGISTRY)


def test_disabled_metrics_do_nothing() -> None:
    m = Metrics(enabled=False)
    m.record_request("api", "greet", "ok", 0.1)
    m.record_execution("greet", "api")
    m.record_error("api", "boom")
    m.observe_node("x", 1.0)
    m.set_active_sessions(4)
    body, content_type = m.render()
    assert body == b""
    assert content_type.startswith("text/plain")


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["api", "cli", "mcp"]),
            st.sampled_from(["ok", "failed", "rate_limited"]),
            st.one_of(
                st.floats(min_value=0, max_value=20, allow_nan=False),
                st.sampled_from([0.005, 0.01, 0.1, 1.0, 2.5, 10.0]),  # on a bound: in it
            ),
        ),
        max_size=40,
    )
)
def test_series_render_as_prometheus_clients_own_would(
    calls: list[tuple[str, str, float]],
) -> None:
    # The request path keeps plain numbers; what a scrape sees must equal
    # prometheus_client's own Counter and Histogram fed the same calls.
    from prometheus_client import CollectorRegistry, Counter, Histogram

    m = Metrics()
    reference = CollectorRegistry()
    requests = Counter(
        "nexus_requests_total", "x", ("channel", "workflow", "outcome"), registry=reference
    )
    durations = Histogram("nexus_request_duration_seconds", "x", ("channel",), registry=reference)
    for channel, outcome, seconds in calls:
        m.record_request(channel, "greet", outcome, seconds)
        requests.labels(channel, "greet", outcome).inc()
        durations.labels(channel).observe(seconds)
    ours = {k: v for k, v in _samples(m.registry).items() if k[0].startswith("nexus_request")}
    theirs = _samples(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key


# -- health --------------------------------------------------------------------


@pytest.mark.anyio
async def test_liveness_is_ok() -> None:
    report = await liveness()
    assert report.status == "ok"
    assert report.ok
    assert msgspec.json.decode(msgspec.json.encode(report), type=HealthReport) == report


@pytest.mark.anyio
async def test_readiness_ok_failing_raising_and_hanging_checks() -> None:
    async def ok() -> bool:
        return True

    async def not_ready() -> bool:
        return False

    async def raising() -> bool:
        raise ConnectionError("database is down")

    async def hanging() -> bool:
        await anyio.sleep_forever()
        return True

    def sync_ok() -> bool:
        return True

    report = await readiness(
        {
            "storage": ok,
            "channel:api": not_ready,
            "redis": raising,
            "channel:mcp": hanging,
            "sync": sync_ok,  # type: ignore[dict-item]
        },
        timeout=0.1,
    )
    assert report.status == "fail"
    assert not report.ok
    by_name = {c.name: c for c in report.checks}
    assert [c.name for c in report.checks] == [
        "storage",
        "channel:api",
        "redis",
        "channel:mcp",
        "sync",
    ]
    assert by_name["storage"] == CheckResult(
        name="storage", ok=True, detail=None, duration_ms=by_name["storage"].duration_ms
    )
    assert by_name["channel:api"].ok is False
    assert by_name["channel:api"].detail == "not ready"
    assert by_name["redis"].ok is False
    assert by_name["redis"].detail == "ConnectionError: database is down"
    assert by_name["channel:mcp"].ok is False
    assert by_name["channel:mcp"].detail == "timed out"
    assert by_name["channel:mcp"].duration_ms >= 90
    assert by_name["sync"].ok is True


@pytest.mark.anyio
async def test_readiness_runs_checks_concurrently() -> None:
    # Each check returns only once all five are running at the same time: run one
    # after another, the first would never return (and time out).
    inside = 0
    all_in = anyio.Event()

    async def together() -> bool:
        nonlocal inside
        inside += 1
        if inside == 5:
            all_in.set()
        await all_in.wait()
        return True

    report = await readiness({f"c{i}": together for i in range(5)}, timeout=10)
    assert inside == 5
    assert report.status == "ok"
    assert all(c.ok for c in report.checks)


@pytest.mark.anyio
async def test_readiness_with_no_checks_is_ok() -> None:
    report = await readiness({})
    assert report == HealthReport(status="ok", checks=[])


@pytest.mark.anyio
async def test_a_check_returning_text_is_ok_and_reports_it() -> None:
    async def workers() -> str:
        return "2 workers answer"

    async def empty() -> str:
        return ""

    report = await readiness({"queue": workers, "blank": empty})
    assert [(c.name, c.ok, c.detail) for c in report.checks] == [
        ("queue", True, "2 workers answer"),
        ("blank", False, "not ready"),
    ]
