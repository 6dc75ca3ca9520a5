"""Read sessions (both databases): they run outside the engine's pool (SQLite files on the inline
reader, PostgreSQL on its own asyncpg pool), see every committed write, and turn a transient
database error into 503 while any other error passes through unchanged."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import orjson
import pytest

from fhir_ctms.errors import BadRequest, ServiceUnavailable
from fhir_ctms.storage.repository import Stored
from fhir_ctms.storage.sql import SqlRepository

from .conftest import empty_tables


def _patient(rid: str) -> Stored:
    return Stored("Patient", rid, 1, 1, False, f'{{"resourceType":"Patient","id":"{rid}"}}', "POST")


def _transient(backend: str) -> Exception:
    """The error each database raises when it is busy (the text ``transient`` recognises)."""
    if backend == "sqlite":
        return sqlite3.OperationalError("database is locked")
    return asyncpg.exceptions.DeadlockDetectedError("deadlock detected")


async def test_a_read_sees_the_committed_write_without_an_engine_connection(repo: SqlRepository) -> None:
    await empty_tables(repo)
    async with repo.session(write=True) as s:
        await s.put(_patient("r1"), previous=None)
    async with repo.session(write=False) as s:
        # the engine's pool serves write sessions only
        assert repo.engine.pool.checkedout() == 0
        stored = await s.current("Patient", "r1")
        assert repo.engine.pool.checkedout() == 0
    assert stored is not None and stored.version == 1
    assert orjson.loads(stored.content or "null") == {"resourceType": "Patient", "id": "r1"}


async def test_concurrent_first_reads_open_one_read_pool(backend: str, fresh_database_url) -> None:
    repository = SqlRepository.from_url(fresh_database_url(), pool_size=4)
    try:
        async with repository.session(write=True) as s:
            await s.put(_patient("c1"), previous=None)

        async def read() -> int:
            async with repository.session(write=False) as s:
                found = await s.current("Patient", "c1")
                return found.version if found else 0
        assert await asyncio.gather(*(read() for _ in range(40))) == [1] * 40
        if backend == "postgresql":
            pool = repository._reader.pool
            assert pool is not None and pool.get_max_size() == 4 and 1 <= pool.get_size() <= 4
    finally:
        await repository.close()


async def test_a_transient_error_in_a_read_is_503(repo: SqlRepository, backend: str) -> None:
    with pytest.raises(ServiceUnavailable) as raised:
        async with repo.session(write=False):
            raise _transient(backend)
    assert raised.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize("error", [sqlite3.OperationalError("no such table: x"),
                                   asyncpg.exceptions.UndefinedTableError("relation x does not exist"),
                                   BadRequest("the database is busy, says the client")])
async def test_other_errors_in_a_read_pass_through(repo: SqlRepository, error: Exception) -> None:
    with pytest.raises(type(error)) as raised:
        async with repo.session(write=False):
            raise error
    assert raised.value is error


async def test_a_postgresql_read_is_one_statement(repo: SqlRepository, backend: str) -> None:
    """A read-by-id sends its SELECT and nothing else: the pool sends no reset query when the
    connection goes back (a read session changes no session state)."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's read pool")
    async with repo.session(write=False) as s:
        await s.current("Patient", "warm-up")  # opens the pool
    sent: list[str] = []
    pool = repo._reader.pool
    connections = [holder._con for holder in pool._holders if holder._con is not None]
    for connection in connections:
        connection.add_query_logger(lambda record: sent.append(record.query))
    try:
        for _ in range(3):
            async with repo.session(write=False) as s:
                await s.current("Patient", "nobody")
    finally:
        for connection in connections:
            connection._query_loggers.clear()
    assert len(sent) == 3 and all(q.startswith("SELECT") and "FROM resources" in q for q in sent), sent

