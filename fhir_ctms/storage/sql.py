"""The repository on SQLAlchemy 2 (async): SQLite through aiosqlite, PostgreSQL through asyncpg.

Dialect differences live here and nowhere else:

- SQLite runs in WAL mode; a write session starts with ``BEGIN IMMEDIATE`` so
  writers are serialised by the database itself (read-check-write sequences such
  as conditional create cannot interleave), and ``lock`` is then a no-op.
- PostgreSQL runs READ COMMITTED; a write session first takes one
  transaction-scoped advisory lock per partition (the writer lock), so writers are
  serialised exactly as on SQLite: the audit chain is one total order anyway, no two
  writers can deadlock on rows taken in different orders, and ``lastUpdated``
  follows commit order (a ``_since`` poller never misses a write). Reads never wait.
- A database that stays busy past its timeout (SQLite "database is locked") or a
  PostgreSQL deadlock or serialisation failure surfaces as 503 (retry), never a 500.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import BadRequest, Conflict, ServiceUnavailable
from ..search.query import Include, SearchQuery
from . import search_sql as plans
from .search_sql import Builder, Plan, Unsupported, count_sql, include_sql, phases, plan, probes, search_sql
from .pg_reader import PgReader, dollar
from .sqlite_inline import InlineConnection, InlineWriter, transient
from .repository import (GENESIS, INDEX_COLUMNS, ChainHead, ChainLink, HistoryQuery, IndexRow, Repository, Session, Stored,
                         VersionConflict)





def _identity(value: Any) -> Any:
    return value


def make_engine(url: str, *, pool_size: int | None = None, **kwargs: Any) -> AsyncEngine:
    """An engine whose JSON columns take and return JSON text unchanged; ``pool_size`` fixes
    the pool at that many connections (no overflow connections opened and closed per burst)."""
    if pool_size is not None:
        kwargs.update(pool_size=pool_size, max_overflow=0)
    # Sessions always end their transactions themselves (write: commit or rollback; read:
    # autocommit), so the pool need not roll back every returned connection.
    kwargs.setdefault("pool_reset_on_return", None)
    engine = create_async_engine(url, json_serializer=_identity, json_deserializer=_identity, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL: a committed transaction survives a killed process (the OS has it);
        # only a power loss may roll back the last commits.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # read sessions run in autocommit (no BEGIN): each of their statements is atomic
        if conn.get_execution_options().get("fhir_write", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


_RESOURCE_COLUMNS = "res_type, res_id, version, ts_us, deleted, content"
_CURRENT = f"SELECT {_RESOURCE_COLUMNS} FROM resources WHERE partition = ? AND res_type = ? AND res_id = ?"
_VERSION_COLUMNS = "res_type, res_id, version, ts_us, deleted, content, method, seq"


_INDEX_INSERT = {
    kind: f"INSERT INTO search_{kind} (partition, res_type, res_id, param, {', '.join(cols)}) "
          f"VALUES ({', '.join('?' for _ in range(4 + len(cols)))})"
    for kind, cols in INDEX_COLUMNS.items()
}


def _stored(row: Any) -> Stored:
    if len(row) == 6:
        return Stored(row[0], row[1], row[2], row[3], bool(row[4]), row[5])
    return Stored(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])


class _Driver:
    """Statements run on the driver connection under SQLAlchemy's (pooled, transaction-managed)
    connection. Measured on this project's read path, SQLAlchemy's async execution layer cost
    about four times the query itself on aiosqlite (every cursor step is a thread hop), so the
    statements below are plain SQL with ``?`` placeholders, run through the driver directly:
    one round trip each. SQLAlchemy keeps the pool, the transactions, the schema and Alembic."""

    def __init__(self, raw: Any, pg: bool) -> None:
        self.raw = raw
        self.pg = pg

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        if self.pg:
            return await self.raw.fetch(dollar(sql), *params)
        return list(await self.raw.execute_fetchall(sql, params))

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.pg:
            await self.raw.executemany(dollar(sql), rows)
        else:
            await self.raw.executemany(sql, rows)


class SqlSession(Session):
    def __init__(self, conn: AsyncConnection | None, driver: _Driver | InlineConnection, partition: str) -> None:
        self.conn = conn
        self.db = driver
        self.partition = partition
        self.pg = driver.pg
        self._head: ChainHead | None = None  # the chain head, once read in this (serialised) write session
        # Inserts wait here and go to the database in one executemany per table: at the end of
        # the session, or before any read (so a session always reads its own writes).
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        self.rows_written = 0

    def _queue(self, sql: str, row: tuple[Any, ...]) -> None:
        self._pending.setdefault(sql, []).append(row)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for sql, rows in pending.items():
            self.rows_written += len(rows)
            try:
                await self.db.executemany(sql, rows)
            except Exception as exc:  # the driver's own IntegrityError class
                if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                    raise VersionConflict("A resource version or audit link was written twice") from exc
                raise

    # -- resources -------------------------------------------------------------------------
    async def current(self, rtype: str, rid: str) -> Stored | None:
        if self._pending:  # (a read-by-id's whole statement costs ~6 us: no call it does not need)
            await self.flush()
        rows = await self.db.fetch(_CURRENT, self.partition, rtype, rid)
        return _stored(rows[0]) if rows else None

    async def version(self, rtype: str, rid: str, version: int) -> Stored | None:
        await self.flush()
        rows = await self.db.fetch(
            f"SELECT {_VERSION_COLUMNS} FROM resource_versions "
            "WHERE partition = ? AND res_type = ? AND res_id = ? AND version = ?",
            self.partition, rtype, rid, version)
        return _stored(rows[0]) if rows else None

    async def put(self, new: Stored, *, previous: int | None) -> None:
        if previous is None:
            # writers are serialised and the caller read ``current`` in this session, so a
            # duplicate key (reported at flush) means a broken invariant, not a race
            self._queue("INSERT INTO resources (partition, res_type, res_id, version, ts_us, deleted, content) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (self.partition, new.type, new.id, new.version, new.ts_us, new.deleted, new.content))
        else:
            updated = await self.db.fetch(
                "UPDATE resources SET version = ?, ts_us = ?, deleted = ?, content = ? "
                "WHERE partition = ? AND res_type = ? AND res_id = ? AND version = ? RETURNING version",
                new.version, new.ts_us, new.deleted, new.content, self.partition, new.type, new.id, previous)
            if len(updated) != 1:
                raise VersionConflict(f"{new.type}/{new.id} is no longer at version {previous}")
        self._queue(
            "INSERT INTO resource_versions (partition, res_type, res_id, version, ts_us, method, deleted, content) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.partition, new.type, new.id, new.version, new.ts_us, new.method, new.deleted, new.content))

    async def set_index(self, rtype: str, rid: str, rows: Sequence[IndexRow], *, new: bool = False) -> None:
        if not new:
            if self.pg:  # one round trip for the seven tables
                deletes = ", ".join(f"d_{kind} AS (DELETE FROM search_{kind} WHERE partition = $1 AND "
                                    "res_type = $2 AND res_id = $3)" for kind in INDEX_COLUMNS)
                await self.db.raw.execute(f"WITH {deletes} SELECT 1", self.partition, rtype, rid)
            else:
                for kind in INDEX_COLUMNS:
                    await self.db.fetch(f"DELETE FROM search_{kind} WHERE partition = ? AND res_type = ? "
                                        "AND res_id = ?", self.partition, rtype, rid)
        pending, partition = self._pending, self.partition
        for kind, param, values in rows:  # (self._queue, inline: ~40 rows a create)
            sql = _INDEX_INSERT[kind]
            batch = pending.get(sql)
            if batch is None:
                batch = pending[sql] = []
            batch.append((partition, rtype, rid, param, *values))

    async def search(self, query: SearchQuery, *, limit: int, after: Sequence[Any] | None = None,
                     backwards: bool = False) -> list[tuple[Stored, tuple[Any, ...]]]:
        await self.flush()
        p = await self._plan(query)
        out: list[tuple[Stored, tuple[Any, ...]]] = []
        for phase, cursor in phases(query, p, after, backwards):
            f = search_sql(query, self.partition, limit=limit - len(out), after=after if cursor else None,
                           backwards=backwards, p=p, phase=phase, sqlite=not self.pg)
            rows = await self.db.fetch(f.sql, *f.params)
            out += [(_stored(tuple(row[:6])), (*row[6:], row[0], row[1])) for row in rows]
            if len(out) >= limit:
                break
        return out

    async def _plan(self, query: SearchQuery) -> Plan:
        """Count each countable clause's matches up to ``search_sql.SMALL`` (an index range
        each), then choose how the search runs (``search_sql.plan``)."""
        counts = {}
        for n, f in probes(query, self.partition, sqlite=not self.pg):
            counts[n] = int((await self.db.fetch(f.sql, *f.params))[0][0])
            if counts[n] < plans.SMALL:
                break  # small enough to drive: no need to count the others
        return plan(query, counts)

    def unsupported(self, query: SearchQuery) -> list[tuple[int, tuple[str, str]]]:
        out = []
        for n, clause in enumerate(query.clauses):
            try:
                Builder(self.partition).condition(clause, "r", query.types)
            except Unsupported as exc:
                if exc.modifier:  # search.html#modifiers: SHALL reject
                    raise BadRequest(f"Search parameter {getattr(clause, 'param', '_has')!r}: {exc} "
                                     "is not supported") from exc
                out.append((n, (getattr(clause, "param", "_has"), str(exc))))
        return out

    async def count(self, query: SearchQuery) -> int:
        await self.flush()
        f = count_sql(query, self.partition, await self._plan(query), sqlite=not self.pg)
        return int((await self.db.fetch(f.sql, *f.params))[0][0])

    async def include(self, inc: Include, keys: Sequence[tuple[str, str]]) -> list[Stored]:
        if not keys:
            return []
        await self.flush()
        f = include_sql(inc, self.partition, keys, sqlite=not self.pg)
        return [_stored(tuple(row)) for row in await self.db.fetch(f.sql, *f.params)]

    async def history(self, query: HistoryQuery) -> list[Stored]:
        # an instance's versions are in version order (the unique key's index, no index of its
        # own: migration 0008), the same order as seq; the page cursor is a seq all the same
        instance = query.id is not None
        order = "v.version" if instance else "v.seq"
        after = ("v.version < (SELECT c.version FROM resource_versions c WHERE c.seq = ?)" if instance
                 else "v.seq < ?")
        where, params = ["v.partition = ?"], [self.partition]
        for clause, value in (("v.res_type = ?", query.type), ("v.res_id = ?", query.id),
                              ("v.ts_us >= ?", query.since_us), (after, query.before_seq)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.at is not None:
            start, end = query.at
            where.append("v.ts_us < ?")
            where.append("NOT EXISTS (SELECT 1 FROM resource_versions n WHERE n.partition = v.partition AND "
                         "n.res_type = v.res_type AND n.res_id = v.res_id AND n.version > v.version "
                         "AND n.ts_us <= ?)")
            params += [end, start]
        await self.flush()
        sql = (f"SELECT v.res_type, v.res_id, v.version, v.ts_us, v.deleted, v.content, v.method, v.seq "
               f"FROM resource_versions v WHERE {' AND '.join(where)} ORDER BY {order} DESC LIMIT ?")
        return [_stored(row) for row in await self.db.fetch(sql, *params, query.count)]

    # -- locks -----------------------------------------------------------------------------
    async def writer_lock(self) -> None:
        if self.pg:
            # through SQLAlchemy: its first statement is what opens the driver's transaction
            await self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                    {"k": f"fhir-ctms-writer/{self.partition}"})

    # -- audit chain -----------------------------------------------------------------------
    async def chain_head(self) -> ChainHead:
        if self._head is None:
            rows = await self.db.fetch(
                "SELECT chain_hash, position FROM audit_chain WHERE partition = ? ORDER BY position DESC LIMIT 1",
                self.partition)
            self._head = ChainHead(*rows[0]) if rows else ChainHead(GENESIS, 0)
        return self._head

    async def append_link(self, link: ChainLink) -> None:
        self._queue("INSERT INTO audit_chain (partition, position, res_type, res_id, content_hash, prev_hash, "
                    "chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.partition, link.position, link.type, link.id, link.content_hash, link.prev_hash,
                     link.chain_hash))
        self._head = ChainHead(link.chain_hash, link.position)

    async def links(self, after_position: int, limit: int) -> list[ChainLink]:
        await self.flush()
        rows = await self.db.fetch(
            "SELECT seq, res_type, res_id, content_hash, prev_hash, chain_hash, position FROM audit_chain "
            "WHERE partition = ? AND position > ? ORDER BY position LIMIT ?", self.partition, after_position, limit)
        return [ChainLink(*row) for row in rows]


#: errors of a read session that may be transient (``transient`` tells): 503, retry
_READ_ERRORS = (sqlite3.OperationalError, asyncpg.PostgresError)


def _busy(exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable("The database is busy; retry the request", headers={"Retry-After": "1"})


class _ReadOnly:
    """A read session that needs nothing opened or closed (the inline SQLite reader, the
    PostgreSQL read pool), as a context manager that turns a transient database error into a
    503. A plain class: a generator-based context manager cost more than the primary-key read
    itself."""

    __slots__ = ("session",)

    def __init__(self, session: SqlSession) -> None:
        self.session = session

    async def __aenter__(self) -> SqlSession:
        return self.session

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, _READ_ERRORS) and transient(exc):
            raise _busy(exc) from exc


class SqlRepository(Repository):
    def __init__(self, engine: AsyncEngine, partition: str = "default") -> None:
        self.engine = engine
        self.partition = partition
        db = engine.url.database
        file_sqlite = engine.dialect.name == "sqlite" and db not in (None, "", ":memory:") and "mode=memory" not in db
        # SQLite files: sessions run inline (sqlite_inline.py); PostgreSQL: read sessions on a
        # plain asyncpg pool (pg_reader.py), write sessions through the engine; an in-memory
        # SQLite database (one connection's private copy): every session through the engine
        self._reader: InlineConnection | PgReader | None = (
            InlineConnection(db, write=False) if file_sqlite
            else PgReader(engine) if engine.dialect.name == "postgresql" else None)
        self._writer = InlineWriter(db) if file_sqlite else None
        # in-memory SQLite through the engine: writers of this process queue here
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" and not file_sqlite else None

    @classmethod
    def from_url(cls, url: str, partition: str = "default", **kwargs: Any) -> "SqlRepository":
        return cls(make_engine(url, **kwargs), partition)

    def session(self, *, write: bool) -> AbstractAsyncContextManager[Session]:
        if self._reader is not None and not write:
            return _ReadOnly(SqlSession(None, self._reader, self.partition))
        if self._writer is not None:
            return self._inline_write()
        return self._any_session(write)

    @asynccontextmanager
    async def _inline_write(self) -> AsyncIterator[Session]:
        assert self._writer is not None
        try:
            async with self._writer.session(lambda conn: SqlSession(None, conn, self.partition)) as session:
                yield session
        except VersionConflict as exc:  # a key written twice: refuse (the session rolled back)
            raise Conflict(str(exc)) from exc
        except sqlite3.OperationalError as exc:
            if transient(exc):
                raise _busy(exc) from exc
            raise

    @asynccontextmanager
    async def _any_session(self, write: bool) -> AsyncIterator[Session]:
        if write and self._write_lock is not None:
            async with self._write_lock, self._session(write=True) as session:
                yield session
            return
        async with self._session(write=write) as session:
            yield session

    @asynccontextmanager
    async def _session(self, *, write: bool) -> AsyncIterator[Session]:
        try:
            async with self.engine.connect() as conn:
                pg = conn.dialect.name == "postgresql"
                if not write:  # (in-memory SQLite only: the other databases have their readers)
                    # a read session: no transaction round trips, every statement atomic
                    # (SQLite's driver is in autocommit already and the begin hook adds nothing)
                    raw = await conn.get_raw_connection()
                    yield SqlSession(conn, _Driver(raw.driver_connection, pg), self.partition)
                    return
                conn = await conn.execution_options(fhir_write=True)
                async with conn.begin():
                    raw = await conn.get_raw_connection()
                    session = SqlSession(conn, _Driver(raw.driver_connection, pg), self.partition)
                    await session.writer_lock()
                    yield session
                    await session.flush()
        except VersionConflict as exc:  # a key written twice (found at any flush): refuse, roll back
            raise Conflict(str(exc)) from exc
        except (OperationalError, DBAPIError, sqlite3.OperationalError, asyncpg.PostgresError) as exc:
            if transient(exc):
                raise _busy(exc) from exc
            raise

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.aclose()  # after its checkpoint, if one is running
        if isinstance(self._reader, PgReader):
            await self._reader.close()
        elif self._reader is not None:
            self._reader.close()
        await self.engine.dispose()
