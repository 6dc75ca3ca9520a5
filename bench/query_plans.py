"""Query plans and costs of two statements whose cost grows with the database, on the real schema.

- instance history: ``resource_versions`` of one id, newest first (``ORDER BY version DESC LIMIT n``);
- the audit chain head: ``SELECT chain_hash, position FROM audit_chain WHERE partition = ?
  ORDER BY position DESC LIMIT 1`` (once per write transaction).

Makes a SQLite database with the project's migrations (``fhir-ctms db upgrade``), fills it with
growing numbers of versions and chain links, and prints SQLite's plan and the time per statement.
With ``BENCH_PLANS_PG_URL`` (a ``postgresql+asyncpg://`` URL of a scratch database) it prints
PostgreSQL's plans too (``EXPLAIN``, after ``ANALYZE``), on the same data.

Usage: ``.venv/bin/python bench/query_plans.py``
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir_ctms.storage.migrate import upgrade
from fhir_ctms.storage.sql import make_engine

HISTORY = ("SELECT res_type, res_id, version, ts_us, deleted, content, method, seq FROM resource_versions "
           "WHERE partition = ? AND res_type = ? AND res_id = ? ORDER BY version DESC LIMIT 51")
HEAD = "SELECT chain_hash, position FROM audit_chain WHERE partition = ? ORDER BY position DESC LIMIT 1"
SIZES = (1_000, 10_000, 40_000)


def fill(db: sqlite3.Connection, n: int) -> None:
    have = db.execute("SELECT count(*) FROM audit_chain").fetchone()[0]
    db.executemany("INSERT INTO audit_chain (partition, position, res_type, res_id, content_hash, prev_hash, "
                   "chain_hash) VALUES ('default', ?, 'Provenance', ?, 'c', ?, 'h')",
                   [(i + 1, f"r{i}", f"p{i}") for i in range(have, n)])
    db.executemany("INSERT INTO resource_versions (partition, res_type, res_id, version, ts_us, method, deleted, "
                   "content) VALUES ('default', 'Patient', ?, 1, 0, 'POST', 0, '{}')",
                   [(f"r{i}",) for i in range(have, n)])
    db.commit()


def per_call_us(db: sqlite3.Connection, sql: str, params: tuple, n: int = 100) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        db.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) / n * 1e6


async def migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def postgres(url: str, rows: int) -> None:
    import asyncpg
    await migrate(url)
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute("DELETE FROM audit_chain; DELETE FROM resource_versions WHERE res_id LIKE 'r%'")
        await conn.executemany(
            "INSERT INTO audit_chain (partition, position, res_type, res_id, content_hash, prev_hash, chain_hash) "
            "VALUES ('default', $1, 'Provenance', $2, 'c', $3, 'h')", [(i + 1, f"r{i}", f"p{i}") for i in range(rows)])
        await conn.executemany(
            "INSERT INTO resource_versions (partition, res_type, res_id, version, ts_us, method, deleted, content) "
            "VALUES ('default', 'Patient', $1, 1, 0, 'POST', false, '{}')", [(f"r{i}",) for i in range(rows)])
        await conn.execute("ANALYZE")
        for name, sql, params in (("instance history", HISTORY, ("default", "Patient", "x")),
                                  ("chain head", HEAD, ("default",))):
            parts = sql.split("?")
            pg_sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
            plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + pg_sql, *params)
            print(f"PostgreSQL, {rows} rows, {name}:")
            for row in plan:
                print("    " + row[0])
    finally:
        await conn.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plans.db"
        asyncio.run(migrate(f"sqlite+aiosqlite:///{path}"))
        db = sqlite3.connect(path)
        print("SQLite " + sqlite3.sqlite_version)
        for name, sql, params in (("instance history", HISTORY, ("default", "Patient", "x")),
                                  ("chain head", HEAD, ("default",))):
            plan = "; ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
            print(f"  {name}: {plan}")
        print("| rows in resource_versions and audit_chain | instance history us | chain head us |")
        print("|---:|---:|---:|")
        for n in SIZES:
            fill(db, n)
            print(f"| {n:,} | {per_call_us(db, HISTORY, ('default', 'Patient', 'x')):,.0f} | "
                  f"{per_call_us(db, HEAD, ('default',)):,.0f} |")
        db.close()
    pg = os.environ.get("BENCH_PLANS_PG_URL")
    if pg:
        asyncio.run(postgres(pg, SIZES[-1]))


if __name__ == "__main__":
    main()
