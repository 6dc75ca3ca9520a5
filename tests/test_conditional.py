"""Conditional create, update, patch, delete; If-Match, If-None-Match, If-Modified-Since."""

from .fhir import outcome_codes, patient, version_of, ident

MRN = "http://example.org/mrn"


async def test_conditional_create_no_match_creates_one_match_returns_it(client):
    headers = {"If-None-Exist": f"identifier={MRN}|100"}
    first = await client.post("/Patient", json=patient(identifier=ident(MRN, "100")), headers=headers)
    assert first.status_code == 201
    second = await client.post("/Patient", json=patient(identifier=ident(MRN, "100")), headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    search = (await client.get("/Patient", params={"identifier": f"{MRN}|100"})).json()
    assert len(search["entry"]) == 1


async def test_conditional_create_with_several_matches_is_412(client):
    for _ in range(2):
        await client.post("/Patient", json=patient(identifier=ident(MRN, "dup")))
    r = await client.post("/Patient", json=patient(identifier=ident(MRN, "dup")),
                          headers={"If-None-Exist": f"identifier={MRN}|dup"})
    assert r.status_code == 412 and outcome_codes(r) == ["conflict"]


async def test_conditional_create_with_unknown_or_unsupported_criteria_is_400_and_writes_nothing(client):
    for criteria in ("nonsense=smith", "_text=smith", "identifier:in=http://example.org/vs"):
        r = await client.post("/Patient", json=patient(), headers={"If-None-Exist": criteria})
        assert r.status_code == 400, (criteria, r.text)
    assert (await client.get("/_history")).json()["entry"] == []


async def test_conditional_create_on_any_search_parameter(client):
    body = {"resourceType": "Patient", "name": [{"family": "Smith"}], "birthDate": "1970-05-06"}
    first = await client.post("/Patient", json=body)
    again = await client.post("/Patient", json=body, headers={"If-None-Exist": "family=smith&birthdate=1970-05"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


async def test_identifier_token_forms(client):
    await client.post("/Patient", json=patient(identifier=ident(MRN, "t1")))
    await client.post("/Patient", json=patient(identifier=[{"value": "t1"}]))
    count = lambda b: len([e for e in b["entry"] if e.get("search", {}).get("mode") == "match"])
    assert count((await client.get("/Patient?identifier=t1")).json()) == 2       # any system
    assert count((await client.get(f"/Patient?identifier={MRN}|t1")).json()) == 1
    assert count((await client.get("/Patient?identifier=|t1")).json()) == 1     # no system
    assert count((await client.get(f"/Patient?identifier={MRN}|t1,{MRN}|t2")).json()) == 1


async def test_conditional_update_creates_updates_or_refuses(client):
    url = f"/Patient?identifier={MRN}|200"
    created = await client.put(url, json=patient(identifier=ident(MRN, "200"), gender="male"))
    assert created.status_code == 201
    rid = created.json()["id"]
    updated = await client.put(url, json=patient(identifier=ident(MRN, "200"), gender="female"))
    assert updated.status_code == 200 and updated.json()["id"] == rid and version_of(updated) == "2"
    wrong_id = await client.put(url, json=patient(id="other", identifier=ident(MRN, "200")))
    assert wrong_id.status_code == 400
    await client.post("/Patient", json=patient(identifier=ident(MRN, "200")))
    many = await client.put(url, json=patient(identifier=ident(MRN, "200")))
    assert many.status_code == 412


async def test_conditional_update_with_client_id_and_no_match_creates_that_id(client):
    r = await client.put(f"/Patient?identifier={MRN}|201", json=patient(id="chosen", identifier=ident(MRN, "201")))
    assert r.status_code == 201 and r.json()["id"] == "chosen"


async def test_conditional_delete(client):
    await client.post("/Patient", json=patient(identifier=ident(MRN, "300")))
    r = await client.delete(f"/Patient?identifier={MRN}|300")
    assert r.status_code == 204
    assert (await client.get(f"/Patient?identifier={MRN}|300")).json()["entry"] == []
    assert (await client.delete(f"/Patient?identifier={MRN}|300")).status_code == 204  # no match
    for _ in range(2):
        await client.post("/Patient", json=patient(identifier=ident(MRN, "301")))
    assert (await client.delete(f"/Patient?identifier={MRN}|301")).status_code == 412


async def test_if_match_prevents_lost_updates(client):
    rid = (await client.post("/Patient", json=patient())).json()["id"]
    ok = await client.put(f"/Patient/{rid}", json=patient(id=rid, gender="male"), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = await client.put(f"/Patient/{rid}", json=patient(id=rid, gender="female"), headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and outcome_codes(stale) == ["conflict"]
    assert (await client.get(f"/Patient/{rid}")).json()["gender"] == "male"
    assert (await client.delete(f"/Patient/{rid}", headers={"If-Match": 'W/"1"'})).status_code == 412
    assert (await client.delete(f"/Patient/{rid}", headers={"If-Match": 'W/"2"'})).status_code == 204
    missing = await client.put("/Patient/nope", json=patient(id="nope"), headers={"If-Match": 'W/"1"'})
    assert missing.status_code == 412
    bad = await client.put(f"/Patient/{rid}", json=patient(id=rid), headers={"If-Match": "garbage"})
    assert bad.status_code == 400


async def test_conditional_read(client):
    r = await client.post("/Patient", json=patient())
    rid, last_modified = r.json()["id"], r.headers["last-modified"]
    same = await client.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"1"'})
    assert same.status_code == 304 and same.content == b""
    other = await client.get(f"/Patient/{rid}", headers={"If-None-Match": 'W/"0"'})
    assert other.status_code == 200
    assert (await client.get(f"/Patient/{rid}", headers={"If-Modified-Since": last_modified})).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert (await client.get(f"/Patient/{rid}", headers={"If-Modified-Since": old})).status_code == 200
