"""SQLite files on the event loop's thread: inline statements, group commit, background checkpoints.

SQLite is a library, not a server. Measured on this machine, a primary-key read
costs about 6 us in ``sqlite3``, and one aiosqlite round trip (a hop to its thread
and back) 100 to 400 us; a create made nine of them. So sessions on a SQLite file
run their statements through the synchronous ``sqlite3`` module, inline:

- **reads**: one read-only connection per thread. In WAL mode a reader never waits
  for a writer, so only the query itself runs inline.
- **writes**: one connection, used by one write session at a time (an asyncio lock).
  Only ``BEGIN IMMEDIATE`` can wait (for another process's writer); it is tried
  without waiting and retried after ``asyncio.sleep``, so the loop never blocks on a
  lock. Once it is held, a WAL writer waits for nothing.
- **group commit**: the write sessions share one transaction, which is committed once
  the sessions started in the same turn of the event loop (requests that arrived
  together) have run: one COMMIT for all of them. No session returns before the COMMIT
  that makes its changes durable (and a failed COMMIT fails every session of the
  group), so every acknowledged write is committed.
  Measured: a COMMIT costs about 100-150 us, more than all of a create's inserts.
- **a failed session takes only its own changes away**, without a SAVEPOINT: each
  session records the statements it wrote (``WriteLog``); when one fails after writing,
  the transaction is rolled back and the statements of the sessions before it in the
  group are run again (they ran in that order, serialised, so they give the same
  result). A session that fails before writing anything (most do: validation, a
  version conflict found by a read) costs nothing. A SAVEPOINT per session made SQLite
  copy every page a session touched into its sub-journal first: about 500 page writes a
  create, and 27% of a create's CPU (``bench/create_icount.py``, measured on 5,000
  creates: 1,760 us a create with the savepoint, 1,290 us without).
- **checkpoints**: SQLite would checkpoint inside a COMMIT every 1000 WAL pages; one
  create in 80 then took about 10 ms (the checkpoint's fsyncs, 65% of all commit time),
  with the loop blocked. Here the checkpoint runs on a worker thread after a COMMIT,
  while the writer lock is still held (so it completes and the WAL starts over) and
  the loop goes on serving reads and preparing the next writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger("fhir_ctms")

#: ``PRAGMA mmap_size`` of the inline reader connections: the database file (not the WAL) is read
#: through a memory map instead of a ``pread`` per page. A read transaction re-reads the pages
#: it needs (strace under wrk: one ``fstat`` and one ``pread64`` per read-by-id), so without
#: the map every read-by-id made two system calls more; measured under uvicorn, read-by-id went
#: from 56% to 63% of the unmapped floor (BENCHMARKS.md). Address space only: the kernel's page
#: cache holds the pages either way. The floor app (bench/floor_app.py) maps the same amount.
#: Not the writer: its pages stay in its own cache, and a map would be remapped as the file grows.
MMAP_BYTES = 256 * 1024 * 1024


def transient(exc: BaseException) -> bool:
    """Errors that mean "busy, retry later" (503), on either database."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(s in text for s in ("database is locked", "deadlock detected", "could not serialize", "busy"))


class InlineConnection:
    """A ``sqlite3`` connection per thread, as the driver a ``SqlSession`` runs statements on."""

    pg = False

    def __init__(self, path: str, *, write: bool) -> None:
        self.path = path
        self.write = write
        self.local = threading.local()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.write:
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL: a commit survives a killed process; only a power cut may lose
                # the last commits (the same as the engine's connections, sql.py)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=0")  # waits happen in asyncio.sleep, never here
                conn.execute("PRAGMA wal_autocheckpoint=0")  # InlineWriter.checkpoint does it
            else:
                conn.execute("PRAGMA busy_timeout=5000")
                conn.execute("PRAGMA query_only=1")
                conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            self.local.conn = conn
        return conn

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        return self.conn().execute(sql, params).fetchall()

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not self.write:
            raise RuntimeError("a read session does not write")
        self.conn().executemany(sql, rows)

    def close(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None


class WriteLog:
    """The connection a write session runs on: the ``InlineConnection``, with a record of the
    statements that wrote (``INSERT``/``UPDATE``/``DELETE``), so that they can be run again."""

    pg = False
    __slots__ = ("connection", "statements")

    def __init__(self, connection: InlineConnection) -> None:
        self.connection = connection
        self.statements: list[tuple[str, Any, bool]] = []  # (sql, params or rows, many)

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        if sql.lstrip()[:6].upper() in _WRITES:
            self.statements.append((sql, params, False))
        return await self.connection.fetch(sql, *params)

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.statements.append((sql, rows, True))
        await self.connection.executemany(sql, rows)

    def replay(self, conn: sqlite3.Connection) -> None:
        for sql, params, many in self.statements:
            if many:
                conn.executemany(sql, params)
            else:
                conn.execute(sql, params).fetchall()


_WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "REPLAC"})


class InlineWriter:
    """Write sessions on one SQLite connection, with group commit and background checkpoints."""

    #: how long a write session waits for another process's writer before giving up
    lock_wait = 30.0
    #: sessions in one group at most (bounds how long a transaction stays open)
    max_group = 64
    #: rows written between two WAL checkpoints. A create writes ~45 rows and, with group
    #: commit, ~12.7 WAL pages (``bench/wal_pages.py``), so this is ~2,300 pages (9 MiB) under
    #: load, fewer than a wal-index hash table's 4,096, so readers probe one table. 1,000 rows
    #: (~280 pages) checkpointed after almost every group: the checkpoint thread took 11% of the
    #: server's core under a create load, 6.6% at 8,000 (it copies each page once however often
    #: a group rewrote it, and fsyncs twice per checkpoint); 32,000 saved little more (5-6%).
    checkpoint_rows = 8000

    def __init__(self, path: str) -> None:
        self.connection = InlineConnection(path, write=True)
        self.lock = asyncio.Lock()
        self.queued = 0  # sessions waiting for the lock (they will join the group)
        self.commit_scheduled = False
        self.checkpointing = False
        #: sessions done, awaiting the COMMIT, with the statements they wrote
        self.group: list[tuple[asyncio.Future[None], WriteLog]] = []
        self.rows_since_checkpoint = 0
        self.checkpoint_task: asyncio.Future[None] | None = None
        self.closed = False

    @asynccontextmanager
    async def session(self, make: Callable[[InlineConnection], Any]) -> AsyncIterator[Any]:
        """A write session (``make(connection)``), its writes recorded; returns once committed."""
        self.queued += 1
        try:
            await self.lock.acquire()
        finally:
            self.queued -= 1
        conn = self.connection.conn()
        try:
            if not conn.in_transaction:
                await self._begin(conn)
            written = WriteLog(self.connection)
            session = make(written)
            try:
                yield session
                await session.flush()
            except BaseException:
                if written.statements or not conn.in_transaction:
                    await self._undo(conn)
                raise
            committed = asyncio.get_running_loop().create_future()
            self.group.append((committed, written))
            self.rows_since_checkpoint += session.rows_written
            if len(self.group) >= self.max_group:
                self._commit(conn)
        finally:
            self.lock.release()
            self._commit_soon(conn)
        await committed  # the COMMIT of the group (perhaps run for a later session)

    def _commit_soon(self, conn: sqlite3.Connection) -> None:
        """COMMIT once the sessions already running in this turn of the event loop (requests
        that arrived together) have joined the group: ``call_soon`` runs after them."""
        if not self.commit_scheduled and conn.in_transaction:
            self.commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_commit, conn)

    def _scheduled_commit(self, conn: sqlite3.Connection) -> None:
        self.commit_scheduled = False
        if self.closed:  # aclose ran the COMMIT already
            return
        if self.lock.locked() or self.queued:  # they join; the last to release schedules again
            return
        self._commit(conn)
        if self.rows_since_checkpoint >= self.checkpoint_rows and not self.checkpointing:
            self.rows_since_checkpoint = 0
            self.checkpointing = True
            self.checkpoint_task = asyncio.ensure_future(self._checkpoint(conn))

    def _commit(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._settle(exc)
                return
        self._settle(None)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.lock_wait, 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not transient(exc) or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _undo(self, conn: sqlite3.Connection) -> None:
        """Take a failed session's writes away: roll the transaction back and run the
        statements of the group's earlier sessions again. If that fails too (the database
        is full, say), those sessions fail with it: none has been told it succeeded."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self.group:
                await self._begin(conn)
                for _, written in self.group:
                    written.replay(conn)
        except (sqlite3.Error, OSError) as exc:
            log.exception("replaying the group of a failed write session failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._settle(exc)

    def _settle(self, error: BaseException | None) -> None:
        group, self.group = self.group, []
        for fut, _ in group:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    async def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """A PASSIVE checkpoint on a worker thread, holding the writer lock (so no commit
        lands meanwhile: it completes, and the next transaction starts the WAL over)."""
        self.queued += 1
        try:
            await self.lock.acquire()
        finally:
            self.queued -= 1
        try:
            self._commit(conn)  # sessions that joined since the last COMMIT
            # fetched in the thread: an unread result row would keep the statement open, and
            # the next statement would fail with "SQL statements in progress"
            await asyncio.to_thread(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except sqlite3.Error:  # the next one tries again; nothing is lost meanwhile
            log.warning("WAL checkpoint failed", exc_info=True)
        finally:
            self.checkpointing = False
            self.lock.release()
            self._commit_soon(conn)  # whoever holds the lock schedules the next COMMIT

    async def aclose(self) -> None:
        """Close once a running checkpoint is done: closing the connection while the worker
        thread runs on it crashed the process (a segfault in ``fhir-ctms import`` at exit,
        2 runs in 5 of tests/test_cli.py)."""
        task = self.checkpoint_task
        if task is not None and not task.done():
            await asyncio.wait([task])
        # a COMMIT scheduled (``call_soon``) but not run yet: run it now. Left to the loop, it
        # ran on the closed connection ("Cannot operate on a closed database" printed by
        # ``fhir-ctms import`` after a rejected file, whose session had left the transaction
        # open without writing)
        async with self.lock:
            conn = getattr(self.connection.local, "conn", None)
            if conn is not None:
                self._commit(conn)
            self.closed = True
            self.close()

    def close(self) -> None:
        self.connection.close()
