"""What PostgreSQL adds to the contract: commit-ordered event positions, one transaction
for several calls, migrations under concurrent starts, and connections that break.

Every test works in schemas of its own (dropped after) on the machine's server.
Connection loss is real: ``pg_terminate_backend`` on this test's connections
(found by ``application_name``), or an outage of this test's own login role
(``ALTER ROLE ... NOLOGIN``), never a restart of the shared server.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nexus_core.plugin import Event, LeaseLost, NodeCheckpoint, RunRecord, event_seq
from pg_support import POSTGRES_URL, Schemas, drop_schema, server_url, with_params
from psycopg import sql

from nexus_plugin_postgres.storage import (
    DatabaseUnavailable,
    PostgresStorage,
    SchemaVersionError,
    parse_url,
)

pytestmark = pytest.mark.anyio


def admin(query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement as the server's admin user; its rows."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def terminate(application_name: str) -> int:
    """Terminate every backend of ``application_name``; how many."""
    rows = admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    )
    return len(rows)


async def wait_for(predicate: object, what: str, within: float = 10.0) -> None:
    """Poll an async or sync predicate until truthy, or fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()  # type: ignore[operator]
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


@pytest.fixture
async def store(schemas: Schemas) -> AsyncIterator[PostgresStorage]:
    storage = PostgresStorage(schemas.url(application_name=f"t_{secrets.token_hex(4)}"))
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


def _run(rid: str, **fields: object) -> RunRecord:
    return RunRecord(id=rid, workflow="w", created_at=time.time(), **fields)  # type: ignore[arg-type]


# -- URLs ---------------------------------------------------------------------------------


def test_url_settings_are_checked_and_never_leak_the_password() -> None:
    parsed = parse_url("postgresql://u:secret@db:5433/nexus?schema=s1&pool_max=3&sslmode=prefer")
    assert (parsed.schema, parsed.pool_min, parsed.pool_max, parsed.migrate) == ("s1", 1, 3, True)
    assert 'search_path="s1"' in parsed.conninfo and "sslmode=prefer" in parsed.conninfo
    assert parsed.where == "db:5433/nexus"
    for bad, named in (
        ("postgresql://u:secret@db/x?pool_max=lots", "pool_max"),
        ("postgresql://u:secret@db/x?pool_min=5&pool_max=2", "pool_min"),
        ("postgresql://u:secret@db/x?migrate=perhaps", "migrate"),
        ("postgresql://u:secret@db/x?schema=" + "s" * 70, "schema"),
    ):
        with pytest.raises(ValueError, match=named) as caught:
            parse_url(bad)
        assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        parse_url("mysql://db/x")


async def test_unreachable_server_is_a_clear_error() -> None:
    storage = PostgresStorage("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/none"):
        await storage.open()


# -- the event log --------------------------------------------------------------------------


async def test_an_open_append_hides_later_ones_until_it_commits(schemas: Schemas) -> None:
    """Positions commit in order: a reader never sees N+1 before N, even across processes.

    A holds its append's transaction open; B's append (another pool, as another
    process) waits on the log's counter row instead of committing a higher
    position first, so a reader that has seen B's event can never later find A's.
    """
    url = schemas.url()
    a, b = PostgresStorage(url), PostgresStorage(url)
    await a.open()
    await b.open()
    try:
        appended: list[Event] = []

        async def append_b() -> None:
            appended.extend(await b.append_events([Event(type="b")]))

        async with anyio.create_task_group() as tg, a.transaction():
            [first] = await a.append_events([Event(type="a")])
            tg.start_soon(append_b)
            # B is blocked on the counter row's lock (a real wait, seen by the server).
            await wait_for(
                lambda: admin(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN"
                    " ('transactionid', 'tuple')"
                )[0][0],
                "B's append to wait for A's",
            )
            assert await b.read_events() == []  # nothing committed yet: nothing visible
        log = await b.read_events()
        assert [e.type for e in log] == ["a", "b"]
        assert [event_seq(e.id) for e in log] == [event_seq(first.id), event_seq(first.id) + 1]
        assert appended == [log[1]]
    finally:
        await a.close()
        await b.close()


async def test_concurrent_appenders_and_a_tailing_reader_see_one_gapless_order(
    schemas: Schemas,
) -> None:
    """Four backends append 400 events concurrently; a reader tailing the log sees 1..400."""
    url = schemas.url(pool_max="3")
    writers = [PostgresStorage(url) for _ in range(4)]
    reader = PostgresStorage(url)
    for each in [*writers, reader]:
        await each.open()
    seen: list[int] = []
    try:
        async with anyio.create_task_group() as tg:

            async def write(store: PostgresStorage, n: int) -> None:
                for i in range(0, 100, 5):
                    await store.append_events([Event(type=f"w{n}.{i + k}") for k in range(5)])

            for n, store in enumerate(writers):
                tg.start_soon(write, store, n)
            while len(seen) < 400:
                after = None if not seen else f"{seen[-1]:016d}"
                page = await reader.read_events(after=after, limit=50)
                seen.extend(event_seq(event.id) for event in page)
                await anyio.lowlevel.checkpoint()
        assert seen == list(range(1, 401))  # no gap ever seen, no position skipped
    finally:
        for each in [*writers, reader]:
            await each.close()


# -- one transaction for several calls ---------------------------------------------------------


async def test_transaction_commits_or_rolls_back_with_the_callers_statement(
    store: PostgresStorage,
) -> None:
    """create_run joins transaction(); the caller's own statement lands or not with it."""
    async with store.transaction() as conn:
        await conn.execute("CREATE TABLE jobs (run_id text)")

    async def fail_midway() -> None:
        async with store.transaction() as conn:
            await store.create_run(_run("r1"))
            await conn.execute("INSERT INTO jobs VALUES ('r1')")
            assert await store.get_run("r1") is not None  # visible inside the transaction
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_midway()
    assert await store.get_run("r1") is None
    async with store.transaction() as conn:
        await store.create_run(_run("r2"))
        await conn.execute("INSERT INTO jobs VALUES ('r2')")
    assert await store.get_run("r2") is not None
    async with store.transaction() as conn:
        cur = await conn.execute("SELECT run_id FROM jobs")
        assert await cur.fetchall() == [("r2",)]

    async def time_out() -> None:
        async with store.transaction() as conn:
            await conn.execute("SET LOCAL statement_timeout = 1")
            await conn.execute("SELECT pg_sleep(1)")

    # The caller's own failing statement keeps its error (not taken for an outage).
    with pytest.raises(psycopg.errors.QueryCanceled):
        await time_out()
    assert await store.ping()


# -- migrations -----------------------------------------------------------------------------


def test_concurrent_starts_migrate_once(schemas: Schemas) -> None:
    """Six processes open one new schema at once: one migrates, every one starts."""
    url = schemas.url()
    script = (
        "import anyio, sys\n"
        "from nexus_plugin_postgres.storage import PostgresStorage\n"
        "async def main():\n"
        "    s = PostgresStorage(sys.argv[1])\n"
        "    await s.open()\n"
        "    await s.append_events([__import__('nexus_core.plugin').plugin.Event(type='up')])\n"
        "    await s.close()\n"
        "anyio.run(main)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    schema = parse_url(url).schema
    assert schema is not None
    rows = admin(
        sql.SQL("SELECT version FROM {}.nexus_migrations ORDER BY version")
        .format(sql.Identifier(schema))
        .as_string(None)
    )
    assert rows == [(n,) for n in range(1, len(PostgresStorage.migrations) + 1)]
    count = admin(
        sql.SQL("SELECT count(*) FROM {}.events").format(sql.Identifier(schema)).as_string(None)
    )
    assert count == [(6,)]


async def test_migrate_false_refuses_a_schema_that_is_behind(schemas: Schemas) -> None:
    url = schemas.url(migrate="false")
    with pytest.raises(SchemaVersionError, match="nexus db migrate"):
        await PostgresStorage(url).open()
    storage = PostgresStorage(url)
    assert await storage.migrate() == [1]
    await storage.open()  # now up to date
    await storage.close()


async def test_a_newer_schema_is_refused(store: PostgresStorage) -> None:
    async with store.transaction() as conn:
        await conn.execute("INSERT INTO nexus_migrations VALUES (99, 0)")
    with pytest.raises(SchemaVersionError, match="newer"):
        await PostgresStorage(store.url).open()


# -- connection loss ---------------------------------------------------------------------


async def test_terminated_connections_give_clear_errors_then_reconnect(
    store: PostgresStorage,
) -> None:
    """pg_terminate_backend on every pooled connection: reads retry, writes say what happened."""
    name = str(psycopg.conninfo.conninfo_to_dict(store.conninfo)["application_name"])
    await store.create_run(_run("r1"))
    assert terminate(name) >= 1
    assert (await store.get_run("r1")) is not None  # a read: retried on a new connection
    assert terminate(name) >= 1
    assert await store.ping()
    assert terminate(name) >= 1
    # An append whose connection broke is logged exactly once (it looks before appending again).
    [logged] = await store.append_events([Event(type="after.outage")])
    assert [e.id for e in await store.read_events()] == [logged.id]
    # A claim is not retried (it may have committed): a clear error naming the server.
    assert terminate(name) >= 1
    where = parse_url(store.url).where
    with pytest.raises(DatabaseUnavailable, match=f"lost the connection to PostgreSQL at {where}"):
        await store.claim_run("r1", "o", lease=10, now=time.time())
    assert (await store.claim_run("r1", "o", lease=10, now=time.time())) is not None
    created, new = await store.create_run(_run("r2"))  # a write after the outage: a new connection
    assert new and created.id == "r2"


@pytest.fixture
def outage_role(schemas: Schemas) -> Iterator[tuple[str, str]]:
    """A login role of this test's own, owning a new schema: (its URL, its name)."""
    server_url()
    role = f"t_role_{secrets.token_hex(4)}"
    admin(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
    admin(
        sql.SQL("GRANT CREATE ON DATABASE test TO {}").format(sql.Identifier(role)).as_string(None)
    )
    url = with_params(
        schemas.url(pool_timeout="1").replace("postgres@", f"{role}@", 1), application_name=role
    )
    try:
        yield url, role
    finally:
        drop_schema(str(parse_url(url).schema))
        admin(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)).as_string(None))
        admin(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(None))


async def test_a_lease_that_expires_during_an_outage_is_taken_over_after_it(
    outage_role: tuple[str, str],
) -> None:
    """The database is gone for this process (its role refused, its connections cut):
    heartbeats fail clearly, the lease runs out, and after the outage another
    owner takes the run over; the first owner's late write is refused (fenced)."""
    url, role = outage_role
    store = PostgresStorage(url)
    await store.open()
    try:
        now = time.time()
        run, _ = await store.create_run(
            _run("r1", status="running", owner="a", fence=1, lease_expires_at=now + 0.5)
        )
        admin(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)).as_string(None))
        terminate(role)
        with pytest.raises(DatabaseUnavailable):
            await store.renew_leases("a", {"r1": 1}, until=time.time() + 30)
        with pytest.raises(DatabaseUnavailable, match="does not answer"):
            await store.ping()
        admin(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))

        async def back() -> bool:
            try:
                return await store.ping()
            except DatabaseUnavailable:
                return False

        await wait_for(back, "the database to be back")
        claimed = await store.claim_run("r1", "b", lease=30, now=max(time.time(), now + 0.5))
        assert claimed is not None and claimed.fence == 2 and claimed.owner == "b"
        with pytest.raises(LeaseLost):
            await store.finish_run(
                run,
                [NodeCheckpoint(run_id="r1", node_id="n", status="completed", fence=1)],
            )
        assert await store.get_checkpoints("r1") == {}
    finally:
        admin(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
        await store.close()


# -- schema names ---------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schema=st.text(
        alphabet=st.sampled_from('abcXYZ09 _-."\\$é'),
        min_size=1,
        max_size=12,
    ).filter(lambda s: not s.startswith("pg_"))
)
@example(schema="My Schema")
@example(schema='a"b\\c é')
def test_any_schema_name_is_kept_as_written(schema: str) -> None:
    """Case, spaces, quotes and backslashes: the schema is created and used by exactly that name."""
    server_url()
    url = with_params(POSTGRES_URL, schema=schema)

    async def roundtrip() -> None:
        store = PostgresStorage(url)
        await store.open()
        try:
            await store.create_run(_run("r1"))
            assert (await store.get_run("r1")) is not None
        finally:
            await store.close()

    try:
        anyio.run(roundtrip)
        rows = admin(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'runs'",
            (schema,),
        )
        assert rows == [(1,)]
    finally:
        drop_schema(schema)
