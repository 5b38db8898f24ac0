"""``nexus worker APP``: execute the runs an application's gateways hand to workers.

With an executor that uses workers (``services.runs.executor = "workers"``,
or a plugin's queue executor), the processes that accept runs only store
them; ``nexus worker`` processes claim and execute them, ``--concurrency``
at a time, from ``--queues`` (workflow names; all when omitted). The first
``SIGINT``/``SIGTERM`` stops claiming and lets the runs in flight finish for
``services.runs.shutdown_grace`` seconds (the rest are stopped, their leases
released, and another worker resumes them from their checkpoints); a second
signal stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import anyio
from cyclopts import Parameter

from .. import context
from ..errors import OK, USAGE, print_debug_traceback, problem_from

if TYPE_CHECKING:
    from nexus_core import Nexus

__all__ = ["parse_queues", "worker_command"]

log = logging.getLogger("nexus.worker")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _uvloop() -> dict[str, bool]:
    """The event loop options: uvloop when installed, as ``nexus serve`` uses."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def parse_queues(text: str | None) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: the workflows a worker executes (empty: all)."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def worker_command(
    app: str | None = None,
    /,
    *,
    concurrency: Annotated[int, Parameter(name=["--concurrency", "-c"])] = 1,
    queues: str | None = None,
    log_format: Literal["text", "json"] | None = None,
) -> int:
    """Execute queued runs of APP until stopped (needs an executor that uses workers).

    Parameters
    ----------
    app
        The application: a file (app.py) or module:attr; default --app,
        NEXUS_APP or app in nexus.toml.
    concurrency
        How many runs this worker executes at a time.
    queues
        Only runs of these workflows, comma-separated (default: every workflow).
    log_format
        Every log line: text, or json (one object a line).

    """
    if concurrency < 1:
        print(
            f"error: --concurrency must be at least 1, got {concurrency}\n"
            "hint: nexus worker --help",
            file=sys.stderr,
        )
        return USAGE
    target = app or context.settings().app
    try:
        code = anyio.run(
            _work,
            target,
            concurrency,
            parse_queues(queues),
            log_format,
            backend="asyncio",
            backend_options=_uvloop(),
        )
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # every error becomes a message, never a traceback
        print_debug_traceback(exc)
        problem = problem_from(exc)
        for line in problem.lines():
            print(line, file=sys.stderr)
        return problem.exit_code
    _leave_node_threads(code)
    return code


async def _work(
    target: str | None,
    concurrency: int,
    queues: Sequence[str],
    log_format: Literal["text", "json"] | None,
) -> int:
    from nexus_core.plugin import configure_logging, load_app

    nexus = load_app(target)
    level = nexus.config.nexus.services.monitoring.log_level
    configure_logging(level, log_format or "text", force=log_format is not None)
    name = nexus.config.nexus.services.runs.executor
    if not nexus.engine.executor.needs_workers:
        # The executor says why (a ConfigError): before the host starts for nothing.
        await nexus.engine.executor.work(nexus.engine, concurrency=concurrency, queues=queues)
    with anyio.open_signal_receiver(*_SIGNALS) as signals:
        async with anyio.create_task_group() as outer:
            stop = anyio.CancelScope()
            outer.start_soon(_watch, signals, stop, nexus)
            # The worker loop claims runs itself (expired leases included): no recovery pass.
            async with nexus.running(recover=False):
                log.info(
                    "worker ready: executor %s, concurrency %d%s",
                    name,
                    concurrency,
                    f", queues {', '.join(queues)}" if queues else "",
                )
                with stop:
                    await nexus.engine.executor.work(
                        nexus.engine, concurrency=concurrency, queues=queues
                    )
                log.info("worker stopping: runs in flight get up to %gs", _grace(nexus))
            outer.cancel_scope.cancel()
    log.info("worker stopped")
    return OK


def _grace(nexus: Nexus) -> float:
    return nexus.config.nexus.services.runs.shutdown_grace


async def _watch(signals: object, stop: anyio.CancelScope, nexus: Nexus) -> None:
    """First signal: stop claiming, drain; second: exit at once."""
    received = 0
    async for signum in signals:  # type: ignore[attr-defined]
        received += 1
        if received == 1:
            stop.cancel()
        else:
            log.warning("interrupted again: stopping now")
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(128 + int(signum))


def _leave_node_threads(code: int, grace: float = 1.0) -> None:
    """Exit at once if sync node threads still run once the worker stopped.

    Their runs' leases are released (another worker resumes them); Python
    would otherwise wait for each thread to return before exiting.
    """
    import threading
    import time

    deadline = time.monotonic() + grace
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
