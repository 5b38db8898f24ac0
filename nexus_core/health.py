"""Liveness and readiness: what ``/health/live`` and ``/health/ready`` report.

Liveness says the process's event loop runs. Readiness runs the host's checks
(``{"storage": storage.ping, "channel:api": channel.ready, ...}``) concurrently,
each with a timeout, and is ``"ok"`` only when every one of them is.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import anyio
import anyio.lowlevel
import msgspec

__all__ = ["CheckResult", "HealthReport", "liveness", "readiness"]


class CheckResult(msgspec.Struct, kw_only=True):
    """The outcome of one check: ``detail`` says why it is not ok (or what an ok check reported)."""

    name: str
    ok: bool
    detail: str | None = None
    duration_ms: float = 0.0


class HealthReport(msgspec.Struct, kw_only=True):
    """Overall status and every check's result, in the order the checks were given."""

    status: Literal["ok", "fail"]
    checks: list[CheckResult] = []

    @property
    def ok(self) -> bool:
        """Whether the status is ``"ok"``."""
        return self.status == "ok"


async def liveness() -> HealthReport:
    """Report ok while the event loop runs (with how long one loop turn took)."""
    start = time.perf_counter()
    await anyio.lowlevel.checkpoint()
    ms = (time.perf_counter() - start) * 1000
    return HealthReport(status="ok", checks=[CheckResult(name="loop", ok=True, duration_ms=ms)])


async def readiness(
    checks: Mapping[str, Callable[[], Awaitable[bool] | bool]],
    timeout: float = 2.0,  # noqa: ASYNC109 - applies to each check, not to the call
) -> HealthReport:
    """Run every check concurrently, each under ``timeout`` seconds.

    A check is ok when it returns a true value; a string it returns is its
    ``detail`` (what it found, e.g. how many workers answer). One that returns false, raises
    (``detail`` is the error) or does not answer in time (``detail`` is
    ``"timed out"``) is not ok, and the report is ``"fail"``. No checks is ok.
    """
    results: dict[str, CheckResult] = {}

    async def run(name: str, check: Callable[[], Awaitable[bool] | bool]) -> None:
        start = time.perf_counter()
        ok = False
        detail: str | None = "timed out"
        with anyio.move_on_after(timeout):
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                text = str(exc)
                ok, detail = False, f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            else:
                ok = bool(value)
                detail = value if ok and isinstance(value, str) else None if ok else "not ready"
        ms = (time.perf_counter() - start) * 1000
        results[name] = CheckResult(name=name, ok=ok, detail=detail, duration_ms=ms)

    async with anyio.create_task_group() as tg:
        for name, check in checks.items():
            tg.start_soon(run, name, check, name=f"health check {name}")

    ordered = [results[name] for name in checks]
    status: Literal["ok", "fail"] = "ok" if all(r.ok for r in ordered) else "fail"
    return HealthReport(status=status, checks=ordered)
