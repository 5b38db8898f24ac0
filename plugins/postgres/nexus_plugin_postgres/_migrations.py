"""The PostgreSQL schema, as an ordered list of migration steps.

The table ``nexus_migrations`` records every applied step (its version, from
1, and when). :meth:`~nexus_plugin_postgres.storage.PostgresStorage.open`
applies the missing ones in one transaction under a transaction-level advisory
lock, so processes starting together migrate once and the others wait, then
find nothing left to do. Never edit a released step: append a new one.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "Migration"]

#: One step: SQL statements run in order, in the migration's transaction.
Migration = tuple[str, ...]

# Ids and keys use the "C" collation: they sort by code point, as the contract
# (and Python's str ordering) wants, whatever the database's locale.
MIGRATIONS: tuple[Migration, ...] = (
    # 1: the initial schema, every role.
    (
        """CREATE TABLE sessions (
            id text COLLATE "C" PRIMARY KEY,
            tenant text NOT NULL,
            principal text,
            created_at double precision NOT NULL,
            last_seen_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            ttl double precision NOT NULL,
            channels bytea NOT NULL,
            state bytea NOT NULL
        )""",
        "CREATE INDEX sessions_expires_at ON sessions (expires_at)",
        """CREATE TABLE runs (
            id text COLLATE "C" PRIMARY KEY,
            workflow text NOT NULL,
            status text NOT NULL,
            tenant text NOT NULL,
            principal text,
            session_id text,
            channel text,
            inputs bytea NOT NULL,
            output bytea NOT NULL,
            error bytea,
            created_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            idempotency_key text,
            input_hash text,
            owner text,
            fence bigint NOT NULL DEFAULT 0,
            lease_expires_at double precision
        )""",
        "CREATE INDEX runs_order ON runs (created_at, id)",
        "CREATE INDEX runs_tenant ON runs (tenant, created_at, id)",
        "CREATE INDEX runs_workflow ON runs (workflow, created_at, id)",
        "CREATE INDEX runs_session ON runs (session_id, created_at, id)",
        "CREATE INDEX runs_unfinished ON runs (created_at, id)"
        " WHERE status IN ('pending', 'running')",
        # A run without a principal keys as principal '' (the expression is the upsert target).
        "CREATE UNIQUE INDEX runs_idempotency ON runs"
        " (tenant, coalesce(principal, ''), idempotency_key) WHERE idempotency_key IS NOT NULL",
        """CREATE TABLE checkpoints (
            run_id text COLLATE "C" NOT NULL,
            node_id text NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (run_id, node_id)
        )""",
        # The last position handed out: one row, locked by every append until it
        # commits, so appends commit in position order (see storage.append_events).
        """CREATE TABLE event_head (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            seq bigint NOT NULL
        )""",
        "INSERT INTO event_head (one, seq) VALUES (true, 0)",
        """CREATE TABLE events (
            seq bigint PRIMARY KEY,
            run_id text,
            time double precision NOT NULL,
            data bytea NOT NULL
        )""",
        "CREATE INDEX events_run ON events (run_id, seq)",
        """CREATE TABLE audit (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time double precision NOT NULL,
            tenant text NOT NULL,
            principal text,
            workflow text,
            data bytea NOT NULL
        )""",
        "CREATE INDEX audit_time ON audit (time, seq)",
        "CREATE INDEX audit_tenant ON audit (tenant, time, seq)",
        """CREATE TABLE credentials (
            id text COLLATE "C" PRIMARY KEY,
            kind text NOT NULL,
            token_hash text NOT NULL,
            principal text NOT NULL,
            tenant text NOT NULL,
            created_at double precision NOT NULL,
            revoked_at double precision,
            data bytea NOT NULL,
            UNIQUE (kind, token_hash)
        )""",
        "CREATE INDEX credentials_principal ON credentials (principal, created_at, id)",
        "CREATE INDEX credentials_order ON credentials (created_at, id)",
        """CREATE TABLE cache (
            key text COLLATE "C" PRIMARY KEY,
            value bytea NOT NULL,
            expires_at double precision
        )""",
        "CREATE INDEX cache_expires_at ON cache (expires_at) WHERE expires_at IS NOT NULL",
        """CREATE TABLE buckets (
            key text COLLATE "C" PRIMARY KEY,
            tokens double precision NOT NULL,
            updated_at double precision NOT NULL,
            taken boolean NOT NULL DEFAULT false
        )""",
        """CREATE TABLE blobs (
            key text COLLATE "C" PRIMARY KEY,
            data bytea NOT NULL
        )""",
    ),
)
