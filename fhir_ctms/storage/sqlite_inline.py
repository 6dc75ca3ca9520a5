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
- **group commit**: each write session runs inside a SAVEPOINT of one transaction, which
  is committed once the sessions started in the same turn of the event loop (requests
  that arrived together) have run: one COMMIT for all of them.
  A session that fails rolls back to its savepoint and only its own changes go. No
  session returns before the COMMIT that makes its changes durable (and a failed
  COMMIT fails every session of the group), so every acknowledged write is committed.
  Measured: a COMMIT costs about 100-150 us, more than all of a create's inserts.
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


class InlineWriter:
    """Write sessions on one SQLite connection, with group commit and background checkpoints."""

    #: how long a write session waits for another process's writer before giving up
    lock_wait = 30.0
    #: sessions in one group at most (bounds how long a transaction stays open)
    max_group = 64
    #: rows written between two WAL checkpoints: about SQLite's own 1000 WAL pages
    checkpoint_rows = 1000

    def __init__(self, path: str) -> None:
        self.connection = InlineConnection(path, write=True)
        self.lock = asyncio.Lock()
        self.queued = 0  # sessions waiting for the lock (they will join the group)
        self.commit_scheduled = False
        self.checkpointing = False
        self.group: list[asyncio.Future[None]] = []  # sessions released, awaiting the COMMIT
        self.rows_since_checkpoint = 0
        self.checkpoint_task: asyncio.Future[None] | None = None

    @asynccontextmanager
    async def session(self, make: Callable[[InlineConnection], Any]) -> AsyncIterator[Any]:
        """A write session (``make(connection)``) in its own savepoint; returns once committed."""
        self.queued += 1
        try:
            await self.lock.acquire()
        finally:
            self.queued -= 1
        conn = self.connection.conn()
        try:
            if not conn.in_transaction:
                await self._begin(conn)
            conn.execute("SAVEPOINT session")
            session = make(self.connection)
            try:
                yield session
                await session.flush()
                conn.execute("RELEASE session")
            except BaseException:
                self._undo(conn)
                raise
            committed = asyncio.get_running_loop().create_future()
            self.group.append(committed)
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

    def _undo(self, conn: sqlite3.Connection) -> None:
        """Roll back this session's changes only; if SQLite aborted the whole transaction,
        the sessions of the group lose theirs too, and are told so."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO session")
                conn.execute("RELEASE session")
        except sqlite3.Error:
            log.exception("rolling back a write session failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if not conn.in_transaction:
            self._settle(sqlite3.OperationalError("the transaction was aborted: database is busy"))

    def _settle(self, error: BaseException | None) -> None:
        group, self.group = self.group, []
        for fut in group:
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
            # the next SAVEPOINT would fail with "SQL statements in progress"
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
        self.close()

    def close(self) -> None:
        self.connection.close()


class InlineRead:
    """A read session on the inline reader: nothing to open or close (a plain class: a
    generator-based context manager cost more than the primary-key read itself)."""

    __slots__ = ("session", "busy")

    def __init__(self, session: Any, busy: Callable[[BaseException], BaseException]) -> None:
        self.session = session
        self.busy = busy

    async def __aenter__(self) -> Any:
        return self.session

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, sqlite3.OperationalError) and transient(exc):
            raise self.busy(exc) from exc
