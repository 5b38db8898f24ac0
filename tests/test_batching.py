"""The one batching engine: order, outcomes, cancellation, flush, inline and background modes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core._batching import Batcher

pytestmark = pytest.mark.anyio


class Store:
    """An ``apply`` that records its batches; items starting with "bad" fail alone."""

    def __init__(self, *, gated: bool = False, delay: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.gated = gated
        self.gates: list[anyio.Event] = []  # one per apply, set to let it finish
        self.started = anyio.Event()  # a new apply began
        self.delay = delay  # checkpoints inside each apply

    @property
    def applied(self) -> list[str]:
        return [item for batch in self.batches for item in batch]

    async def apply(self, batch: list[str]) -> Sequence[str | BaseException]:
        gate = anyio.Event()
        self.gates.append(gate)
        started, self.started = self.started, anyio.Event()
        started.set()
        if self.gated:
            await gate.wait()
        for _ in range(self.delay):
            await anyio.lowlevel.checkpoint()
        self.batches.append(list(batch))
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in batch]

    async def nth_apply(self, n: int) -> anyio.Event:
        """Wait until apply number ``n`` (from 0) has begun; the gate that lets it finish."""
        with anyio.fail_after(5):
            while len(self.gates) <= n:
                await self.started.wait()
        return self.gates[n]


async def test_items_are_applied_in_order_and_each_gets_its_own_result() -> None:
    store = Store()
    batcher: Batcher[str, str] = Batcher(store.apply)
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        results[item] = await batcher.submit(item)

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(submit, f"i{n}")
    assert store.applied == [f"i{n}" for n in range(50)]  # start_soon order is run order
    assert results == {f"i{n}": f"I{n}" for n in range(50)}
    assert len(store.batches) < 50  # concurrent submitters shared batches


async def test_a_failing_item_fails_only_its_caller() -> None:
    store = Store()
    batcher: Batcher[str, str] = Batcher(store.apply)
    outcomes: dict[str, str] = {}

    async def submit(item: str) -> None:
        try:
            outcomes[item] = await batcher.submit(item)
        except ValueError as exc:
            outcomes[item] = f"failed: {exc}"

    async with anyio.create_task_group() as tg:
        for item in ["a", "b", "bad", "c"]:
            tg.start_soon(submit, item)
    assert store.batches == [["a", "b", "bad", "c"]]
    assert outcomes == {"a": "A", "b": "B", "bad": "failed: bad", "c": "C"}


async def test_submit_many_puts_its_items_in_one_batch_and_returns_each_outcome() -> None:
    store = Store(gated=True)
    batcher: Batcher[str, str] = Batcher(store.apply)
    outcomes: list[list[str | BaseException]] = []

    async def submit_many(items: list[str]) -> None:
        outcomes.append(await batcher.submit_many(items))

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit_many, ["first"])
        gate = await store.nth_apply(0)  # its batch is being applied: the next ones queue
        tg.start_soon(submit_many, ["a", "bad", "b"])
        tg.start_soon(submit_many, ["c"])
        with anyio.fail_after(5):
            while batcher.pending < 4:
                await anyio.lowlevel.checkpoint()
        gate.set()
        (await store.nth_apply(1)).set()
    assert store.batches == [["first"], ["a", "bad", "b", "c"]]
    assert outcomes[0] == ["FIRST"]
    a, bad, b = outcomes[1]
    assert (a, b) == ("A", "B")
    assert isinstance(bad, ValueError)  # returned, not raised
    assert outcomes[2] == ["C"]


async def test_apply_raising_fails_its_whole_batch_and_counts_put_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def apply(batch: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    batcher: Batcher[str, None] = Batcher(apply, what="records")
    errors: list[str] = []

    async def submit(item: str) -> None:
        try:
            await batcher.submit(item)
        except OSError as exc:
            errors.append(f"{item}: {exc}")

    with caplog.at_level(logging.ERROR, logger="nexus"):
        async with anyio.create_task_group() as tg:
            batcher.put("p1")
            batcher.put("p2")
            tg.start_soon(submit, "s1")
    assert errors == ["s1: disk full"]
    assert batcher.failed == 2
    assert "writing 2 queued records failed" in caplog.text
    await batcher.submit("after")  # the batcher goes on
    assert calls == 2 and batcher.failed == 2


async def test_a_flusher_applies_one_batch_and_hands_the_next_to_its_submitters() -> None:
    store = Store(gated=True)
    batcher: Batcher[str, str] = Batcher(store.apply)
    returned: list[str] = []

    async def submit(item: str) -> None:
        await batcher.submit(item)
        returned.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, "a")
        first = await store.nth_apply(0)
        tg.start_soon(submit, "b")
        tg.start_soon(submit, "c")
        await anyio.wait_all_tasks_blocked()
        first.set()
        second = await store.nth_apply(1)  # b or c applies the next batch...
        await anyio.wait_all_tasks_blocked()
        assert returned == ["a"]  # ...while a has its answer already
        second.set()
    assert store.batches == [["a"], ["b", "c"]]
    assert sorted(returned) == ["a", "b", "c"]


async def test_cancelled_submitters_neither_lose_applied_items_nor_hang_others() -> None:
    store = Store(gated=True)
    batcher: Batcher[str, str] = Batcher(store.apply)
    results: dict[str, str] = {}

    def spawn(tg: anyio.abc.TaskGroup, item: str) -> anyio.CancelScope:
        scope = anyio.CancelScope()

        async def submit() -> None:
            with scope:
                results[item] = await batcher.submit(item)

        tg.start_soon(submit)
        return scope

    async with anyio.create_task_group() as tg:
        flusher = spawn(tg, "a")  # applies batch 1...
        taken = spawn(tg, "x")  # ...which x joins before it is taken
        gate = await store.nth_apply(0)
        queued = spawn(tg, "b")  # batch 2, not taken yet
        spawn(tg, "c")
        await anyio.wait_all_tasks_blocked()
        for scope in (flusher, taken, queued):
            scope.cancel()
        await anyio.wait_all_tasks_blocked()
        gate.set()  # batch 1 lands; c is handed batch 2 and applies it
        store.gated = False
    # x was cancelled after its batch was taken: applied all the same. b was
    # cancelled before: withdrawn. c, not cancelled, got its answer.
    assert store.batches == [["a", "x"], ["c"]]
    assert results["c"] == "C" and "x" not in results and "b" not in results
    assert await batcher.submit("d") == "D"


async def test_flush_in_the_background_waits_for_what_came_before_it_only() -> None:
    store = Store(gated=True)
    batcher: Batcher[str, str] = Batcher(store.apply, what="events")
    flushed = anyio.Event()

    async def flush() -> None:
        await batcher.flush()
        flushed.set()

    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        assert batcher.running
        batcher.put("a")
        first = await store.nth_apply(0)
        batcher.put("b")
        tg.start_soon(flush)
        await anyio.wait_all_tasks_blocked()
        first.set()
        second = await store.nth_apply(1)  # "b" is taken...
        batcher.put("c")  # ...so "c", put after the flush, goes in the next batch
        assert not flushed.is_set()
        second.set()
        third = await store.nth_apply(2)  # "c" is being applied...
        with anyio.fail_after(5):
            await flushed.wait()  # ...and the flush has returned without waiting for it
        assert store.batches == [["a"], ["b"]]
        third.set()
        await batcher.flush()
        assert store.batches == [["a"], ["b"], ["c"]]
        tg.cancel_scope.cancel()
    assert not batcher.running


async def test_background_submitters_wait_for_the_runner() -> None:
    store = Store()
    batcher: Batcher[str, str] = Batcher(store.apply)
    results: list[str] = []

    async def submit(item: str) -> None:
        results.append(await batcher.submit(item))

    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        async with anyio.create_task_group() as inner:
            for item in "abc":
                inner.start_soon(submit, item)
        tg.cancel_scope.cancel()
    assert sorted(results) == ["A", "B", "C"]
    assert store.applied == ["a", "b", "c"]


async def test_waiters_apply_their_batch_themselves_when_the_runner_stops() -> None:
    store = Store(gated=True)
    batcher: Batcher[str, str] = Batcher(store.apply)
    results: list[str] = []

    async def submit(item: str) -> None:
        results.append(await batcher.submit(item))

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as runner:
            await runner.start(batcher.run)
            tg.start_soon(submit, "a")
            gate = await store.nth_apply(0)
            store.gated = False
            tg.start_soon(submit, "b")  # queued behind the runner's batch
            await anyio.wait_all_tasks_blocked()
            runner.cancel_scope.cancel()  # the runner finishes "a" (shielded), then stops
            gate.set()
        assert not batcher.running
    assert sorted(results) == ["A", "B"]
    assert store.batches == [["a"], ["b"]]


async def test_inline_flush_applies_what_was_put() -> None:
    store = Store()
    batcher: Batcher[str, str] = Batcher(store.apply)
    await batcher.flush()  # nothing queued: returns at once
    batcher.put("a")
    batcher.put("b")
    assert batcher.pending == 2
    await batcher.flush()
    assert store.batches == [["a", "b"]] and batcher.pending == 0
    assert batcher.failed == 0


async def test_apply_giving_no_outcomes_means_every_item_succeeded() -> None:
    seen: list[list[int]] = []

    async def apply(batch: list[int]) -> None:
        seen.append(batch)

    batcher: Batcher[int, None] = Batcher(apply)
    await batcher.submit(1)
    assert seen == [[1]]


async def test_a_wrong_number_of_outcomes_fails_the_batch() -> None:
    async def apply(batch: list[int]) -> list[int]:
        return []

    batcher: Batcher[int, int] = Batcher(apply, what="numbers")
    with pytest.raises(RuntimeError, match="applying 1 numbers gave 0 outcomes"):
        await batcher.submit(1)


# -- interleavings ------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("submit"), st.booleans(), st.integers(0, 3)),  # fails?, cancel after n
    st.tuples(st.just("put"), st.booleans(), st.just(0)),
    st.tuples(st.just("flush"), st.just(False), st.just(0)),
    st.tuples(st.just("yield"), st.just(False), st.integers(0, 3)),
)


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(_op, max_size=25),
    delay=st.integers(0, 3),
    background=st.booleans(),
)
def test_any_interleaving_keeps_order_and_outcomes_and_never_hangs(
    ops: list[tuple[str, bool, int]], delay: int, background: bool
) -> None:
    async def scenario() -> None:
        store = Store(delay=delay)
        batcher: Batcher[str, str] = Batcher(store.apply)
        answered: dict[str, str] = {}
        cancelled: set[str] = set()
        put: list[str] = []
        queued: list[str] = []  # in the order they were queued

        async def submit(item: str, cancel_after: int) -> None:
            with anyio.CancelScope() as scope:
                if cancel_after:

                    async def cancel_later() -> None:
                        for _ in range(cancel_after):
                            await anyio.lowlevel.checkpoint()
                        scope.cancel()

                    tg.start_soon(cancel_later)
                try:
                    queued.append(item)  # submit queues it before it first waits
                    answered[item] = await batcher.submit(item)
                except ValueError as exc:
                    answered[item] = f"failed: {exc}"
            if scope.cancelled_caught:
                cancelled.add(item)

        async def flush(before: list[str]) -> None:
            await batcher.flush()
            assert set(before) <= set(store.applied)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as outer:
                if background:
                    await outer.start(batcher.run)
                async with anyio.create_task_group() as tg:
                    for n, (kind, fails, count) in enumerate(ops):
                        item = f"{'bad' if fails else 'ok'}{n}"
                        if kind == "submit":
                            tg.start_soon(submit, item, count)
                        elif kind == "put":
                            queued.append(item)
                            batcher.put(item)
                            put.append(item)
                        elif kind == "flush":
                            tg.start_soon(flush, list(put))
                        else:
                            for _ in range(count):
                                await anyio.lowlevel.checkpoint()
                await batcher.flush()
                outer.cancel_scope.cancel()

        applied = store.applied
        assert len(applied) == len(set(applied))  # nothing applied twice
        assert applied == [item for item in queued if item in set(applied)]  # in queue order
        assert set(put) <= set(applied)  # every put item is applied after a flush
        submitted = {
            f"{'bad' if f else 'ok'}{n}" for n, (k, f, _) in enumerate(ops) if k == "submit"
        }
        for item in submitted:
            if item in answered:  # answered: exactly what apply made of it
                assert item in applied
                expected = f"failed: {item}" if item.startswith("bad") else item.upper()
                assert answered[item] == expected
            else:  # cancelled: applied or not, but never lost halfway
                assert item in cancelled
        assert batcher.failed == sum(1 for item in put if item.startswith("bad"))

    anyio.run(scenario)
