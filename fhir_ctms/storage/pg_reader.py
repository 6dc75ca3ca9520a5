"""PostgreSQL read sessions on a plain asyncpg pool, beside SQLAlchemy's.

A read session needs no transaction (every statement is atomic on its own), so nothing of
SQLAlchemy's connection layer serves it: its pool checkout, the ``AUTOCOMMIT`` execution
option and the raw-connection lookup cost about 50 us of CPU per read-by-id, measured with 32
concurrent readers in one process (about 120 us a read through the engine, 65 us through
``asyncpg.Pool.fetch``). Read sessions therefore run their statements on an asyncpg pool of
their own, opened on the first read; SQLAlchemy keeps the write sessions (their transactions
and the writer lock), the schema and Alembic. The pool is as large as the engine's, and like
the engine's it opens connections only as they are needed.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine


@lru_cache(maxsize=512)
def dollar(sql: str) -> str:
    """``?`` placeholders (the storage's SQL, shared with SQLite) as asyncpg's ``$1, $2, ...``."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


async def keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset of a released read connection: nothing to undo. By default asyncpg sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release, a second
    round trip per read (``bench/hops.py``); a read session takes no lock, opens no cursor,
    listens to nothing and sets nothing. (asyncpg still rolls back a transaction left open.)"""


class PgReader:
    """The driver a read ``SqlSession`` runs statements on, for PostgreSQL."""

    pg = True

    def __init__(self, engine: AsyncEngine) -> None:
        # what the engine connects with (host, port, database, credentials, the URL's query
        # options), as SQLAlchemy's asyncpg dialect reads it from the URL, less its own option
        _, self.connect = engine.dialect.create_connect_args(engine.url)
        self.connect.pop("prepared_statement_cache_size", None)
        self.size = engine.pool.size() if hasattr(engine.pool, "size") else 5
        self.pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        pool = self.pool
        if pool is None:
            pool = await self._open()
        return await pool.fetch(dollar(sql), *params)

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise RuntimeError("a read session does not write")

    async def _open(self) -> asyncpg.Pool:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # concurrent first reads open one pool
            if self.pool is None:
                self.pool = await asyncpg.create_pool(**self.connect, min_size=0, max_size=self.size,
                                                      reset=keep_session)
        return self.pool

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()
