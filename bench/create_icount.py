"""Instructions per create, counted by callgrind: a measure the machine's other load cannot move.

Runs ``100 + N`` creates of a Patient in process (the ASGI app called directly, no HTTP server),
from 32 concurrent clients as wrk's connections would (so group commit shares COMMITs as in
``bench/bench.py``'s create). Under callgrind, two lengths differenced give the cost of one
create without start-up and warm-up::

    for n in 28 348; do
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n.out .venv/bin/python bench/create_icount.py $n 2>&1 | grep Collected
    done
    # instructions a create = (Collected(348) - Collected(28)) / 320

(about 2 minutes a run; set PYTHONPATH to another checkout to count its code instead).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

import orjson

from fhir_ctms.api.app import create_app
from fhir_ctms.config import Settings
from fhir_ctms.storage.migrate import upgrade
from fhir_ctms.storage.sql import SqlRepository

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}], "active": True,
           "name": [{"family": "Doe", "given": ["Jane", "Q"]}], "gender": "female", "birthDate": "1970-01-01",
           "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "country": "US"}],
           "telecom": [{"system": "phone", "value": "555-1234", "use": "home"}]}


async def post(app, path: str, body: bytes) -> int:
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "scheme": "http",
             "headers": [(b"host", b"localhost:8080"), (b"content-type", b"application/fhir+json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080), "root_path": ""}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return sent[0]["status"]


async def main(n: int, clients: int = 32) -> None:
    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/icount.db"
    repo = SqlRepository.from_url(url)
    await upgrade(repo.engine)
    app = create_app(Settings(database_url=url), repo)
    body = orjson.dumps(PATIENT)

    async def client(k: int) -> None:
        for _ in range(k):
            assert await post(app, "/fhir/Patient", body) == 201
    await asyncio.gather(*(client((100 + n) // clients) for _ in range(clients)))
    await repo.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
