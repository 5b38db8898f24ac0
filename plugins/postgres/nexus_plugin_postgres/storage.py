"""``postgresql://``: every record role on PostgreSQL (psycopg 3, psycopg-pool).

URLs are libpq's (``postgresql://user:password@host:5432/database?sslmode=require``),
plus settings of this backend, taken out of the query string before libpq sees it:

``schema``
    The schema Nexus keeps its tables in (default: libpq's ``search_path``,
    normally ``public``). Several deployments, or tests, can share one database.
``pool_min``, ``pool_max``
    The connection pool's size per process (default 1 and 10).
``pool_timeout``
    Seconds a call waits for a connection (default 10): while the server is
    unreachable, calls fail with :class:`DatabaseUnavailable` after that long.
``migrate``
    ``true`` (default): :meth:`PostgresStorage.open` applies pending schema
    migrations. ``false``: it refuses a database that is behind
    (``nexus db migrate`` applies them).

How it is built:

* One :class:`psycopg_pool.AsyncConnectionPool` per backend, connections in
  autocommit mode: every single-statement write is its own transaction.
  Multi-part writes (``finish_run``, ``append_events``, ``take_tokens``) are
  *one* statement each (data-modifying CTEs), so they are atomic and cost one
  round trip.
* Fencing: every fenced write carries ``fence = %s`` in its ``WHERE`` (or
  locks the run row ``FOR UPDATE`` and writes only when every token is the
  stored one), and PostgreSQL re-checks a row's condition after waiting for a
  concurrent writer (read committed), so a stale owner's write never lands.
* The event log's positions come from one counter row (``event_head``) that
  every append updates in the statement that inserts its events. The row lock
  is held until the append commits, so appends commit in position order: a
  reader that has seen position N never later sees a new event below N. An
  identity column alone would not do: two transactions can take ids 7 and 8
  and commit 8 first, and a reader at 8 would skip 7 for ever. The cost is
  that appends of the whole cluster are serialized; the bus appends events in
  batches, so one lock hold covers many events. Every append also sends
  ``NOTIFY`` with its last position (delivered at commit, in commit order):
  see :mod:`nexus_plugin_postgres.bus`.
* Migrations: :mod:`nexus_plugin_postgres._migrations`, applied under a
  transaction-level advisory lock (several processes may start at once).
* Connection loss: a statement on a connection that broke fails with
  :class:`DatabaseUnavailable` (naming the server, never the password); the pool
  drops the broken connection and opens a new one for the next call. Reads and
  idempotent writes are retried once on a fresh connection first. Appends (events,
  audit) and a run's final write wait through an outage of up to a minute
  instead: their answer may be lost after they committed, and they must land
  once (an append looks for itself first; the fenced final write is idempotent).
* :meth:`PostgresStorage.transaction`: several calls in one transaction (the
  queue executor creates a run and enqueues its job together).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import anyio
import msgspec
import psycopg
import psycopg.errors
from nexus_core.plugin import (
    AlreadyExists,
    AuditRecord,
    CredentialRecord,
    Event,
    LeaseLost,
    NodeCheckpoint,
    RunFinish,
    RunRecord,
    SessionRecord,
    Storage,
    event_id,
    event_seq,
)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ._migrations import MIGRATIONS, Migration

_log = logging.getLogger("nexus.postgres")

__all__ = [
    "DatabaseUnavailable",
    "PostgresStorage",
    "SchemaVersionError",
    "UrlSettings",
    "parse_url",
]

_T = TypeVar("_T")
Connection = psycopg.AsyncConnection[Any]

_SCHEMES = ("postgresql://", "postgres://")
_OWN_PARAMS = ("schema", "pool_min", "pool_max", "pool_timeout", "migrate")
_CACHE_PURGE_EVERY = 512
_CONNECT_TIMEOUT = 10.0  # seconds to wait for the first connection at open
#: Events ride in an append's notification up to this many bytes (NOTIFY's limit: 8000).
_NOTIFY_INLINE = 7800
#: How long an event or audit append keeps trying through an outage (seconds).
_APPEND_PATIENCE = 60.0
_PING_TIMEOUT = 1.5  # readiness (2 s per check) answers in time, database down or not

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
_decode_strs = msgspec.json.Decoder(list[str]).decode
_decode_checkpoint = msgspec.json.Decoder(NodeCheckpoint).decode
_decode_run = msgspec.json.Decoder(RunRecord).decode
_decode_event = msgspec.json.Decoder(Event).decode
_decode_audit = msgspec.json.Decoder(AuditRecord).decode
_decode_credential = msgspec.json.Decoder(CredentialRecord).decode

#: The transaction a task runs in (see PostgresStorage.transaction): (storage, connection).
_AMBIENT: contextvars.ContextVar[tuple[PostgresStorage, Connection] | None] = (
    contextvars.ContextVar("nexus_postgres_transaction", default=None)
)


class DatabaseUnavailable(ConnectionError):
    """PostgreSQL cannot be reached, or the connection broke during a call.

    The message names the server (never the password). Nothing is lost: a write
    that failed this way either committed or did not, and the pool opens new
    connections for the next calls.
    """


class SchemaVersionError(RuntimeError):
    """The database's schema is newer than this code, or behind it with ``migrate=false``."""


# -- URLs -----------------------------------------------------------------------


class UrlSettings(msgspec.Struct, frozen=True):
    """A ``postgresql://`` URL, split: libpq's connection string and this backend's settings."""

    #: libpq's connection string: the URL without this backend's settings, the schema applied.
    conninfo: str
    #: The ``schema`` setting (None: the server's ``search_path``).
    schema: str | None
    #: The pool's size per process.
    pool_min: int
    pool_max: int
    #: Seconds a call waits for a connection.
    pool_timeout: float
    #: Whether opening the storage applies pending migrations.
    migrate: bool
    #: ``host:port/database``, for messages (never the password).
    where: str


def parse_url(url: str) -> UrlSettings:
    """Split a ``postgresql://`` URL into libpq's conninfo and this backend's settings.

    Raises ``ValueError`` naming the setting that is wrong.
    """
    if not url.startswith(_SCHEMES):
        raise ValueError(f"not a PostgreSQL URL: {url!r}; use postgresql://user@host:5432/database")
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in _OWN_PARAMS}
    rest = [(k, v) for k, v in query if k not in _OWN_PARAMS]
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    schema = own.get("schema") or None
    if schema is not None and (len(schema.encode()) > 63 or "\x00" in schema):
        raise ValueError(f"schema={schema!r} in {_redact(url)}: at most 63 bytes, no NUL")
    sizes = {}
    for name, default in (("pool_min", 1), ("pool_max", 10)):
        raw = own.get(name)
        try:
            sizes[name] = default if raw is None else int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} in {_redact(url)}: not a whole number") from None
        if sizes[name] < (0 if name == "pool_min" else 1):
            raise ValueError(f"{name}={raw!r} in {_redact(url)}: too small")
    raw_timeout = own.get("pool_timeout")
    try:
        pool_timeout = 10.0 if raw_timeout is None else float(raw_timeout)
    except ValueError:
        raise ValueError(f"pool_timeout={raw_timeout!r} in {_redact(url)}: not a number") from None
    if not 0 < pool_timeout < math.inf:
        raise ValueError(f"pool_timeout={raw_timeout!r} in {_redact(url)}: must be above 0")
    if sizes["pool_min"] > sizes["pool_max"]:
        raise ValueError(f"pool_min is above pool_max in {_redact(url)}")
    migrate_raw = own.get("migrate", "true").lower()
    if migrate_raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"migrate={own['migrate']!r} in {_redact(url)}: use true or false")
    try:
        info = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"{_redact(url)} is not a valid PostgreSQL URL: {exc}") from None
    if schema is not None:
        # The schema is the whole search_path: no extra round trip per connection.
        options = str(info.get("options") or "")
        # An identifier in double quotes (case and spaces kept), then escaped for
        # libpq's options, where a backslash escapes the next character.
        ident = '"' + schema.replace('"', '""') + '"'
        escaped = ident.replace("\\", "\\\\").replace(" ", "\\ ")
        info["options"] = f"{options} -csearch_path={escaped}".strip()
        conninfo = make_conninfo("", **info)
    where = (
        f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
    )
    return UrlSettings(
        conninfo=conninfo,
        schema=schema,
        pool_min=sizes["pool_min"],
        pool_max=sizes["pool_max"],
        pool_timeout=pool_timeout,
        migrate=migrate_raw in ("true", "1", "yes"),
        where=where,
    )


def _redact(url: str) -> str:
    """The URL without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name``."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


# -- statements -----------------------------------------------------------------

_UNFINISHED = "status IN ('pending', 'running')"

_SESSION_COLS = "id, tenant, principal, created_at, last_seen_at, expires_at, ttl, channels, state"
_INSERT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_SESSION = f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s"
_UPDATE_SESSION = (
    "UPDATE sessions SET last_seen_at = %s, expires_at = %s, ttl = %s, channels = %s, state = %s"
    " WHERE id = %s"
)

_RUN_COLS = (
    "id, workflow, status, tenant, principal, session_id, channel, inputs, output, error,"
    " created_at, started_at, finished_at, idempotency_key, input_hash, owner, fence,"
    " lease_expires_at"
)
_INSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (tenant, coalesce(principal, ''), idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_SELECT_RUN = f"SELECT {_RUN_COLS} FROM runs WHERE id = %s"
_SELECT_RUN_BY_KEY = (
    f"SELECT {_RUN_COLS} FROM runs"
    " WHERE tenant = %s AND coalesce(principal, '') = %s AND idempotency_key = %s"
)
_UPDATE_RUN = (
    "UPDATE runs SET status = %s, output = %s, error = %s, started_at = %s, finished_at = %s"
    " WHERE id = %s AND fence = %s"
)
_SELECT_FENCE = "SELECT fence FROM runs WHERE id = %s"
# Fenced checkpoints and final state, in one statement: lock every run involved
# whose token is the writer's; write only when all of them are.
_FENCED_CTES = """
WITH want AS (
    SELECT * FROM unnest(%(fids)s::text[], %(ffences)s::bigint[]) AS w (id, fence)
), held AS (
    SELECT r.id FROM runs r JOIN want w ON r.id = w.id AND r.fence = w.fence FOR UPDATE OF r
), ok AS (
    SELECT (SELECT count(*) FROM held) = %(nfences)s AS ok
), cps AS (
    INSERT INTO checkpoints (run_id, node_id, data)
    SELECT c.run_id, c.node_id, c.data
    FROM unnest(%(crun)s::text[], %(cnode)s::text[], %(cdata)s::bytea[])
        AS c (run_id, node_id, data)
    WHERE (SELECT ok FROM ok)
    ON CONFLICT (run_id, node_id) DO UPDATE SET data = excluded.data
    RETURNING 1
), upd AS (
    UPDATE runs SET status = %(status)s, output = %(output)s, error = %(error)s,
        started_at = %(started_at)s, finished_at = %(finished_at)s
    WHERE id = %(id)s AND %(write_run)s AND (SELECT ok FROM ok)
    RETURNING 1
)"""
_FENCED_WRITE = _FENCED_CTES + "\nSELECT (SELECT ok FROM ok), (SELECT count(*) FROM upd)\n"
_UNFINISHED_RUNS = f"SELECT {_RUN_COLS} FROM runs WHERE {_UNFINISHED} ORDER BY created_at, id"
# One statement: of concurrent claims, the first locks the row, the others wait
# and re-check the WHERE on the row it wrote (read committed): one wins.
_CLAIM_RUN = (
    "UPDATE runs SET owner = %s, fence = fence + 1, lease_expires_at = %s"
    f" WHERE id = %s AND {_UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= %s)"
    f" RETURNING {_RUN_COLS}"
)
_RENEW_LEASES = (
    "UPDATE runs SET lease_expires_at = %s"
    " FROM unnest(%s::text[], %s::bigint[]) AS f (id, fence)"
    f" WHERE runs.id = f.id AND runs.fence = f.fence AND runs.owner = %s AND {_UNFINISHED}"
    " RETURNING runs.id"
)
_CLAIMABLE_RUNS = (
    f"SELECT {_RUN_COLS} FROM runs WHERE {_UNFINISHED}"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= %s){workflows}"
    " ORDER BY created_at, id LIMIT %s"
)
_SELECT_CHECKPOINTS = "SELECT node_id, data FROM checkpoints WHERE run_id = %s"


def _append_ctes(condition: str = "") -> str:
    """The CTEs ``head`` and ``ins`` of an append of %(n)s events (when ``condition`` holds).

    Positions from the one counter row, locked until the append commits:
    appends commit in position order.
    """
    return f"""head AS (
    UPDATE event_head SET seq = seq + %(n)s{condition} RETURNING seq
), ins AS (
    INSERT INTO events (seq, run_id, time, data)
    SELECT head.seq - %(n)s + e.ord, e.run_id, e.time, e.data
    FROM head, unnest(%(run_ids)s::text[], %(times)s::float8[], %(datas)s::bytea[])
        WITH ORDINALITY AS e (run_id, time, data, ord)
    RETURNING seq
)"""


# NOTIFY (sent at commit) carries the last position and the appending object's
# origin, then the events themselves (one JSON a line) when they fit.
_NOTIFY = "pg_notify(%(channel)s, head.seq::text || ' ' || %(notice)s)"
_APPEND_EVENTS = f"WITH {_append_ctes()}\nSELECT head.seq, {_NOTIFY} FROM head\n"
# A run's final write and its events (an append under the same condition), in
# one statement: they commit together or not at all.
_FINISH_LOGGED = (
    f"{_FENCED_CTES}, {_append_ctes(' WHERE (SELECT ok FROM ok)')}, aud AS ("
    """
    INSERT INTO audit (time, tenant, principal, workflow, data)
    SELECT a.time, a.tenant, a.principal, a.workflow, a.data
    FROM unnest(%(atimes)s::float8[], %(atenants)s::text[], %(aprincipals)s::text[],
        %(aworkflows)s::text[], %(adatas)s::bytea[])
        WITH ORDINALITY AS a (time, tenant, principal, workflow, data, ord)
    WHERE (SELECT ok FROM ok)
    ORDER BY a.ord
    RETURNING 1
)
"""
    f"SELECT (SELECT ok FROM ok), (SELECT seq FROM head), (SELECT {_NOTIFY} FROM head)\n"
)
# Did an append whose connection broke commit? Its last event, among the newest.
_FIND_LOGGED = (
    "SELECT seq FROM events WHERE seq > (SELECT seq - 10000 FROM event_head) AND data = %s"
    " ORDER BY seq DESC LIMIT 1"
)
_FIND_AUDIT = (
    "SELECT seq FROM audit WHERE seq > (SELECT coalesce(max(seq), 0) - 10000 FROM audit)"
    " AND data = %s LIMIT 1"
)
_READ_EVENTS = "SELECT seq, data FROM events WHERE seq > %s ORDER BY seq LIMIT %s"
_READ_RUN_EVENTS = (
    "SELECT seq, data FROM events WHERE seq > %s AND run_id = %s ORDER BY seq LIMIT %s"
)
_LAST_EVENT = "SELECT max(seq) FROM events"

_INSERT_AUDITS = """
INSERT INTO audit (time, tenant, principal, workflow, data)
SELECT a.time, a.tenant, a.principal, a.workflow, a.data
FROM unnest(%s::float8[], %s::text[], %s::text[], %s::text[], %s::bytea[])
    WITH ORDINALITY AS a (time, tenant, principal, workflow, data, ord)
ORDER BY a.ord
"""

_INSERT_CREDENTIAL = (
    "INSERT INTO credentials"
    " (id, kind, token_hash, principal, tenant, created_at, revoked_at, data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_CREDENTIAL_COLS = "revoked_at, data"
_REVOKE_CREDENTIAL = (
    "UPDATE credentials SET revoked_at = %s"
    " WHERE id = %s AND (revoked_at IS NULL OR revoked_at > %s)"
)

_SELECT_CACHE = "SELECT value FROM cache WHERE key = %s AND (expires_at IS NULL OR expires_at > %s)"
_UPSERT_CACHE = (
    "INSERT INTO cache (key, value, expires_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
# The token bucket in one statement: a new bucket starts full; an existing one
# refills to now, and gives cost tokens when it has them. The row lock of the
# upsert makes concurrent takes (any process) queue up.
_AVAILABLE = "least(%(cap)s, b.tokens + greatest(0, %(now)s - b.updated_at) * %(refill)s)"
_TAKE_TOKENS = f"""
INSERT INTO buckets AS b (key, tokens, updated_at, taken)
VALUES (%(key)s, %(first)s, %(now)s, %(first_taken)s)
ON CONFLICT (key) DO UPDATE SET
    tokens = CASE WHEN {_AVAILABLE} >= %(cost)s THEN {_AVAILABLE} - %(cost)s ELSE b.tokens END,
    updated_at = CASE WHEN {_AVAILABLE} >= %(cost)s
        THEN greatest(b.updated_at, %(now)s) ELSE b.updated_at END,
    taken = {_AVAILABLE} >= %(cost)s
RETURNING taken, tokens, updated_at
"""


def _real(value: float | None) -> float | None:
    return None if value is None else float(value)


def _session(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id=row[0],
        tenant=row[1],
        principal=row[2],
        created_at=row[3],
        last_seen_at=row[4],
        expires_at=row[5],
        ttl=row[6],
        channels=_decode_strs(row[7]),
        state=_decode_dict(row[8]),
    )


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        workflow=row[1],
        status=row[2],
        tenant=row[3],
        principal=row[4],
        session_id=row[5],
        channel=row[6],
        inputs=_decode_dict(row[7]),
        output=_decode_any(row[8]),
        error=None if row[9] is None else _decode_dict(row[9]),
        created_at=float(row[10]),
        started_at=_real(row[11]),
        finished_at=_real(row[12]),
        idempotency_key=row[13],
        input_hash=row[14],
        owner=row[15],
        fence=int(row[16]),
        lease_expires_at=_real(row[17]),
    )


def _run_params(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.id,
        run.workflow,
        run.status,
        run.tenant,
        run.principal,
        run.session_id,
        run.channel,
        _encode(run.inputs),
        _encode(run.output),
        None if run.error is None else _encode(run.error),
        run.created_at,
        run.started_at,
        run.finished_at,
        run.idempotency_key,
        run.input_hash,
        run.owner,
        run.fence,
        run.lease_expires_at,
    )


def _event(seq: int, data: bytes) -> Event:
    """A logged event: its id is its position (whatever id the stored JSON holds)."""
    return msgspec.structs.replace(_decode_event(data), id=event_id(seq))


def _credential(row: Sequence[Any]) -> CredentialRecord:
    # revoked_at lives in its column (the only field that changes), the rest in data.
    return msgspec.structs.replace(_decode_credential(row[1]), revoked_at=_real(row[0]))


def _connection_lost(exc: BaseException, conn: Connection | None) -> bool:
    """Whether ``exc`` means the connection (not the statement) failed."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if conn is None or conn.closed or conn.broken:
        return True
    # Terminated by the administrator (pg_terminate_backend), the server shutting down.
    return isinstance(exc, (psycopg.errors.AdminShutdown, psycopg.errors.CannotConnectNow))


class PostgresStorage(Storage):
    """Every storage role on one PostgreSQL database (``postgresql://...``).

    Safe for any number of processes and machines sharing the database. See
    the module's documentation for the URL's settings. Subclasses may extend
    :attr:`migrations` (append only).
    """

    #: The schema, step by step; ``nexus_migrations`` records the applied ones.
    migrations: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, url: str) -> None:
        super().__init__(url)
        #: The URL, split (see :func:`parse_url`).
        self.settings = parse_url(url)
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._cache_sets = 0
        schema = self.settings.schema or ""
        channel = f"nexus_events.{schema}" if schema else "nexus_events"
        if len(channel.encode()) > 63:
            channel = "nexus_events." + hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()
        #: The NOTIFY channel every append of this log signals (see the bus).
        self.events_channel = channel
        #: Names this object in its appends' notifications ("<last position> <origin>",
        #: then the events when they fit), so its own bus knows which appends it
        #: delivers itself.
        self.origin = secrets.token_hex(6)

    @property
    def where(self) -> str:
        """``host:port/database`` (and schema): the server, for messages; never the password."""
        schema = f" (schema {self.settings.schema})" if self.settings.schema else ""
        return self.settings.where + schema

    @property
    def conninfo(self) -> str:
        """Libpq's connection string (this backend's settings removed, the schema applied)."""
        return self.settings.conninfo

    @property
    def pool(self) -> AsyncConnectionPool[Connection]:
        """The connection pool (open between :meth:`open` and :meth:`close`)."""
        if self._pool is None:
            raise self._closed()
        return self._pool

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema or migrate it (see the ``migrate`` URL setting)."""
        applied = await self.migrate(apply=self.settings.migrate)
        if applied is None:
            version = await self.schema_version()
            raise SchemaVersionError(
                f"the Nexus schema in {self.where} is at version {version} of"
                f" {len(self.migrations)}, and the URL says migrate=false: run"
                " 'nexus db migrate' first"
            )
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.conninfo,
            min_size=self.settings.pool_min,
            max_size=self.settings.pool_max,
            kwargs={"autocommit": True},
            timeout=self.settings.pool_timeout,
            open=False,
            name=f"nexus:{self.where}",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except PoolTimeout as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.where} within {_CONNECT_TIMEOUT:g}s"
            ) from exc
        self._pool = pool

    async def close(self) -> None:
        """Close the pool (waiting for calls in progress to give back their connections)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await pool.close()

    async def ping(self) -> bool:
        """Whether ``SELECT 1`` answers now (a fresh connection if a pooled one broke).

        False when closed. When the server does not answer, raises
        :class:`DatabaseUnavailable` naming it and why, so ``/health/ready``
        shows the reason; it waits at most 1.5 s for a connection.
        """
        pool = self._pool
        if pool is None:
            return False
        wait = min(self.settings.pool_timeout, _PING_TIMEOUT)
        for attempt in range(2):  # a pooled connection may have broken: then a fresh one
            if attempt:
                await self._drop_broken(pool)
            try:
                async with pool.connection(timeout=wait) as conn:
                    cur = await conn.execute(b"SELECT 1")
                    return await cur.fetchall() == [(1,)]
            except PoolTimeout as exc:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {self.where} does not answer: no connection within {wait:g}s"
                ) from exc
            except psycopg.OperationalError as exc:
                if attempt:
                    raise self._unavailable(exc) from exc
        return False  # pragma: no cover - the loop returns or raises

    async def _direct(self) -> Connection:
        """A connection outside the pool (migrations, before the pool opens)."""
        try:
            return await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=int(_CONNECT_TIMEOUT)
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {exc}"
            ) from exc

    async def schema_version(self) -> int:
        """How many migration steps the database has (0: none, or no Nexus schema yet)."""
        async with await self._direct() as conn:
            return await self._version(conn)

    async def _version(self, conn: Connection) -> int:
        cur = await conn.execute("SELECT to_regclass('nexus_migrations') IS NOT NULL")
        row = await cur.fetchone()
        if not row or not row[0]:
            return 0
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM nexus_migrations")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self, *, apply: bool = True) -> list[int] | None:
        """Apply the pending migration steps; the versions applied (``[]``: up to date).

        Safe when several processes start at once: the steps run in one
        transaction holding an advisory lock named after the schema, and the
        version is read again once the lock is held. With ``apply=False``,
        nothing changes and None is returned when steps are pending. A
        database newer than this code raises :class:`SchemaVersionError`.
        """
        target = len(self.migrations)
        async with await self._direct() as conn:
            version = await self._version(conn)
            self._check_version(version, target)
            if version == target:
                return []
            if not apply:
                return None
            async with conn.transaction():
                schema_name = self.settings.schema or "public"
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"nexus-migrate:{schema_name}"),)
                )
                if self.settings.schema is not None:
                    await conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self.settings.schema)
                        )
                    )
                version = await self._version(conn)  # another process may have migrated
                self._check_version(version, target)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS nexus_migrations ("
                    " version integer PRIMARY KEY, applied_at double precision NOT NULL)"
                )
                applied = []
                for number, step in enumerate(self.migrations[version:], start=version + 1):
                    for statement in step:
                        await conn.execute(statement.encode())
                    await conn.execute(
                        "INSERT INTO nexus_migrations (version, applied_at) VALUES (%s, %s)",
                        (number, time.time()),
                    )
                    applied.append(number)
            return applied

    def _check_version(self, version: int, target: int) -> None:
        if version > target:
            raise SchemaVersionError(
                f"{self.where} has Nexus schema version {version}, but this version of"
                f" nexus-plugin-postgres knows only up to {target}: it was migrated by a newer"
                " Nexus. Upgrade nexus-plugin-postgres (or use another schema)."
            )

    # -- connections -----------------------------------------------------------

    def _closed(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}({self.where!r}) is not open")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pool connection inside one transaction, committed when the block ends.

        While the block runs, every method of this backend called from the same
        task (or a task it starts) uses that connection, so its writes join the
        transaction: ``create_run`` and a Procrastinate ``defer_async`` on the
        yielded connection commit together, or not at all (an exception rolls
        everything back). Nested blocks join the outer transaction. Keep the
        block short: the connection is out of the pool until it ends, and an
        ``append_events`` inside it holds the event log's lock until commit.
        """
        ambient = _AMBIENT.get()
        if ambient is not None and ambient[0] is self:
            yield ambient[1]
            return
        conn: Connection | None = None
        try:
            async with self.pool.connection() as conn, conn.transaction():
                token = _AMBIENT.set((self, conn))
                try:
                    yield conn
                finally:
                    _AMBIENT.reset(token)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if not _connection_lost(exc, conn):
                raise  # the caller's own statement failed: its error, as it was
            raise self._unavailable(exc) from exc

    @staticmethod
    async def _drop_broken(pool: AsyncConnectionPool[Connection]) -> None:
        """Check the idle connections (one round trip each) and drop the broken ones.

        After one connection broke, the others may have too (the server
        restarted, an administrator terminated them): a retry then gets a
        working one, or a new one.
        """
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await pool.check()

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        if isinstance(exc, PoolTimeout):
            return DatabaseUnavailable(
                f"no connection to PostgreSQL at {self.where} within"
                f" {self.settings.pool_timeout:g}s (the server is unreachable, or every pooled"
                " connection is busy: see pool_max)"
            )
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DatabaseUnavailable(f"lost the connection to PostgreSQL at {self.where}: {reason}")

    async def _call(self, work: Callable[[Connection], Awaitable[_T]], *, retry: bool) -> _T:
        """``work(conn)`` on the task's transaction or a pool connection.

        A broken connection raises :class:`DatabaseUnavailable`; with ``retry``
        (reads, idempotent writes) the call is first tried once more on
        another connection.
        """
        ambient = _AMBIENT.get()
        if ambient is not None and ambient[0] is self:
            return await work(ambient[1])
        pool = self.pool
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn: Connection | None = None
            try:
                async with pool.connection() as conn:
                    return await work(conn)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if not _connection_lost(exc, conn):
                    raise
                if not isinstance(exc, PoolTimeout):
                    await self._drop_broken(pool)  # the next call gets a working connection
                if attempt + 1 == attempts or isinstance(exc, PoolTimeout):
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, query: str, params: Any = (), *, retry: bool = True) -> list[Any]:
        async def work(conn: Connection) -> list[Any]:
            cur = await conn.execute(query.encode(), params)
            return await cur.fetchall() if cur.description is not None else []

        return await self._call(work, retry=retry)

    async def _execute(self, query: str, params: Any = (), *, retry: bool = True) -> int:
        async def work(conn: Connection) -> int:
            cur = await conn.execute(query.encode(), params)
            return cur.rowcount

        return await self._call(work, retry=retry)

    async def _patiently(
        self,
        what: str,
        append: Callable[[], Awaitable[list[Any]]],
        find: Callable[[], Awaitable[list[Any]]] | None,
        *,
        found_empty: bool = False,
    ) -> list[Any]:
        """An append that must land once, through an outage of up to ``_APPEND_PATIENCE`` s.

        ``append`` writes; ``find`` says whether an append whose connection
        broke had committed (its rows, empty: it had not; None: ``append`` is
        idempotent, so it is simply written again). After a failure the call
        waits (doubling, up to 2 s) and asks ``find`` first, then appends
        again. ``found_empty``: ``append`` returns no rows, so a successful one
        returns ``[(True,)]``. Inside :meth:`transaction` nothing is retried.
        ``what`` names the write in the one WARNING logged when it waits.
        """
        try:
            rows = await append()
            return [(True,)] if found_empty else rows
        except DatabaseUnavailable as exc:
            if _AMBIENT.get() is not None:
                raise  # the caller's transaction is gone: the caller decides
            give_up = time.monotonic() + _APPEND_PATIENCE
            _log.warning(
                "%s failed (%s); it may have landed: trying again for up to %.0f s",
                what,
                exc,
                _APPEND_PATIENCE,
            )
        delay = 0.05
        while True:
            try:
                if find is not None and (rows := await find()):
                    return rows
                rows = await append()
                return [(True,)] if found_empty else rows
            except DatabaseUnavailable:
                if time.monotonic() > give_up:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- sessions --------------------------------------------------------------

    async def create_session(self, session: SessionRecord) -> None:
        """Store a new session; an id already in use raises :class:`AlreadyExists`."""
        params = (
            session.id,
            session.tenant,
            session.principal,
            session.created_at,
            session.last_seen_at,
            session.expires_at,
            session.ttl,
            _encode(session.channels),
            _encode(session.state),
        )
        try:
            await self._execute(_INSERT_SESSION, params, retry=True)
        except psycopg.errors.UniqueViolation as exc:
            # A retry after a lost connection finding the very session it inserted: ours.
            if _AMBIENT.get() is None and await self._stored_session(session.id) == session:
                return
            raise AlreadyExists(f"session {session.id!r} already exists") from exc

    async def _stored_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._fetch(_SELECT_SESSION, (session_id,))
        return _session(rows[0]) if rows else None

    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """The session, or None if unknown, of another tenant, or expired."""
        rows = await self._fetch(_SELECT_SESSION, (session_id,))
        if not rows:
            return None
        session = _session(rows[0])
        if tenant is not None and session.tenant != tenant:
            return None
        if session.expires_at <= time.time():
            return None
        return session

    async def save_session(self, session: SessionRecord) -> None:
        """Replace the mutable fields of a stored session; an unknown id does nothing."""
        await self._execute(
            _UPDATE_SESSION,
            (
                session.last_seen_at,
                session.expires_at,
                session.ttl,
                _encode(session.channels),
                _encode(session.state),
                session.id,
            ),
        )

    async def delete_session(self, session_id: str) -> None:
        """Remove a session (no error if it does not exist)."""
        await self._execute("DELETE FROM sessions WHERE id = %s", (session_id,))

    async def expire_sessions(self, now: float) -> list[str]:
        """Delete the sessions with ``expires_at <= now``; return their ids."""
        rows = await self._fetch("DELETE FROM sessions WHERE expires_at <= %s RETURNING id", (now,))
        return [row[0] for row in rows]

    async def count_sessions(self, now: float) -> int:
        """How many sessions have ``expires_at > now``."""
        rows = await self._fetch("SELECT count(*) FROM sessions WHERE expires_at > %s", (now,))
        return int(rows[0][0])

    # -- runs ------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run, or return the run already holding its idempotency key.

        Joins the task's :meth:`transaction` when there is one. After a lost
        connection the insert is tried again; finding the very run it was
        inserting (the first try committed), it reports it created.
        """
        stored = _decode_run(_encode(run))  # what a later get_run returns
        try:
            changed = await self._execute(_INSERT_RUN, _run_params(run), retry=True)
        except psycopg.errors.UniqueViolation as exc:
            existing = await self.get_run(run.id)
            if existing is not None and existing == stored and _AMBIENT.get() is None:
                return existing, True  # our own insert, committed before the connection broke
            raise AlreadyExists(f"run {run.id!r} already exists") from exc
        if changed:
            return stored, True
        key = (run.tenant, run.principal or "", run.idempotency_key)
        rows = await self._fetch(_SELECT_RUN_BY_KEY, key)
        if not rows:  # pragma: no cover - the conflicting row is committed and never deleted
            raise RuntimeError(f"idempotency conflict on {run.idempotency_key!r} but no run")
        existing = _run(rows[0])
        if existing.id == run.id and existing == stored:
            return existing, True  # our own insert (the retry after a lost connection)
        return existing, False

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""
        rows = await self._fetch(_SELECT_RUN, (run_id,))
        if not rows:
            return None
        run = _run(rows[0])
        if tenant is not None and run.tenant != tenant:
            return None
        return run

    async def save_run(self, run: RunRecord) -> None:
        """Replace the mutable fields of a stored run when its fence is ``run.fence``.

        One conditional ``UPDATE``; a stale token raises :class:`LeaseLost`, an
        unknown id does nothing.
        """
        params = (
            run.status,
            _encode(run.output),
            None if run.error is None else _encode(run.error),
            run.started_at,
            run.finished_at,
            run.id,
            run.fence,
        )
        if not await self._execute(_UPDATE_RUN, params):
            current = await self._fence_of(run.id)
            if current is not None and current != run.fence:
                raise LeaseLost(run.id, run.fence, current)

    async def _fence_of(self, run_id: str) -> int | None:
        rows = await self._fetch(_SELECT_FENCE, (run_id,))
        return int(rows[0][0]) if rows else None

    async def _fenced_write(
        self, run: RunRecord | None, checkpoints: Sequence[NodeCheckpoint]
    ) -> bool:
        """Write checkpoints (and the run's final state) in one statement, all or none.

        Returns whether they were written.
        """
        fences, params = self._fenced_params(run, checkpoints)
        rows = await self._fetch(_FENCED_WRITE, params)
        if rows[0][0]:
            return True
        await self._refused(run, checkpoints, fences)
        return False

    @staticmethod
    def _fenced_params(
        run: RunRecord | None, checkpoints: Sequence[NodeCheckpoint]
    ) -> tuple[list[tuple[str, int]], dict[str, Any]]:
        """The (run, token) pairs a fenced write depends on, and its statement's parameters."""
        anchor = [(run.id, run.fence)] if run is not None else []
        fences = list(dict.fromkeys([*anchor, *((c.run_id, c.fence) for c in checkpoints)]))
        latest = {(c.run_id, c.node_id): c for c in checkpoints}  # one write per node
        target = run or RunRecord(id="", workflow="", created_at=0.0)
        params = {
            "fids": [f[0] for f in fences],
            "ffences": [f[1] for f in fences],
            "nfences": len(fences),
            "crun": [c.run_id for c in latest.values()],
            "cnode": [c.node_id for c in latest.values()],
            "cdata": [_encode(c) for c in latest.values()],
            "status": target.status,
            "output": _encode(target.output),
            "error": None if target.error is None else _encode(target.error),
            "started_at": target.started_at,
            "finished_at": target.finished_at,
            "id": target.id,
            "write_run": run is not None,
        }
        return fences, params

    async def _refused(
        self,
        run: RunRecord | None,
        checkpoints: Sequence[NodeCheckpoint],
        fences: Sequence[tuple[str, int]],
    ) -> None:
        """After a fenced write wrote nothing: :class:`LeaseLost`, or return for an unknown run."""
        for run_id, fence in fences:
            current = await self._fence_of(run_id)
            if current != fence:
                if run is not None and not checkpoints and current is None:
                    return  # an unknown run, as save_run: nothing to do
                raise LeaseLost(run_id, fence, current)

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """The last checkpoints and the run's final state: one statement, fenced, all or none.

        Patient as an append (see :meth:`_patiently`): a connection that broke
        may have taken the write's answer with it after the write committed,
        and then nobody else would ever finish the run (a finished run cannot
        be claimed), so its host must learn that it landed. The write is
        idempotent under one fence, so it is written again once the server is
        back: it lands (again) unless another process took the run over, which
        it could only do if the first write had not committed (:class:`LeaseLost`).
        """

        async def write() -> list[Any]:
            await self._fenced_write(run, checkpoints)
            return []

        await self._patiently(f"the final write of run {run.id}", write, None, found_empty=True)

    async def finish_run_logged(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        *,
        audits: Sequence[AuditRecord] = (),
    ) -> list[Event]:
        """:meth:`finish_run`, its events and its audit records in one statement, or none.

        Patient as each: after a lost connection it looks for the events
        first (found, the statement had committed, run and all) and otherwise
        writes again.
        """
        if not events:  # nothing to look for after a lost connection: one after the other
            await self.finish_run(run, checkpoints)
            await self.append_audits(audits)
            return []
        fences, datas, params = self._finish_params(run, checkpoints, events, audits)
        rows = await self._patiently(
            f"the final write of run {run.id} with {len(events)} events",
            lambda: self._fetch(_FINISH_LOGGED, params, retry=False),
            lambda: self._fetch(_FIND_LOGGED, (datas[-1],), retry=False),
        )
        if len(rows[0]) == 1:  # found: it had committed
            last = int(rows[0][0])
        elif rows[0][0]:
            last = int(rows[0][1])
        else:
            return await self._finish_refused(run, checkpoints, events, audits, fences)
        first = last - len(events) + 1
        return [_event(first + i, data) for i, data in enumerate(datas)]

    def _finish_params(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        audits: Sequence[AuditRecord],
    ) -> tuple[list[tuple[str, int]], list[bytes], dict[str, Any]]:
        """A final write's fences, its events as stored, and its ``_FINISH_LOGGED`` parameters."""
        fences, params = self._fenced_params(run, checkpoints)
        datas, appended = self._append_params(events)
        params.update(appended)
        params.update(
            atimes=[float(r.time) for r in audits],
            atenants=[r.tenant for r in audits],
            aprincipals=[r.principal for r in audits],
            aworkflows=[r.workflow for r in audits],
            adatas=[_encode(r) for r in audits],
        )
        return fences, datas, params

    async def _finish_refused(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        audits: Sequence[AuditRecord],
        fences: Sequence[tuple[str, int]],
    ) -> list[Event]:
        """A final write that wrote nothing: :class:`LeaseLost`, or its events and audit alone.

        Alone: for an unknown run, as :meth:`save_run` would do nothing for it.
        """
        await self._refused(run, checkpoints, fences)
        await self.append_audits(audits)
        return await self.append_events(events)

    async def log_writes(
        self, writes: Sequence[tuple[RunFinish | None, Sequence[Event]]]
    ) -> list[list[Event] | Exception]:
        """Every write in one transaction and one round trip (pipelined), in order.

        One commit (one WAL flush) for the batch instead of one per write,
        and the event positions of the batch are consecutive, in its order.
        A write refused by its fence writes nothing (the others land); a
        failing statement makes each write go alone (the default), each with
        its own outcome. A lost connection leaves the batch all landed or
        none: once the server answers, each write's last event is looked for;
        none found, the writes are made again one by one, patiently.

        .. versionadded:: 0.3
        """
        if len(writes) < 2 or _AMBIENT.get() is not None or not all(e for _, e in writes):
            return await super().log_writes(writes)
        plan: list[tuple[str, dict[str, Any], list[bytes], list[tuple[str, int]]]] = []
        for finish, events in writes:
            if finish is None:
                datas, params = self._append_params(events)
                plan.append((_APPEND_EVENTS, params, datas, []))
            else:
                run, checkpoints, audits = finish
                fences, datas, params = self._finish_params(run, checkpoints, events, audits)
                plan.append((_FINISH_LOGGED, params, datas, fences))

        async def batch(conn: Connection) -> list[list[Any]]:
            async with conn.pipeline():
                await conn.execute(b"BEGIN")
                cursors = [await conn.execute(q.encode(), params) for q, params, _, _ in plan]
                await conn.execute(b"COMMIT")
            return [await cursor.fetchall() for cursor in cursors]

        try:
            results = await self._call(batch, retry=False)
        except DatabaseUnavailable:
            found = await self._patiently(
                f"the final writes of {len(writes)} runs",
                lambda: self._find_each([datas[-1] for _, _, datas, _ in plan]),
                None,
            )
            if not any(found):  # the batch did not commit: each write again, alone
                return await super().log_writes(writes)
            results = found
        except psycopg.Error:  # a statement failed: nothing was written
            return await super().log_writes(writes)
        outcomes: list[list[Event] | Exception] = []
        for (finish, events), (_, _, datas, fences), rows in zip(
            writes, plan, results, strict=True
        ):
            # Rows: (seq,) found after a lost connection; (seq, notified) an append;
            # (ok, seq, notified) a final write, refused when not ok.
            if not rows or (len(rows[0]) == 3 and not rows[0][0]):
                if finish is None:  # never refused: its events are gone from the newest
                    outcomes.append(RuntimeError("an append of the batch was not found"))
                    continue
                run, checkpoints, audits = finish
                try:
                    refused = await self._finish_refused(run, checkpoints, events, audits, fences)
                except Exception as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(refused)
                continue
            last = int(rows[0][1] if len(rows[0]) == 3 else rows[0][0])
            first = last - len(events) + 1
            outcomes.append([_event(first + i, data) for i, data in enumerate(datas)])
        return outcomes

    async def _find_each(self, lasts: Sequence[bytes]) -> list[Any]:
        """For each event (as stored), its row ``(seq,)`` if the log holds it, else none."""
        return [await self._fetch(_FIND_LOGGED, (data,), retry=False) for data in lasts]

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node while its run's fence is the checkpoint's (else LeaseLost)."""
        await self._fenced_write(None, [checkpoint])

    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""
        rows = await self._fetch(_SELECT_CHECKPOINTS, (run_id,))
        return {row[0]: _decode_checkpoint(row[1]) for row in rows}

    async def claim_run(
        self, run_id: str, owner: str, *, lease: float, now: float
    ) -> RunRecord | None:
        """Take an unfinished run whose lease is None or expired at ``now``; fence + 1.

        One ``UPDATE ... RETURNING``: of concurrent claimers, one wins. Not
        retried after a lost connection (a claim that committed would count
        twice); the run stays claimable by whoever asks next once the lease ends.
        """
        rows = await self._fetch(_CLAIM_RUN, (owner, float(now + lease), run_id, now), retry=False)
        return _run(rows[0]) if rows else None

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], *, until: float
    ) -> set[str]:
        """Extend to ``until`` the leases ``owner`` holds with these tokens (one statement)."""
        if not fences:
            return set()
        ids = list(fences)
        rows = await self._fetch(_RENEW_LEASES, (until, ids, [fences[i] for i in ids], owner))
        return {row[0] for row in rows}

    async def claimable_runs(
        self, now: float, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """Unfinished runs with no lease or an expired one at ``now``, oldest first."""
        if limit <= 0:
            return []
        if workflows is None:
            rows = await self._fetch(_CLAIMABLE_RUNS.format(workflows=""), (now, limit))
        else:
            names = list(workflows)
            if not names:
                return []
            query = _CLAIMABLE_RUNS.format(workflows=" AND workflow = ANY(%s::text[])")
            rows = await self._fetch(query, (now, names, limit))
        return [_run(row) for row in rows]

    async def list_runs(
        self,
        *,
        tenant: str | None = None,
        workflow: str | None = None,
        status: str | None = None,
        session_id: str | None = None,
        principal: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunRecord]:
        """Runs newest first (by ``created_at``, then id), filtered; paged with ``before``."""
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("tenant", tenant),
            ("workflow", workflow),
            ("status", status),
            ("session_id", session_id),
            ("principal", principal),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        if before is not None:
            # An unknown cursor (or another tenant's run) matches nothing.
            anchor = "SELECT created_at, id FROM runs WHERE id = %s"
            params.append(before)
            if tenant is not None:
                anchor += " AND tenant = %s"
                params.append(tenant)
            where.append(f"(created_at, id) < ({anchor})")
        query = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(limit)
        return [_run(row) for row in await self._fetch(query, params)]

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still ``pending`` or ``running``, oldest first."""
        return [_run(row) for row in await self._fetch(_UNFINISHED_RUNS)]

    # -- events ----------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append events in order, in one statement; each gets the id of its log position.

        The statement takes consecutive positions from the counter row and
        holds its lock until it commits, so appends commit in position order
        (see the module's documentation); it notifies :attr:`events_channel`.
        Through an outage of up to a minute the append waits and tries again
        (the bus holds the events behind it, in order): after each failure the
        newest events are searched for the batch's last event (byte for byte:
        its provisional id and time make it unique); found, the append had
        committed and its positions are returned; not found, it is appended
        again. An event is logged once, and none is dropped by a short outage.
        """
        if not events:
            return []
        datas, params = self._append_params(events)
        rows = await self._patiently(
            f"appending {len(events)} events",
            lambda: self._fetch(_APPEND_EVENTS, params, retry=False),
            lambda: self._fetch(_FIND_LOGGED, (datas[-1],), retry=False),
        )
        last = int(rows[0][0])
        first = last - len(events) + 1
        # Decoded from what was stored: copies, equal to what read_events returns.
        return [_event(first + i, data) for i, data in enumerate(datas)]

    def _append_params(self, events: Sequence[Event]) -> tuple[list[bytes], dict[str, Any]]:
        """The events as stored, and the parameters of a statement appending them."""
        datas = [_encode(e) for e in events]
        params = {
            "n": len(events),
            "run_ids": [e.run_id for e in events],
            "times": [float(e.time) for e in events],
            "datas": datas,
            "channel": self.events_channel,
            "notice": self._notice(datas),
        }
        return datas, params

    def _notice(self, datas: Sequence[bytes]) -> str:
        """What an append's notification says after its last position.

        ``"<origin>"``, then, when the whole batch fits in NOTIFY's limit, a
        line per event (its JSON; msgspec writes no raw newline): listeners
        deliver small batches from the notification and read the log for the
        rest.
        """
        size = sum(len(d) + 1 for d in datas)
        if size + len(self.origin) + 24 > _NOTIFY_INLINE:
            return self.origin
        return "\n".join([self.origin, *(d.decode() for d in datas)])

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events after position ``event_seq(after)``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        position = event_seq(after)
        if run_id is None:
            rows = await self._fetch(_READ_EVENTS, (position, limit))
        else:
            rows = await self._fetch(_READ_RUN_EVENTS, (position, run_id, limit))
        return [_event(int(seq), bytes(data)) for seq, data in rows]

    async def last_event_id(self) -> str | None:
        """The id of the newest event in the log (None when it is empty)."""
        rows = await self._fetch(_LAST_EVENT)
        return None if rows[0][0] is None else event_id(int(rows[0][0]))

    # -- retention -------------------------------------------------------------

    async def prune_runs(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` finished runs older than ``before``, with their checkpoints."""
        if limit <= 0:
            return 0
        rows = await self._fetch(
            "WITH gone AS (SELECT id FROM runs WHERE created_at < %s"
            f" AND NOT ({_UNFINISHED}) AND coalesce(finished_at, created_at) < %s"
            " ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED),"
            " cps AS (DELETE FROM checkpoints WHERE run_id IN (SELECT id FROM gone))"
            " DELETE FROM runs WHERE id IN (SELECT id FROM gone) RETURNING id",
            (before, before, limit),
        )
        return len(rows)

    async def prune_events(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` of the oldest events whose ``time`` is before ``before``."""
        if limit <= 0:
            return 0
        rows = await self._fetch(
            "WITH head AS (SELECT seq, time FROM events ORDER BY seq LIMIT %s),"
            " stop AS (SELECT min(seq) AS seq FROM head WHERE time >= %s)"
            " DELETE FROM events WHERE seq IN (SELECT seq FROM head"
            " WHERE seq < coalesce((SELECT seq FROM stop), 9223372036854775807))"
            " RETURNING seq",
            (limit, before),
        )
        return len(rows)

    async def prune_audit(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` audit records whose ``time`` is before ``before``."""
        if limit <= 0:
            return 0
        return await self._execute(
            "DELETE FROM audit WHERE seq IN"
            " (SELECT seq FROM audit WHERE time < %s ORDER BY time, seq LIMIT %s)",
            (before, limit),
        )

    # -- audit -----------------------------------------------------------------

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records in order, in one statement.

        Through an outage of up to a minute it waits and tries again, looking
        for its last record first (as :meth:`append_events`): each record is
        kept once.
        """
        if not records:
            return
        datas = [_encode(r) for r in records]
        params = (
            [float(r.time) for r in records],
            [r.tenant for r in records],
            [r.principal for r in records],
            [r.workflow for r in records],
            datas,
        )
        await self._patiently(
            f"appending {len(records)} audit records",
            lambda: self._fetch(_INSERT_AUDITS, params, retry=False),
            lambda: self._fetch(_FIND_AUDIT, (datas[-1],), retry=False),
            found_empty=True,
        )

    async def query_audit(
        self,
        *,
        tenant: str | None = None,
        principal: str | None = None,
        workflow: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Audit records oldest first (by time, then append order), filtered."""
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("tenant = %s", tenant),
            ("principal = %s", principal),
            ("workflow = %s", workflow),
            ("time >= %s", since),
            ("time < %s", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        query = "SELECT data FROM audit"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY time, seq LIMIT %s"
        params.append(limit)
        return [_decode_audit(row[0]) for row in await self._fetch(query, params)]

    # -- credentials -----------------------------------------------------------

    async def put_credential(self, record: CredentialRecord) -> None:
        """Store a new credential; a used id or ``(kind, token_hash)``: :class:`AlreadyExists`."""
        params = (
            record.id,
            record.kind,
            record.token_hash,
            record.principal,
            record.tenant,
            record.created_at,
            record.revoked_at,
            _encode(record),
        )
        try:
            await self._execute(_INSERT_CREDENTIAL, params, retry=False)
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(f"credential {record.id!r} (or its token) already exists") from exc

    async def get_credential(self, kind: str, token_hash: str) -> CredentialRecord | None:
        """The credential of that kind with that token hash, or None."""
        rows = await self._fetch(
            f"SELECT {_CREDENTIAL_COLS} FROM credentials WHERE kind = %s AND token_hash = %s",
            (kind, token_hash),
        )
        return _credential(rows[0]) if rows else None

    async def get_credential_by_id(self, credential_id: str) -> CredentialRecord | None:
        """The credential with that id, or None."""
        rows = await self._fetch(
            f"SELECT {_CREDENTIAL_COLS} FROM credentials WHERE id = %s", (credential_id,)
        )
        return _credential(rows[0]) if rows else None

    async def list_credentials(
        self,
        *,
        principal: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
    ) -> list[CredentialRecord]:
        """Credentials oldest first (by ``created_at``, then id), filtered."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("principal", principal), ("kind", kind), ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        query = f"SELECT {_CREDENTIAL_COLS} FROM credentials"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at, id"
        return [_credential(row) for row in await self._fetch(query, params)]

    async def revoke_credential(self, credential_id: str, *, at: float) -> bool:
        """Set ``revoked_at`` to ``at`` unless already revoked at or before it."""
        return bool(await self._execute(_REVOKE_CREDENTIAL, (at, credential_id, at)))

    # -- cache -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None if absent or expired (wall-clock time)."""
        rows = await self._fetch(_SELECT_CACHE, (key, time.time()))
        return bytes(rows[0][0]) if rows else None

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Set a value, expiring after ``ttl`` seconds (never if None)."""
        now = time.time()
        await self._execute(_UPSERT_CACHE, (key, bytes(value), None if ttl is None else now + ttl))
        self._cache_sets += 1
        if self._cache_sets % _CACHE_PURGE_EVERY == 0:
            await self._execute("DELETE FROM cache WHERE expires_at <= %s", (now,))

    async def cache_delete(self, key: str) -> None:
        """Remove a value (no error if absent)."""
        await self._execute("DELETE FROM cache WHERE key = %s", (key,))

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """Take ``cost`` tokens from bucket ``key``: 0.0 if taken, else the seconds to wait.

        One upsert statement: atomic across tasks, processes and machines (the
        row lock queues concurrent takes). Times are wall-clock. Retried once
        after a lost connection: a take whose commit was lost with it then
        counts twice, which errs on the safe side of a limit.
        """
        capacity, refill, cost = float(capacity), float(refill_per_second), float(cost)
        now = time.time()
        first_taken = capacity >= cost
        params = {
            "key": key,
            "cap": capacity,
            "refill": refill,
            "cost": cost,
            "now": now,
            "first": capacity - cost if first_taken else capacity,
            "first_taken": first_taken,
        }
        rows = await self._fetch(_TAKE_TOKENS, params)
        taken, tokens, updated = rows[0]
        if taken:
            return 0.0
        if cost > capacity or refill <= 0:
            return math.inf
        available = min(capacity, float(tokens) + max(0.0, now - float(updated)) * refill)
        return max((cost - available) / refill, 1e-9)

    # -- blobs -----------------------------------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` (replacing)."""
        await self._execute(
            "INSERT INTO blobs (key, data) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET data = excluded.data",
            (key, bytes(data)),
        )

    async def get_blob(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        rows = await self._fetch("SELECT data FROM blobs WHERE key = %s", (key,))
        return bytes(rows[0][0]) if rows else None

    async def delete_blob(self, key: str) -> None:
        """Remove a blob (no error if absent)."""
        await self._execute("DELETE FROM blobs WHERE key = %s", (key,))

    async def list_blobs(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (plain text), sorted by code point."""
        if not prefix:
            rows = await self._fetch("SELECT key FROM blobs ORDER BY key")
        else:
            rows = await self._fetch(
                "SELECT key FROM blobs WHERE starts_with(key, %s) ORDER BY key", (prefix,)
            )
        return [row[0] for row in rows]
