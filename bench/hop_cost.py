"""The cost of one aiosqlite round trip (event loop -> connection thread -> event loop) on this machine.

Compares N sequential ``SELECT content ... WHERE pk`` through sqlite3 directly (no thread), through
aiosqlite (one hop per query) and through aiosqlite the way SQLAlchemy's adapter uses it (cursor,
execute, fetchall, close: four hops per query). Run it pinned to one core, like the server:
``taskset -c 0 .venv/bin/python bench/hop_cost.py [sqlite file]``; with no file it makes one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite

N = 5000
SQL = "SELECT content FROM t WHERE id = ?"


def make(path: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, content TEXT)")
        db.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(f"p{i}", "x" * 700) for i in range(1000)])


def direct(path: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(N):
        db.execute(SQL, (f"p{i % 1000}",)).fetchall()
    return (time.process_time() - c0) / N * 1e6, (time.perf_counter() - t0) / N * 1e6


async def one_hop(path: str) -> tuple[float, float]:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(N):
            await db.execute_fetchall(SQL, (f"p{i % 1000}",))
        return (time.process_time() - c0) / N * 1e6, (time.perf_counter() - t0) / N * 1e6


async def four_hops(path: str) -> tuple[float, float]:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(N):
            cur = await db.cursor()
            await cur.execute(SQL, (f"p{i % 1000}",))
            await cur.fetchall()
            await cur.close()
        return (time.process_time() - c0) / N * 1e6, (time.perf_counter() - t0) / N * 1e6


def main() -> None:
    tmp = tempfile.TemporaryDirectory()
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tmp.name) / "hops.db")
    make(path)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    rows = [("sqlite3, no thread", direct(path)), ("aiosqlite, 1 hop/query", run(one_hop(path))),
            ("aiosqlite as SQLAlchemy uses it, 4 hops/query", run(four_hops(path)))]
    print("| per query | CPU us | wall us |\n|---|---:|---:|")
    for name, (cpu, wall) in rows:
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
