"""history at instance, type and system level (R5 http.html#history): paging, _count, _since, _at."""

import asyncio

from fhir.resources.bundle import Bundle

from .fhir import patient


async def _versions(client, rid, n):
    for i in range(n):
        await client.put(f"/Patient/{rid}", json=patient(id=rid, birthDate=f"20{10 + i:02d}-01-01"))


async def test_instance_history_newest_first_and_valid(client):
    await _versions(client, "h1", 3)
    r = await client.get("/Patient/h1/_history")
    body = r.json()
    assert body["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in body["entry"]] == ["3", "2", "1"]
    assert body["entry"][0]["response"]["etag"] == 'W/"3"'
    assert body["entry"][-1]["response"]["status"].startswith("201")
    Bundle.model_validate(body)
    assert (await client.get("/Patient/unknown/_history")).status_code == 404


async def test_paging_with_count_round_trips_through_next_links(client):
    await _versions(client, "h2", 7)
    url, seen = "/Patient/h2/_history?_count=3", []
    while url:
        page = (await client.get(url)).json()
        seen += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].removeprefix("http://testserver/fhir") if nxt else None
    assert seen == ["7", "6", "5", "4", "3", "2", "1"]


async def test_type_and_system_history(client):
    await client.put("/Patient/h3", json=patient(id="h3"))
    await client.put("/Basic/b1", json={"resourceType": "Basic", "id": "b1", "code": {"text": "x"}})
    types = {e["resource"]["resourceType"] for e in (await client.get("/Patient/_history")).json()["entry"]}
    assert types == {"Patient"}
    system = {e["resource"]["resourceType"] for e in (await client.get("/_history")).json()["entry"]}
    assert {"Patient", "Basic", "Provenance", "AuditEvent"} <= system


async def test_since_and_at(client):
    await client.put("/Patient/h4", json=patient(id="h4", gender="male"))
    await asyncio.sleep(0.01)
    first = (await client.get("/Patient/h4")).json()["meta"]["lastUpdated"]
    await asyncio.sleep(0.01)
    await client.put("/Patient/h4", json=patient(id="h4", gender="female"))
    second = (await client.get("/Patient/h4")).json()["meta"]["lastUpdated"]
    since = (await client.get("/Patient/h4/_history", params={"_since": second})).json()
    assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["2"]
    at_first = (await client.get("/Patient/h4/_history", params={"_at": first})).json()
    assert [e["resource"]["meta"]["versionId"] for e in at_first["entry"]] == ["1"]
    at_year = (await client.get("/Patient/h4/_history", params={"_at": second[:4]})).json()
    assert [e["resource"]["meta"]["versionId"] for e in at_year["entry"]] == ["2", "1"]
    assert (await client.get("/Patient/h4/_history", params={"_since": "not-a-date"})).status_code == 400
    assert (await client.get("/Patient/h4/_history", params={"_count": "-1"})).status_code == 400
