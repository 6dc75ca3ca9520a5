"""Database round trips per request: SQL statements, transaction events and (SQLite) aiosqlite thread hops.

Runs the app in-process (httpx ASGITransport, no HTTP server) on a fresh database and,
for one request of each benchmark scenario, counts

- ``statements``: statements sent through SQLAlchemy's execution layer (``BEGIN`` issued by the
  SQLite ``begin`` hook included), from the ``before_cursor_execute`` event (statements the
  storage layer runs on the driver connection itself do not pass there);
- ``asyncpg_round_trips``: calls into asyncpg that wait for the server (nested calls counted once);
- ``sqlite3_inline_statements``: statements of SQLite read sessions run with sqlite3 on the
  event loop thread (no hop);
- ``tx``: transaction events (begin, commit, rollback, savepoint, release);
- ``aiosqlite_hops``: calls queued to aiosqlite's connection thread (each one a round trip
  event loop -> worker thread -> event loop), counted on the connection's queue, and by function.

Usage: ``BENCH_HOPS_URL=<SQLAlchemy URL> .venv/bin/python bench/hops.py`` (default: a temporary SQLite
file); bench/bench.py runs it for every database it measures.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench import patient
from fhir_ctms.api.app import create_app
from fhir_ctms.config import Settings
from fhir_ctms.storage.migrate import upgrade
from fhir_ctms.storage.sql import SqlRepository

COUNTS: collections.Counter[str] = collections.Counter()
STATEMENTS: list[str] = []


def instrument(repo: SqlRepository) -> None:
    sync = repo.engine.sync_engine

    @event.listens_for(sync, "before_cursor_execute")
    def _stmt(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        COUNTS["statements"] += 1
        STATEMENTS.append(" ".join(statement.split())[:90])

    for name in ("begin", "commit", "rollback", "savepoint", "release_savepoint", "rollback_savepoint"):
        event.listen(sync, name, lambda *a, _n=name: COUNTS.update([f"tx_{_n}"]))

    @event.listens_for(sync, "connect")
    def _connect(*args: Any) -> None:
        COUNTS["connections_opened"] += 1


def instrument_asyncpg() -> None:
    """Count calls into asyncpg that cost a round trip to the server (a statement not yet
    prepared costs one more, for its Parse/Describe)."""
    import asyncpg
    from asyncpg import prepared_stmt, transaction

    def wrap(cls: Any, name: str, label: str) -> None:
        original = getattr(cls, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not COUNTS.get("_inside"):
                COUNTS["asyncpg_round_trips"] += 1
                COUNTS[f"asyncpg:{label}"] += 1
            COUNTS["_inside"] += 1
            try:
                return await original(self, *args, **kwargs)
            finally:
                COUNTS["_inside"] -= 1
        setattr(cls, name, counted)

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare"):
        wrap(asyncpg.Connection, name, name)
    for name in ("fetch", "fetchrow", "fetchval", "executemany"):
        wrap(prepared_stmt.PreparedStatement, name, f"prepared.{name}")
    for name in ("start", "commit", "rollback"):
        wrap(transaction.Transaction, name, f"transaction.{name}")


def instrument_sqlite_reader() -> None:
    """Since commit 71f9a35 SQLite read sessions run sqlite3 on the event loop thread (no hop)."""
    from fhir_ctms.storage import sql
    reader = getattr(sql, "_SqliteReader", None)
    if reader is None:
        return
    original = reader.fetch

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["sqlite3_inline_statements"] += 1
        return await original(self, *args, **kwargs)
    reader.fetch = counted


def instrument_aiosqlite() -> None:
    """Before any connection is opened."""
    try:
        import aiosqlite
    except ImportError:
        return
    # every call to the connection's thread goes through its queue (SQLAlchemy's isolation-level
    # setter included, which bypasses Connection._execute): count what is put on it
    class CountingQueue:
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def put_nowait(self, item: Any) -> None:
            COUNTS["aiosqlite_hops"] += 1
            fn = item[1]
            name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "?")
            COUNTS[f"aiosqlite_hop:{name}"] += 1
            self.queue.put_nowait(item)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.queue, name)

    original_init = aiosqlite.Connection.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._tx = CountingQueue(self._tx)  # the worker thread keeps reading the real queue
    aiosqlite.Connection.__init__ = init  # type: ignore[method-assign]


async def main() -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="fhir-ctms-hops.")
    url = os.environ.get("BENCH_HOPS_URL") or f"sqlite+aiosqlite:///{tmp.name}/hops.db"
    settings = Settings(database_url=url)
    instrument_aiosqlite()
    instrument_asyncpg()
    instrument_sqlite_reader()
    repo = SqlRepository.from_url(url)
    await upgrade(repo.engine)
    instrument(repo)
    app = create_app(settings, repo, migrate=False)
    from bench.bench import source_fingerprint
    out: dict[str, Any] = {"url": url.split("@")[-1], "source": source_fingerprint()}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
        h = {"Content-Type": "application/fhir+json"}
        for i in range(1, 61):
            (await c.put(f"/fhir/Patient/hops-{i}", json=patient(i, f"hops-{i}"), headers=h)).raise_for_status()
        for v in range(10):
            body = patient(v, "hops-history")
            body["name"][0]["text"] = f"v{v}"
            (await c.put("/fhir/Patient/hops-history", json=body, headers=h)).raise_for_status()
        scenarios = {
            "read": lambda: c.get("/fhir/Patient/hops-1"),
            "history-instance": lambda: c.get("/fhir/Patient/hops-history/_history"),
            "history-type": lambda: c.get("/fhir/Patient/_history?_count=50"),
            "create": lambda: c.post("/fhir/Patient", json=patient(7), headers=h),
        }
        for name, call in scenarios.items():
            (await call()).raise_for_status()  # warm: caches, pool
            COUNTS.clear()
            STATEMENTS.clear()
            r = await call()
            r.raise_for_status()
            COUNTS.pop("_inside", None)
            out[name] = {**dict(sorted(COUNTS.items())), "sql": list(STATEMENTS)}
    await repo.close()
    tmp.cleanup()
    return out


if __name__ == "__main__":
    result = asyncio.run(main())
    print(json.dumps(result, indent=2))
