"""The floor for read-by-id: a bare ASGI callable (no framework) serving ``GET /fhir/Patient/<id>``.

It fetches the stored JSON text of the current version from the same ``resources``
table as the server, and returns it with a 200, nothing else: no content
negotiation, no ETag, no error boundary. The driver stack is chosen by
``BENCH_FLOOR_DRIVER``:

- ``sqlalchemy`` (default; "the floor"): an async engine from
  :func:`fhir_ctms.storage.sql.make_engine` on ``FHIR_CTMS_DATABASE_URL`` (the same
  pool, SQLite pragmas and hooks as the server); per request a connection from its
  pool and one ``SELECT content`` by partition/type/id on the driver connection
  (aiosqlite ``execute_fetchall`` or asyncpg ``fetchval``), as the server's storage
  layer runs its statements since commit 9c8ab21;
- ``sqlalchemy-core``: the same engine, the SELECT through SQLAlchemy's execution
  layer (``AsyncConnection.execute`` of a Core statement built once with bind
  parameters), as the server ran its statements before 9c8ab21;
- ``raw``: the driver alone, no SQLAlchemy: aiosqlite (a lazily grown pool of at most
  ``BENCH_FLOOR_POOL`` autocommit connections, one ``execute_fetchall`` per request)
  or asyncpg (``asyncpg.create_pool`` with no reset query on release, as the server's read
  pool, ``storage/pg_reader.py``; one ``fetchval`` per request);
- ``sqlite3`` (SQLite only): the synchronous sqlite3 module on the event loop thread, one
  connection, as the server's SQLite read sessions run since commit 71f9a35 (with the same
  ``PRAGMA mmap_size``, ``storage/sqlite_inline.MMAP_BYTES``).

Serve it exactly like the server::

    FHIR_CTMS_DATABASE_URL=... BENCH_FLOOR_DRIVER=raw \\
        uvicorn bench.floor_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from fhir_ctms.config import get_settings

PREFIX = "/fhir/Patient/"
RTYPE = "Patient"
POOL = int(os.environ.get("BENCH_FLOOR_POOL", "15"))
#: extra make_engine() arguments for the SQLAlchemy floors, as JSON (an experiment knob:
#: e.g. '{"pool_size": 32, "max_overflow": 0}'); by default the server's own engine settings
ENGINE_KW = json.loads(os.environ.get("BENCH_FLOOR_ENGINE_KW") or "{}")

Fetch = Callable[[str], Awaitable[str | None]]


async def _sqlalchemy(url: str, partition: str) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    from sqlalchemy import bindparam, select

    from fhir_ctms.storage.schema import resources
    from fhir_ctms.storage.sql import make_engine

    engine = make_engine(url, **ENGINE_KW)
    r = resources.c
    stmt = select(r.content).where(r.partition == bindparam("p"), r.res_type == bindparam("t"),
                                   r.res_id == bindparam("i"))

    async def fetch(rid: str) -> str | None:
        async with engine.connect() as conn:
            return (await conn.execute(stmt, {"p": partition, "t": RTYPE, "i": rid})).scalar()

    return fetch, engine.dispose


async def _sqlalchemy_pool(url: str, partition: str) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    """The engine's pool, the statement on the driver connection (no SQLAlchemy execution layer)."""
    from fhir_ctms.storage.sql import make_engine

    engine = make_engine(url, **ENGINE_KW)
    pg = engine.dialect.name == "postgresql"
    sql = ("SELECT content FROM resources WHERE partition = $1 AND res_type = $2 AND res_id = $3" if pg else
           "SELECT content FROM resources WHERE partition = ? AND res_type = ? AND res_id = ?")

    async def fetch(rid: str) -> str | None:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if pg:
                return await driver.fetchval(sql, partition, RTYPE, rid)
            rows = await driver.execute_fetchall(sql, (partition, RTYPE, rid))
            return rows[0][0] if rows else None

    return fetch, engine.dispose


async def _sqlite3_inline(url: str, partition: str) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    """SQLite only: the synchronous sqlite3 module on the event loop thread, one connection
    (as the server's SQLite read sessions run since commit 71f9a35)."""
    import sqlite3

    from sqlalchemy.engine import make_url

    from fhir_ctms.storage.sqlite_inline import MMAP_BYTES

    conn = sqlite3.connect(make_url(url).database, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # as the server's inline connections
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    sql = "SELECT content FROM resources WHERE partition = ? AND res_type = ? AND res_id = ?"

    async def fetch(rid: str) -> str | None:
        row = conn.execute(sql, (partition, RTYPE, rid)).fetchone()
        return row[0] if row else None

    async def close() -> None:
        conn.close()

    return fetch, close


async def _raw_sqlite(url: str, partition: str) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    import aiosqlite
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    idle: list[aiosqlite.Connection] = []
    opened: list[aiosqlite.Connection] = []
    available = asyncio.Semaphore(POOL)
    sql = "SELECT content FROM resources WHERE partition = ? AND res_type = ? AND res_id = ?"

    async def connect() -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA busy_timeout=60000")
        opened.append(conn)
        return conn

    async def fetch(rid: str) -> str | None:
        async with available:
            conn = idle.pop() if idle else await connect()
            try:
                rows = await conn.execute_fetchall(sql, (partition, RTYPE, rid))
            finally:
                idle.append(conn)
        return rows[0][0] if rows else None

    async def close() -> None:
        for conn in opened:
            await conn.close()

    return fetch, close


async def _raw_postgres(url: str, partition: str) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    import asyncpg

    from fhir_ctms.storage.pg_reader import keep_session

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    # without the reset round trip on release, as the server's read pool (pg_reader.keep_session)
    pool = await asyncpg.create_pool(dsn, min_size=5, max_size=POOL, reset=keep_session)
    sql = "SELECT content FROM resources WHERE partition = $1 AND res_type = $2 AND res_id = $3"

    async def fetch(rid: str) -> str | None:
        return await pool.fetchval(sql, partition, RTYPE, rid)

    return fetch, pool.close


async def _open() -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    settings = get_settings()
    url, partition = settings.database_url, settings.partition
    driver = os.environ.get("BENCH_FLOOR_DRIVER", "sqlalchemy")
    if driver == "sqlalchemy":
        return await _sqlalchemy_pool(url, partition)
    if driver == "sqlalchemy-core":
        return await _sqlalchemy(url, partition)
    if driver == "sqlite3" and url.startswith("sqlite"):
        return await _sqlite3_inline(url, partition)
    if driver != "raw":
        raise SystemExit(f"BENCH_FLOOR_DRIVER={driver!r}: expected 'sqlalchemy', 'sqlalchemy-core', 'raw' "
                         "or (SQLite) 'sqlite3'")
    if url.startswith("sqlite"):
        return await _raw_sqlite(url, partition)
    if url.startswith("postgresql"):
        return await _raw_postgres(url, partition)
    raise SystemExit(f"no raw driver for {url!r}")


_state: dict[str, Any] = {}
_JSON = [(b"content-type", b"application/fhir+json; charset=utf-8")]


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        path = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX) or "/" in path[len(PREFIX):]:
            await _respond(send, 404, b"", [])
            return
        content = await _state["fetch"](path[len(PREFIX):])
        if content is None:
            await _respond(send, 404, b"", [])
        else:
            await _respond(send, 200, content.encode(), _JSON)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    _state["fetch"], _state["close"] = await _open()
                except BaseException as exc:  # noqa: BLE001 - reported to the server
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if "close" in _state:
                    await _state["close"]()
                await send({"type": "lifespan.shutdown.complete"})
                return
