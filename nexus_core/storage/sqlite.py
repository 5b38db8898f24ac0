"""``sqlite:///path.db``: the embedded default, a local SQLite file in WAL mode.

URLs: ``sqlite:///relative/path.db`` (relative to the working directory),
``sqlite:////abs/path.db`` and ``sqlite:///:memory:`` (not persistent). One
option: ``?synchronous=normal`` (the default: a commit survives the process
being killed, not a power loss) or ``?synchronous=full`` (a commit survives a
power loss too, at the price of an fsync per commit).

How it is built:

* One writer connection, in autocommit mode: each single-statement write is
  its own transaction and is committed when the call returns. With
  ``journal_mode=WAL`` and ``synchronous=NORMAL`` a committed write survives the
  process being killed (though not the machine losing power; ``FULL`` does).
* The writer is a stdlib ``sqlite3`` connection driven by a thread of its
  own, one call at a time. Writes are committed together (group commit) by
  that thread: everything queued while it applied the last transaction goes
  into the next one. The event loop never waits for a batch to close before
  queueing more (see :meth:`_Connection.write`). A multi-statement
  transaction (``take_tokens``) is one call of that thread, so it never takes
  in another task's statements. Writers in other objects or processes wait on
  SQLite's own lock (``busy_timeout``).
* A second, read-only connection (aiosqlite) serves reads (a file database
  only), so reads do not queue behind writes.
* Checkpoints (copying the WAL back into the database file, with an fsync of
  each) run off the write path: the writer's ``wal_autocheckpoint`` is 0, and
  a third connection with a thread of its own checkpoints (``PASSIVE``: never
  waits, never blocks a writer or a reader) each time this object has written
  :attr:`SQLiteStorage.checkpoint_after` rows. SQLite's own auto-checkpoint
  runs inside the commit that crosses 1000 pages, so that commit, and every
  write queued behind it, would wait for the whole copy (13-22 ms measured
  here, every ~300 small commits). The WAL is reused from its start once it holds
  :attr:`SQLiteStorage.wal_limit` pages (the writer then copies the few pages
  written during the last checkpoint), and is emptied (``TRUNCATE``, waiting
  briefly for readers and blocking writers) should readers keep it from
  being reused until it holds twice that.
* The schema is versioned by ``PRAGMA user_version``: see
  :mod:`nexus_core.storage._migrations`. A database newer than this code raises
  :class:`SchemaVersionError` at :meth:`SQLiteStorage.open`.
* Values are stored as JSON (msgspec), records in columns so filters use
  indexes. Idempotent ``create_run`` relies on a unique index on ``(tenant,
  principal, idempotency_key)``, so it is atomic across processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import aiosqlite
import anyio
import anyio.to_thread
import msgspec

from ..events import Event
from ._migrations import MIGRATIONS, Migration
from .base import (
    AlreadyExists,
    AuditRecord,
    CredentialRecord,
    LeaseLost,
    NodeCheckpoint,
    RunFinish,
    RunRecord,
    SessionRecord,
    Storage,
    event_id,
    event_seq,
)

__all__ = ["SQLiteStorage", "SchemaVersionError"]

_log = logging.getLogger("nexus.storage")

_PREFIX = "sqlite:///"
_MIN_SQLITE = (3, 35, 0)  # RETURNING
_BUSY_TIMEOUT = 10.0  # seconds
_CACHE_PURGE_EVERY = 512
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
#: How long a checkpoint past the WAL's limit waits for readers (writers wait meanwhile).
_TRUNCATE_WAIT_MS = 100

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
_decode_strs = msgspec.json.Decoder(list[str]).decode
_decode_checkpoint = msgspec.json.Decoder(NodeCheckpoint).decode
_decode_run = msgspec.json.Decoder(RunRecord).decode
_decode_event = msgspec.json.Decoder(Event).decode
_decode_audit = msgspec.json.Decoder(AuditRecord).decode
_decode_credential = msgspec.json.Decoder(CredentialRecord).decode

# -- statements -----------------------------------------------------------------

_SESSION_COLS = "id, tenant, principal, created_at, last_seen_at, expires_at, ttl, channels, state"
_INSERT_SESSION = f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT_SESSION = f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ?"
_UPDATE_SESSION = (
    "UPDATE sessions SET last_seen_at = ?, expires_at = ?, ttl = ?, channels = ?, state = ?"
    " WHERE id = ?"
)
_DELETE_SESSION = "DELETE FROM sessions WHERE id = ?"
_EXPIRE_SESSIONS = "DELETE FROM sessions WHERE expires_at <= ? RETURNING id"
_COUNT_SESSIONS = "SELECT count(*) FROM sessions WHERE expires_at > ?"

_RUN_COLS = (
    "id, workflow, status, tenant, principal, session_id, channel, inputs, output, error,"
    " created_at, started_at, finished_at, idempotency_key, input_hash, owner, fence,"
    " lease_expires_at"
)
_INSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant, ifnull(principal, ''), idempotency_key)"
    " WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_SELECT_RUN = f"SELECT {_RUN_COLS} FROM runs WHERE id = ?"
_SELECT_RUN_BY_KEY = (
    f"SELECT {_RUN_COLS} FROM runs"
    " WHERE tenant = ? AND ifnull(principal, '') = ? AND idempotency_key = ?"
)
# Fenced writes: the condition holds when the stored run has the writer's token.
_FENCE_IS = "(SELECT fence FROM runs WHERE id = ?) = ?"
_SELECT_FENCE = "SELECT fence FROM runs WHERE id = ?"
# A fenced update: ``{fences}`` is one _FENCE_IS per (run, token) the write depends on.
_UPDATE_RUN = (
    "UPDATE runs SET status = ?, output = ?, error = ?, started_at = ?, finished_at = ?"
    " WHERE id = ? AND {fences}"
)
_UNFINISHED = "status IN ('pending', 'running')"
_UNFINISHED_RUNS = f"SELECT {_RUN_COLS} FROM runs WHERE {_UNFINISHED} ORDER BY created_at, id"
# One statement: atomic against every other writer, in this process or another.
_CLAIM_RUN = (
    "UPDATE runs SET owner = ?, fence = fence + 1, lease_expires_at = ?"
    f" WHERE id = ? AND {_UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
    f" RETURNING {_RUN_COLS}"
)
_RENEW_LEASE = (
    "UPDATE runs SET lease_expires_at = ?"
    f" WHERE id = ? AND owner = ? AND fence = ? AND {_UNFINISHED}"
)
_CLAIMABLE_RUNS = (
    f"SELECT {_RUN_COLS} FROM runs WHERE {_UNFINISHED}"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?){workflows}"
    " ORDER BY created_at, id LIMIT ?"
)

# A fenced upsert (the WHERE also settles SQLite's upsert-after-SELECT parsing ambiguity).
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (run_id, node_id, data) SELECT ?, ?, ? WHERE {fences}"
    " ON CONFLICT (run_id, node_id) DO UPDATE SET data = excluded.data"
)
_SELECT_CHECKPOINTS = "SELECT node_id, data FROM checkpoints WHERE run_id = ?"

# The log gives positions itself (AUTOINCREMENT: after the highest position ever
# handed out, even when the tail was pruned); one statement appends a burst, so
# its positions are consecutive, and the last rowid and the row count name them
# all. Not RETURNING: each row it hands back is one more step of the statement,
# and each step lets go of the GIL and waits to take it back from the event loop.
# ``{rows}`` is one "(?, ?)" per event.
_APPEND_EVENTS = "INSERT INTO events (run_id, data) VALUES {rows}"
# The same under a fenced write's condition (a run's final write appends its events).
_APPEND_FENCED_EVENTS = (
    "INSERT INTO events (run_id, data) SELECT * FROM (VALUES {rows}) WHERE {fences}"
)
_APPEND_CHUNK = 500  # events per statement: 2 parameters each, far below SQLite's limit
_READ_EVENTS = "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_READ_RUN_EVENTS = "SELECT seq, data FROM events WHERE seq > ? AND run_id = ? ORDER BY seq LIMIT ?"
_LAST_EVENT = "SELECT max(seq) FROM events"

_INSERT_AUDIT = "INSERT INTO audit (time, tenant, principal, workflow, data) VALUES (?, ?, ?, ?, ?)"
_INSERT_FENCED_AUDIT = (
    "INSERT INTO audit (time, tenant, principal, workflow, data)"
    " SELECT ?, ?, ?, ?, ? WHERE {fences}"
)

_INSERT_CREDENTIAL = (
    "INSERT INTO credentials"
    " (id, kind, token_hash, principal, tenant, created_at, revoked_at, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CREDENTIAL_COLS = "revoked_at, data"
_SELECT_CREDENTIAL = f"SELECT {_CREDENTIAL_COLS} FROM credentials WHERE kind = ? AND token_hash = ?"
_SELECT_CREDENTIAL_BY_ID = f"SELECT {_CREDENTIAL_COLS} FROM credentials WHERE id = ?"
_REVOKE_CREDENTIAL = (
    "UPDATE credentials SET revoked_at = ? WHERE id = ? AND (revoked_at IS NULL OR revoked_at > ?)"
)

_SELECT_CACHE = "SELECT value FROM cache WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_UPSERT_CACHE = (
    "INSERT INTO cache (key, value, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_DELETE_CACHE = "DELETE FROM cache WHERE key = ?"
_PURGE_CACHE = "DELETE FROM cache WHERE expires_at <= ?"

_SELECT_BUCKET = "SELECT tokens, updated_at FROM buckets WHERE key = ?"
_UPSERT_BUCKET = (
    "INSERT INTO buckets (key, tokens, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at"
)

_UPSERT_BLOB = (
    "INSERT INTO blobs (key, data) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET data = excluded.data"
)
_SELECT_BLOB = "SELECT data FROM blobs WHERE key = ?"
_DELETE_BLOB = "DELETE FROM blobs WHERE key = ?"
_LIST_BLOBS = "SELECT key FROM blobs ORDER BY key"
_LIST_BLOBS_FROM = "SELECT key FROM blobs WHERE key >= ? ORDER BY key"
_LIST_BLOBS_RANGE = "SELECT key FROM blobs WHERE key >= ? AND key < ? ORDER BY key"


def _make_private(path: str) -> None:
    """Create the database file with mode 0600 before SQLite opens it, whatever the umask.

    SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files it creates the
    database file's mode, so they are 0600 too. A database (or one of those
    files) left readable by others by an older version is narrowed to 0600.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if hasattr(os, "fchmod") and os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):  # absent, or not ours to change
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)


def _credential(row: Sequence[Any]) -> CredentialRecord:
    # revoked_at lives in its column (the only field that changes), the rest in data.
    return msgspec.structs.replace(_decode_credential(row[1]), revoked_at=row[0])


class SchemaVersionError(RuntimeError):
    """The database was written by a newer Nexus (its schema version is unknown here)."""


#: ``?synchronous=`` of a SQLite URL: what a commit survives (PRAGMA synchronous, in WAL).
_SYNCHRONOUS: dict[str, str] = {
    # A commit survives the process being killed (kill -9, a crash); the last
    # commits before a power loss or OS crash may be lost (the database stays intact).
    "normal": "NORMAL",
    # A commit survives a power loss too: every commit waits for an fsync of the WAL.
    "full": "FULL",
}


def _parse_url(url: str) -> tuple[str, str]:
    """The path (``":memory:"`` for memory) and ``synchronous`` setting of a SQLite URL.

    ``?synchronous=normal|full`` is the only option; normal by default.
    """
    if not url.startswith(_PREFIX):
        raise ValueError(
            f"not a SQLite URL: {url!r}; use sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    path, _, query = url[len(_PREFIX) :].partition("?")
    if not path:
        raise ValueError(f"SQLite URL {url!r} needs a file path")
    options = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
    unknown = sorted(set(options) - {"synchronous"})
    if unknown:
        raise ValueError(
            f"SQLite URL {url!r}: unknown option {unknown[0]!r} (the only option is "
            "synchronous=normal|full)"
        )
    values = options.get("synchronous", ["normal"])
    synchronous = _SYNCHRONOUS.get(values[-1].lower()) if len(values) == 1 else None
    if synchronous is None:
        raise ValueError(
            f"SQLite URL {url!r}: synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
            f"got {', '.join(map(repr, values))}"
        )
    return path, synchronous


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be stored; skip them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


async def _rollback(conn: _Connection) -> None:
    """Roll back the open transaction, even when cancelled; never masks the first error."""
    # sqlite3.Error: no transaction left to roll back (the error ended it).
    with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")


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


def _real(value: float | None) -> float | None:
    # RETURNING gives a REAL column's value as stored: an integral one as an int.
    return None if value is None else float(value)


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
        fence=row[16],
        lease_expires_at=_real(row[17]),
    )


def _fenced(sql: str, fences: Sequence[tuple[str, int]]) -> tuple[str, tuple[Any, ...]]:
    """``sql`` with its ``{fences}`` condition: every (run, token) of ``fences`` is current."""
    return _statement(sql, len(fences)), tuple(itertools.chain.from_iterable(fences))


@functools.cache
def _statement(sql: str, fences: int, rows: int = 0) -> str:
    """``sql`` with ``rows`` rows of two values for ``{rows}`` and ``fences`` conditions.

    Built once for each shape: a run's final write makes four such statements,
    and SQLite's statement cache knows them by their text anyway.
    """
    if rows:
        sql = sql.replace("{rows}", ", ".join(["(?, ?)"] * rows))
    return sql.replace("{fences}", " AND ".join([_FENCE_IS] * fences))


def _update_run(run: RunRecord, fences: Sequence[tuple[str, int]]) -> tuple[str, tuple[Any, ...]]:
    sql, fence_params = _fenced(_UPDATE_RUN, fences)
    params = (
        run.status,
        _encode(run.output),
        None if run.error is None else _encode(run.error),
        run.started_at,
        run.finished_at,
        run.id,
        *fence_params,
    )
    return sql, params


def _upsert_checkpoint(
    checkpoint: NodeCheckpoint, fences: Sequence[tuple[str, int]]
) -> tuple[str, tuple[Any, ...]]:
    sql, fence_params = _fenced(_UPSERT_CHECKPOINT, fences)
    return sql, (checkpoint.run_id, checkpoint.node_id, _encode(checkpoint), *fence_params)


def _event(seq: int, data: bytes) -> Event:
    """A logged event: its id is its position (whatever id the stored JSON holds)."""
    return msgspec.structs.replace(_decode_event(data), id=event_id(seq))


def _append_ops(events: Sequence[Event], fences: Sequence[tuple[str, int]]) -> list[_Write]:
    """The inserts appending ``events`` (500 a statement), under ``fences`` when given."""
    encoded = [(e.run_id, _encode(e)) for e in events]
    ops = []
    for start in range(0, len(encoded), _APPEND_CHUNK):
        chunk = encoded[start : start + _APPEND_CHUNK]
        values: tuple[Any, ...] = tuple(itertools.chain.from_iterable(chunk))
        if fences:
            sql = _statement(_APPEND_FENCED_EVENTS, len(fences), len(chunk))
            values += tuple(itertools.chain.from_iterable(fences))
            ops.append(_Write(sql, values))
        else:
            ops.append(_Write(_statement(_APPEND_EVENTS, 0, len(chunk)), values))
    return ops


def _logged(events: Sequence[Event], ops: Sequence[_Write]) -> list[Event]:
    """The appended events with their ids (the positions ``ops`` inserted them at)."""
    seqs = [seq for op in ops for seq in op.inserted_at()]
    # Equal to what read_events returns for JSON-native data (events are
    # frozen; nothing here is shared state).
    return [
        msgspec.structs.replace(e, id=event_id(seq)) for e, seq in zip(events, seqs, strict=True)
    ]


def _audit_params(record: AuditRecord) -> tuple[Any, ...]:
    return (record.time, record.tenant, record.principal, record.workflow, _encode(record))


def _insert_audit(
    record: AuditRecord, fences: Sequence[tuple[str, int]]
) -> tuple[str, tuple[Any, ...]]:
    sql, fence_params = _fenced(_INSERT_FENCED_AUDIT, fences)
    return sql, _audit_params(record) + fence_params


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


class SQLiteStorage(Storage):
    """Storage in a SQLite file (``sqlite:///path.db``), safe for several processes.

    Subclasses may extend :attr:`migrations` (append only).
    """

    #: The schema, step by step; the database's ``user_version`` counts applied steps.
    migrations: ClassVar[Sequence[Migration]] = MIGRATIONS

    #: Rows written (plus one per commit) between two checkpoints of the WAL, run
    #: off the write path: about SQLite's own 1000 pages for small writes.
    #:
    #: .. versionadded:: 0.2
    checkpoint_after: int = 500

    #: WAL size in pages (4 KiB each by default) at which the WAL is reused from
    #: its start (each reuse costs a write an fsync); at twice this size a
    #: checkpoint waits for readers and empties it (briefly blocking writers).
    #:
    #: .. versionadded:: 0.2
    wal_limit: int = 4000

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path, self.synchronous = _parse_url(url)
        self._writer: _Connection | None = None
        self._reader: aiosqlite.Connection | _Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._cache_sets = 0

    @property
    def persistent(self) -> bool:
        """False for ``sqlite:///:memory:``, True for a file."""
        return self.path != ":memory:"

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Connect, switch to WAL and apply pending migrations."""
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old; Nexus needs 3.35 or newer"
            )
        if self.persistent:
            await anyio.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(_make_private, self.path)
        writer = await _Connection.connect(self.path)
        reader: aiosqlite.Connection | _Connection = writer
        checkpointer: _Checkpointer | None = None
        try:
            await self._enable_wal(writer)
            # Only the writer commits: its setting is what a commit survives.
            await writer.execute_fetchall(f"PRAGMA synchronous = {self.synchronous}")
            await self._migrate(writer)
            if self.persistent:
                reader = await self._connect()
                await reader.execute_fetchall("PRAGMA query_only = ON")
                checkpointer = await anyio.to_thread.run_sync(
                    functools.partial(
                        _Checkpointer,
                        self.path,
                        self.synchronous,
                        writer,
                        after=self.checkpoint_after,
                        limit=self.wal_limit,
                    )
                )
                # Commits never checkpoint: the checkpointer's thread does, off their path.
                await writer.execute_fetchall("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            with anyio.CancelScope(shield=True):
                if checkpointer is not None:
                    await anyio.to_thread.run_sync(checkpointer.close)
                if reader is not writer:
                    await reader.close()
                await writer.close()
            raise
        self._writer, self._reader, self._checkpointer = writer, reader, checkpointer

    async def _connect(self) -> aiosqlite.Connection:
        # The reader. isolation_level=None: autocommit, each statement commits on
        # its own. timeout sets SQLite's busy_timeout.
        return await aiosqlite.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT)

    @staticmethod
    async def _enable_wal(conn: _Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports
        # SQLITE_BUSY at once (no busy handler) when another connection is opening
        # the same new file. The switch is persistent, so this races only once.
        deadline = time.monotonic() + _BUSY_TIMEOUT
        delay = 0.001
        while True:
            try:
                await conn.execute_fetchall("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES
                if not busy or time.monotonic() >= deadline:
                    raise
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                return

    async def _migrate(self, conn: _Connection) -> None:
        target = len(self.migrations)
        version = await self._user_version(conn)
        self._check_version(version, target)
        if version == target:
            return
        await conn.execute("BEGIN IMMEDIATE")
        try:
            version = await self._user_version(conn)  # another process may have migrated
            self._check_version(version, target)
            for step in self.migrations[version:]:
                for statement in step:
                    await conn.execute_fetchall(statement)
            await conn.execute_fetchall(f"PRAGMA user_version = {int(target)}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise

    @staticmethod
    async def _user_version(conn: _Connection) -> int:
        rows = list(await conn.execute_fetchall("PRAGMA user_version"))
        return int(rows[0][0])

    def _check_version(self, version: int, target: int) -> None:
        if version > target:
            raise SchemaVersionError(
                f"{self.path} has schema version {version}, but this version of Nexus knows "
                f"only up to {target}: it was written by a newer Nexus. Upgrade nexus-core "
                "(or use another database file)."
            )

    async def close(self) -> None:
        """Close the connections (the last one to close checkpoints the WAL and removes it)."""
        writer, reader, checkpointer = self._writer, self._reader, self._checkpointer
        self._writer = self._reader = self._checkpointer = None
        with anyio.CancelScope(shield=True):
            if checkpointer is not None:
                await anyio.to_thread.run_sync(checkpointer.close)
            if reader is not None and reader is not writer:
                await reader.close()
            if writer is not None:
                await writer.close()

    async def ping(self) -> bool:
        """Whether ``SELECT 1`` answers."""
        if self._reader is None:
            return False
        try:
            await self._reader.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError):
            return False
        return True

    # -- helpers ---------------------------------------------------------------

    def _closed(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}({self.url!r}) is not open")

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise self._closed()
        return list(await self._reader.execute_fetchall(sql, params))

    async def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one write statement (committed on return); the number of rows changed.

        Group commit: writes queued while the writer's thread applies others
        go together in its next transaction (see :meth:`_Connection.write`).
        Should one fail (a duplicate id), the batch is applied again with a
        savepoint per caller, so it fails only its own caller.
        """
        [rowcount] = await self._write_many([(sql, tuple(params))])
        return rowcount

    async def _write_many(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Several writes in one batch, in order, all or none; their row counts."""
        ops = [_Write(sql, params) for sql, params in statements]
        await self._submit(ops)
        return [each.rowcount for each in ops]

    async def _write_fetch(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """One write statement that returns rows (``RETURNING``), committed on return."""
        op = _Write(sql, tuple(params), fetch=True)
        await self._submit([op])
        return op.rows

    async def _submit(self, ops: list[_Write]) -> None:
        if self._writer is None:
            raise self._closed()
        await self._writer.write([ops], self._checkpointer)
        for each in ops:
            if each.error is not None:
                raise each.error

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
            await self._write(_INSERT_SESSION, params)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"session {session.id!r} already exists") from exc

    async def get_session(
        self, session_id: str, *, tenant: str | None = None
    ) -> SessionRecord | None:
        """The session, or None if unknown, of another tenant, or expired."""
        rows = await self._read(_SELECT_SESSION, (session_id,))
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
        await self._write(
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
        await self._write(_DELETE_SESSION, (session_id,))

    async def expire_sessions(self, now: float) -> list[str]:
        """Delete the sessions with ``expires_at <= now``; return their ids."""
        return [row[0] for row in await self._write_fetch(_EXPIRE_SESSIONS, (now,))]

    async def count_sessions(self, now: float) -> int:
        """How many sessions have ``expires_at > now``."""
        rows = await self._read(_COUNT_SESSIONS, (now,))
        return int(rows[0][0])

    # -- runs ------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new run, or return the run already holding its idempotency key."""
        try:
            changed = await self._write(_INSERT_RUN, _run_params(run))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"run {run.id!r} already exists") from exc
        if changed:
            # Return what a later get_run returns (values through JSON).
            return _decode_run(_encode(run)), True
        key = (run.tenant, run.principal or "", run.idempotency_key)
        rows = await self._read(_SELECT_RUN_BY_KEY, key)
        if not rows:  # pragma: no cover - the conflicting row is committed and never deleted
            raise RuntimeError(f"idempotency conflict on {run.idempotency_key!r} but no run")
        return _run(rows[0]), False

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunRecord | None:
        """The run, or None if unknown or of another tenant."""
        rows = await self._read(_SELECT_RUN, (run_id,))
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
        if not await self._write(*_update_run(run, [(run.id, run.fence)])):
            current = await self._fence_of(run.id)
            if current is not None:
                raise LeaseLost(run.id, run.fence, current)

    async def _fence_of(self, run_id: str) -> int | None:
        """The stored fencing token of a run (None: no such run)."""
        rows = await self._read(_SELECT_FENCE, (run_id,))
        return int(rows[0][0]) if rows else None

    async def _lease_lost(self, fences: Sequence[tuple[str, int]]) -> LeaseLost:
        """The error of a refused fenced write: names the first (run, token) that is stale."""
        for run_id, fence in fences:
            current = await self._fence_of(run_id)
            if current != fence:
                return LeaseLost(run_id, fence, current)
        run_id, fence = fences[0]  # pragma: no cover - taken over and back: cannot happen
        return LeaseLost(run_id, fence, fence)

    async def finish_run(self, run: RunRecord, checkpoints: Sequence[NodeCheckpoint] = ()) -> None:
        """The last checkpoints and the run's final state: one trip, one transaction, fenced.

        Every statement holds the same condition (each run and token involved is
        current), so they land together or are refused together (:class:`LeaseLost`).
        It is :meth:`finish_run_logged` without events.
        """
        await self.finish_run_logged(run, checkpoints, ())

    async def finish_run_logged(
        self,
        run: RunRecord,
        checkpoints: Sequence[NodeCheckpoint],
        events: Sequence[Event],
        *,
        audits: Sequence[AuditRecord] = (),
    ) -> list[Event]:
        """:meth:`finish_run`, its events and its audit records in one trip and one transaction.

        The inserts hold the final write's fence condition too: the run, its
        events and its audit records land together, or are refused together.
        """
        [outcome] = await self.log_writes([(RunFinish(run, checkpoints, audits), events)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def log_writes(
        self, writes: Sequence[tuple[RunFinish | None, Sequence[Event]]]
    ) -> list[list[Event] | Exception]:
        """Every write in one trip to the writer and one transaction, each all or none.

        A run's final write holds its fence condition on its events' and
        audit records' inserts too (see :meth:`finish_run_logged`).
        """
        if self._writer is None:
            raise self._closed()
        groups: list[tuple[list[_Write], list[_Write], list[_Write], list[tuple[str, int]]]] = []
        for finish, events in writes:
            if finish is None:
                groups.append(([], _append_ops(events, ()) if events else [], [], []))
                continue
            run, checkpoints, audits = finish
            fences = list(
                dict.fromkeys([(run.id, run.fence), *((c.run_id, c.fence) for c in checkpoints)])
            )
            statements = [_upsert_checkpoint(c, fences) for c in checkpoints]
            statements.append(_update_run(run, fences))
            statements.extend(_insert_audit(record, fences) for record in audits)
            ops = [_Write(sql, params) for sql, params in statements]
            last = len(checkpoints) + 1  # the run's update ends its own statements
            appends = _append_ops(events, fences) if events else []
            groups.append((ops[:last], appends, ops[last:], fences))
        await self._writer.write(
            [[*ops, *audit, *appends] for ops, appends, audit, _ in groups], self._checkpointer
        )
        outcomes: list[list[Event] | Exception] = []
        for (finish, events), (ops, appends, audit, fences) in zip(writes, groups, strict=True):
            error = next((op.error for op in (*ops, *audit, *appends) if op.error), None)
            if isinstance(error, Exception):
                outcomes.append(error)
            elif error is not None:
                raise error
            elif finish is None or ops[-1].rowcount:
                outcomes.append(_logged(events, appends))
            elif not finish.checkpoints and await self._fence_of(finish.run.id) is None:
                # An unknown run, as save_run: nothing written; its events and audit go alone.
                outcomes.append(await self.append_events(events) if events else [])
                await self.append_audits(finish.audits)
            else:
                outcomes.append(await self._lease_lost(fences))
        return outcomes

    async def claim_run(
        self, run_id: str, owner: str, *, lease: float, now: float
    ) -> RunRecord | None:
        """Take an unfinished run whose lease is None or expired at ``now``; fence + 1.

        One ``UPDATE ... RETURNING``: of concurrent claimers (tasks or
        processes), SQLite's write lock lets one through.
        """
        rows = await self._write_fetch(_CLAIM_RUN, (owner, float(now + lease), run_id, now))
        return _run(rows[0]) if rows else None

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], *, until: float
    ) -> set[str]:
        """Extend to ``until`` the leases ``owner`` holds with these tokens (one transaction)."""
        items = list(fences.items())
        if not items:
            return set()
        counts = await self._write_many(
            [(_RENEW_LEASE, (until, run_id, owner, fence)) for run_id, fence in items]
        )
        return {run_id for (run_id, _), count in zip(items, counts, strict=True) if count}

    async def claimable_runs(
        self, now: float, *, limit: int = 100, workflows: Collection[str] | None = None
    ) -> list[RunRecord]:
        """Unfinished runs with no lease or an expired one at ``now``, oldest first."""
        if limit <= 0:
            return []
        names: tuple[str, ...] = ()
        if workflows is None:
            sql = _CLAIMABLE_RUNS.format(workflows="")
        else:
            names = tuple(workflows)
            if not names:
                return []
            marks = ", ".join("?" * len(names))
            sql = _CLAIMABLE_RUNS.format(workflows=f" AND workflow IN ({marks})")
        return [_run(row) for row in await self._read(sql, (now, *names, limit))]

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
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            # An unknown cursor (or another tenant's run) matches nothing.
            anchor = "SELECT created_at, id FROM runs WHERE id = ?"
            params.append(before)
            if tenant is not None:
                anchor += " AND tenant = ?"
                params.append(tenant)
            where.append(f"(created_at, id) < ({anchor})")
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_run(row) for row in await self._read(sql, params)]

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still ``pending`` or ``running``, oldest first."""
        return [_run(row) for row in await self._read(_UNFINISHED_RUNS)]

    async def save_checkpoint(self, checkpoint: NodeCheckpoint) -> None:
        """Record a finished node (replacing an earlier record); committed on return.

        A conditional upsert: written only while the run's fence is the
        checkpoint's, else :class:`LeaseLost` (an unknown run too).
        """
        fences = [(checkpoint.run_id, checkpoint.fence)]
        if not await self._write(*_upsert_checkpoint(checkpoint, fences)):
            raise await self._lease_lost(fences)

    async def get_checkpoints(self, run_id: str) -> dict[str, NodeCheckpoint]:
        """Every recorded node of a run, by node id."""
        rows = await self._read(_SELECT_CHECKPOINTS, (run_id,))
        return {row[0]: _decode_checkpoint(row[1]) for row in rows}

    # -- events ----------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Append events in order; each gets the id of its log position.

        One multi-row ``INSERT`` per 500 events, group-committed with the
        other writes queued meanwhile (a caller's statements run back to back
        in one transaction), so the positions of a burst are consecutive and
        every process's appends are in one order.
        """
        if not events:
            return []
        ops = _append_ops(events, ())
        await self._submit(ops)
        return _logged(events, ops)

    async def read_events(
        self, *, after: str | None = None, limit: int = 1000, run_id: str | None = None
    ) -> list[Event]:
        """Events after position ``event_seq(after)``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        position = event_seq(after)
        if run_id is None:
            rows = await self._read(_READ_EVENTS, (position, limit))
        else:
            rows = await self._read(_READ_RUN_EVENTS, (position, run_id, limit))
        return [_event(seq, data) for seq, data in rows]

    async def last_event_id(self) -> str | None:
        """The id of the newest event in the log (None when it is empty)."""
        rows = await self._read(_LAST_EVENT)
        return None if rows[0][0] is None else event_id(int(rows[0][0]))

    # -- retention -------------------------------------------------------------

    async def prune_runs(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` finished runs older than ``before``, with their checkpoints.

        Short statements on an index, applied with the other writes of their
        group commit, so requests wait at most for one batch.
        """
        if limit <= 0:
            return 0
        rows = await self._read(
            "SELECT id FROM runs WHERE created_at < ? AND status NOT IN ('pending', 'running')"
            " AND coalesce(finished_at, created_at) < ? ORDER BY created_at, id LIMIT ?",
            (before, before, limit),
        )
        run_ids = tuple(row[0] for row in rows)
        if not run_ids:
            return 0
        marks = ", ".join("?" * len(run_ids))
        counts = await self._write_many(
            [
                (f"DELETE FROM checkpoints WHERE run_id IN ({marks})", run_ids),
                (f"DELETE FROM runs WHERE id IN ({marks})", run_ids),
            ]
        )
        return counts[1]

    async def prune_events(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` of the oldest events whose ``time`` is before ``before``."""
        if limit <= 0:
            return 0
        # The log's oldest events: a prefix whose times are before the cut-off.
        events = await self._read("SELECT seq, data FROM events ORDER BY seq LIMIT ?", (limit,))
        last_seq = None
        for seq, data in events:
            if _decode_event(data).time >= before:
                break
            last_seq = seq
        if last_seq is None:
            return 0
        return await self._write("DELETE FROM events WHERE seq <= ?", (last_seq,))

    async def prune_audit(self, before: float, *, limit: int = 500) -> int:
        """Delete at most ``limit`` audit records whose ``time`` is before ``before``."""
        if limit <= 0:
            return 0
        return await self._write(
            "DELETE FROM audit WHERE seq IN"
            " (SELECT seq FROM audit WHERE time < ? ORDER BY time LIMIT ?)",
            (before, limit),
        )

    # -- audit -----------------------------------------------------------------

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append several audit records in order, in one trip to the writer (one transaction)."""
        if records:
            await self._write_many([(_INSERT_AUDIT, _audit_params(r)) for r in records])

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
            ("tenant = ?", tenant),
            ("principal = ?", principal),
            ("workflow = ?", workflow),
            ("time >= ?", since),
            ("time < ?", until),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT data FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time, seq LIMIT ?"
        params.append(limit)
        return [_decode_audit(row[0]) for row in await self._read(sql, params)]

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
            await self._write(_INSERT_CREDENTIAL, params)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"credential {record.id!r} (or its token) already exists") from exc

    async def get_credential(self, kind: str, token_hash: str) -> CredentialRecord | None:
        """The credential of that kind with that token hash, or None."""
        rows = await self._read(_SELECT_CREDENTIAL, (kind, token_hash))
        return _credential(rows[0]) if rows else None

    async def get_credential_by_id(self, credential_id: str) -> CredentialRecord | None:
        """The credential with that id, or None."""
        rows = await self._read(_SELECT_CREDENTIAL_BY_ID, (credential_id,))
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
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_CREDENTIAL_COLS} FROM credentials"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        return [_credential(row) for row in await self._read(sql, params)]

    async def revoke_credential(self, credential_id: str, *, at: float) -> bool:
        """Set ``revoked_at`` to ``at`` unless already revoked at or before it."""
        return bool(await self._write(_REVOKE_CREDENTIAL, (at, credential_id, at)))

    # -- cache -----------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None if absent or expired (wall-clock time)."""
        rows = await self._read(_SELECT_CACHE, (key, time.time()))
        return bytes(rows[0][0]) if rows else None

    async def cache_set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Set a value, expiring after ``ttl`` seconds (never if None)."""
        now = time.time()
        await self._write(_UPSERT_CACHE, (key, bytes(value), None if ttl is None else now + ttl))
        self._cache_sets += 1
        if self._cache_sets % _CACHE_PURGE_EVERY == 0:
            await self._write(_PURGE_CACHE, (now,))

    async def cache_delete(self, key: str) -> None:
        """Remove a value (no error if absent)."""
        await self._write(_DELETE_CACHE, (key,))

    async def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> float:
        """Take ``cost`` tokens from bucket ``key``: 0.0 if taken, else the seconds to wait.

        Atomic across tasks, objects and processes: one ``BEGIN IMMEDIATE``
        transaction reads and writes the bucket, in one call of the writer's
        thread. Times are wall-clock.
        """
        if self._writer is None:
            raise self._closed()
        writer = self._writer
        return await writer.run(_take_tokens, writer.conn, key, capacity, refill_per_second, cost)

    # -- blobs -----------------------------------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` (replacing)."""
        await self._write(_UPSERT_BLOB, (key, bytes(data)))

    async def get_blob(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        rows = await self._read(_SELECT_BLOB, (key,))
        return bytes(rows[0][0]) if rows else None

    async def delete_blob(self, key: str) -> None:
        """Remove a blob (no error if absent)."""
        await self._write(_DELETE_BLOB, (key,))

    async def list_blobs(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted (by code point)."""
        if not prefix:
            rows = await self._read(_LIST_BLOBS)
        elif (end := _prefix_end(prefix)) is None:
            rows = await self._read(_LIST_BLOBS_FROM, (prefix,))
        else:
            rows = await self._read(_LIST_BLOBS_RANGE, (prefix, end))
        return [row[0] for row in rows]


_R = TypeVar("_R")


class _Connection:
    """The writer: a stdlib connection driven by a thread of its own, one call at a time.

    ``execute`` and ``execute_fetchall`` mirror aiosqlite's, so the writer and
    the reader are used alike; :meth:`run` runs any function on the connection
    (a batch of writes: one trip to the thread). A call, once queued, runs to
    its end: its caller waits for it even when cancelled (shielded), so a
    transaction is never left half-done by a cancelled caller.

    A thread of its own rather than ``anyio.to_thread``: a trip costs half as
    much (about 35 µs against 80 µs here), which a lone writer pays per write.
    """

    __slots__ = ("_calls", "_closed", "_thread", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._closed = False
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=_serve, args=(self._calls,), name="nexus-sqlite-writer", daemon=True
        )
        self._thread.start()

    @classmethod
    async def connect(cls, path: str) -> _Connection:
        """Open ``path`` in autocommit mode, waiting up to ``_BUSY_TIMEOUT`` for locks."""
        # isolation_level=None: autocommit, each statement commits on its own.
        # timeout sets SQLite's busy_timeout: wait that long for another writer's lock.
        connect = functools.partial(
            sqlite3.connect,
            path,
            isolation_level=None,
            timeout=_BUSY_TIMEOUT,
            check_same_thread=False,
        )
        return cls(await anyio.to_thread.run_sync(connect))

    async def run(self, func: Callable[..., _R], *args: Any) -> _R:
        """``func(*args)`` in the connection's thread, after the calls before it."""
        future: asyncio.Future[_R] = self._queue(func, args)
        with anyio.CancelScope(shield=True):  # once queued, it runs: its caller waits for it
            result = await future
        return result  # noqa: RET504 - a return inside the scope reads as falling off to mypy

    async def write(self, items: list[list[_Write]], checkpointer: _Checkpointer | None) -> None:
        """Apply ``items`` (each one caller's writes, all or none) in the writer's thread.

        Group commit: the thread applies every write queued while it applied
        the last ones in one transaction; should a statement fail, that
        transaction is applied again with a savepoint per item, so only its
        own item fails. Each write's outcome is on the write (its ``error``).
        The loop does not wait for a batch to close (nor takes a lock) before
        queueing more: it goes on serving while the thread writes. Once
        queued, a write is applied even if its caller is cancelled meanwhile.
        """
        await self._queue(_apply_batch, (self.conn, items, checkpointer))

    def _queue(self, func: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue ``func(*args)`` for the thread; the future its outcome settles."""
        if self._closed:
            raise ValueError("the SQLite writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((func, args, loop, future))
        return future

    def post(self, func: Callable[..., object], *args: Any) -> None:
        """``func(*args)`` in the connection's thread, after the calls before it; never waits.

        Callable from any thread; a failure is logged. Does nothing once closed.
        """
        if not self._closed:
            self._calls.put((func, args, None, None))

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Execute one statement."""
        return await self.run(self.conn.execute, sql, tuple(params))

    async def execute_fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Execute one statement; its rows."""
        return await self.run(_fetchall, self.conn, sql, tuple(params))

    async def close(self) -> None:
        """Close the connection after the calls before it, and end the thread."""
        if self._closed:
            return
        try:
            await self.run(self.conn.close)
        finally:
            self._closed = True
            self._calls.put(None)


_Call = tuple[
    Callable[..., Any],
    tuple[Any, ...],
    asyncio.AbstractEventLoop | None,
    "asyncio.Future[Any] | None",
]


def _serve(calls: queue.SimpleQueue[_Call | None]) -> None:
    """The writer thread: run queued calls in order until told to stop (None).

    Writes (:meth:`_Connection.write`) queued one after another are applied
    in one transaction: the group commit.
    """
    taken: list[_Call | None] = []  # a call taken off the queue while gathering writes
    while (call := taken.pop() if taken else calls.get()) is not None:
        if call[0] is not _apply_batch:
            _call(call)
            continue
        group = [call]
        while True:  # take the writes queued meanwhile, up to anything else
            try:
                following = calls.get_nowait()
            except queue.Empty:
                break
            if following is None or following[0] is not _apply_batch:
                taken.append(following)
                break
            group.append(following)
        _apply_group(group)


def _call(call: _Call) -> None:
    func, args, loop, future = call
    try:
        result, error = func(*args), None
    except BaseException as exc:
        result, error = None, exc
    if future is None:  # posted from another thread: nobody waits
        if error is not None:
            _log.warning("the SQLite writer's %s failed: %s", func.__name__, error)
        return
    assert loop is not None
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
        loop.call_soon_threadsafe(_settle, future, result, error)


def _apply_group(group: list[_Call]) -> None:
    """Apply the writes of ``group`` in one transaction, then wake their callers."""
    conn, _, checkpointer = group[0][1]
    items = [ops for call in group for ops in call[1][1]]
    try:
        _apply_batch(conn, items, checkpointer)
    except BaseException as exc:  # the transaction failed as a whole (the database is busy)
        for ops in items:
            for op in ops:
                op.error = op.error or exc
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[Any]]] = {}
    for _, _, loop, future in group:
        if loop is not None and future is not None:
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():  # one wake-up of each loop for the whole group
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_writes, futures)


def _settle_writes(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():  # done: its caller was cancelled
            future.set_result(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _Checkpointer:
    """Checkpoints the WAL from a connection and a thread of its own, off the write path.

    The writer's thread calls :meth:`wrote` after each batch (cheap: a counter);
    once ``after`` rows (plus one per commit) were written since the last
    checkpoint, this thread runs ``PRAGMA wal_checkpoint(PASSIVE)``: it copies
    the WAL's pages into the database file without waiting for anyone, while
    writers go on appending to the WAL.

    The WAL is reused from its start only once every page of it is copied
    (SQLite restarts it at the next write then), and each reuse costs the
    writer an fsync (of the WAL's header). Writes that came during the copy
    keep that from happening, which is fine while the WAL is short (readers
    find a page in it by the part not yet copied). Once it holds ``limit``
    pages, the writer's own thread copies the pages written during the last
    copy (``post``: after the writes queued before it), a handful rather than
    SQLite's thousand, so that the next write reuses the WAL. Should readers
    still keep it from being reused until it holds twice ``limit`` pages, this
    thread checkpoints with ``TRUNCATE``: it waits up to ``_TRUNCATE_WAIT_MS``
    for them (blocking writers meanwhile), then empties the file; if they are
    not done by then, it tries again at the next checkpoint.

    Crash safety is SQLite's: a commit is durable in the WAL; a checkpoint
    syncs the WAL before copying it and the database file after (this
    connection has the writer's ``synchronous``), and a checkpoint cut short
    is redone from the WAL at the next open.
    """

    def __init__(
        self, path: str, synchronous: str, writer: _Connection, *, after: int, limit: int
    ) -> None:
        self.after = max(1, after)
        self.limit = max(1, limit)
        self._writer = writer
        self._conn = sqlite3.connect(
            path, isolation_level=None, timeout=_BUSY_TIMEOUT, check_same_thread=False
        )
        try:
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._conn.execute(f"PRAGMA busy_timeout = {_TRUNCATE_WAIT_MS}")
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            self._conn.close()
            raise
        self._seen: int | None = None  # the writer's total_changes at the last call
        self._pending = 0  # written since the last checkpoint (the writer's thread only)
        self._due = threading.Event()
        self._stopping = False
        #: Checkpoints run (in this thread), and of those how many truncated the WAL.
        self.checkpoints = 0
        self.truncations = 0
        #: The WAL's size in pages after the last checkpoint of this thread.
        self.wal_pages = 0
        self._thread = threading.Thread(
            target=self._serve, name="nexus-sqlite-checkpointer", daemon=True
        )
        self._thread.start()

    def wrote(self, total_changes: int) -> None:
        """The writer committed (or tried to): ``total_changes`` is its connection's count."""
        seen, self._seen = self._seen, total_changes
        self._pending += 1 + (total_changes - seen if seen is not None else 0)
        if self._pending >= self.after:
            self._pending = 0
            self._due.set()

    def checkpoint(self) -> None:
        """Checkpoint in this thread; past the limit, have the WAL reused (see the class)."""
        busy, pages, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages >= 2 * self.limit:  # readers kept it from being reused: wait for them
            busy, pages, copied = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                self.truncations += 1
        elif pages >= self.limit and not busy and copied == pages:
            # The writer copies what came meanwhile, so that its next write reuses the WAL.
            self._writer.post(_catch_up, self._writer.conn)
        self.checkpoints += 1
        self.wal_pages = max(0, pages)

    def _serve(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                break
            try:
                self.checkpoint()
            except sqlite3.Error as exc:  # SQLite's own auto-checkpoint would have failed too
                _log.warning("checkpointing the SQLite WAL failed: %s", exc)
        self._conn.close()

    def close(self) -> None:
        """Stop the thread (after a checkpoint under way) and close its connection (blocks)."""
        self._stopping = True
        self._due.set()
        self._thread.join()


def _catch_up(conn: sqlite3.Connection) -> None:
    """Copy what is left of the WAL from the writer's thread, so the next write reuses it."""
    if not conn.in_transaction:  # between the statements of a transaction: next time
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


class _Write:
    """One queued write statement and, once applied, its outcome."""

    __slots__ = ("error", "fetch", "last_rowid", "params", "rowcount", "rows", "sql")

    def __init__(self, sql: str, params: tuple[Any, ...], *, fetch: bool = False) -> None:
        self.sql = sql
        self.params = params
        self.fetch = fetch  # keep the rows it returns
        self.error: BaseException | None = None
        self.reset()

    def reset(self) -> None:
        """Forget an outcome (its statement was rolled back)."""
        self.rowcount = 0
        self.last_rowid = 0
        self.rows: list[Any] = []

    def inserted_at(self) -> range:
        """The rowids of the rows an ``INSERT`` added: one statement's are consecutive."""
        return range(self.last_rowid - self.rowcount + 1, self.last_rowid + 1)


def _execute(conn: sqlite3.Connection, op: _Write) -> None:
    cursor = conn.execute(op.sql, op.params)
    if op.fetch:
        op.rows = cursor.fetchall()
    op.rowcount = cursor.rowcount
    op.last_rowid = cursor.lastrowid or 0


def _take_tokens(
    conn: sqlite3.Connection,
    key: str,
    capacity: float,
    refill_per_second: float,
    cost: float,
) -> float:
    """:meth:`SQLiteStorage.take_tokens` in the writer's thread: one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()  # once the lock is held: no later time is stored before it
        rows = conn.execute(_SELECT_BUCKET, (key,)).fetchall()
        if rows:
            tokens, updated = rows[0]
            tokens = min(capacity, tokens + max(0.0, now - updated) * refill_per_second)
        else:
            tokens = capacity
        if tokens >= cost:
            conn.execute(_UPSERT_BUCKET, (key, tokens - cost, now))
            wait = 0.0
        elif cost > capacity or refill_per_second <= 0:
            wait = math.inf
        else:
            wait = (cost - tokens) / refill_per_second
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # no transaction left: the error ended it
            conn.execute("ROLLBACK")
        raise
    return wait


def _apply_batch(
    conn: sqlite3.Connection, batch: list[list[_Write]], checkpointer: _Checkpointer | None
) -> None:
    """Apply queued writes in one transaction (writer thread); tell the checkpointer."""
    try:
        _apply_writes(conn, batch)
    finally:
        if checkpointer is not None:
            checkpointer.wrote(conn.total_changes)


def _apply_writes(conn: sqlite3.Connection, batch: list[list[_Write]]) -> None:
    """Apply queued writes in one transaction (writer thread); each fails only its own caller.

    Each item of ``batch`` is one caller's statements, applied all or none.
    Fast path: every statement in one transaction. Statements rarely fail (a
    duplicate id, a constraint); when one does, the transaction is rolled back
    and the batch applied again with a savepoint per caller, so the others
    still land and only the failing caller reports its error.
    """
    if len(batch) == 1 and len(batch[0]) == 1:  # autocommit: its own transaction
        op = batch[0][0]
        try:
            _execute(conn, op)
        except Exception as exc:
            op.error = exc
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            for ops in batch:
                for op in ops:
                    _execute(conn, op)
        except Exception:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            for ops in batch:
                conn.execute("SAVEPOINT nexus_write")
                for op in ops:
                    op.reset()
                for op in ops:
                    try:
                        _execute(conn, op)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO nexus_write")
                        op.error = exc
                        for other in ops:
                            other.reset()
                        break
                conn.execute("RELEASE nexus_write")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
