"""``memory://`` is bounded: finished runs, events and audit beyond a count or an age go."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core import Nexus
from nexus_core.events import Event
from nexus_core.storage.base import AuditRecord, NodeCheckpoint, RunRecord, Storage, event_seq
from nexus_core.storage.memory import MemoryBounds, MemoryStorage
from nexus_core.testing.storage import StorageContract

pytestmark = pytest.mark.anyio

_T = TypeVar("_T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestBoundedMemoryStorage(StorageContract):
    """Every storage promise still holds with bounds switched on (none is reached here)."""

    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return lambda: MemoryStorage("memory://?max_runs=200&max_events=500&max_age=3600")


class Clock:
    """A clock the test moves by hand (seconds, never going back)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(run_id: str, key: str | None = None) -> RunRecord:
    return RunRecord(
        id=run_id,
        workflow="w",
        status="running",
        inputs={},
        created_at=float(int(run_id.lstrip("r") or 0)),
        idempotency_key=key,
    )


def _event(n: int) -> Event:
    return Event(type="run.started", run_id=f"r{n}", data={"n": n}, time=float(n))


def _audit(n: int) -> AuditRecord:
    return AuditRecord(
        id=f"a{n}", time=float(n), principal="p", action="invoke", outcome="ok", run_id=f"r{n}"
    )


def test_bounds_from_url() -> None:
    assert MemoryStorage().bounds == MemoryBounds()
    assert MemoryBounds().max_runs == 10_000
    assert (MemoryBounds().max_events, MemoryBounds().max_audit) == (50_000, 20_000)
    assert MemoryBounds().max_age is None
    bounds = MemoryBounds.from_url("memory://?max_runs=5&max_events=none&max_age=2.5")
    assert bounds == MemoryBounds(max_runs=5, max_events=None, max_audit=20_000, max_age=2.5)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("max_run=5", "unknown parameter 'max_run'"),
        ("max_runs=0", "max_runs must be a whole number greater than 0"),
        ("max_runs=2.5", "max_runs must be a whole number"),
        ("max_events=-1", "max_events must be"),
        ("max_audit=", "max_audit must be"),
        ("max_age=soon", "max_age must be a number of seconds"),
        ("max_age=inf", "max_age must be"),
        ("max_age=nan", "max_age must be"),
    ],
)
def test_bad_bounds_name_the_parameter(query: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        MemoryStorage(f"memory://?{query}")


async def test_a_bad_bound_stops_the_host_with_a_clear_error() -> None:
    app = Nexus("t", storage="memory://?max_runs=many", autoload=False, env={})
    with pytest.raises(Exception, match=r"max_runs must be a whole number.*'many'") as caught:
        async with app:
            pass
    assert "Traceback" not in str(caught.value)


# One step of a sustained load: ("run", key?) creates and finishes a run, ("open",) creates
# a run left running, ("event", n) appends n events, ("audit", n) n audit records,
# ("tick", seconds) moves the clock on.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.one_of(st.none(), st.sampled_from(["k1", "k2"]))),
        st.tuples(st.just("open"), st.none()),
        st.tuples(st.just("event"), st.integers(1, 4)),
        st.tuples(st.just("audit"), st.integers(1, 4)),
        st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
    ),
    max_size=60,
)
_bound = st.one_of(st.none(), st.integers(1, 6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_runs=_bound,
    max_events=_bound,
    max_audit=_bound,
    max_age=st.one_of(st.none(), st.floats(0.5, 5.0)),
    steps=_steps,
)
def test_the_bounds_hold_under_any_load(
    max_runs: int | None,
    max_events: int | None,
    max_audit: int | None,
    max_age: float | None,
    steps: list[tuple[str, object]],
) -> None:
    """After every step the store keeps exactly the newest records the bounds allow."""
    query = "&".join(
        f"{name}={'none' if value is None else value}"
        for name, value in [
            ("max_runs", max_runs),
            ("max_events", max_events),
            ("max_audit", max_audit),
            ("max_age", max_age),
        ]
    )
    clock = Clock()

    def young(at: float) -> bool:
        return max_age is None or at >= clock.now - max_age

    def expected(made: list[tuple[float, _T]], cap: int | None) -> list[_T]:
        kept = [item for at, item in made if young(at)]
        return kept if cap is None else kept[-cap:] if len(kept) > cap else kept

    async def scenario() -> None:
        store = MemoryStorage(f"memory://?{query}", clock=clock)
        finished: list[tuple[float, str]] = []  # (when it finished, run id), in order
        open_runs: list[str] = []
        events: list[tuple[float, int]] = []  # (when appended, position)
        audits: list[tuple[float, float]] = []  # (when appended, its time field)
        count = 0
        for kind, arg in steps:
            if kind == "tick":
                assert isinstance(arg, float)
                clock.now += arg
            elif kind in ("run", "open"):
                count += 1
                run_id = f"r{count}"
                key = arg if isinstance(arg, str) else None
                stored, new = await store.create_run(_run(run_id, key=key))
                if not new:  # the key's run is still kept: nothing is made
                    assert stored.idempotency_key == key
                    assert stored.id in expected(finished, max_runs)
                    continue
                if kind == "open":
                    open_runs.append(run_id)
                    continue
                checkpoint = NodeCheckpoint(run_id=run_id, node_id="n", status="completed")
                done = msgspec.structs.replace(stored, status="completed", finished_at=2.0)
                await store.finish_run(done, [checkpoint])
                finished.append((clock.now, run_id))
            elif kind == "event":
                assert isinstance(arg, int)
                logged = await store.append_events([_event(i) for i in range(arg)])
                events.extend((clock.now, event_seq(e.id)) for e in logged)
            else:
                assert isinstance(arg, int)
                await store.append_audits([_audit(count) for _ in range(arg)])
                audits.extend((clock.now, float(count)) for _ in range(arg))

            # What is kept is exactly what the bounds allow, newest first to stay.
            kept_runs = await store.list_runs(limit=10_000)
            finished_kept = sorted(r.id for r in kept_runs if r.status == "completed")
            want = expected(finished, max_runs)
            assert finished_kept == sorted(want)
            assert sorted(r.id for r in kept_runs if r.status == "running") == sorted(open_runs)
            for _, gone in finished:
                if gone not in want:
                    assert await store.get_run(gone) is None
                    assert await store.get_checkpoints(gone) == {}
            for run_id in want:
                assert (await store.get_checkpoints(run_id)).keys() == {"n"}
            logged_now = await store.read_events(limit=10_000)
            assert [event_seq(e.id) for e in logged_now] == expected(events, max_events)
            last = await store.last_event_id()
            assert (last is None) == (not logged_now)
            kept_audit = await store.query_audit(limit=10_000)
            assert [a.time for a in kept_audit] == expected(audits, max_audit)

    anyio.run(scenario)


async def test_a_dropped_run_frees_its_idempotency_key() -> None:
    store = MemoryStorage("memory://?max_runs=1")
    first, _ = await store.create_run(_run("r1", key="k"))
    await store.finish_run(msgspec.structs.replace(first, status="completed"))
    again, new = await store.create_run(_run("r2", key="k"))
    assert (again.id, new) == ("r1", False)  # still kept: the key answers with it
    other, _ = await store.create_run(_run("r3"))
    await store.finish_run(msgspec.structs.replace(other, status="completed"))
    assert await store.get_run("r1") is None  # dropped: r3 is the one kept
    fresh, new = await store.create_run(_run("r4", key="k"))
    assert (fresh.id, new) == ("r4", True)


async def test_replay_after_a_dropped_event_still_reads_on() -> None:
    store = MemoryStorage("memory://?max_events=2")
    logged = await store.append_events([_event(i) for i in range(5)])
    kept = await store.read_events(after=logged[0].id)
    assert [e.id for e in kept] == [logged[3].id, logged[4].id]
    assert await store.last_event_id() == logged[4].id


async def test_a_host_on_bounded_memory_keeps_answering() -> None:
    """Invokes on a host whose store keeps 3 runs: every answer is right, 3 runs stay."""
    app = Nexus("t", storage="memory://?max_runs=3&max_events=10&max_audit=5", autoload=False)

    @app.workflow
    async def double(n: int) -> int:
        return 2 * n

    async with app:
        for n in range(20):
            result = await app.invoke("double", {"n": n}, channel="test")
            assert (result.status, result.output) == ("completed", 2 * n)
        runs = await app.list_runs(limit=100)
        assert sorted(r.inputs["n"] for r in runs) == [17, 18, 19]  # the newest three
        assert app.storage is not None
        assert len(await app.storage.read_events(limit=1000)) == 10
        assert len(await app.storage.query_audit(limit=1000)) == 5
