"""``serve()``: run an application's HTTP server in one or several worker processes.

Each worker runs the whole host (storage, events, sessions) and every enabled
channel (see :mod:`nexus_core.serving`): the ``api`` channel on one shared
listening socket, and, in the first worker only, the channels that listen on
ports of their own (MCP with ``channels.mcp.port``, third-party channels).
``SIGTERM`` or ``Ctrl-C`` stops a worker gracefully: it stops accepting
connections, ends open event streams and
WebSockets, lets requests in flight (and the runs they wait for) finish for up
to ``graceful_timeout`` seconds, then stops the host; runs started with
``Prefer: respond-async`` and still going are left checkpointed and resume at
the next start. A second signal stops at once.

With several workers a small supervisor process starts them (each imports the
application anew, so the application must be importable: a file path or
``module:attr``), restarts a worker that dies, and forwards ``SIGTERM``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
from nexus_core import Nexus
from nexus_core.errors import PluginFailed
from nexus_core.plugin import ConfigError, LogFormat, configure_logging, load_app

from .channel import bind_socket, inherited_sockets
from .config import ApiConfig, check_config

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["app_reference", "serve"]

log = logging.getLogger("nexus.api")
_STARTUP_FAILURE = 3


def _uvloop() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def app_reference(app: Nexus) -> str | None:
    """A ``"file.py:name"`` or ``"module:name"`` string that loads ``app`` in another process."""
    for module in list(sys.modules.values()):
        names = [key for key, value in vars(module).items() if value is app] if module else []
        if not names:
            continue
        name = names[0]
        module_name = getattr(module, "__name__", "")
        file = getattr(module, "__file__", None)
        if module_name == "__main__" or module_name.startswith("nexus_app_"):
            if file:
                return f"{file}:{name}"
            continue
        return f"{module_name}:{name}"
    return None


def _configure_logging(app: Nexus | None, log_format: LogFormat | None = None) -> None:
    """One handler, one format for Nexus's and uvicorn's records (see :mod:`nexus_core.logs`).

    An explicit ``log_format`` replaces logging already set up; without it,
    an embedding application's own logging configuration is kept.
    """
    level = app.config.nexus.services.monitoring.log_level if app is not None else "INFO"
    configure_logging(level, log_format or "text", force=log_format is not None)


async def _serve_host(
    app: Nexus,
    sockets: list[socket.socket],
    signums: tuple[int, ...],
    channels: list[str] | None = None,
) -> None:
    token = inherited_sockets.set(sockets)
    try:
        # Every enabled channel (API, MCP on its own port, third-party ones),
        # one signal handling and graceful stop for all: the core's serve.
        await app.serve(channels, signals=signums)
    finally:
        inherited_sockets.reset(token)


def run_worker(
    app: Nexus,
    sockets: list[socket.socket],
    signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    channels: list[str] | None = None,
) -> None:
    """Run the host with ``channels`` (default: every enabled one) until a signal stops it.

    The ``api`` channel listens on ``sockets``.
    """
    anyio.run(
        _serve_host, app, sockets, signums, channels, backend="asyncio", backend_options=_uvloop()
    )


def _child_main(
    reference: str,
    sockets: list[socket.socket],
    every_channel: bool = True,
    log_format: LogFormat | None = None,
) -> None:
    """A supervised worker: load the app, serve; SIGINT is the supervisor's to handle.

    Only the first worker runs the channels other than ``api`` (they listen
    on ports of their own, which the workers cannot share).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        app = load_app(reference)
        _configure_logging(app, log_format)
        run_worker(app, sockets, (signal.SIGTERM,), None if every_channel else ["api"])
    except Exception as exc:
        _configure_logging(None, log_format)
        log.error("worker %d failed: %s: %s", os.getpid(), type(exc).__name__, exc)
        sys.exit(_STARTUP_FAILURE)


def _supervise(
    reference: str,
    sockets: list[socket.socket],
    workers: int,
    grace: float,
    log_format: LogFormat | None = None,
) -> int:
    """Start ``workers`` processes, restart those that die, stop them all on a signal."""
    import multiprocessing  # only a supervisor needs it: not on a one-worker start-up

    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int) -> tuple[Any, float]:
        process = context.Process(
            target=_child_main,
            args=(reference, sockets, index == 0, log_format),
            name="nexus-api-worker",
        )
        process.start()
        return process, time.monotonic()

    processes = [start(index) for index in range(workers)]
    log.info(
        "supervisor %d started %d workers: %s",
        os.getpid(),
        workers,
        ", ".join(str(p.pid) for p, _ in processes),
    )
    code = 0
    try:
        while not stop.wait(0.5):
            for index, (process, started) in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == _STARTUP_FAILURE or time.monotonic() - started < 5:
                    log.error(
                        "worker %d exited with %s while starting; stopping",
                        process.pid,
                        process.exitcode,
                    )
                    code = 1
                    stop.set()
                    break
                log.warning("worker %d died (exit %s); restarting", process.pid, process.exitcode)
                processes[index] = start(index)
    finally:
        for process, _ in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 5
        for process, _ in processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _reload(reference: str, sockets: list[socket.socket], target: Callable[..., None]) -> None:
    import uvicorn
    from uvicorn.supervisors import ChangeReload

    config = uvicorn.Config("nexus_plugin_api:unused", reload=True, reload_dirs=[os.getcwd()])
    ChangeReload(config, target=target, sockets=sockets).run()


def serve(
    app: Nexus | str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    reload: bool = False,
    log_format: LogFormat | None = None,
) -> int:
    """Serve ``app`` over HTTP until stopped; return an exit code.

    ``app`` is a :class:`~nexus_core.Nexus` object or a reference for
    :func:`~nexus_core.loader.load_app` (``"app.py"``, ``"shop.app:app"``,
    ``None`` for ``NEXUS_APP``/``nexus.toml``). ``host``, ``port`` and
    ``workers`` default to ``nexus.channels.api``. ``reload`` restarts the
    server when a file under the working directory changes (development).
    ``log_format`` (``"text"`` or ``"json"``: one JSON object per line) is the
    format of every log line, Nexus's and uvicorn's; without it, logging the
    embedding application set up is kept, else text.
    """
    reference = app if isinstance(app, str) or app is None else None
    loaded = app if isinstance(app, Nexus) else load_app(app)
    _configure_logging(loaded, log_format)
    try:
        section = loaded.config.section("channels.api")
    except ConfigError:
        section = None
    config: ApiConfig = section if isinstance(section, ApiConfig) else ApiConfig()
    check_config(config, environment=loaded.config.nexus.environment)
    host = host if host is not None else config.host
    port = port if port is not None else config.port
    workers = workers if workers is not None else config.workers
    if workers < 1:
        raise ConfigError(f"workers: expected at least 1, got {workers}", key="workers")
    sock = bind_socket(host, port, config.backlog)
    try:
        if workers == 1 and not reload:
            try:
                run_worker(loaded, [sock])
            except PluginFailed as exc:  # the plugin is named: no traceback, exit 1
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            return 0
        reference = reference or app_reference(loaded)
        if reference is None:
            raise ConfigError(
                "several workers (or reload) need an importable application: pass it as "
                "'path/to/app.py' or 'module:attr' rather than as an object",
                key="workers",
            )
        if reload:
            log.info("reloading on changes under %s", os.getcwd())
            target = functools.partial(_reload_target, reference, log_format=log_format)
            _reload(reference, [sock], target)
            return 0
        return _supervise(reference, [sock], workers, config.graceful_timeout, log_format)
    finally:
        sock.close()


def _reload_target(
    reference: str,
    sockets: list[socket.socket] | None = None,
    *,
    log_format: LogFormat | None = None,
) -> None:
    _child_main(reference, sockets or [], True, log_format)
