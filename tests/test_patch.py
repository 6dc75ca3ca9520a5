"""JSON Patch (R5 http.html#patch) and conditional patch."""

from .fhir import ident, outcome_codes, patient, version_of

PATCH = {"content-type": "application/json-patch+json"}


async def test_json_patch_applies_and_versions(client):
    rid = (await client.post("/Patient", json=patient(gender="male", active=True))).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "female"}, {"op": "remove", "path": "/active"}]
    r = await client.patch(f"/Patient/{rid}", json=ops, headers={**PATCH, "If-Match": 'W/"1"'})
    assert r.status_code == 200 and version_of(r) == "2"
    body = (await client.get(f"/Patient/{rid}")).json()
    assert body["gender"] == "female" and "active" not in body
    history = (await client.get(f"/Patient/{rid}/_history")).json()
    assert history["entry"][0]["request"]["method"] == "PUT"  # bdl-14: a patch shows as an update


async def test_patch_errors(client):
    rid = (await client.post("/Patient", json=patient(gender="male"))).json()["id"]
    failed_test = [{"op": "test", "path": "/gender", "value": "female"}]
    assert (await client.patch(f"/Patient/{rid}", json=failed_test, headers=PATCH)).status_code == 422
    assert (await client.patch(f"/Patient/{rid}", json={"op": "x"}, headers=PATCH)).status_code == 400
    bad_op = [{"op": "frobnicate", "path": "/gender"}]
    assert (await client.patch(f"/Patient/{rid}", json=bad_op, headers=PATCH)).status_code == 400
    change_id = [{"op": "replace", "path": "/id", "value": "other"}]
    assert (await client.patch(f"/Patient/{rid}", json=change_id, headers=PATCH)).status_code == 422
    invalid = [{"op": "replace", "path": "/gender", "value": "bogus"}]
    r = await client.patch(f"/Patient/{rid}", json=invalid, headers=PATCH)
    assert r.status_code == 422 and outcome_codes(r) == ["code-invalid"]
    wrong_type = await client.patch(f"/Patient/{rid}", json=invalid, headers={"content-type": "application/xml"})
    assert wrong_type.status_code == 415
    assert (await client.patch("/Patient/missing", json=[], headers=PATCH)).status_code == 404
    assert version_of(await client.get(f"/Patient/{rid}")) == "1"  # none of the above wrote


async def test_conditional_patch(client):
    await client.post("/Patient", json=patient(identifier=ident("urn:s", "p1"), gender="male"))
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    r = await client.patch("/Patient?identifier=urn:s|p1", json=ops, headers=PATCH)
    assert r.status_code == 200 and r.json()["gender"] == "other"
    assert (await client.patch("/Patient?identifier=urn:s|none", json=ops, headers=PATCH)).status_code == 404
