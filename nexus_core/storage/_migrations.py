"""The SQLite schema, as an ordered list of migration steps.

The database's ``PRAGMA user_version`` is the number of steps applied. At open
the backend applies the missing ones, in order, in one ``BEGIN IMMEDIATE``
transaction. Never edit a released step: append a new one.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "Migration"]

#: One step: SQL statements run in order (no ``executescript``: it would commit).
Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: the initial schema.
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            principal TEXT,
            created_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            ttl REAL NOT NULL,
            channels BLOB NOT NULL,
            state BLOB NOT NULL
        )""",
        "CREATE INDEX sessions_expires_at ON sessions (expires_at)",
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            status TEXT NOT NULL,
            tenant TEXT NOT NULL,
            principal TEXT,
            session_id TEXT,
            channel TEXT,
            inputs BLOB NOT NULL,
            output BLOB NOT NULL,
            error BLOB,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            idempotency_key TEXT,
            input_hash TEXT,
            owner TEXT,
            UNIQUE (tenant, idempotency_key)
        )""",
        "CREATE INDEX runs_order ON runs (created_at, id)",
        "CREATE INDEX runs_tenant ON runs (tenant, created_at, id)",
        "CREATE INDEX runs_workflow ON runs (workflow, created_at, id)",
        "CREATE INDEX runs_session ON runs (session_id, created_at, id)",
        "CREATE INDEX runs_unfinished ON runs (created_at, id)"
        " WHERE status IN ('pending', 'running')",
        """CREATE TABLE checkpoints (
            run_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (run_id, node_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            run_id TEXT,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX events_run ON events (run_id, seq)",
        """CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            tenant TEXT NOT NULL,
            principal TEXT,
            workflow TEXT,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_tenant ON audit (tenant, time)",
        """CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            value BLOB NOT NULL,
            expires_at REAL
        )""",
        "CREATE INDEX cache_expires_at ON cache (expires_at) WHERE expires_at IS NOT NULL",
        """CREATE TABLE buckets (
            key TEXT PRIMARY KEY,
            tokens REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE blobs (
            key TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
    ),
    # 2: credentials the host issues (API keys, CLI tokens), by the hash of their token.
    (
        """CREATE TABLE credentials (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            principal TEXT NOT NULL,
            tenant TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL,
            data BLOB NOT NULL,
            UNIQUE (kind, token_hash)
        )""",
        "CREATE INDEX credentials_principal ON credentials (principal, created_at, id)",
        "CREATE INDEX credentials_order ON credentials (created_at, id)",
    ),
    # 3: idempotency keys are scoped to (tenant, principal, key), not (tenant, key):
    # another principal's equal key is a different key. SQLite cannot drop a
    # table constraint, so the table is rebuilt (keys were unique per tenant,
    # so they are unique per tenant and principal too).
    (
        """CREATE TABLE runs_v3 (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            status TEXT NOT NULL,
            tenant TEXT NOT NULL,
            principal TEXT,
            session_id TEXT,
            channel TEXT,
            inputs BLOB NOT NULL,
            output BLOB NOT NULL,
            error BLOB,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            idempotency_key TEXT,
            input_hash TEXT,
            owner TEXT
        )""",
        "INSERT INTO runs_v3 SELECT id, workflow, status, tenant, principal, session_id, channel,"
        " inputs, output, error, created_at, started_at, finished_at, idempotency_key,"
        " input_hash, owner FROM runs",
        "DROP TABLE runs",
        "ALTER TABLE runs_v3 RENAME TO runs",
        "CREATE INDEX runs_order ON runs (created_at, id)",
        "CREATE INDEX runs_tenant ON runs (tenant, created_at, id)",
        "CREATE INDEX runs_workflow ON runs (workflow, created_at, id)",
        "CREATE INDEX runs_session ON runs (session_id, created_at, id)",
        "CREATE INDEX runs_unfinished ON runs (created_at, id)"
        " WHERE status IN ('pending', 'running')",
        # A run without a principal keys as principal '' (the expression is the upsert target).
        "CREATE UNIQUE INDEX runs_idempotency ON runs"
        " (tenant, ifnull(principal, ''), idempotency_key) WHERE idempotency_key IS NOT NULL",
    ),
    # 4: run leases with fencing, and event ids given by the log. An unfinished
    # run of before has fence 0 and no lease: claimable by the first process
    # that recovers runs. Event ids become the log position (16 digits): older
    # ids are rewritten, so a client holding one replays from the start.
    (
        "ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN lease_expires_at REAL",
        "CREATE INDEX runs_claimable ON runs (lease_expires_at, created_at, id)"
        " WHERE status IN ('pending', 'running')",
        "UPDATE events SET id = printf('%016d', seq)",
    ),
    # 5: the event id column goes: an id is its position (seq), so a second
    # unique index on the same value only made every append dearer. The table
    # is rebuilt (SQLite cannot drop a UNIQUE column) and keeps the highest
    # position ever handed out, so positions are never reused.
    (
        """CREATE TABLE events_v5 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT,
            data BLOB NOT NULL
        )""",
        "INSERT INTO events_v5 (seq, run_id, data) SELECT seq, run_id, data FROM events",
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'events_v5', 0"
        " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events_v5')",
        "UPDATE sqlite_sequence SET seq = max(seq, ifnull("
        "(SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)) WHERE name = 'events_v5'",
        "DROP TABLE events",
        "ALTER TABLE events_v5 RENAME TO events",
        "CREATE INDEX events_run ON events (run_id, seq)",
    ),
)
