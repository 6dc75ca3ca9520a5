"""One test suite, run on every database: SQLite (a file) and PostgreSQL (a real server).

``make test`` starts a throwaway PostgreSQL server (scripts/with-postgres) and sets
``FHIR_CTMS_TEST_POSTGRES_URL``. Without it the PostgreSQL half is skipped locally,
and fails under CI, so a CI run can never silently test one database only.

Fixtures:
- ``backend``: "sqlite" or "postgresql" (every test using the fixtures below runs on both);
- ``repo``: a repository on a freshly migrated database of that backend (session-wide);
- ``client``: an httpx client on the app in-process, base URL ``http://testserver/fhir``,
  with all tables emptied before the test;
- ``fresh_database_url``: a factory of new, empty, migrated databases of the backend
  (for tests that run a real server process);
- ``live_server``: a factory starting ``uvicorn`` in a subprocess on such a database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from fhir_ctms.api.app import create_app
from fhir_ctms.config import Settings
from fhir_ctms.storage.migrate import upgrade
from fhir_ctms.storage.schema import metadata
from fhir_ctms.storage.sql import SqlRepository, make_engine

BACKENDS = ["sqlite", "postgresql"]
BASE = "http://testserver/fhir"
PG_ENV = "FHIR_CTMS_TEST_POSTGRES_URL"


def _pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{PG_ENV} is not set: run the tests with 'make test'")
        pytest.skip(f"{PG_ENV} is not set (make test starts a PostgreSQL server)")
    return url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        _pg_admin_url()
    return request.param


async def _new_database(backend: str, directory: Path) -> str:
    """A new empty database of ``backend``, migrated to the newest schema; returns its URL."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / f'{uuid.uuid4().hex}.db'}"
    else:
        admin = _pg_admin_url()
        name = "t_" + uuid.uuid4().hex[:16]
        engine = make_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()
        url = admin.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    return url


@pytest.fixture(scope="session")
def fresh_database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], str]:
    directory = tmp_path_factory.mktemp("databases")

    def make() -> str:
        return asyncio.run(_new_database(backend, directory)) if not _loop_running() else \
            _run_in_thread(_new_database(backend, directory))
    return make


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(coro):  # a sync fixture called while the session loop runs
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest_asyncio.fixture(scope="session")
async def repo(backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SqlRepository]:
    url = await _new_database(backend, tmp_path_factory.mktemp(f"{backend}-db"))
    repository = SqlRepository.from_url(url)
    yield repository
    await repository.close()


async def empty_tables(repository: SqlRepository) -> None:
    async with repository.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())


def make_client(repository: SqlRepository, **settings: object) -> httpx.AsyncClient:
    app = create_app(Settings(**settings), repository)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest_asyncio.fixture
async def client(repo: SqlRepository) -> AsyncIterator[httpx.AsyncClient]:
    await empty_tables(repo)
    async with make_client(repo) as c:
        yield c


# -- a real server process ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str           # the FHIR base, http://127.0.0.1:PORT/fhir
    database_url: str
    process: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing, as in a crash."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(database_url: str, port: int | None = None, **env: str) -> LiveServer:
    port = port or free_port()
    environment = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url, **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "fhir_ctms.api.asgi:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + (proc.stderr.read().decode() if proc.stderr else ""))
        try:
            if httpx.get(base + "/metadata", timeout=1).status_code == 200:
                return LiveServer(base, database_url, proc)
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 30 s")


@pytest.fixture
def live_server(fresh_database_url: Callable[[], str]) -> Iterator[Callable[..., LiveServer]]:
    """``live_server()`` starts a server on a new database; ``live_server(database_url=...)``
    restarts one on an existing database. All are stopped after the test."""
    started: list[LiveServer] = []

    def start(database_url: str | None = None, **env: str) -> LiveServer:
        server = start_server(database_url or fresh_database_url(), **env)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()
