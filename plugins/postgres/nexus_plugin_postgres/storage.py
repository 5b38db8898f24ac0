"""``postgresql://``: every record role on PostgreSQL (psycopg 3, psycopg-pool).

Skeleton: the class and its transaction API; the roles land next.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStorage"]


class PostgresStorage:  # placeholder until the roles land
    """Every storage role on one PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[object]]:
        """A pool connection inside one transaction, committed when the block ends.

        While the block runs, every method of this backend called from the same
        task (or a task it starts) uses that connection, so its writes join the
        transaction: ``create_run`` and a Procrastinate ``defer_async`` on the
        yielded connection commit together, or not at all.
        """
        raise NotImplementedError
        yield
