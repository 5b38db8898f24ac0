"""A failed run keeps its traceback; only callers allowed ``runs:debug`` see it; it is logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import Nexus
from nexus_core.security import Credentials
from nexus_core.workflows.runtime import TRACEBACK_BYTES, TRACEBACK_FRAMES, format_traceback

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'nexus.db'}"


def _deep(n: int) -> None:
    if n == 0:
        raise RuntimeError("boom at the bottom")
    _deep(n - 1)


def make_app(storage_url: str = "memory://", **config: Any) -> Nexus:
    app = Nexus("test", storage=storage_url, autoload=False, config=config or None, env={})

    @app.workflow
    def explode(depth: int = 2) -> None:
        """Raise from a helper ``depth`` calls down."""
        _deep(depth)

    @app.workflow
    def fine() -> str:
        return "ok"

    return app


def secured(environment: str = "development") -> dict[str, Any]:
    return {
        "environment": environment,
        "services": {
            "security": {
                "auth_enabled": True,
                "providers": ["api_key"],
                "roles": {
                    "operator": ["workflow:*:execute", "runs:read"],
                    "debugger": ["workflow:*:execute", "runs:read", "runs:debug"],
                    "root": ["admin"],
                },
            }
        },
    }


async def test_failed_run_keeps_node_type_message_and_frames(storage_url: str) -> None:
    app = make_app(storage_url)
    async with app:
        result = await app.invoke("explode", {"depth": 3})
        assert result.status == "failed"
        error = result.error
        assert error is not None
        assert (error.node, error.type, error.message) == (
            "explode",
            "RuntimeError",
            "boom at the bottom",
        )
        assert error.traceback is not None
        tb = error.traceback
        assert tb.startswith("Traceback (most recent call last):")
        assert tb.count("in _deep") == 4  # the helper's every frame, innermost last
        assert 'raise RuntimeError("boom at the bottom")' in tb
        assert tb.rstrip().endswith("RuntimeError: boom at the bottom")
        # It starts at the node's code, not in the runtime or anyio.
        assert "runtime.py" not in tb and "anyio" not in tb
        # Stored as JSON and read back whole, from memory and SQLite alike.
        stored = await app.get_run(result.run_id)
        assert stored.error == error


async def test_errors_that_are_not_exceptions_have_no_traceback() -> None:
    app = make_app()
    async with app:
        result = await app.invoke("fine", {})
        assert result.error is None


@given(depth=st.integers(min_value=0, max_value=400))
def test_traceback_is_bounded_in_frames_and_bytes(depth: int) -> None:
    try:
        _deep(depth)
    except RuntimeError as exc:
        tb = format_traceback(exc)
    assert len(tb.encode()) <= TRACEBACK_BYTES + 64
    assert tb.count('File "') <= TRACEBACK_FRAMES
    assert tb.rstrip().endswith("RuntimeError: boom at the bottom")


def test_a_huge_message_is_cut_to_its_end() -> None:
    try:
        raise ValueError("x" * (3 * TRACEBACK_BYTES) + " the end")
    except ValueError as exc:
        tb = format_traceback(exc)
    assert len(tb.encode()) <= TRACEBACK_BYTES + 64
    assert tb.startswith("[traceback cut to its last")
    assert tb.endswith(" the end\n")


async def test_only_runs_debug_sees_the_traceback_when_auth_is_on(storage_url: str) -> None:
    app = make_app(storage_url, **secured("staging"))
    async with app:
        keys = {}
        for role in ("operator", "debugger", "root"):
            keys[role], _ = await app.security.issue_api_key(role, roles=[role])
        plain = await app.invoke("explode", {}, credentials=Credentials(api_key=keys["operator"]))
        assert plain.error is not None
        assert plain.error.message == "boom at the bottom"
        assert plain.error.traceback is None  # its own run, but no runs:debug
        seen = await app.get_run(
            plain.run_id,
            principal=await app.security.authenticate(Credentials(api_key=keys["operator"]), "api"),
        )
        assert seen.error is not None and seen.error.traceback is None
        for role in ("debugger", "root"):
            who = await app.security.authenticate(Credentials(api_key=keys[role]), "api")
            assert app.sees_tracebacks(who)
            full = await app.get_run(plain.run_id, principal=who)
            assert full.error is not None and "in _deep" in (full.error.traceback or "")
        # Trusted in-process code reads it whole.
        assert (await app.get_run(plain.run_id)).error.traceback  # type: ignore[union-attr]


@pytest.mark.parametrize(("environment", "shown"), [("development", True), ("staging", False)])
async def test_auth_off_shows_tracebacks_in_development_only(environment: str, shown: bool) -> None:
    security = {"auth_enabled": False}
    app = make_app(environment=environment, services={"security": security})
    async with app:
        result = await app.invoke("explode", {})
        assert result.error is not None
        assert (result.error.traceback is not None) is shown
        stored = await app.get_run(result.run_id)
        assert stored.error is not None and stored.error.traceback is not None


async def test_events_carry_the_error_without_its_traceback() -> None:
    app = make_app()
    async with app:
        async with app.subscribe(("run.failed",)) as sub:
            result = await app.invoke("explode", {})
            with anyio.fail_after(10):
                event = await sub.__anext__()
        assert event.run_id == result.run_id
        assert event.data["error"] == {
            "type": "RuntimeError",
            "message": "boom at the bottom",
            "node": "explode",
        }


async def test_every_failed_run_is_logged_at_error(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    async with app:
        with caplog.at_level(logging.INFO, logger="nexus"):
            result = await app.invoke("explode", {})
            await app.invoke("fine", {})
    lines = [r for r in caplog.records if r.name == "nexus.runs"]
    assert len(lines) == 1
    [record] = lines
    assert record.levelno == logging.ERROR
    first, _, rest = record.getMessage().partition("\n")
    assert first == (
        f"run {result.run_id} of workflow 'explode' failed at node 'explode': "
        "RuntimeError: boom at the bottom"
    )
    assert rest.startswith("Traceback (most recent call last):") and "in _deep" in rest
    assert (record.run_id, record.workflow, record.node) == (  # type: ignore[attr-defined]
        result.run_id,
        "explode",
        "explode",
    )
