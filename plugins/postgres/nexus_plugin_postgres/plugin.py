"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light: nothing here imports psycopg; the host imports a factory only
when a configuration uses it.
"""

from __future__ import annotations

import sys
from typing import Any

from nexus_core import (
    CommandSpec,
    ConfigSectionSpec,
    EventBusSpec,
    ExecutorSpec,
    StorageBackendSpec,
    hookimpl,
)

from . import worker_config

__all__ = [
    "nexus_cli_commands",
    "nexus_config_sections",
    "nexus_event_buses",
    "nexus_executors",
    "nexus_storage_backends",
    "postgres_serves_events",
]

#: Above the in-process bus (0), below a Redis bus (which takes over when installed).
BUS_PRIORITY = 5  # the Redis bus registers 10


@hookimpl
def nexus_storage_backends() -> list[StorageBackendSpec]:
    """``postgresql://`` (and ``postgres://``) URLs: every role on one PostgreSQL database."""
    return [
        StorageBackendSpec(
            name="postgres",
            schemes=("postgresql", "postgres"),
            factory="nexus_plugin_postgres.storage:PostgresStorage",
            description="Every record role on PostgreSQL (psycopg 3 with a connection pool).",
        )
    ]


@hookimpl
def nexus_executors() -> list[ExecutorSpec]:
    """``procrastinate``: runs are Procrastinate jobs; ``nexus worker`` executes them."""
    return worker_config.executors()


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``nexus.plugins.procrastinate``: the procrastinate executor's settings."""
    return worker_config.config_sections()


@hookimpl
def nexus_event_buses() -> list[EventBusSpec]:
    """``postgres``: the in-process bus woken by LISTEN/NOTIFY on a PostgreSQL event log."""
    return [
        EventBusSpec(
            name="postgres",
            factory="nexus_plugin_postgres.bus:PostgresEventBus",
            # Asked first: a host on another event log never imports psycopg for it.
            usable="nexus_plugin_postgres.plugin:postgres_serves_events",
            priority=BUS_PRIORITY,
            description="Live events across gateways on PostgreSQL's LISTEN/NOTIFY.",
        )
    ]


@hookimpl(optionalhook=True)
def nexus_cli_commands() -> list[CommandSpec]:
    """``nexus db migrate`` and ``nexus db status``: the PostgreSQL schema."""
    return [
        CommandSpec(
            name="db",
            factory="nexus_plugin_postgres.cli:db_app",
            description="The PostgreSQL schema: migrate it, or show its status.",
        )
    ]


def postgres_serves_events(app: Any) -> bool:
    """Whether PostgreSQL serves ``app``'s event log (``PostgresEventBus.usable``).

    No backend of this plugin was built in this process (its module is not
    even imported): then it serves nothing, and psycopg is not imported to say so.
    """
    if "nexus_plugin_postgres.storage" not in sys.modules:
        return False
    from .bus import PostgresEventBus

    return PostgresEventBus.usable(app)
