"""GET /metadata: an R5 CapabilityStatement generated from what the server supports."""

from fhir.resources.capabilitystatement import CapabilityStatement

from fhir_ctms.resources.bindings import check_required_bindings
from fhir_ctms.resources.registry import RESOURCE_TYPES


async def test_capability_statement_is_valid_r5_and_complete(client):
    r = await client.get("/metadata")
    body = r.json()
    CapabilityStatement.model_validate(body)
    assert check_required_bindings(body) == []
    assert body["fhirVersion"] == "5.0.0" and body["kind"] == "instance"
    rest = body["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system", "search-system"}
    assert "http://hl7.org/fhir/CompartmentDefinition/patient" in rest["compartment"]
    types = {res["type"]: res for res in rest["resource"]}
    assert set(types) == RESOURCE_TYPES
    patient = types["Patient"]
    assert {i["code"] for i in patient["interaction"]} == {
        "read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"}
    patient_params = {p["name"]: p for p in patient["searchParam"]}
    assert {"_id", "_lastUpdated", "identifier", "name", "birthdate", "gender", "general-practitioner"} <= set(
        patient_params)
    assert patient_params["birthdate"]["type"] == "date"
    assert patient_params["birthdate"]["definition"] == "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    # special parameters (near, _text, _content) are not searched, so not advertised
    observation = {p["name"]: p["type"] for p in types["Observation"]["searchParam"]}
    assert observation["code-value-quantity"] == "composite" and observation["value-quantity"] == "quantity"
    assert "near" not in {p["name"] for p in types["Location"]["searchParam"]}
    assert "_text" not in patient_params and "_content" not in patient_params
    assert {p["name"] for p in types["Binary"]["searchParam"]} >= {"_id", "_lastUpdated"}
    assert "update" not in {i["code"] for i in types["AuditEvent"]["interaction"]}
    assert "delete" not in {i["code"] for i in types["Provenance"]["interaction"]}


async def test_pretty(client):
    pretty = await client.get("/metadata", params={"_pretty": "true"})
    plain = await client.get("/metadata")
    assert pretty.json() == plain.json()
    assert b"\n  " in pretty.content and b"\n" not in plain.content


async def test_advertised_interactions_are_served(client):
    """Each interaction the statement lists for Patient answers (not 404/405)."""
    rid = (await client.post("/Patient", json={"resourceType": "Patient"})).json()["id"]
    calls = {
        "read": client.get(f"/Patient/{rid}"),
        "vread": client.get(f"/Patient/{rid}/_history/1"),
        "history-instance": client.get(f"/Patient/{rid}/_history"),
        "history-type": client.get("/Patient/_history"),
        "search-type": client.get("/Patient", params={"_id": rid}),
        "update": client.put(f"/Patient/{rid}", json={"resourceType": "Patient", "id": rid, "active": True}),
        "patch": client.patch(f"/Patient/{rid}", json=[], headers={"content-type": "application/json-patch+json"}),
    }
    for name, call in calls.items():
        r = await call
        assert r.status_code == 200, (name, r.text)
    assert (await client.delete(f"/Patient/{rid}")).status_code == 204
