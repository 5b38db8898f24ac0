"""Serving: start every enabled channel, stop them all on one signal.

:meth:`Nexus.serve <nexus_core.Nexus.serve>` and ``nexus serve`` both come
here. Every channel that an installed plugin registers through
``nexus_channels`` is started (unless its config section says
``enabled = false``), each in the host's lifetime, and listed once all are up.
The first ``SIGINT`` (Ctrl-C) or ``SIGTERM`` stops gracefully: channels with a
``stop()`` method are asked to stop and awaited (the API drains its requests),
the others are cancelled, then runs in flight get
``services.runs.shutdown_grace`` seconds and plugins shut down. A second
signal stops the channels at once. Nothing is printed but a log line: no
``KeyboardInterrupt`` or ``CancelledError`` traceback.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .config import ConfigError
from .errors import NexusError

if TYPE_CHECKING:
    from .app import Nexus

__all__ = ["DEFAULT_SIGNALS", "enabled_channels", "serve_host", "start_channel"]

log = logging.getLogger("nexus")

#: The signals :func:`serve_host` stops on by default.
DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


def _section(app: Nexus, name: str) -> Any:
    try:
        return app.config.section(f"channels.{name}")
    except ConfigError:
        return None


def enabled_channels(app: Nexus) -> list[str]:
    """The channels :meth:`Nexus.serve` starts: every installed one not switched off.

    A channel is switched off by ``enabled = false`` in its config section
    (``[nexus.channels.NAME]``), when its section has such a field.
    """
    return [
        name
        for name in app.host.channels()
        if getattr(_section(app, name), "enabled", True) is not False
    ]


async def start_channel(app: Nexus, name: str, tg: anyio.abc.TaskGroup) -> Any:
    """Build the channel ``name`` with its config section and start it in ``tg``.

    Returns the channel once it called ``task_status.started()``. A factory
    that cannot be imported, raises, or a channel that fails before it is
    ready raises :class:`~nexus_core.errors.PluginFailed` naming the plugin,
    its distribution and version, and how to disable it (a
    :class:`~nexus_core.errors.NexusError` such as a ``ConfigError`` is
    raised as it is: it is the user's to fix, not the plugin's).
    """
    specs = app.host.channels()
    spec = specs.get(name)
    if spec is None:
        installed = ", ".join(sorted(specs)) or "none"
        raise ConfigError(
            f"no channel {name!r} is installed (installed: {installed})",
            key=f"nexus.channels.{name}",
        )
    factory = spec.load()
    try:
        channel = factory(app, _section(app, name))
        await tg.start(_run_channel, channel)
    except NexusError:
        raise
    except Exception as exc:
        raise spec.failed("failed to start", exc) from exc
    app.channels[name] = channel
    return channel


async def _run_channel(channel: Any, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    await channel.run(task_status=task_status)


def _where(channel: Any) -> str:
    url = getattr(channel, "url", None)
    return f"{channel.name} ({url})" if url else str(getattr(channel, "name", channel))


async def serve_host(
    app: Nexus,
    channels: Iterable[str] | None = None,
    *,
    signals: Iterable[int] | None = DEFAULT_SIGNALS,
) -> None:
    """Run ``app`` with ``channels`` (default: every enabled one) until a signal or cancellation.

    Signals are handled only in the main thread; elsewhere (or with
    ``signals=None``) the host runs until cancelled. Returns normally after a
    signal, so ``anyio.run(app.serve)`` in a script ends without a traceback.

    Once every channel is up, what start-up made is moved out of the cyclic
    garbage collector's sight (``gc.freeze()``): modules, classes and the
    plugins' objects live as long as the process, and a full collection no
    longer walks them (20-100 ms pauses measured here, once every few
    thousand requests, otherwise).
    """
    names = enabled_channels(app) if channels is None else list(channels)
    signums = tuple(signals or ())
    if threading.current_thread() is not threading.main_thread():
        signums = ()
    stop = anyio.Event()
    started: dict[str, Any] = {}
    try:
        await _serve(app, names, signums, stop, started)
    except BaseExceptionGroup as group:
        # One failure (a channel that cannot start) is raised as itself, so
        # callers catch PluginFailed rather than a group of groups of one.
        leaf = _single(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


def _single(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one exception at the bottom of nested groups of one, else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


async def _serve(
    app: Nexus,
    names: list[str],
    signums: tuple[int, ...],
    stop: anyio.Event,
    started: dict[str, Any],
) -> None:
    async with anyio.create_task_group() as outer:
        if signums:
            await outer.start(_watch_signals, signums, stop, started)
        # A serving process takes over runs whose lease expired (unless "never").
        recover = app.config.nexus.services.runs.recover != "never"
        async with app.running(recover=recover), anyio.create_task_group() as tg:
            for name in names:
                try:
                    channel = await start_channel(app, name, tg)
                except BaseException:
                    # Stop what did start as on a signal (the API drains and
                    # ends its lifespan), then report the one that failed.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                        await _stop_channels(started, force=False)
                    raise
                started[name] = channel
                tg.start_soon(_stop_when_done, channel, stop)
            log.info(
                "Nexus %r serving channels: %s",
                app.title,
                ", ".join(_where(c) for c in started.values()) or "none",
            )
            gc.freeze()  # start-up's objects live as long as the process: never walked again
            await stop.wait()
            await _stop_channels(started, force=False)
            tg.cancel_scope.cancel()
        outer.cancel_scope.cancel()


async def _stop_when_done(channel: Any, stop: anyio.Event) -> None:
    # A channel that stops on its own (the API server exiting) ends the serving.
    wait = getattr(channel, "wait_stopped", None)
    if wait is None:
        return
    await wait()
    stop.set()


async def _stop_channels(started: dict[str, Any], *, force: bool) -> None:
    stoppable = [c for c in started.values() if callable(getattr(c, "stop", None))]
    for channel in stoppable:
        if not force:
            channel.stop()
            continue
        try:
            channel.stop(force=True)
        except TypeError:  # a stop() without the force option
            channel.stop()
    if force:
        return
    for channel in stoppable:
        wait = getattr(channel, "wait_stopped", None)
        if wait is not None:
            await wait()


async def _watch_signals(
    signums: tuple[int, ...],
    stop: anyio.Event,
    started: dict[str, Any],
    *,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    with anyio.open_signal_receiver(*(signal.Signals(s) for s in signums)) as received:
        task_status.started()
        count = 0
        async for signum in received:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                log.info("received %s: stopping gracefully", name)
                stop.set()
            else:
                log.warning("received %s again: stopping now", name)
                await _stop_channels(started, force=True)
