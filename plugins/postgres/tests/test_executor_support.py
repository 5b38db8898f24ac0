"""Shared by the executor tests: a fresh PostgreSQL database per test, and the test apps.

No tests here. The machine's PostgreSQL is ``NEXUS_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); without it the tests skip,
unless ``NEXUS_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["PLUGIN", "POSTGRES_URL", "fresh_database", "queue_rows", "service_url"]

POSTGRES_URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PLUGIN = "nexus_plugin_postgres.plugin"


def service_url() -> str:
    """The server's URL, or a skip (a failure under ``NEXUS_REQUIRE_SERVICES=1``)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at NEXUS_POSTGRES_URL={POSTGRES_URL}: {exc}"
        if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return POSTGRES_URL


def fresh_database() -> Iterator[str]:
    """A database of its own (``CREATE DATABASE``), dropped afterwards; its URL."""
    import psycopg

    base = service_url()
    name = f"nexus_exec_{secrets.token_hex(5)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    parts = urlsplit(base)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def queue_rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the queue's database (a connection of its own)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description is not None else []
