"""nexus-plugin-postgres: the production tier of Nexus on PostgreSQL.

Installed, it serves every record role for ``postgresql://`` storage URLs
(:class:`~nexus_plugin_postgres.storage.PostgresStorage`), adds an event bus on
LISTEN/NOTIFY so several gateways share live events without Redis, and a
queue executor on Procrastinate for ``nexus worker`` processes.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
