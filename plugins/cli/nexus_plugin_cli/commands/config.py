"""``nexus config show`` (the effective settings, each with its source) and ``config check``.

Both read the configuration the way the host does: ``nexus.toml`` (or
``nexus.yaml``, or ``NEXUS_CONFIG``) under ``NEXUS_*`` variables, with the
sections of every installed plugin. With an application (``--app``, or
``NEXUS_APP``, or ``app`` in ``nexus.toml``) its own configuration is used.
With ``--url`` both ask the gateway (``GET /config`` and ``GET /config/check``
of the API plugin, which need the ``admin`` permission when authentication is
on): the gateway's effective settings, secrets masked, and a check of its
configuration file as it is on disk now, printed as in local mode.
"""

from __future__ import annotations

import os
from typing import Any

from cyclopts import App

from .. import context, state, tokens
from ..context import Globals
from ..errors import OK
from ..output import Console, dumps

__all__ = ["app", "check_config", "show_config"]

app = App(name="config", help="Show the effective configuration with its sources, or check it.")


def _load() -> tuple[Any, Any, str]:
    """(Config, PluginHost, where it came from), from the application when there is one."""
    from nexus_core.plugin import AppNotFound, PluginHost, load_app, load_config

    target = context.target()
    try:
        application = load_app(target.app)
    except AppNotFound:
        if target.app or os.environ.get("NEXUS_APP"):
            raise
        host = PluginHost()
        return load_config(sections=host.config_sections()), host, "no application"
    return application.config, application.host, f"application {application.title!r}"


def _client(target: Any) -> dict[str, tuple[Any, str]]:
    """The command line's own settings: target, token and session, with their sources."""
    settings = context.SETTINGS
    if target.remote:
        where = "--url" if settings.url else "env NEXUS_URL"
        entries: dict[str, tuple[Any, str]] = {"cli.url": (target.url, where)}
    else:
        where = "--app" if settings.app else "env NEXUS_APP" if target.app else "nexus.toml"
        entries = {"cli.app": (target.app, where)}
    if settings.token:
        token_source = "--token"
    elif os.environ.get("NEXUS_TOKEN"):
        token_source = "env NEXUS_TOKEN"
    elif tokens.saved(target):
        token_source = "nexus login"
    else:
        token_source = "default"
    has_token = token_source != "default"
    entries["cli.token"] = ("(set)" if has_token else None, token_source)
    session = state.current_session(target.key)
    entries["cli.session"] = (session, "nexus session" if session else "default")
    return entries


@app.command(name="show")
def show_config(*, g: Globals | None = None) -> int:
    """Show every setting in force and where it came from (default, file, environment, code)."""
    context.settings(g)

    async def body(out: Console) -> int:
        target = context.target()
        client = _client(target)
        if target.remote:
            from ..remote import RemoteBackend

            async with RemoteBackend(target) as backend:
                shown = await backend.config()
            table: dict[str, Any] = shown.get("config") or {}
            sources: dict[str, str] = shown.get("sources") or {}
        else:
            config, _host, _where = _load()
            table = config.to_dict()
            sources = config.sources()
        flat = _flatten(table)
        settings = {key: (value, sources.get(key, "default")) for key, value in flat.items()}
        if out.json:
            out.result(
                {
                    "config": table,
                    "sources": {k: s for k, (_, s) in settings.items()},
                    "cli": {k.removeprefix("cli."): v for k, (v, _) in client.items()},
                    "cli_sources": {k.removeprefix("cli."): s for k, (_, s) in client.items()},
                }
            )
            return OK
        rows = {**settings, **client}
        texts = {key: dumps(value, indent=None) for key, (value, _) in rows.items()}
        width = max((len(k) + len(v) for k, v in texts.items()), default=0) + 3
        for key, (_, source) in rows.items():
            left = f"{key} = {texts[key]}"
            out.line(f"{left:{width}}  # {source}")
        return OK

    return context.execute(body)


@app.command(name="check")
def check_config(*, g: Globals | None = None) -> int:
    """Check the configuration: unknown keys, wrong types, storage, production rules.

    Exits with 2 and names the key and the file or variable at fault when it is invalid.
    """
    context.settings(g)

    async def body(out: Console) -> int:
        from nexus_core import Nexus

        target = context.target()
        if target.remote:
            return await _check_remote(target, out)
        config, _host, where = _load()
        url = config.storage_url
        Nexus(config=config).check_startup()  # exactly what start-up would refuse
        report = {
            "ok": True,
            "file": str(config.path) if config.path else None,
            "source": where,
            "environment": config.nexus.environment,
            "storage": url,
        }
        if out.json:
            out.result(report)
        else:
            out.line(f"configuration OK ({report['file'] or 'no file'}; {where})")
            out.line(f"environment {report['environment']}, storage {url}")
        return OK

    return context.execute(body)


async def _check_remote(target: Any, out: Console) -> int:
    """``GET /config/check``: the gateway's report, printed as the local check's."""
    from ..errors import CliError, Problem
    from ..remote import RemoteBackend

    async with RemoteBackend(target) as backend:
        report = await backend.config_check()
    if not report.get("ok"):
        errors = [e for e in report.get("errors") or () if isinstance(e, dict)]
        first = errors[0] if errors else {}
        raise CliError(
            Problem(
                code="config_error",
                message=str(first.get("message") or "the gateway's configuration is invalid"),
                errors=[_field(e) for e in errors if e.get("key")],
                suggestion=first.get("suggestion"),
            )
        )
    where = f"gateway {target.url}"
    result = {
        "ok": True,
        "file": report.get("file"),
        "source": where,
        "environment": report.get("environment"),
        "storage": report.get("storage"),
    }
    if out.json:
        out.result(result)
    else:
        out.line(f"configuration OK ({result['file'] or 'no file'}; {where})")
        out.line(f"environment {result['environment']}, storage {result['storage']}")
    return OK


def _field(error: dict[str, Any]) -> tuple[str, str]:
    """(key, reason) of a gateway's config error, as the core's ``ConfigError.detail()``."""
    key, message = str(error.get("key")), str(error.get("message") or "")
    return key, message.split(f"{key}: ", 1)[1] if f"{key}: " in message else message


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(table):
        value = table[key]
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out
