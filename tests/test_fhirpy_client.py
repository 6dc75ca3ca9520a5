"""A real FHIR client against a live server: fhirpy's AsyncFHIRClient (aiohttp).

fhirpy raises ``ResourceNotFound`` (with the response body as its message) for both
404 and 410, and ``fhirpy.base.exceptions.OperationOutcome`` (with ``.resource`` the
parsed OperationOutcome) for other error statuses such as 422.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

SYSTEM = "http://example.org/mrn"


async def test_fhirpy_crud_and_search(live_server):
    server = live_server()
    client = AsyncFHIRClient(server.url)
    value = f"fhirpy-{uuid.uuid4().hex[:8]}"

    # create
    study = client.resource("ResearchStudy", status="active", title="fhirpy round trip")
    await study.save()
    assert study.id and study["meta"]["versionId"] == "1"
    patient = client.resource("Patient", identifier=[{"system": SYSTEM, "value": value}],
                              name=[{"family": "Client", "given": ["Fhirpy"]}])
    await patient.save()
    assert patient.id and patient.id != study.id
    assert patient["meta"]["versionId"] == "1"

    # read back
    got_study = await client.get("ResearchStudy", study.id)
    assert got_study["title"] == "fhirpy round trip" and got_study["status"] == "active"
    got_patient = await client.reference("Patient", patient.id).to_resource()
    assert got_patient.resource_type == "Patient" and got_patient.id == patient.id
    assert got_patient["name"] == [{"family": "Client", "given": ["Fhirpy"]}]

    # update via .save() (PUT with the id)
    patient["active"] = True
    patient["name"] = [{"family": "Client", "given": ["Updated"]}]
    await patient.save()
    assert patient.id == got_patient.id
    assert patient["meta"]["versionId"] == "2"
    study["title"] = "fhirpy round trip, revised"
    await study.save()
    assert study["meta"]["versionId"] == "2"

    # fetch by reference
    fetched = await client.reference(reference=f"Patient/{patient.id}").to_resource()
    assert fetched["active"] is True
    assert fetched["name"] == [{"family": "Client", "given": ["Updated"]}]
    assert fetched["meta"]["versionId"] == "2"
    fetched_study = await client.reference("ResearchStudy", study.id).to_resource()
    assert fetched_study["title"] == "fhirpy round trip, revised"

    # search: identifier and _id
    found = await client.resources("Patient").search(identifier=f"{SYSTEM}|{value}").fetch()
    assert [p.id for p in found] == [patient.id]
    assert found[0]["meta"]["versionId"] == "2"
    assert await client.resources("Patient").search(identifier=f"{SYSTEM}|no-such-{value}").fetch() == []
    by_id = await client.resources("ResearchStudy").search(_id=study.id).fetch()
    assert [s.id for s in by_id] == [study.id]
    only = await client.resources("Patient").search(identifier=f"{SYSTEM}|{value}").get()
    assert only.id == patient.id

    # delete, then reading fails with 410 Gone
    await patient.delete()
    with pytest.raises(ResourceNotFound) as gone:
        await client.reference("Patient", patient.id).to_resource()
    outcome = json.loads(str(gone.value))
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in outcome["issue"]] == ["deleted"]  # 410, not 404 ("not-found")
    r = httpx.get(f"{server.url}/Patient/{patient.id}")
    assert r.status_code == 410
    assert await client.resources("Patient").search(identifier=f"{SYSTEM}|{value}").fetch() == []
    # the study was not touched
    assert (await client.get("ResearchStudy", study.id))["meta"]["versionId"] == "2"

    # a resource that was never there: 404, which fhirpy reports the same way
    with pytest.raises(ResourceNotFound) as missing:
        await client.reference("Patient", "no-such-patient").to_resource()
    assert [i["code"] for i in json.loads(str(missing.value))["issue"]] == ["not-found"]


async def test_fhirpy_invalid_resource_reports_operation_outcome(live_server):
    server = live_server()
    client = AsyncFHIRClient(server.url)
    bad = client.resource("ResearchStudy", status="bogus", title="bad status")
    with pytest.raises(OperationOutcome) as raised:
        await bad.save()
    outcome = raised.value.resource
    assert outcome["resourceType"] == "OperationOutcome"
    matching = [i for i in outcome["issue"]
                if i["code"] == "code-invalid" and "ResearchStudy.status" in i.get("expression", [])]
    assert matching, outcome
    assert matching[0]["severity"] == "error"
    assert bad.id is None
    # nothing was stored
    assert await client.resources("ResearchStudy").fetch() == []
