"""Shared by the storage, bus and operations tests: a fresh schema per test, dropped after.

No tests here. The machine's PostgreSQL is ``NEXUS_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); without it the tests skip,
unless ``NEXUS_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

__all__ = ["POSTGRES_URL", "Schemas", "drop_schema", "server_url", "with_params"]

POSTGRES_URL = os.environ.get("NEXUS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def server_url() -> str:
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


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it (no error if absent)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Schemas:
    """Hands out URLs of new, empty schemas (``?schema=t_...``); drops them all at the end."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.made: list[str] = []

    def url(self, **params: str) -> str:
        """The URL of a new schema nobody has used."""
        schema = f"t_{secrets.token_hex(6)}"
        self.made.append(schema)
        return with_params(self.base, schema=schema, **params)

    def cleanup(self) -> None:
        for schema in self.made:
            drop_schema(schema)


@pytest.fixture
def schemas() -> Iterator[Schemas]:
    """New schemas on the machine's PostgreSQL, dropped after the test."""
    made = Schemas(server_url())
    try:
        yield made
    finally:
        made.cleanup()
