"""Instructions per read-by-id, counted by callgrind, for the server app and for the floor app.

Writes 1,000 Patients, then runs ``N`` reads of them through the ASGI app called directly (no
HTTP server): ``server`` is fhir-ctms's app, ``floor`` is ``bench/floor_app.py`` with the
``sqlite3`` driver on the same file. Under callgrind, two lengths differenced give the cost of
one read without start-up (a count the machine's other load cannot move)::

    for app in floor server; do for n in 300 1300; do
      OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$app.$n \\
        .venv/bin/python bench/read_icount.py $app $n 2>&1 | grep Collected
    done; done
    # instructions a read = (Collected(1300) - Collected(300)) / 1000

Under uvicorn each instruction of the app costs more than in this loop (cache misses between
the kernel, uvicorn and the app), so this counts work, not time: BENCHMARKS.md has both.
``OPENBLAS_NUM_THREADS=1``: scipy (the enrolment forecast) would otherwise start BLAS threads
whose spinning callgrind counts too.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

PATIENTS = 1000


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": method, "scheme": "http", "path": path, "query_string": b"",
            "root_path": "", "headers": [(b"host", b"127.0.0.1:8080"), *headers],
            "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8080)}


async def call(app: Any, scope: dict[str, Any], body: bytes = b"") -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
    await app(scope, receive, send)
    return sent[0]["status"]


async def main(which: str, n: int) -> None:
    import orjson

    from fhir_ctms.api.app import create_app
    from fhir_ctms.config import Settings
    from fhir_ctms.storage.migrate import upgrade
    from fhir_ctms.storage.sql import SqlRepository

    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/read-icount.db"
    repo = SqlRepository.from_url(url)
    await upgrade(repo.engine)
    server = create_app(Settings(database_url=url), repo)
    for i in range(1, PATIENTS + 1):
        rid = f"bench-p-{i:05d}"
        body = orjson.dumps({"resourceType": "Patient", "id": rid, "active": True, "gender": "female",
                             "birthDate": "1970-01-01", "name": [{"family": "Doe", "given": ["Jane"]}]})
        status = await call(server, _scope("PUT", f"/fhir/Patient/{rid}", [(b"content-type", b"application/fhir+json")]), body)
        assert status == 201, status
    app: Any = server
    if which == "floor":
        os.environ["FHIR_CTMS_DATABASE_URL"], os.environ["BENCH_FLOOR_DRIVER"] = url, "sqlite3"
        from bench import floor_app
        app = floor_app.app
        started: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, started.put))
        assert (await started.get())["type"] == "lifespan.startup.complete"
    accept = [(b"accept", b"application/fhir+json")]
    for i in range(n):
        assert await call(app, _scope("GET", f"/fhir/Patient/bench-p-{i % PATIENTS + 1:05d}", accept)) == 200
    if which == "floor":
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
    await repo.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("server", "floor"):
        raise SystemExit("usage: read_icount.py server|floor N")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
