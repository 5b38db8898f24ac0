"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light: nothing here imports psycopg; the host imports a factory only
when a configuration uses it.
"""

from __future__ import annotations

from nexus_core import StorageBackendSpec, hookimpl

__all__ = ["nexus_storage_backends"]


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
