"""``$validate`` (R5 resource-operation-validate.html), at the type and instance levels.

- 200 with an OperationOutcome whether the resource is valid ("No issues detected",
  information) or not (its issues with their expressions); the ``profile`` parameter adds a
  profile (an unknown one is an error); ``mode`` create / update / delete;
- the instance level validates the stored version unless a resource is given; GET works (the
  operation does not change state); nothing is ever written;
- 400 when it cannot run (no resource at the type level, a resource of another type, a bad mode
  or parameter), 404 / 410 for an instance that does not exist or was deleted;
- declared by the official OperationDefinition Resource-validate, for every type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fhir.resources.operationdefinition import OperationDefinition

from .test_profiles import C, site, subject

FHIR = {"content-type": "application/fhir+json"}
PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def params(*pairs: tuple[str, Any]) -> dict[str, Any]:
    out = []
    for name, value in pairs:
        if isinstance(value, dict):
            out.append({"name": name, "resource": value})
        elif name == "profile":
            out.append({"name": name, "valueCanonical": value})
        else:
            out.append({"name": name, "valueCode": value})
    return {"resourceType": "Parameters", "parameter": out}


def issues(r: Any) -> list[tuple[str, str, list[str]]]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return [(i["severity"], i["code"], i.get("expression", [])) for i in body["issue"]]


NO_ISSUES = [("information", "informational", [])]


def test_the_definition_is_the_official_one() -> None:
    d = json.loads((PROFILES / "OperationDefinition-Resource-validate.json").read_text())
    OperationDefinition.model_validate(d)
    assert d["url"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    assert d["version"] == "5.0.0" and d["code"] == "validate" and d["affectsState"] is False


async def test_type_level(client) -> None:
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", site())), headers=FHIR)
    assert issues(r) == NO_ISSUES
    bad = site()
    bad["recruitment"] = {}
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", bad)), headers=FHIR)
    assert issues(r) == [("error", "required", ["ResearchStudy.recruitment.targetNumber"])]
    # the model's errors too, as a write reports them
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", {**site(), "status": 3})),
                          headers=FHIR)
    assert [i[0] for i in issues(r)] == ["error"]
    # nothing was written
    assert (await client.get("/ResearchStudy", params={"_summary": "count"})).json()["total"] == 0


async def test_profile_parameter(client) -> None:
    unclaimed = site()
    del unclaimed["meta"]
    del unclaimed["partOf"]
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", unclaimed)), headers=FHIR)
    assert issues(r) == NO_ISSUES
    r = await client.post("/ResearchStudy/$validate", headers=FHIR,
                          json=params(("resource", unclaimed), ("profile", C + "ctms-site")))
    assert issues(r) == [("error", "required", ["ResearchStudy.partOf"])]
    r = await client.post("/ResearchStudy/$validate", headers=FHIR,
                          json=params(("resource", unclaimed), ("profile", "http://example.org/sd/x")))
    assert issues(r) == [("error", "not-supported", ["ResearchStudy.meta.profile"])]
    r = await client.post("/ResearchStudy/$validate", headers=FHIR,
                          json=params(("resource", unclaimed), ("profile", C + "ctms-subject")))
    assert issues(r) == [("error", "invalid", ["ResearchStudy.meta.profile"])]


async def test_unknown_claimed_profile_is_a_warning(client) -> None:
    p = {"resourceType": "Patient", "meta": {"profile": ["http://example.org/sd/p"]}}
    r = await client.post("/Patient/$validate", json=params(("resource", p)), headers=FHIR)
    assert issues(r) == [("warning", "not-supported", ["Patient.meta.profile"])]


async def test_instance_level_validates_the_stored_version_or_the_given_one(client) -> None:
    unclaimed = site()
    del unclaimed["meta"]
    del unclaimed["region"]
    assert (await client.put("/ResearchStudy/site-uk-01", json=unclaimed)).status_code == 201
    r = await client.post("/ResearchStudy/site-uk-01/$validate", json=params(), headers=FHIR)
    assert issues(r) == NO_ISSUES
    r = await client.get("/ResearchStudy/site-uk-01/$validate", params={"profile": C + "ctms-site"})
    assert issues(r) == [("error", "required", ["ResearchStudy.region"])]
    r = await client.post("/ResearchStudy/site-uk-01/$validate", headers=FHIR,
                          json=params(("resource", site()), ("mode", "update")))
    assert issues(r) == NO_ISSUES
    r = await client.post("/ResearchStudy/other/$validate", headers=FHIR,
                          json=params(("resource", site()), ("mode", "update")))
    assert issues(r) == [("error", "invalid", ["ResearchStudy.id"])]
    assert (await client.get("/ResearchStudy/nope/$validate")).status_code == 404
    assert (await client.delete("/ResearchStudy/site-uk-01")).status_code in (200, 204)
    assert (await client.get("/ResearchStudy/site-uk-01/$validate")).status_code == 410
    # still one version written by the PUT, one by the DELETE: $validate wrote nothing
    history = (await client.get("/ResearchStudy/site-uk-01/_history")).json()
    assert len(history["entry"]) == 2


async def test_modes(client) -> None:
    r = await client.post("/ResearchSubject/$validate", headers=FHIR,
                          json=params(("resource", subject()), ("mode", "create")))
    assert issues(r) == NO_ISSUES
    audit = {"resourceType": "AuditEvent", "code": {"text": "x"}, "recorded": "2026-01-01T00:00:00Z",
             "agent": [{"who": {"display": "x"}}], "source": {"observer": {"display": "x"}}}
    r = await client.post("/AuditEvent/$validate", headers=FHIR, json=params(("resource", audit), ("mode", "create")))
    assert ("error", "business-rule", ["AuditEvent"]) in issues(r)
    r = await client.post("/AuditEvent/a1/$validate", headers=FHIR, json=params(("mode", "delete")))
    assert issues(r) == [("error", "business-rule", ["AuditEvent"])]
    assert (await client.put("/ResearchSubject/rs-1", json=subject())).status_code == 201
    r = await client.post("/ResearchSubject/rs-1/$validate", headers=FHIR, json=params(("mode", "delete")))
    assert issues(r) == NO_ISSUES
    r = await client.post("/ResearchSubject/rs-2/$validate", headers=FHIR, json=params(("mode", "delete")))
    assert [i[0] for i in issues(r)] == ["information"]


async def test_mandatory_profiles_follow_the_server_settings(repo, client) -> None:
    from .conftest import make_client

    unclaimed = site()
    del unclaimed["meta"]
    del unclaimed["region"]
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", unclaimed)), headers=FHIR)
    assert issues(r) == NO_ISSUES
    async with make_client(repo, require_profiles=True) as strict:
        r = await strict.post("/ResearchStudy/$validate", json=params(("resource", unclaimed)), headers=FHIR)
        assert issues(r) == [("error", "required", ["ResearchStudy.region"])]


async def test_the_resource_itself_as_the_body(client) -> None:
    """R5 operations.html: an operation with a single resource input takes that resource as the
    body, its other parameters in the query."""
    r = await client.post("/ResearchStudy/$validate", json=site(), headers=FHIR)
    assert issues(r) == NO_ISSUES
    bad = {**site(), "recruitment": {}}
    r = await client.post("/ResearchStudy/$validate?mode=create", json=bad, headers=FHIR)
    assert issues(r) == [("error", "required", ["ResearchStudy.recruitment.targetNumber"])]


async def test_mandatory_profiles_on_writes_follow_the_app_settings(repo, client) -> None:
    from .conftest import make_client

    unclaimed = site()
    del unclaimed["meta"]
    del unclaimed["region"]
    async with make_client(repo, require_profiles=True) as strict:
        r = await strict.post("/ResearchStudy", json=unclaimed, headers=FHIR)
        assert r.status_code == 422 and "ResearchStudy.region" in r.text
    r = await client.post("/ResearchStudy", json=unclaimed, headers=FHIR)
    assert r.status_code == 201


async def test_what_cannot_run_is_a_400(client) -> None:
    r = await client.post("/ResearchStudy/$validate", json=params(), headers=FHIR)
    assert r.status_code == 400
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", subject())), headers=FHIR)
    assert r.status_code == 400
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", site()), ("mode", "update")),
                          headers=FHIR)
    assert r.status_code == 400
    r = await client.post("/ResearchStudy/$validate", json=params(("resource", site()), ("mode", "merge")),
                          headers=FHIR)
    assert r.status_code == 400
    r = await client.get("/ResearchStudy/$validate", params={"resource": "x", "color": "red"})
    assert r.status_code == 400
    assert (await client.post("/$validate", json=params(), headers=FHIR)).status_code == 404


async def test_listed_for_every_type_in_the_capability_statement(client) -> None:
    cs = (await client.get("/metadata")).json()
    for res in cs["rest"][0]["resource"]:
        if res["type"] in ("ResearchStudy", "Patient", "AuditEvent"):
            urls = [o["definition"] for o in res.get("operation", [])]
            assert "http://hl7.org/fhir/OperationDefinition/Resource-validate" in urls, res["type"]
