"""``nexus plugins [--json]``: the installed plugins, their versions and hooks, and failures."""

from __future__ import annotations

from typing import Any

from .. import context
from ..backends import open_backend
from ..context import Globals
from ..errors import OK
from ..output import Console

__all__ = ["plugins_command"]


def plugins_command(*, json: bool = False, g: Globals | None = None) -> int:
    """List the plugins: name, version, the hooks they implement, and any that failed to load.

    Parameters
    ----------
    json
        Print JSON (the same as --output json).
    g
        The global options (--app, --url, --token, --output, --quiet).

    """
    settings = context.settings(g)
    if json:
        settings.output = "json"

    async def body(out: Console) -> int:
        report = await _report()
        if out.json:
            out.result(report)
            return OK
        rows = [
            [p.get("name"), p.get("version") or "-", ", ".join(p.get("hooks") or [])]
            for p in report["plugins"]
        ]
        out.table(rows, ["plugin", "version", "hooks"])
        if context.target().remote:  # in process, the host has warned once already
            for error in report["errors"]:
                out.warn(_error_line(error))
        return OK

    return context.execute(body)


async def _report() -> dict[str, Any]:
    target = context.target()
    if target.remote:
        async with open_backend(target) as backend:
            return await backend.plugins()
    from nexus_core.plugin import AppNotFound

    try:
        async with open_backend(target) as backend:
            return await backend.plugins()
    except AppNotFound:
        if target.app:  # named, but broken: say so
            raise
    # No application here: the installed plugins, as a host would load them.
    import msgspec
    from nexus_core.plugin import PluginHost

    host = PluginHost()
    return {
        "plugins": [msgspec.to_builtins(info) for info in host.infos()],
        "errors": [msgspec.to_builtins(error) for error in host.errors],
    }


def _error_line(error: dict[str, Any]) -> str:
    version = f" {error.get('version')}" if error.get("version") else ""
    return (
        f"plugin {error.get('name')!r} ({error.get('distribution')}{version}) failed to load: "
        f"{error.get('error')}. {error.get('hint') or ''}"
    ).rstrip()
