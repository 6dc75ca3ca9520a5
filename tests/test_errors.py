"""Bad input: always an OperationOutcome with the right status, never a 500, never a change."""

import pytest

from .conftest import empty_tables, make_client
from .fhir import outcome_codes, patient


async def _nothing_written(client):
    assert (await client.get("/_history")).json()["entry"] == []


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b"[]", 400),
    (b'"a string"', 400),
    (b'{"resourceType": "Nope"}', 400),
    (b'{"resourceType": "Observation"}', 400),    # the URL says Patient
    (b'{"gender": "male"}', 400),                 # no resourceType
    (b"[" * 100_000 + b"]" * 100_000, 400),       # deeper than any parser allows
    (b'{"resourceType": "Patient", "name": [{"family": "a\\u0000b"}]}', 400),
    (b'{"resourceType": "Patient", "name": [{"family": "\\ud800"}]}', 400),
    (b"\xff\xfe{}", 400),
    (b'{"resourceType": "Patient", "gender": "bogus"}', 422),
    (b'{"resourceType": "Patient", "unknownElement": 1}', 422),
    (b'{"resourceType": "Patient", "birthDate": "yesterday"}', 422),
    (b'{"resourceType": "Patient", "active": 1e400}', 400),   # beyond any double
])
async def test_bad_bodies(client, body, status):
    r = await client.post("/Patient", content=body, headers={"content-type": "application/fhir+json"})
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    await _nothing_written(client)


async def test_422_names_every_problem_with_its_path(client):
    r = await client.post("/ResearchStudy", json={"resourceType": "ResearchStudy", "status": "bogus"})
    assert r.status_code == 422
    issues = r.json()["issue"]
    assert issues[0]["code"] == "code-invalid"
    assert issues[0]["expression"] == ["ResearchStudy.status"]
    r = await client.post("/Patient", json=patient(identifier=[{"use": "bogus"}], birthDate="x"))
    assert r.status_code == 422
    assert [i["expression"] for i in r.json()["issue"]] == [["Patient.birthDate"]]
    r = await client.post("/Patient", json=patient(identifier=[{"use": "bogus"}]))
    assert r.json()["issue"][0]["expression"] == ["Patient.identifier[0].use"]


async def test_invalid_id_on_update(client):
    r = await client.put("/Patient/" + "x" * 65, json=patient(id="x" * 65))
    assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome"
    await _nothing_written(client)


async def test_unknown_route_and_method(client):
    r = await client.get("/Patient/1/_history/1/extra")
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]
    r = await client.put("/Patient/1/_history/1", json={})
    assert r.status_code == 405 and outcome_codes(r) == ["not-supported"]


async def test_content_negotiation(client):
    r = await client.get("/metadata", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome"
    assert (await client.get("/metadata", params={"_format": "xml"})).status_code == 406
    assert (await client.get("/metadata", params={"_format": "json"})).status_code == 200
    assert (await client.get("/metadata", headers={"Accept": "text/html,*/*;q=0.8"})).status_code == 200
    as_json = await client.get("/metadata", headers={"Accept": "application/json"})
    assert as_json.headers["content-type"].startswith("application/json")
    assert (await client.get("/metadata", headers={"Accept": "application/fhir+json; fhirVersion=4.0"})).status_code == 406
    r = await client.post("/Patient", content=b"<Patient/>", headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 415
    r = await client.post("/Patient", json=patient(), headers={"Accept": "application/xml"})
    assert r.status_code == 406
    await _nothing_written(client)


async def test_payload_limit_is_413(repo):
    await empty_tables(repo)
    async with make_client(repo, max_body_bytes=1000) as small:
        r = await small.post("/Patient", json=patient(name=[{"text": "x" * 2000}]))
        assert r.status_code == 413 and outcome_codes(r) == ["too-costly"]
        assert (await small.post("/Patient", json=patient())).status_code == 201


async def test_audit_records_cannot_be_changed(client):
    await client.post("/Patient", json=patient())
    record = (await client.get("/_history")).json()["entry"][0]["resource"]
    path = f"/{record['resourceType']}/{record['id']}"
    assert (await client.put(path, json=record)).status_code == 405
    assert (await client.delete(path)).status_code == 405
    patch = await client.patch(path, json=[], headers={"content-type": "application/json-patch+json"})
    assert patch.status_code == 405
    assert (await client.get(path)).status_code == 200
