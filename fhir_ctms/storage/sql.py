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

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, delete, event, exists, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import ServiceUnavailable
from .repository import GENESIS, ChainLink, HistoryQuery, Repository, Session, Stored, Token, VersionConflict
from .schema import audit_chain, resource_versions, resources, token_index




def _identity(value: Any) -> Any:
    return value


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine whose JSON columns take and return JSON text unchanged."""
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
        write = conn.get_execution_options().get("fhir_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _stored(row: Any, method: str = "PUT", seq: int = 0) -> Stored:
    return Stored(row.res_type, row.res_id, row.version, row.ts_us, row.deleted, row.content, method, seq)


class SqlSession(Session):
    def __init__(self, conn: AsyncConnection, partition: str) -> None:
        self.conn = conn
        self.partition = partition
        self.pg = conn.dialect.name == "postgresql"

    # -- resources -------------------------------------------------------------------------
    async def current(self, rtype: str, rid: str) -> Stored | None:
        q = select(resources.c.res_type, resources.c.res_id, resources.c.version, resources.c.ts_us,
                   resources.c.deleted, resources.c.content).where(
            resources.c.partition == self.partition, resources.c.res_type == rtype,
            resources.c.res_id == rid)
        row = (await self.conn.execute(q)).first()
        return _stored(row) if row else None

    async def version(self, rtype: str, rid: str, version: int) -> Stored | None:
        v = resource_versions.c
        row = (await self.conn.execute(
            select(v.res_type, v.res_id, v.version, v.ts_us, v.deleted, v.content, v.method, v.seq).where(
                v.partition == self.partition, v.res_type == rtype, v.res_id == rid, v.version == version)
        )).first()
        return _stored(row, row.method, row.seq) if row else None

    async def put(self, new: Stored, *, previous: int | None) -> None:
        values = dict(version=new.version, ts_us=new.ts_us, deleted=new.deleted, content=new.content)
        r = resources.c
        if previous is None:
            try:
                async with self.conn.begin_nested():
                    await self.conn.execute(insert(resources).values(
                        partition=self.partition, res_type=new.type, res_id=new.id, **values))
            except IntegrityError as exc:
                raise VersionConflict(f"{new.type}/{new.id} already exists") from exc
        else:
            result = await self.conn.execute(update(resources).where(
                r.partition == self.partition, r.res_type == new.type, r.res_id == new.id,
                r.version == previous).values(**values))
            if result.rowcount != 1:
                raise VersionConflict(f"{new.type}/{new.id} is no longer at version {previous}")
        await self.conn.execute(insert(resource_versions).values(
            partition=self.partition, res_type=new.type, res_id=new.id, method=new.method, **values))

    async def set_tokens(self, rtype: str, rid: str, tokens: Sequence[Token]) -> None:
        t = token_index.c
        await self.conn.execute(delete(token_index).where(
            t.partition == self.partition, t.res_type == rtype, t.res_id == rid))
        if tokens:
            await self.conn.execute(insert(token_index), [
                dict(partition=self.partition, res_type=rtype, res_id=rid, param=tok.param,
                     system=tok.system, code=tok.code) for tok in tokens])

    async def find(self, rtype: str, ids: Sequence[str] | None, tokens: Sequence[Sequence[Token]],
                   limit: int, after_id: str | None = None) -> list[Stored]:
        r, t = resources.c, token_index.c
        conds = [r.partition == self.partition, r.res_type == rtype, r.deleted.is_(False)]
        if ids is not None:
            conds.append(r.res_id.in_(list(ids)))
        if after_id is not None:
            conds.append(r.res_id > after_id)
        for alternatives in tokens:
            ors = []
            for tok in alternatives:
                match = [t.param == tok.param, t.code == tok.code]
                if tok.system is not None:
                    match.append(t.system == tok.system)
                ors.append(and_(*match))
            sub = select(t.res_id).where(t.partition == self.partition, t.res_type == rtype,
                                         t.res_id == r.res_id, or_(*ors))
            conds.append(exists(sub))
        q = select(r.res_type, r.res_id, r.version, r.ts_us, r.deleted, r.content).where(*conds)
        q = q.order_by(r.res_id).limit(limit)
        return [_stored(row) for row in (await self.conn.execute(q))]

    async def history(self, query: HistoryQuery) -> list[Stored]:
        v = resource_versions.c
        conds = [v.partition == self.partition]
        if query.type is not None:
            conds.append(v.res_type == query.type)
        if query.id is not None:
            conds.append(v.res_id == query.id)
        if query.since_us is not None:
            conds.append(v.ts_us >= query.since_us)
        if query.before_seq is not None:
            conds.append(v.seq < query.before_seq)
        if query.at is not None:
            start, end = query.at
            newer = resource_versions.alias("newer")
            conds.append(v.ts_us < end)
            conds.append(~exists(select(newer.c.seq).where(
                newer.c.partition == v.partition, newer.c.res_type == v.res_type,
                newer.c.res_id == v.res_id, newer.c.version > v.version, newer.c.ts_us <= start)))
        q = select(v.res_type, v.res_id, v.version, v.ts_us, v.deleted, v.content, v.method, v.seq
                   ).where(*conds).order_by(v.seq.desc()).limit(query.count)
        return [_stored(row, row.method, row.seq) for row in (await self.conn.execute(q))]

    # -- locks -----------------------------------------------------------------------------
    async def writer_lock(self) -> None:
        if self.pg:
            await self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                    {"k": f"fhir-ctms-writer/{self.partition}"})

    # -- audit chain -----------------------------------------------------------------------
    async def chain_head(self) -> str:
        a = audit_chain.c
        head = (await self.conn.execute(select(a.chain_hash).where(a.partition == self.partition)
                                        .order_by(a.seq.desc()).limit(1))).scalar()
        return head or GENESIS

    async def append_link(self, link: ChainLink) -> None:
        await self.conn.execute(insert(audit_chain).values(
            partition=self.partition, res_type=link.type, res_id=link.id, content_hash=link.content_hash,
            prev_hash=link.prev_hash, chain_hash=link.chain_hash))

    async def links(self, after_seq: int, limit: int) -> list[ChainLink]:
        a = audit_chain.c
        rows = await self.conn.execute(select(a.seq, a.res_type, a.res_id, a.content_hash, a.prev_hash,
                                              a.chain_hash).where(a.partition == self.partition,
                                                                  a.seq > after_seq)
                                       .order_by(a.seq).limit(limit))
        return [ChainLink(*row) for row in rows]


def _transient(exc: DBAPIError) -> bool:
    text_ = str(exc.orig if exc.orig is not None else exc).lower()
    return any(s in text_ for s in ("database is locked", "deadlock detected", "could not serialize",
                                    "busy"))


class SqlRepository(Repository):
    def __init__(self, engine: AsyncEngine, partition: str = "default") -> None:
        self.engine = engine
        self.partition = partition

    @classmethod
    def from_url(cls, url: str, partition: str = "default", **kwargs: Any) -> "SqlRepository":
        return cls(make_engine(url, **kwargs), partition)

    @asynccontextmanager
    async def session(self, *, write: bool) -> AsyncIterator[Session]:
        try:
            async with self.engine.connect() as conn:
                if write:
                    conn = await conn.execution_options(fhir_write=True)
                async with conn.begin():
                    session = SqlSession(conn, self.partition)
                    if write:
                        await session.writer_lock()
                    yield session
        except (OperationalError, DBAPIError) as exc:
            if _transient(exc):
                raise ServiceUnavailable("The database is busy; retry the request",
                                         headers={"Retry-After": "1"}) from exc
            raise

    async def close(self) -> None:
        await self.engine.dispose()
