"""``SQLQueryNode``: one parameterised SQLite statement through aiosqlite."""

from __future__ import annotations

from typing import Any, Literal

import aiosqlite
import msgspec

from nexus_core.workflows.node import Node

from ._common import ConfigError, NamedConfigErrors

__all__ = ["SQLQueryConfig", "SQLQueryInputs", "SQLQueryNode", "SQLQueryOutputs"]


class SQLQueryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`SQLQueryNode`.

    ``database`` is a file path, ``":memory:"`` or a ``file:`` URI. ``script``
    (optional) is SQL run before the query on the same connection, without
    parameters: a schema (``CREATE TABLE IF NOT EXISTS``) or seed data.
    """

    database: str
    query: str
    fetch: Literal["all", "one", "none"] = "all"
    script: str | None = None


class SQLQueryInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`SQLQueryNode`: named (``:name``) or positional (``?``) parameters."""

    params: dict[str, Any] | list[Any] = []


class SQLQueryOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`SQLQueryNode`: rows as dicts, and the rows changed or returned."""

    rows: list[dict[str, Any]]
    rowcount: int


class SQLQueryNode(NamedConfigErrors, Node):
    """Execute one SQL statement on SQLite with bound parameters; return rows as dicts.

    Parameters are always bound by SQLite, never formatted into the SQL.
    ``fetch``: ``all`` rows, ``one`` (the first row, or none), or ``none`` (a
    write). Each run opens its own connection and commits, so a ``":memory:"``
    database lives for one run: give it a ``script`` to create and fill it.
    """

    Config = SQLQueryConfig
    Inputs = SQLQueryInputs
    Outputs = SQLQueryOutputs

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        for key in ("database", "query"):
            if not getattr(self.config, key).strip():
                raise ConfigError(key, "must not be empty")

    async def run(self, inputs: SQLQueryInputs) -> SQLQueryOutputs:
        """Run the script (if any) and the query; commit; return the fetched rows."""
        config = self.config
        database = config.database
        async with aiosqlite.connect(database, uri=database.startswith("file:")) as db:
            if config.script:
                await db.executescript(config.script)
            async with db.execute(config.query, inputs.params) as cursor:
                if config.fetch == "all":
                    raw = list(await cursor.fetchall())
                elif config.fetch == "one":
                    row = await cursor.fetchone()
                    raw = [row] if row is not None else []
                else:
                    raw = []
                names = [column[0] for column in cursor.description or ()]
                rowcount = cursor.rowcount
            await db.commit()
        rows = [dict(zip(names, row, strict=True)) for row in raw]
        return SQLQueryOutputs(rows=rows, rowcount=rowcount if rowcount >= 0 else len(rows))
