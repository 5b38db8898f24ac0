"""``nexus db migrate`` and ``nexus db status``: the PostgreSQL schema, by hand.

Registered lazily through the CLI plugin's ``nexus_cli_commands`` hook, so
``nexus --help`` imports nothing from here. Every process opening the storage
migrates on its own (unless its URL says ``migrate=false``); these commands are
for deployments that migrate once, before starting the new version.

The database is the URL given, else every ``postgresql://`` URL of the
configuration (``nexus.toml``, ``NEXUS_STORAGE``...), each once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import anyio
import cyclopts

__all__ = ["db_app", "migrate", "status"]

OK, FAILED, USAGE = 0, 1, 2

db_app = cyclopts.App(name="db", help="The PostgreSQL schema: migrate it, or show its status.")


def _urls(url: str | None, config: str | None) -> list[str]:
    """The PostgreSQL URLs to work on: the one given, or the configuration's."""
    if url is not None:
        return [url]
    from nexus_core.plugin import PluginHost, load_config

    sections = PluginHost().config_sections()
    settings = load_config(config, sections=sections)
    urls = settings.storage_urls.values()
    return list(dict.fromkeys(u for u in urls if u.startswith(("postgresql://", "postgres://"))))


def _targets(url: str | None, config: str | None) -> list[str] | int:
    try:
        urls = _urls(url, config)
    except Exception as exc:  # a bad config file: its message names the key
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    if not urls:
        print(
            "error: no PostgreSQL storage is configured (nexus.storage); "
            "give its URL: nexus db status postgresql://user@host/database",
            file=sys.stderr,
        )
        return USAGE
    return urls


async def _each(urls: Sequence[str], apply: bool) -> int:
    from .storage import DatabaseUnavailable, PostgresStorage, SchemaVersionError

    code = OK
    for url in urls:
        try:
            storage = PostgresStorage(url)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE
        target = len(storage.migrations)
        try:
            if apply:
                applied = await storage.migrate()
                version = await storage.schema_version()
                steps = ", ".join(map(str, applied or [])) or "none"
                print(f"{storage.where}: schema version {version} of {target} (applied: {steps})")
            else:
                version = await storage.schema_version()
                state = "up to date" if version == target else f"{target - version} pending"
                if version > target:
                    state = "newer than this nexus-plugin-postgres"
                    code = FAILED
                elif version < target:
                    code = FAILED
                print(f"{storage.where}: schema version {version} of {target} ({state})")
        except (DatabaseUnavailable, SchemaVersionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = FAILED
    return code


@db_app.command
def migrate(url: str | None = None, /, *, config: str | None = None) -> int:
    """Apply the pending schema migrations (safe while other processes start or run).

    Parameters
    ----------
    url
        The database: postgresql://user@host:5432/database (default: the
        configuration's PostgreSQL storage).
    config
        The configuration file (default: NEXUS_CONFIG, else nexus.toml here).

    """
    urls = _targets(url, config)
    if isinstance(urls, int):
        return urls
    return anyio.run(_each, urls, True)


@db_app.command
def status(url: str | None = None, /, *, config: str | None = None) -> int:
    """Show the schema version; exit 1 when migrations are pending (or the database is newer).

    Parameters
    ----------
    url
        The database: postgresql://user@host:5432/database (default: the
        configuration's PostgreSQL storage).
    config
        The configuration file (default: NEXUS_CONFIG, else nexus.toml here).

    """
    urls = _targets(url, config)
    if isinstance(urls, int):
        return urls
    return anyio.run(_each, urls, False)
