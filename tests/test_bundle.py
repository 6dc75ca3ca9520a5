"""batch and transaction (R5 http.html#transaction)."""

import base64

import orjson

from .fhir import ident, patient

MRN = "http://example.org/mrn"


def entry(method, url, resource=None, full_url=None, **request):
    e = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        e["resource"] = resource
    if full_url:
        e["fullUrl"] = full_url
    return e


def tx(*entries, kind="transaction"):
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


async def test_transaction_rewrites_urn_uuid_references_and_reports_each_entry(client):
    p = "urn:uuid:11111111-1111-4111-8111-111111111111"
    body = tx(
        entry("POST", "ResearchSubject", {"resourceType": "ResearchSubject", "status": "active",
                                          "study": {"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"},
                                          "subject": {"reference": p}}),
        entry("POST", "Patient", patient(gender="female"), full_url=p),
        entry("POST", "ResearchStudy", {"resourceType": "ResearchStudy", "status": "active"},
              full_url="urn:uuid:22222222-2222-4222-8222-222222222222"),
    )
    r = await client.post("", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 3
    subject = out["entry"][0]["resource"]
    patient_loc = out["entry"][1]["response"]["location"]
    study_loc = out["entry"][2]["response"]["location"]
    assert subject["subject"]["reference"] == patient_loc.split("/_history")[0]
    assert subject["study"]["reference"] == study_loc.split("/_history")[0]
    assert all(e["response"]["etag"] == 'W/"1"' for e in out["entry"])
    stored = (await client.get("/" + subject["subject"]["reference"])).json()
    assert stored["gender"] == "female"


async def test_transaction_is_atomic(client):
    await client.put("/Patient/keep", json=patient(id="keep", gender="male"))
    await client.put("/Patient/keep2", json=patient(id="keep2"))
    body = tx(
        entry("PUT", "Patient/keep", patient(id="keep", gender="female")),
        entry("POST", "Patient", patient(identifier=ident(MRN, "atomic"))),
        entry("DELETE", "Patient/keep2"),
        entry("POST", "ResearchStudy", {"resourceType": "ResearchStudy", "status": "bogus"}),
    )
    r = await client.post("", json=body)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert "Bundle.entry[3]" in issue["diagnostics"]
    assert (await client.get("/Patient/keep")).json()["gender"] == "male"
    assert (await client.get(f"/Patient?identifier={MRN}|atomic")).json()["entry"] == []
    assert (await client.get("/Patient/keep2")).status_code == 200
    history = (await client.get("/_history")).json()["entry"]
    assert len(history) == 6  # only the two PUTs before, each with its two audit records


async def test_transaction_processing_order_delete_post_put_get(client):
    await client.put("/Patient/order", json=patient(id="order", gender="male"))
    body = tx(
        entry("GET", "Patient/order"),
        entry("PUT", "Patient/order", patient(id="order", gender="female")),
        entry("POST", "Patient", patient(identifier=ident(MRN, "ord"))),
        entry("DELETE", "Patient?identifier=" + MRN + "|none"),
    )
    out = (await client.post("", json=body)).json()
    # GET runs last, so it sees the PUT's result
    assert out["entry"][0]["resource"]["gender"] == "female"
    assert out["entry"][1]["response"]["status"] == "200 OK"


async def test_transaction_conditional_create_and_conditional_reference(client):
    await client.post("/Patient", json=patient(identifier=ident(MRN, "cr")))
    body = tx(
        entry("POST", "Patient", patient(identifier=ident(MRN, "cr")), full_url="urn:uuid:33333333-3333-4333-8333-333333333333",
              ifNoneExist=f"identifier={MRN}|cr"),
        entry("POST", "ResearchSubject", {"resourceType": "ResearchSubject", "status": "active",
                                          "study": {"reference": "ResearchStudy/s1"},
                                          "subject": {"reference": f"Patient?identifier={MRN}|cr"}}),
        entry("PUT", "ResearchStudy/s1", {"resourceType": "ResearchStudy", "id": "s1", "status": "active"}),
    )
    out = (await client.post("", json=body)).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    existing = out["entry"][0]["resource"]["id"]
    assert out["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{existing}"
    dangling = tx(entry("POST", "ResearchSubject", {"resourceType": "ResearchSubject", "status": "active",
                                                     "study": {"reference": "ResearchStudy/s1"},
                                                     "subject": {"reference": f"Patient?identifier={MRN}|none"}}))
    assert (await client.post("", json=dangling)).status_code == 412


async def test_transaction_refuses_two_entries_for_one_resource(client):
    body = tx(entry("PUT", "Patient/twice", patient(id="twice")), entry("DELETE", "Patient/twice"))
    assert (await client.post("", json=body)).status_code == 400


async def test_transaction_patch_entry_carries_a_binary(client):
    await client.put("/Patient/pb", json=patient(id="pb", gender="male"))
    ops = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/gender", "value": "other"}])).decode()
    body = tx(entry("PATCH", "Patient/pb", {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                             "data": ops}))
    out = await client.post("", json=body)
    assert out.status_code == 200, out.text
    assert (await client.get("/Patient/pb")).json()["gender"] == "other"


async def test_batch_entries_fail_independently(client):
    body = tx(
        entry("POST", "Patient", patient(gender="male")),
        entry("POST", "ResearchStudy", {"resourceType": "ResearchStudy", "status": "bogus"}),
        entry("GET", "Patient/missing"),
        kind="batch")
    r = await client.post("", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "422" and statuses[2] == "404"
    assert out["entry"][1]["response"]["outcome"]["issue"][0]["code"] == "code-invalid"
    assert (await client.get("/" + out["entry"][0]["response"]["location"])).status_code == 200


async def test_prefer_minimal_in_a_transaction(client):
    body = tx(entry("POST", "Patient", patient()))
    out = (await client.post("", json=body, headers={"Prefer": "return=minimal"})).json()
    assert "resource" not in out["entry"][0]
    assert out["entry"][0]["response"]["location"].startswith("Patient/")


async def test_bundle_types_and_shapes_that_are_refused(client):
    assert (await client.post("", json={"resourceType": "Bundle", "type": "document"})).status_code == 400
    assert (await client.post("", json=patient())).status_code == 400
    assert (await client.post("", json=tx({"request": 5}))).status_code == 400
    assert (await client.post("", json=tx(entry("POST", "Patient")))).status_code == 400
