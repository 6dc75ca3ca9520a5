"""Custom SearchParameters (profiles/ and the API), ``$reindex`` and operation routing.

- the SearchParameters and the OperationDefinition of ``profiles/`` are valid R5 resources;
- the profiles/ parameters (ResearchStudy ``site-country``, ``milestone``) are searchable from the
  first request and listed in the CapabilityStatement, as is ``$reindex``;
- a SearchParameter created through the API is an unknown parameter (ignored and reported, 400
  when strict) until ``$reindex``, then searchable and listed; retired and reindexed, unknown again;
- ``$reindex`` at the system, type and instance levels, its counts, batches, errors and AuditEvent;
- operation routing: unknown operation 404, GET of a state-changing one 405, not in a Bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.auditevent import AuditEvent
from fhir.resources.operationdefinition import OperationDefinition
from fhir.resources.parameters import Parameters
from fhir.resources.searchparameter import SearchParameter

from fhir_ctms.interactions.capabilities import capability_statement
from fhir_ctms.search.parameters import clear_custom, param

from .fhir import outcome_codes

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
BASE = "http://testserver/fhir"
ISO = "urn:iso:std:iso:3166"
M49 = "http://unstats.un.org/unsd/methods/m49/m49.htm"
RSS = "http://hl7.org/fhir/research-study-status"
SP_URL = "http://example.org/fhir/SearchParameter/Patient-nickname"


@pytest.fixture(autouse=True)
def _forget_api_parameters():
    """The parameter registry is per process: each test starts and ends with profiles/ only."""
    clear_custom()
    capability_statement.cache_clear()
    yield
    clear_custom()
    capability_statement.cache_clear()


def _files(prefix: str) -> list[Path]:
    return sorted(PROFILES.glob(f"{prefix}-*.json"))


def _state(code: str, actual: bool) -> dict[str, Any]:
    return {"state": {"coding": [{"system": RSS, "code": code}]}, "actual": actual}


def _site(rid: str, country: str | None, *progress: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "ResearchStudy", "id": rid, "status": "active",
                           "partOf": [{"reference": "ResearchStudy/study"}]}
    if country:
        out["region"] = [{"coding": [{"system": ISO, "code": country}]}]
    if progress:
        out["progressStatus"] = list(progress)
    return out


async def _put(client, *resources: dict[str, Any]) -> None:
    body = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
    r = await client.post("", json=body)
    assert r.status_code == 200, r.text


async def _ids(client, query: str, **headers: str) -> list[str]:
    r = await client.get("/" + query, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


async def _ignored(client, query: str) -> list[str]:
    r = await client.get("/" + query)
    assert r.status_code == 200, r.text
    return [i["diagnostics"] for e in r.json().get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def _out(body: dict[str, Any]) -> dict[str, Any]:
    Parameters.model_validate(body)
    return {p["name"]: p.get("valueInteger", p.get("resource")) for p in body["parameter"]}


async def _reindex(client, path: str = "/$reindex", body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await client.post(path, json=body) if body is not None else await client.post(path)
    assert r.status_code == 200, r.text
    return _out(r.json())


# -- the profiles/ resources ------------------------------------------------------------------------

def test_profiles_search_parameters_are_valid_r5():
    files = _files("SearchParameter")
    assert {f.stem for f in files} >= {"SearchParameter-ResearchStudy-site-country",
                                       "SearchParameter-ResearchStudy-milestone"}
    for f in files:
        raw = json.loads(f.read_text())
        SearchParameter.model_validate(raw)
        assert raw["url"].startswith("http://fhir-ctms.org/fhir/SearchParameter/"), f
        assert raw["status"] == "active" and raw["processingMode"] == "normal", f
        assert raw["url"].endswith("/" + raw["id"]) and f.stem == f"SearchParameter-{raw['id']}"
        assert "resolve()" not in raw["expression"]
        p = param(raw["base"][0], raw["code"])
        assert p is not None and p.custom and p.url == raw["url"] and p.type == raw["type"]


def test_reindex_operation_definition_is_valid_r5():
    raw = json.loads((PROFILES / "OperationDefinition-reindex.json").read_text())
    OperationDefinition.model_validate(raw)
    assert raw["code"] == "reindex" and raw["kind"] == "operation" and raw["affectsState"] is True
    assert raw["system"] is raw["type"] is raw["instance"] is True
    uses = {(p["name"], p["use"]) for p in raw["parameter"]}
    assert {("url", "in"), ("batchSize", "in"), ("resources", "out"), ("searchParameters", "out"),
            ("batches", "out")} <= uses


# -- profiles/ parameters: searchable from the first request ---------------------------------------

async def test_site_country_and_milestone_from_profiles(client):
    await _put(client,
               {"resourceType": "ResearchStudy", "id": "study", "status": "active",
                "region": [{"coding": [{"system": M49, "code": "150"}]}]},
               _site("site-fr", "FR", _state("active", True), _state("closed", False)),
               _site("site-fr2", "FR", _state("active", False)),
               _site("site-de", "DE", _state("active", True), _state("closed", True)),
               _site("site-none", None))
    assert await _ids(client, "ResearchStudy?site-country=FR") == ["site-fr", "site-fr2"]
    assert await _ids(client, f"ResearchStudy?site-country={ISO}|DE") == ["site-de"]
    # a region that is not an ISO 3166 country is not a site country
    assert await _ids(client, "ResearchStudy?site-country=150") == []
    assert await _ids(client, "ResearchStudy?region=150") == ["study"]
    assert await _ids(client, "ResearchStudy?site-country:missing=true") == ["site-none", "study"]
    # milestones actually reached (actual = true), not planned ones
    assert await _ids(client, "ResearchStudy?milestone=active") == ["site-de", "site-fr"]
    assert await _ids(client, f"ResearchStudy?milestone={RSS}|closed") == ["site-de"]
    assert await _ids(client, "ResearchStudy?part-of=ResearchStudy/study&site-country=FR&milestone=active") \
        == ["site-fr"]
    assert await _ids(client, "ResearchStudy?part-of=ResearchStudy/study&milestone:not=closed") \
        == ["site-fr", "site-fr2", "site-none"]


async def test_capability_statement_lists_profile_parameters_and_reindex(client):
    body = (await client.get("/metadata")).json()
    rest = body["rest"][0]
    study = next(r for r in rest["resource"] if r["type"] == "ResearchStudy")
    params = {p["name"]: p for p in study["searchParam"]}
    assert params["site-country"] == {
        "name": "site-country", "type": "token",
        "definition": "http://fhir-ctms.org/fhir/SearchParameter/ResearchStudy-site-country"}
    assert params["milestone"]["definition"] == "http://fhir-ctms.org/fhir/SearchParameter/ResearchStudy-milestone"
    url = "http://fhir-ctms.org/fhir/OperationDefinition/reindex"
    assert {"name": "reindex", "definition": url} in rest["operation"]
    assert {"name": "reindex", "definition": url} in study["operation"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert "site-country" not in {p["name"] for p in patient["searchParam"]}


# -- a SearchParameter created through the API ------------------------------------------------------

def _nickname(status: str = "active") -> dict[str, Any]:
    return {"resourceType": "SearchParameter", "id": "Patient-nickname", "url": SP_URL,
            "name": "PatientNickname", "status": status, "description": "A patient's nickname",
            "code": "nickname", "base": ["Patient"], "type": "string", "processingMode": "normal",
            "expression": "Patient.name.where(use = 'nickname').given"}


def _patient(rid: str, nick: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": rid,
            "name": [{"family": "Martin", "given": ["Jean"]}, {"use": "nickname", "given": [nick]}]}


async def _listed(client, code: str) -> bool:
    body = (await client.get("/metadata")).json()
    patient = next(r for r in body["rest"][0]["resource"] if r["type"] == "Patient")
    return code in {p["name"] for p in patient["searchParam"]}


async def test_api_search_parameter_is_active_after_reindex(client):
    await _put(client, _patient("p1", "Jeannot"), _patient("p2", "Bob"))
    r = await client.put("/SearchParameter/Patient-nickname", json=_nickname())
    assert r.status_code == 201, r.text
    # stored, not yet active: an unknown parameter (search.html#errors)
    assert any("nickname" in d for d in await _ignored(client, "Patient?nickname=jean"))
    assert await _ids(client, "Patient?nickname=jean") == ["p1", "p2"]  # ignored: every patient
    strict = await client.get("/Patient?nickname=jean", headers={"prefer": "handling=strict"})
    assert strict.status_code == 400 and outcome_codes(strict)
    assert not await _listed(client, "nickname")

    out = await _reindex(client)
    assert out["searchParameters"] >= 3  # the two of profiles/ and this one
    assert out["resources"] == 2 and out["batches"] == 1  # the Patients (base of a custom parameter)
    assert await _ids(client, "Patient?nickname=jean") == ["p1"]
    assert await _ignored(client, "Patient?nickname=jean") == []
    assert await _ids(client, "Patient?nickname=bo", prefer="handling=strict") == ["p2"]
    assert await _listed(client, "nickname")
    # written after the reindex: indexed by the write itself
    await _put(client, _patient("p3", "Jeanne"))
    assert await _ids(client, "Patient?nickname=jean") == ["p1", "p3"]

    # retired and reindexed: unknown again
    assert (await client.put("/SearchParameter/Patient-nickname", json=_nickname("retired"))).status_code == 200
    assert await _ids(client, "Patient?nickname=jean") == ["p1", "p3"]  # still active until $reindex
    out = await _reindex(client)
    assert out["resources"] == 3 + 0  # the Patients, whose parameter was custom before the call
    assert any("nickname" in d for d in await _ignored(client, "Patient?nickname=jean"))
    assert not await _listed(client, "nickname")


async def test_reindex_reports_stored_parameters_it_cannot_load(client):
    broken = {**_nickname(), "id": "broken", "url": "http://example.org/sp/broken", "code": "broken",
              "base": ["Patient"], "type": "special"}
    del broken["expression"]
    broken["type"] = "string"  # a string parameter without an expression cannot be indexed
    assert (await client.put("/SearchParameter/broken", json=broken)).status_code == 201
    out = await _reindex(client, "/Patient/$reindex")
    issues = out["outcome"]["issue"]
    assert len(issues) == 1 and "http://example.org/sp/broken" in issues[0]["diagnostics"]
    assert param("Patient", "broken") is None


# -- the three levels ---------------------------------------------------------------------------------

async def test_reindex_levels_and_counts(client):
    await _put(client, *(_patient(f"p{n}", f"N{n}") for n in range(5)),
               _site("s1", "FR"), _site("s2", "DE"))
    assert (await client.put("/SearchParameter/Patient-nickname", json=_nickname())).status_code == 201
    # instance level: one resource reindexed (the parameters are loaded for every level)
    out = await _reindex(client, "/Patient/p0/$reindex")
    assert (out["resources"], out["batches"]) == (1, 1)
    assert await _ids(client, "Patient?nickname=n") == ["p0"]
    # type level, in batches of 2: 5 Patients in 3 transactions
    out = await _reindex(client, "/Patient/$reindex", {"resourceType": "Parameters", "parameter": [
        {"name": "batchSize", "valuePositiveInt": 2}]})
    assert (out["resources"], out["batches"]) == (5, 3)
    assert await _ids(client, "Patient?nickname=n") == [f"p{n}" for n in range(5)]
    # system level, with search URLs: their matches only
    out = await _reindex(client, "/$reindex", {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueString": "Patient?_id=p1,p2"},
        {"name": "url", "valueString": "ResearchStudy?"}]})
    assert out["resources"] == 4
    # system level without URLs: the types that are the base of a custom parameter
    out = await _reindex(client)
    assert out["resources"] == 7
    # deleted resources are not reindexed
    assert (await client.delete("/Patient/p4")).status_code == 204
    assert (await _reindex(client, "/Patient/$reindex"))["resources"] == 4


async def test_reindex_errors(client):
    await _put(client, _patient("p1", "A"))
    assert (await client.delete("/Patient/p1")).status_code == 204
    cases = [
        ("/Patient/nope/$reindex", None, 404),
        ("/Patient/p1/$reindex", None, 410),
        ("/NotAType/$reindex", None, 404),
        ("/Patient/$reindex", {"resourceType": "Parameters", "parameter": [
            {"name": "url", "valueString": "Patient?"}]}, 400),
        ("/$reindex", {"resourceType": "Parameters", "parameter": [
            {"name": "batchSize", "valuePositiveInt": 0}]}, 400),
        ("/$reindex", {"resourceType": "Parameters", "parameter": [
            {"name": "url", "valueString": "NotAType?x=1"}]}, 400),
        ("/$reindex", {"resourceType": "Parameters", "parameter": [
            {"name": "url", "valueString": "Patient?nope=1"}]}, 400),
        ("/$reindex", {"resourceType": "Parameters", "parameter": [{"name": "everything", "valueBoolean": True}]}, 400),
        ("/$reindex", {"resourceType": "Patient"}, 400),
    ]
    for path, body, status in cases:
        r = await client.post(path, json=body) if body is not None else await client.post(path)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


async def test_reindex_records_one_audit_event_and_no_version(client):
    await _put(client, _patient("p1", "A"))
    before = (await client.get("/AuditEvent?_total=accurate&_count=0")).json()["total"]
    await _reindex(client, "/Patient/p1/$reindex")
    events = (await client.get("/AuditEvent?_count=100")).json()["entry"]
    assert len(events) == before + 1
    ops = [e["resource"] for e in events if e["resource"]["code"]["coding"][0]["code"] == "operation"]
    assert len(ops) == 1
    AuditEvent.model_validate(ops[0])
    assert ops[0]["action"] == "E" and ops[0]["entity"][0]["what"] == {"reference": "Patient/p1"}
    assert (await client.get("/Patient/p1")).json()["meta"]["versionId"] == "1"
    history = (await client.get("/Patient/p1/_history")).json()
    assert len(history["entry"]) == 1
    assert (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"] == 1


# -- operation routing ----------------------------------------------------------------------------

async def test_operation_routing(client):
    r = await client.post("/$nosuch")
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]
    r = await client.post("/Patient/$nosuch")
    assert r.status_code == 404
    r = await client.get("/$reindex")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and outcome_codes(r) == ["not-supported"]
    r = await client.put("/$reindex", json={"resourceType": "Parameters"})
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    # the segment is an operation only with its $: Patient/reindex is a read
    assert (await client.get("/Patient/reindex")).status_code == 404
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Patient/$reindex"}, "resource": {"resourceType": "Parameters"}}]}
    r = await client.post("", json=bundle)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"].startswith("400")


def test_profiles_directory_is_configurable(tmp_path):
    """FHIR_CTMS_PROFILES_DIR replaces the repository's profiles/ for the SearchParameters (the
    OperationDefinitions stay the server's own)."""
    import os
    import subprocess
    import sys
    sp = {"resourceType": "SearchParameter", "id": "x", "url": "http://example.org/sp/x", "name": "X",
          "status": "active", "description": "x", "code": "x-acronym", "base": ["ResearchStudy"],
          "type": "token", "expression": "ResearchStudy.label.value"}
    (tmp_path / "SearchParameter-x.json").write_text(json.dumps(sp))
    (tmp_path / "SearchParameter-draft.json").write_text(json.dumps({**sp, "status": "draft", "code": "y"}))
    code = ("from fhir_ctms.search.parameters import param\n"
            "from fhir_ctms.operations import OPERATIONS\n"
            "print(param('ResearchStudy', 'x-acronym') is not None, param('ResearchStudy', 'y') is None,\n"
            "      param('ResearchStudy', 'milestone') is None, [op.code for op in OPERATIONS])\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FHIR_CTMS_PROFILES_DIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith("True True True [") and "'reindex'" in out


@pytest.mark.parametrize("body", [b"[]", b"3", b'{"resourceType": "Parameters", "parameter": 3}',
                                  b'{"resourceType": "Parameters", "parameter": [3]}',
                                  b'{"resourceType": "Parameters", "parameter": [{"name": "batchSize", "valueDecimal": {"a": 1}}]}',
                                  b'{"resourceType": "Parameters", "parameter": [{"name": "url", "valueInteger": 3}]}',
                                  b"{"])
async def test_malformed_operation_bodies_are_400(client, body):
    r = await client.post("/$reindex", content=body, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_reindexed_search_parameter_stays_active_after_a_restart(live_server):
    """A SearchParameter made active by $reindex is loaded again when a server starts: after a
    restart it is still searchable, in the CapabilityStatement, and maintained by new writes."""
    import httpx

    server = live_server()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for p in (_patient("p1", "Jeannot"), _patient("p2", "Bob")):
            assert http.put(f"/Patient/{p['id']}", json=p).status_code == 201
        assert http.put("/SearchParameter/Patient-nickname", json=_nickname()).status_code == 201
        assert http.post("/$reindex").status_code == 200
    server.stop()

    restarted = live_server(database_url=server.database_url)
    with httpx.Client(base_url=restarted.url, timeout=30) as http:
        def ids(query: str) -> list[str]:
            r = http.get(query, headers={"prefer": "handling=strict"})
            assert r.status_code == 200, r.text
            return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")
        assert ids("/Patient?nickname=jean") == ["p1"]
        patient = next(r for r in http.get("/metadata").json()["rest"][0]["resource"] if r["type"] == "Patient")
        assert "nickname" in {p["name"] for p in patient["searchParam"]}
        # a write after the restart keeps the parameter's index rows
        assert http.put("/Patient/p3", json=_patient("p3", "Jeanne")).status_code == 201
        assert ids("/Patient?nickname=jean") == ["p1", "p3"]
