"""Pages a create writes to SQLite's WAL, by table and index (what a COMMIT really costs).

Runs ``bench/create_icount.py``'s load in process (the ASGI app called directly, 32 concurrent
clients, so group commit shares COMMITs as under wrk): 6,400 creates to grow the database, then,
with checkpoints stopped and the WAL truncated, 1,600 more; then reads the WAL file's frame
headers (each names the page it holds) and names each page's b-tree with SQLite's ``dbstat``.

    .venv/bin/python bench/wal_pages.py

Measured with it: 15.7 pages a create before migration 0008 (2.6 of them the unique index on
the audit chain's random predecessor hash), 12.7 after.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.create_icount import PATIENT, post  # noqa: E402
from fhir_ctms.api.app import create_app  # noqa: E402
from fhir_ctms.config import Settings  # noqa: E402
from fhir_ctms.storage import sqlite_inline  # noqa: E402
from fhir_ctms.storage.migrate import upgrade  # noqa: E402
from fhir_ctms.storage.sql import SqlRepository  # noqa: E402

CLIENTS, GROW, MEASURED = 32, 6400, 1600


def wal_pages(path: str) -> collections.Counter[int]:
    data = Path(path + "-wal").read_bytes()
    size = struct.unpack(">I", data[8:12])[0]
    pages: collections.Counter[int] = collections.Counter()
    off = 32  # WAL header; each frame: a 24-byte header (page number first) and the page
    while off + 24 + size <= len(data):
        pages[struct.unpack(">I", data[off:off + 4])[0]] += 1
        off += 24 + size
    return pages


async def main() -> None:
    path = f"{tempfile.mkdtemp()}/wal.db"
    url = f"sqlite+aiosqlite:///{path}"
    repo = SqlRepository.from_url(url)
    await upgrade(repo.engine)
    app = create_app(Settings(database_url=url), repo)
    body = orjson.dumps(PATIENT)

    async def load(total: int) -> None:
        async def client(k: int) -> None:
            for _ in range(k):
                assert await post(app, "/fhir/Patient", body) == 201
        await asyncio.gather(*(client(total // CLIENTS) for _ in range(CLIENTS)))

    await load(GROW)
    sqlite_inline.InlineWriter.checkpoint_rows = 10 ** 12  # no checkpoint from now on
    await load(CLIENTS * 5)
    await asyncio.sleep(0.5)  # a checkpoint still running ends
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    await load(MEASURED)
    pages = wal_pages(path)
    names = dict(db.execute("SELECT pageno, name FROM dbstat"))
    frames: collections.Counter[str] = collections.Counter()
    for page, n in pages.items():
        frames[names.get(page, "?")] += n
    print(f"WAL pages a create: {sum(pages.values()) / MEASURED:.2f}")
    for name, n in frames.most_common(20):
        print(f"  {name:40} {n / MEASURED:5.2f}")
    db.close()
    await repo.close()


if __name__ == "__main__":
    asyncio.run(main())
