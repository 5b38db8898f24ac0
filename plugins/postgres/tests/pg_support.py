"""Shared by the storage, bus and operations tests: a fresh schema per test, dropped after.

No tests here. The machine's PostgreSQL is ``NEXUS_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); without it the tests skip,
unless ``NEXUS_REQUIRE_SERVICES=1``, when they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
import pytest

__all__ = [
    "POSTGRES_URL",
    "AnswerCutter",
    "Schemas",
    "answer_cutter",
    "drop_schema",
    "server_url",
    "with_params",
]

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


class AnswerCutter:
    """A TCP proxy to PostgreSQL that loses the answer to one statement, as a crash would.

    :meth:`arm` names bytes that the statement to cut sends (a parameter's
    value): the server receives that statement and executes it (autocommit:
    it commits), and its answer never reaches the client. At that moment
    every proxied connection breaks and new ones are refused, as if the
    server had crashed right after the commit, until :meth:`restore`.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = 0
        #: Set once an answer was cut.
        self.cut = anyio.Event()
        self._marker: bytes | None = None
        self._down = False
        self._scopes: set[anyio.CancelScope] = set()

    def url(self, url: str) -> str:
        """``url`` (to the proxied server) through this proxy."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f"{self.host}:{self.port}", f"127.0.0.1:{self.listen_port}")
        return urlunsplit(parts._replace(netloc=netloc))

    def arm(self, marker: bytes) -> None:
        """Cut the answer to the next statement whose message holds ``marker``."""
        self._marker = marker

    def restore(self) -> None:
        """Accept connections again."""
        self._down = False

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self._down:
                return
            try:
                server = await anyio.connect_tcp(self.host, self.port)
            except OSError:
                return
            async with server:
                with anyio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        await self._pump(client, server)
                    except* (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass  # a side went away: so does the connection
                    finally:
                        self._scopes.discard(scope)

    async def _pump(self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream) -> None:
        doomed = False  # this connection carried the statement to cut
        async with anyio.create_task_group() as pumps:

            async def upstream() -> None:
                nonlocal doomed
                async for chunk in client:
                    if self._marker is not None and self._marker in chunk:
                        self._marker = None
                        doomed = True
                    await server.send(chunk)
                pumps.cancel_scope.cancel()

            async def downstream() -> None:
                async for chunk in server:
                    if doomed:  # executed and answered: the answer is lost, the server "crashes"
                        self._down = True
                        self.cut.set()
                        for scope in self._scopes:
                            scope.cancel()
                        return
                    await client.send(chunk)
                pumps.cancel_scope.cancel()

            pumps.start_soon(upstream)
            pumps.start_soon(downstream)


@asynccontextmanager
async def answer_cutter(url: str) -> AsyncIterator[AnswerCutter]:
    """An :class:`AnswerCutter` in front of the server of ``url``, serving while in the block."""
    parts = urlsplit(url)
    cutter = AnswerCutter(parts.hostname or "127.0.0.1", parts.port or 5432)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    cutter.listen_port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve_all() -> None:
        async with listener:
            await listener.serve(cutter._serve)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_all)
        try:
            yield cutter
        finally:
            tg.cancel_scope.cancel()
