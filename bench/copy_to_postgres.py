"""Copy a fhir-ctms SQLite database into a PostgreSQL one, table by table (COPY).

Why: the search benchmark wants the same million resources on both databases. Loading them
through the API's write path runs at ~750 resources/s on SQLite (group commit) but ~90-200 on
PostgreSQL (every write session is its own transaction, serialised by the audit chain's writer
lock: BENCHMARKS.md), i.e. 2-4 hours. The rows the server wrote on SQLite (resources, versions,
search index, audit chain) are the rows it would write on PostgreSQL, so they are copied.

    FHIR_CTMS_DATABASE_URL=postgresql+asyncpg://... fhir-ctms db upgrade    # an empty, migrated database
    python bench/copy_to_postgres.py --sqlite /tmp/ctms-1.0.db --postgres postgresql://...

Secondary indexes are dropped during the copy and built again after it (much faster than
maintaining them row by row), then ANALYZE. The destination must be empty.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time

import asyncpg
from tqdm import tqdm

#: tables in copy order; booleans are 0/1 in SQLite
BOOLEANS = {"deleted"}
SEQUENCES = {"resource_versions": "seq", "audit_chain": "seq"}
BATCH = 20_000


async def copy(sqlite_path: str, pg_url: str) -> None:
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    dst = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name <> 'alembic_version' ORDER BY name")]
        pg_tables = {r[0] for r in await dst.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        tables = [t for t in tables if t in pg_tables]
        for t in tables:
            if await dst.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{t}")'):
                raise SystemExit(f"{t} is not empty")
        # secondary indexes (not those behind primary keys or unique constraints)
        indexes = await dst.fetch(
            "SELECT i.indexname, i.indexdef, i.tablename FROM pg_indexes i WHERE i.schemaname = current_schema() "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)")
        indexes = [r for r in indexes if r["tablename"] in tables]
        for r in indexes:
            await dst.execute(f'DROP INDEX "{r["indexname"]}"')
        for t in tables:
            cols = [r[1] for r in src.execute(f'PRAGMA table_info("{t}")')]
            total = src.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
            bools = [i for i, c in enumerate(cols) if c in BOOLEANS]
            cur = src.execute(f'SELECT {", ".join(cols)} FROM "{t}"')
            t0 = time.perf_counter()
            with tqdm(total=total, desc=t, unit="rows") as bar:
                while rows := cur.fetchmany(BATCH):
                    if bools:
                        rows = [tuple(bool(v) if i in bools else v for i, v in enumerate(row)) for row in rows]
                    await dst.copy_records_to_table(t, records=rows, columns=cols)
                    bar.update(len(rows))
            print(f"{t}: {total} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        for t, col in SEQUENCES.items():
            if t in tables:
                await dst.execute(f"SELECT setval(pg_get_serial_sequence('{t}', '{col}'), "
                                  f"COALESCE((SELECT MAX({col}) FROM {t}), 0) + 1, false)")
        for r in indexes:
            t0 = time.perf_counter()
            await dst.execute(r["indexdef"])
            print(f"{r['indexname']}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        await dst.execute("ANALYZE")
        print(f"ANALYZE: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        src.close()
        await dst.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sqlite", required=True, help="the SQLite database file")
    ap.add_argument("--postgres", required=True, help="postgresql:// URL of an empty, migrated database")
    a = ap.parse_args()
    asyncio.run(copy(a.sqlite, a.postgres))


if __name__ == "__main__":
    main()
