"""create, read, vread, update (and update as create), delete: R5 http.html#create..#delete."""

from email.utils import parsedate_to_datetime

from fhir.resources.patient import Patient

from .fhir import FHIR_JSON, outcome_codes, path_of, patient, version_of


async def test_create_answers_201_with_location_etag_and_last_modified(client):
    r = await client.post("/Patient", json=patient(gender="female", id="ignored"), headers=FHIR_JSON)
    assert r.status_code == 201
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["id"] != "ignored"  # the server assigns the id on create
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert r.headers["etag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    assert parsedate_to_datetime(r.headers["last-modified"]).year >= 2026
    Patient.model_validate(body)


async def test_read_returns_the_stored_resource(client):
    created = (await client.post("/Patient", json=patient(gender="male"))).json()
    r = await client.get(f"/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'


async def test_read_unknown_id_and_unknown_type_are_404(client):
    r = await client.get("/Patient/does-not-exist")
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]
    r = await client.get("/NotAType/1")
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]


async def test_update_creates_a_new_version_and_vread_keeps_the_old(client):
    created = (await client.post("/Patient", json=patient(gender="male"))).json()
    rid = created["id"]
    r = await client.put(f"/Patient/{rid}", json=patient(id=rid, gender="female"))
    assert r.status_code == 200
    assert version_of(r) == "2"
    assert r.headers["location"].endswith(f"/Patient/{rid}/_history/2")
    assert (await client.get(f"/Patient/{rid}")).json()["gender"] == "female"
    old = await client.get(f"/Patient/{rid}/_history/1")
    assert old.status_code == 200 and old.json()["gender"] == "male"
    assert (await client.get(f"/Patient/{rid}/_history/3")).status_code == 404
    assert (await client.get(f"/Patient/{rid}/_history/x")).status_code == 404


async def test_update_as_create_uses_the_client_id(client):
    r = await client.put("/Patient/client-chosen-1", json=patient(id="client-chosen-1", gender="other"))
    assert r.status_code == 201
    assert r.headers["etag"] == 'W/"1"'
    assert (await client.get("/Patient/client-chosen-1")).json()["gender"] == "other"


async def test_update_with_missing_or_different_id_is_400(client):
    r = await client.put("/Patient/a1", json=patient(gender="other"))
    assert r.status_code == 400
    r = await client.put("/Patient/a1", json=patient(id="a2"))
    assert r.status_code == 400
    assert (await client.get("/Patient/a1")).status_code == 404


async def test_update_that_changes_nothing_makes_no_new_version(client):
    r = await client.put("/Patient/same", json=patient(id="same", gender="other"))
    again = await client.put("/Patient/same", json=patient(id="same", gender="other"))
    assert again.status_code == 200 and version_of(again) == "1"
    history = (await client.get("/Patient/same/_history")).json()
    assert len(history["entry"]) == 1
    assert r.json() == again.json()


async def test_delete_then_read_is_410_and_history_keeps_everything(client):
    rid = (await client.post("/Patient", json=patient(gender="male"))).json()["id"]
    r = await client.delete(f"/Patient/{rid}")
    assert r.status_code == 204
    assert r.headers["etag"] == 'W/"2"'
    gone = await client.get(f"/Patient/{rid}")
    assert gone.status_code == 410 and outcome_codes(gone) == ["deleted"]
    assert (await client.get(f"/Patient/{rid}/_history/1")).json()["gender"] == "male"
    assert (await client.get(f"/Patient/{rid}/_history/2")).status_code == 410
    history = (await client.get(f"/Patient/{rid}/_history")).json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]


async def test_delete_of_what_does_not_exist_succeeds_and_writes_nothing(client):
    r = await client.delete("/Patient/never-was")
    assert r.status_code == 204
    assert (await client.get("/Patient/never-was")).status_code == 404
    history = (await client.get("/_history")).json()
    assert history["entry"] == []


async def test_update_after_delete_resurrects_with_the_next_version(client):
    await client.put("/Patient/lazarus", json=patient(id="lazarus"))
    await client.delete("/Patient/lazarus")
    r = await client.put("/Patient/lazarus", json=patient(id="lazarus", gender="male"))
    assert r.status_code == 201 and version_of(r) == "3"
    assert (await client.get("/Patient/lazarus")).status_code == 200


async def test_every_r5_type_can_be_created(client):
    from fhir_ctms.resources.registry import RESOURCE_TYPES
    assert len(RESOURCE_TYPES) == 158
    r = await client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "x"}})
    assert r.status_code == 201
    path = path_of(r.headers["location"])
    assert (await client.get(f"/{path}")).status_code == 200


async def test_decimals_keep_their_precision(client):
    """R5 json.html: a decimal's precision is significant (1.50 is not 1.5)."""
    body = (b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
            b'"valueQuantity":{"value":1.50,"unit":"mg"},"component":[{"code":{"text":"y"},'
            b'"valueQuantity":{"value":100.000}},{"code":{"text":"z"},"valueQuantity":{"value":0.0100}}]}')
    created = await client.post("/Observation", content=body, headers={"content-type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    for path, params in ((f"/Observation/{rid}", {}), (f"/Observation/{rid}", {"_pretty": "true"}),
                         (f"/Observation/{rid}/_history/1", {}), ("/Observation", {"_id": rid})):
        text = (await client.get(path, params=params)).text
        assert "1.50" in text and "100.000" in text and "0.0100" in text, (path, params, text)
    patched = await client.patch(f"/Observation/{rid}", headers={"content-type": "application/json-patch+json"},
                                 content=b'[{"op":"replace","path":"/valueQuantity/value","value":7.250}]')
    assert patched.status_code == 200 and "7.250" in patched.text
