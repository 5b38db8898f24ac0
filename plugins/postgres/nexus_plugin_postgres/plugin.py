"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light: nothing here imports psycopg; the host imports a factory only
when a configuration uses it.
"""

from __future__ import annotations

from nexus_core import ConfigSectionSpec, ExecutorSpec, StorageBackendSpec, hookimpl

from . import worker_config

__all__ = ["nexus_config_sections", "nexus_executors", "nexus_storage_backends"]


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
