"""Concurrent writes against a live server: real parallel HTTP requests (httpx + asyncio.gather).

(a) conditional creates of one identifier create one resource;
(b) updates with the same If-Match: one wins, the others get 412;
(c) plain updates all succeed with distinct versions (no lost update);
(d) conditional updates of a new identifier create one resource.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx

N = 20
SYSTEM = "http://example.org/mrn"


def _version(r: httpx.Response) -> int:
    etag = r.headers.get("etag", "")
    assert etag.startswith('W/"') and etag.endswith('"'), (r.status_code, dict(r.headers))
    return int(etag[3:-1])


def _client(server) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=N + 5, max_keepalive_connections=N + 5)
    return httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits)


async def _history_versions(http: httpx.AsyncClient, path: str) -> list[int]:
    r = await http.get(f"/{path}/_history", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert not [link for link in bundle.get("link", []) if link["relation"] == "next"]
    return sorted(int(e["response"]["etag"][3:-1]) for e in bundle.get("entry", []))


async def _search_identifier(http: httpx.AsyncClient, value: str) -> list[dict]:
    r = await http.get("/Patient", params={"identifier": f"{SYSTEM}|{value}"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]


async def test_concurrent_conditional_creates_create_one(live_server):
    server = live_server()
    value = f"SAME-{uuid.uuid4().hex[:8]}"
    async with _client(server) as http:
        async def create(i: int) -> httpx.Response:
            body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}],
                    "name": [{"family": f"Writer{i}"}]}
            return await http.post("/Patient", json=body,
                                   headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"})
        responses = await asyncio.gather(*(create(i) for i in range(N)))

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 1, 200: N - 1}, [(r.status_code, r.text[:300]) for r in responses]
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1, ids
        (rid,) = ids
        assert all(_version(r) == 1 for r in responses)
        found = await _search_identifier(http, value)
        assert [p["id"] for p in found] == [rid]
        assert await _history_versions(http, f"Patient/{rid}") == [1]


async def _concurrent_updates(http: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, list[httpx.Response]]:
    """Create a Patient, then send N PUTs of it at once (writer i sets family "Writer{i}")."""
    r = await http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Start"}]})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]

    async def update(i: int) -> httpx.Response:
        body = {"resourceType": "Patient", "id": rid, "name": [{"family": f"Writer{i}"}]}
        return await http.put(f"/Patient/{rid}", json=body, headers=headers)
    return rid, list(await asyncio.gather(*(update(i) for i in range(N))))


async def test_concurrent_updates_with_same_if_match_one_wins(live_server):
    server = live_server()
    async with _client(server) as http:
        rid, responses = await _concurrent_updates(http, {"If-Match": 'W/"1"'})

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {200: 1, 412: N - 1}, [(r.status_code, r.text[:300]) for r in responses]
        (winner,) = [i for i, r in enumerate(responses) if r.status_code == 200]
        assert _version(responses[winner]) == 2
        for r in responses:
            if r.status_code == 412:
                outcome = r.json()
                assert outcome["resourceType"] == "OperationOutcome", outcome
                assert outcome["issue"] and outcome["issue"][0]["severity"] in ("error", "fatal"), outcome

        current = await http.get(f"/Patient/{rid}")
        assert current.status_code == 200
        assert current.json()["meta"]["versionId"] == "2"
        assert current.json()["name"] == [{"family": f"Writer{winner}"}]
        assert await _history_versions(http, f"Patient/{rid}") == [1, 2]


async def test_concurrent_plain_updates_lose_nothing(live_server):
    server = live_server()
    async with _client(server) as http:
        rid, responses = await _concurrent_updates(http, {})

        assert [r.status_code for r in responses] == [200] * N, [(r.status_code, r.text[:300]) for r in responses]
        versions = sorted(_version(r) for r in responses)
        assert versions == list(range(2, N + 2))
        # each response is the version its writer made
        for i, r in enumerate(responses):
            assert r.json()["name"] == [{"family": f"Writer{i}"}]
            assert r.json()["meta"]["versionId"] == str(_version(r))

        assert await _history_versions(http, f"Patient/{rid}") == list(range(1, N + 2))
        # every version holds the content of exactly the writer that was told it made it
        for i, r in enumerate(responses):
            v = await http.get(f"/Patient/{rid}/_history/{_version(r)}")
            assert v.status_code == 200 and v.json()["name"] == [{"family": f"Writer{i}"}], v.text
        current = await http.get(f"/Patient/{rid}")
        assert current.json()["meta"]["versionId"] == str(N + 1)


async def test_concurrent_conditional_updates_create_one(live_server):
    server = live_server()
    value = f"NEW-{uuid.uuid4().hex[:8]}"
    async with _client(server) as http:
        async def upsert(i: int) -> httpx.Response:
            body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}],
                    "name": [{"family": f"Writer{i}"}]}
            return await http.put("/Patient", params={"identifier": f"{SYSTEM}|{value}"}, json=body)
        responses = await asyncio.gather(*(upsert(i) for i in range(N)))

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 1, 200: N - 1}, [(r.status_code, r.text[:300]) for r in responses]
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1, ids
        (rid,) = ids
        # one creation (version 1) and N - 1 updates of it, each a new version
        assert sorted(_version(r) for r in responses) == list(range(1, N + 1))
        created = [r for r in responses if r.status_code == 201]
        assert _version(created[0]) == 1

        found = await _search_identifier(http, value)
        assert [p["id"] for p in found] == [rid]
        assert await _history_versions(http, f"Patient/{rid}") == list(range(1, N + 1))


async def test_concurrent_transactions_and_puts_on_one_resource(live_server):
    """Transaction Bundles (a create, then an update of R) racing plain PUTs of R: every
    write is serialised and succeeds; none may fail with a database error (such as a
    deadlock between the row lock on R and the lock on the audit chain)."""
    server = live_server()
    async with _client(server) as http:
        r = await http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Start"}]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        async def transaction(i: int) -> httpx.Response:
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient", "name": [{"family": f"New{i}"}]},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient", "id": rid, "name": [{"family": f"Tx{i}"}]},
                 "request": {"method": "PUT", "url": f"Patient/{rid}"}}]}
            return await http.post("", json=bundle)

        async def put(i: int) -> httpx.Response:
            body = {"resourceType": "Patient", "id": rid, "name": [{"family": f"Put{i}"}]}
            return await http.put(f"/Patient/{rid}", json=body)
        half = N // 2
        responses = await asyncio.gather(*(f(i) for i in range(half) for f in (transaction, put)))

        assert [r.status_code for r in responses] == [200] * N, [(r.status_code, r.text[:300]) for r in responses]
        versions = []
        for r in responses:
            body = r.json()
            if body["resourceType"] == "Bundle":
                created, updated = body["entry"]
                assert created["response"]["status"].startswith("201"), created
                versions.append(int(updated["response"]["etag"][3:-1]))
            else:
                versions.append(_version(r))
        assert sorted(versions) == list(range(2, N + 2))
        assert await _history_versions(http, f"Patient/{rid}") == list(range(1, N + 2))
