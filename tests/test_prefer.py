"""Prefer: return=minimal | representation | OperationOutcome (R5 http.html#ops)."""

from .fhir import patient


async def test_prefer_return(client):
    minimal = await client.post("/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    outcome = await client.post("/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201 and outcome.json()["resourceType"] == "OperationOutcome"
    full = await client.post("/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"
    default = await client.post("/Patient", json=patient())
    assert default.json()["resourceType"] == "Patient"
    rid = default.json()["id"]
    deleted = await client.delete(f"/Patient/{rid}", headers={"Prefer": "return=OperationOutcome"})
    assert deleted.status_code == 200 and deleted.json()["resourceType"] == "OperationOutcome"
    garbage = await client.post("/Patient", json=patient(), headers={"Prefer": ";;==,,return"})
    assert garbage.status_code == 201


async def test_search_reports_unknown_parameters_or_refuses_them_when_strict(client):
    lenient = (await client.get("/Patient", params={"nonsense": "1"})).json()
    outcomes = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "nonsense" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    assert "nonsense" not in lenient["link"][0]["url"]
    strict = await client.get("/Patient", params={"nonsense": "1"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
