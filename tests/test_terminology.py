"""The terminology the server holds and its two operations, on every database.

- every file of ``terminology/`` is a valid R5 CodeSystem or ValueSet that follows the contract
  (profiles/README.md: canonical URLs, version 0.1.0, every code with a display and a definition,
  the code lists of the contract, a same-id value set per code system, the milestone value sets
  with the R5 research-study-status codes);
- ``fhir_ctms.terminology.codes`` and ``display`` (the files and the R5 core subset);
- ``$expand`` (type level by url, instance level, a valueSet given; filter, offset, count;
  unknown value sets 404; what cannot be computed 422; bad input 400);
- ``$validate-code`` (result true, false, a wrong display, code/coding/codeableConcept, bad input
  400, unknown value set 404).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.codesystem import CodeSystem
from fhir.resources.parameters import Parameters
from fhir.resources.valueset import ValueSet

from fhir_ctms import terminology

from .fhir import outcome_codes

TERMINOLOGY = Path(__file__).resolve().parent.parent / "terminology"
CTMS = "http://fhir-ctms.org/fhir"
RSS = "http://hl7.org/fhir/research-study-status"
MILESTONE_VS = f"{CTMS}/ValueSet/study-milestone"
MILESTONE_CS = f"{CTMS}/CodeSystem/study-milestone"
SITE_VS = f"{CTMS}/ValueSet/site-milestone"
ROLE_VS, ROLE_CS = f"{CTMS}/ValueSet/staff-role", f"{CTMS}/CodeSystem/staff-role"

#: the code systems of profiles/README.md and their codes, as the contract lists them
CONTRACT = {
    "study-level": ["study", "country", "site"],
    "study-milestone": ["protocol-approved", "first-site-activated", "first-subject-in",
                        "enrolled-25", "enrolled-50", "enrolled-75", "last-subject-in",
                        "last-subject-last-visit", "database-lock", "study-closed"],
    "site-milestone": ["selected", "irb-approved", "contract-executed", "siv-done", "activated",
                       "first-subject-in", "enrolment-closed", "close-out-visit", "closed"],
    "staff-role": ["principal-investigator", "sub-investigator", "study-coordinator",
                   "pharmacist", "monitor", "data-manager"],
    "qualification-type": ["gcp-training", "medical-licence", "cv", "iata-dangerous-goods"],
    "subject-progress-reason": ["screen-failure", "consent-withdrawn", "withdrawn-by-subject",
                                "withdrawn-adverse-event", "withdrawn-by-investigator",
                                "lost-to-follow-up", "death", "sponsor-terminated", "completed"],
    "identifier-type": ["sponsor-protocol"],
    "payable-event": ["visit-completed", "procedure", "subject-milestone", "screen-failure",
                      "site-milestone", "holdback-release", "holdback", "site-payment"],
}
#: the 17 codes of R5 research-study-status
RSS_CODES = 17


def _file(name: str) -> dict[str, Any]:
    return json.loads((TERMINOLOGY / name).read_text(encoding="utf-8"))


def _params(body: dict[str, Any]) -> dict[str, Any]:
    Parameters.model_validate(body)
    out: dict[str, Any] = {}
    for p in body["parameter"]:
        values = [v for k, v in p.items() if k.startswith("value")] or [p.get("resource")]
        out[p["name"]] = values[0]
    return out


def _parameters(*pairs: tuple[str, str, Any]) -> dict[str, Any]:
    """A Parameters body from (name, value[x] key or "resource", value)."""
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in pairs]}


# -- the files -----------------------------------------------------------------------------------

def test_terminology_files_are_valid_and_follow_the_contract():
    names = sorted(p.name for p in TERMINOLOGY.glob("*.json"))
    expected = sorted([f"CodeSystem-{i}.json" for i in CONTRACT] + [f"ValueSet-{i}.json" for i in CONTRACT])
    assert names == expected
    for cid, codes in CONTRACT.items():
        cs = _file(f"CodeSystem-{cid}.json")
        CodeSystem.model_validate(cs)
        assert cs["id"] == cid and cs["url"] == f"{CTMS}/CodeSystem/{cid}"
        assert (cs["version"], cs["status"], cs["publisher"], cs["content"]) == \
            ("0.1.0", "active", "fhir-ctms", "complete")
        assert cs["valueSet"] == f"{CTMS}/ValueSet/{cid}"
        assert [c["code"] for c in cs["concept"]] == codes and cs["count"] == len(codes)
        for c in cs["concept"]:
            assert c["display"].strip() and c["definition"].strip(), c
        vs = _file(f"ValueSet-{cid}.json")
        ValueSet.model_validate(vs)
        assert vs["id"] == cid and vs["url"] == f"{CTMS}/ValueSet/{cid}"
        assert (vs["version"], vs["status"], vs["publisher"]) == ("0.1.0", "active", "fhir-ctms")
        systems = [inc["system"] for inc in vs["compose"]["include"]]
        assert systems == ([cs["url"], RSS] if cid in ("study-milestone", "site-milestone") else [cs["url"]])
        # every include takes the whole system (no concept list to drift from the code system)
        assert all("concept" not in inc and "filter" not in inc for inc in vs["compose"]["include"])


# -- codes() and display() ------------------------------------------------------------------------

def test_codes_of_the_ctms_value_sets():
    milestones = terminology.codes(MILESTONE_VS)
    assert milestones is not None
    assert {c for s, c in milestones if s == MILESTONE_CS} == set(CONTRACT["study-milestone"])
    assert ({c for s, c in milestones if s == RSS} >= {"active", "closed-to-accrual", "completed"}
            and len({c for s, c in milestones if s == RSS}) == RSS_CODES)
    assert {s for s, _ in milestones} == {MILESTONE_CS, RSS}
    assert terminology.codes(MILESTONE_VS + "|0.1.0") == milestones
    assert terminology.codes(MILESTONE_VS + "|0.2.0") is None
    for cid, codes in CONTRACT.items():
        got = terminology.codes(f"{CTMS}/ValueSet/{cid}")
        assert got is not None and {c for s, c in got if s == f"{CTMS}/CodeSystem/{cid}"} == set(codes)
    assert terminology.codes(f"{CTMS}/ValueSet/no-such") is None
    assert terminology.codes(f"{CTMS}/CodeSystem/staff-role") is None  # a code system is not a value set


def test_codes_of_the_core_value_sets_and_displays():
    status = terminology.codes("http://hl7.org/fhir/ValueSet/publication-status|5.0.0")
    assert status == {("http://hl7.org/fhir/publication-status", c)
                      for c in ("draft", "active", "retired", "unknown")}
    assert terminology.codes("http://hl7.org/fhir/ValueSet/publication-status") == status
    assert terminology.codes("http://hl7.org/fhir/ValueSet/publication-status|4.0.1") is None
    assert len(terminology.codes("http://hl7.org/fhir/ValueSet/research-study-status") or ()) == RSS_CODES
    # research-subject-state's codes come from terminology.hl7.org (hl7.terminology.r5): held
    assert len(terminology.codes("http://hl7.org/fhir/ValueSet/research-subject-state") or ()) == 13
    # a required binding on an external code system the server does not carry: not held
    assert terminology.codes("http://hl7.org/fhir/ValueSet/condition-clinical") is None
    assert terminology.display(RSS, "closed-to-accrual") == "Closed to Accrual"
    assert terminology.display(ROLE_CS, "monitor") == "Monitor"
    assert terminology.display(ROLE_CS, "nope") is None
    assert terminology.display("http://example.org/unknown", "x") is None


# -- $expand --------------------------------------------------------------------------------------

async def test_expand_a_held_value_set_by_url(client):
    r = await client.get("/ValueSet/$expand", params={"url": MILESTONE_VS})
    assert r.status_code == 200, r.text
    vs = r.json()
    ValueSet.model_validate(vs)
    assert vs["url"] == MILESTONE_VS and vs["version"] == "0.1.0" and vs["status"] == "active"
    assert "compose" not in vs
    exp = vs["expansion"]
    assert exp["total"] == len(CONTRACT["study-milestone"]) + RSS_CODES == len(exp["contains"])
    first = exp["contains"][0]
    assert first == {"system": MILESTONE_CS, "version": "0.1.0", "code": "protocol-approved",
                     "display": "Protocol approved"}
    assert [c["code"] for c in exp["contains"] if c["system"] == MILESTONE_CS] == CONTRACT["study-milestone"]
    assert {"system": RSS, "version": "5.0.0", "code": "completed", "display": "Completed"} in exp["contains"]
    # with the definition, by POST, and with the version
    r = await client.post("/ValueSet/$expand", json=_parameters(
        ("url", "valueUri", MILESTONE_VS), ("valueSetVersion", "valueString", "0.1.0"),
        ("includeDefinition", "valueBoolean", True)))
    assert r.status_code == 200, r.text
    assert r.json()["compose"]["include"][1] == {"system": RSS}
    assert r.json()["expansion"]["total"] == exp["total"]


async def test_expand_filter_and_paging(client):
    base = {"url": SITE_VS}
    r = await client.get("/ValueSet/$expand", params={**base, "filter": "CLOSE"})
    assert r.status_code == 200, r.text
    exp = r.json()["expansion"]
    codes = [(c["system"].rsplit("/", 1)[-1], c["code"]) for c in exp["contains"]]
    # code or display, case-insensitively: enrolment-closed, close-out-visit, closed, and the
    # R5 codes whose code or display says "closed"
    assert ("site-milestone", "enrolment-closed") in codes and ("site-milestone", "close-out-visit") in codes
    assert ("research-study-status", "closed-to-accrual") in codes
    assert ("site-milestone", "activated") not in codes
    assert exp["total"] == len(codes)
    assert {"name": "filter", "valueString": "CLOSE"} in exp["parameter"]
    # "Site initiation visit done" is a display only
    r = await client.get("/ValueSet/$expand", params={**base, "filter": "initiation"})
    assert [c["code"] for c in r.json()["expansion"]["contains"]] == ["siv-done"]

    full = (await client.get("/ValueSet/$expand", params=base)).json()["expansion"]["contains"]
    r = await client.get("/ValueSet/$expand", params={**base, "offset": "3", "count": "4"})
    exp = r.json()["expansion"]
    assert exp["total"] == len(full) and exp["offset"] == 3
    assert exp["contains"] == full[3:7]
    r = await client.get("/ValueSet/$expand", params={**base, "offset": str(len(full) - 2), "count": "10"})
    assert r.json()["expansion"]["contains"] == full[-2:]
    r = await client.get("/ValueSet/$expand", params={**base, "count": "0"})
    assert r.json()["expansion"]["total"] == len(full) and "contains" not in r.json()["expansion"]
    r = await client.get("/ValueSet/$expand", params={**base, "filter": "closed", "offset": "1", "count": "1"})
    assert r.json()["expansion"]["total"] > 2 and len(r.json()["expansion"]["contains"]) == 1
    r = await client.get("/ValueSet/$expand", params={**base, "filter": "zzz-nothing"})
    assert r.json()["expansion"]["total"] == 0 and "contains" not in r.json()["expansion"]


async def test_expand_core_value_set(client):
    r = await client.get("/ValueSet/$expand",
                         params={"url": "http://hl7.org/fhir/ValueSet/publication-status|5.0.0"})
    assert r.status_code == 200, r.text
    ValueSet.model_validate(r.json())
    assert {(c["code"], c["display"]) for c in r.json()["expansion"]["contains"]} == {
        ("draft", "Draft"), ("active", "Active"), ("retired", "Retired"), ("unknown", "Unknown")}


async def test_expand_stored_value_sets(client):
    listed = {"resourceType": "ValueSet", "id": "arms", "status": "active",
              "url": "http://example.org/fhir/ValueSet/active-staff", "version": "2",
              "compose": {"include": [
                  {"system": ROLE_CS, "concept": [{"code": "monitor"}, {"code": "pharmacist"}]},
                  {"system": "http://example.org/local", "concept": [{"code": "x1", "display": "Local one"}]}]}}
    whole = {"resourceType": "ValueSet", "id": "whole", "status": "active",
             "url": "http://example.org/fhir/ValueSet/roles-and-status",
             "compose": {"include": [{"system": ROLE_CS}, {"system": RSS}],
                         "exclude": [{"system": RSS}]}}
    for vs in (listed, whole):
        assert (await client.put(f"/ValueSet/{vs['id']}", json=vs)).status_code == 201
    r = await client.get("/ValueSet/arms/$expand")
    assert r.status_code == 200, r.text
    assert [(c["code"], c.get("display")) for c in r.json()["expansion"]["contains"]] == [
        ("monitor", "Monitor"), ("pharmacist", "Pharmacist"), ("x1", "Local one")]
    assert r.json()["id"] == "arms" and "meta" not in r.json()
    r = await client.get("/ValueSet/$expand", params={"url": listed["url"] + "|2"})
    assert r.status_code == 200 and r.json()["expansion"]["total"] == 3
    r = await client.get("/ValueSet/$expand", params={"url": listed["url"], "valueSetVersion": "3"})
    assert r.status_code == 404, r.text
    r = await client.get("/ValueSet/whole/$expand")
    assert r.status_code == 200, r.text
    assert [c["code"] for c in r.json()["expansion"]["contains"]] == CONTRACT["staff-role"]
    # a ValueSet in the body (not stored)
    r = await client.post("/ValueSet/$expand", json=_parameters(("valueSet", "resource", {
        "resourceType": "ValueSet", "status": "draft",
        "compose": {"include": [{"system": RSS, "concept": [{"code": "withdrawn"}]}]}})))
    assert r.status_code == 200, r.text
    assert r.json()["expansion"]["contains"] == [
        {"system": RSS, "version": "5.0.0", "code": "withdrawn", "display": "Withdrawn"}]


async def test_expand_what_cannot_be_computed_is_422(client):
    filtered = {"resourceType": "ValueSet", "id": "filtered", "status": "active",
                "url": "http://example.org/fhir/ValueSet/filtered",
                "compose": {"include": [{"system": "http://snomed.info/sct",
                                         "filter": [{"property": "concept", "op": "is-a", "value": "404684003"}]}]}}
    unknown = {"resourceType": "ValueSet", "id": "unknown-system", "status": "active",
               "compose": {"include": [{"system": "http://loinc.org"}]}}
    for vs in (filtered, unknown):
        assert (await client.put(f"/ValueSet/{vs['id']}", json=vs)).status_code == 201
    for path in ("/ValueSet/filtered/$expand", "/ValueSet/unknown-system/$expand"):
        r = await client.get(path)
        assert r.status_code == 422, r.text
        assert outcome_codes(r) == ["not-supported"]
    r = await client.get("/ValueSet/$expand", params={"url": filtered["url"]})
    assert r.status_code == 422 and outcome_codes(r) == ["not-supported"]
    # a parameter of the definition this server does not implement
    r = await client.get("/ValueSet/$expand", params={"url": MILESTONE_VS, "date": "2026-01-01"})
    assert r.status_code == 422 and outcome_codes(r) == ["not-supported"]


async def test_expand_unknown_and_bad_input(client):
    r = await client.get("/ValueSet/$expand", params={"url": f"{CTMS}/ValueSet/no-such"})
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]
    r = await client.get("/ValueSet/$expand", params={"url": MILESTONE_VS + "|9.9"})
    assert r.status_code == 404
    r = await client.get("/ValueSet/no-such/$expand")
    assert r.status_code == 404
    for params in ({}, {"url": MILESTONE_VS, "offset": "-1"}, {"url": MILESTONE_VS, "count": "x"},
                   {"url": MILESTONE_VS, "bogus": "1"}, {"url": MILESTONE_VS, "activeOnly": "maybe"},
                   {"url": MILESTONE_VS + "|0.1.0", "valueSetVersion": "0.2.0"}):
        r = await client.get("/ValueSet/$expand", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.get("/ValueSet/$expand", params={"url": MILESTONE_VS, "activeOnly": "true"})
    assert r.status_code == 200  # accepted: every code held is active
    r = await client.post("/ValueSet/$expand", json=_parameters(("valueSet", "resource", {"resourceType": "Patient"})))
    assert r.status_code == 400
    r = await client.post("/Patient/$expand", json=_parameters(("url", "valueUri", MILESTONE_VS)))
    assert r.status_code == 404


# -- $validate-code -------------------------------------------------------------------------------

async def test_validate_code_true_false_and_display(client):
    r = await client.get("/ValueSet/$validate-code",
                         params={"url": MILESTONE_VS, "system": MILESTONE_CS, "code": "database-lock"})
    assert r.status_code == 200, r.text
    p = _params(r.json())
    assert p["result"] is True and p["display"] == "Database lock" and "message" not in p
    assert (p["code"], p["system"], p["version"]) == ("database-lock", MILESTONE_CS, "0.1.0")

    r = await client.get("/ValueSet/$validate-code",
                         params={"url": MILESTONE_VS, "system": RSS, "code": "closed-to-accrual"})
    assert _params(r.json())["result"] is True

    # a site milestone is not a study milestone
    r = await client.get("/ValueSet/$validate-code",
                         params={"url": MILESTONE_VS, "system": f"{CTMS}/CodeSystem/site-milestone",
                                 "code": "siv-done"})
    p = _params(r.json())
    assert p["result"] is False and "not in the value set" in p["message"]
    assert p["display"] == "Site initiation visit done"  # known code, wrong value set
    assert p["issues"]["issue"][0]["code"] == "code-invalid"

    r = await client.get("/ValueSet/$validate-code",
                         params={"url": MILESTONE_VS, "system": MILESTONE_CS, "code": "nope"})
    p = _params(r.json())
    assert p["result"] is False and "Unknown code" in p["message"] and "display" not in p

    # display: right (case aside), wrong
    r = await client.get("/ValueSet/$validate-code", params={
        "url": ROLE_VS, "system": ROLE_CS, "code": "monitor", "display": "MONITOR"})
    assert _params(r.json())["result"] is True
    r = await client.get("/ValueSet/$validate-code", params={
        "url": ROLE_VS, "system": ROLE_CS, "code": "monitor", "display": "Pharmacist"})
    p = _params(r.json())
    assert p["result"] is False and "Wrong display" in p["message"] and p["display"] == "Monitor"

    # a core value set
    r = await client.get("/ValueSet/$validate-code", params={
        "url": "http://hl7.org/fhir/ValueSet/publication-status",
        "system": "http://hl7.org/fhir/publication-status", "code": "retired"})
    assert _params(r.json())["result"] is True


async def test_validate_code_coding_and_codeable_concept(client):
    r = await client.post("/ValueSet/$validate-code", json=_parameters(
        ("url", "valueUri", ROLE_VS),
        ("coding", "valueCoding", {"system": ROLE_CS, "code": "data-manager", "display": "Data manager"})))
    assert r.status_code == 200, r.text
    assert _params(r.json())["result"] is True

    concept = {"coding": [{"system": "http://example.org/local", "code": "dm"},
                          {"system": ROLE_CS, "code": "data-manager"}], "text": "DM"}
    r = await client.post("/ValueSet/$validate-code", json=_parameters(
        ("url", "valueUri", ROLE_VS), ("codeableConcept", "valueCodeableConcept", concept)))
    p = _params(r.json())
    assert p["result"] is True and p["code"] == "data-manager" and p["codeableConcept"] == concept

    concept = {"coding": [{"system": "http://example.org/local", "code": "dm"},
                          {"system": ROLE_CS, "code": "janitor"}]}
    r = await client.post("/ValueSet/$validate-code", json=_parameters(
        ("url", "valueUri", ROLE_VS), ("codeableConcept", "valueCodeableConcept", concept)))
    p = _params(r.json())
    assert p["result"] is False and "None of the codings" in p["message"]


async def test_validate_code_instance_level_and_errors(client):
    vs = {"resourceType": "ValueSet", "id": "pi-only", "status": "active",
          "compose": {"include": [{"system": ROLE_CS, "concept": [{"code": "principal-investigator"}]}]}}
    assert (await client.put("/ValueSet/pi-only", json=vs)).status_code == 201
    r = await client.get("/ValueSet/pi-only/$validate-code",
                         params={"system": ROLE_CS, "code": "principal-investigator"})
    assert r.status_code == 200 and _params(r.json())["result"] is True
    r = await client.get("/ValueSet/pi-only/$validate-code", params={"system": ROLE_CS, "code": "monitor"})
    assert _params(r.json())["result"] is False

    r = await client.get("/ValueSet/$validate-code",
                         params={"url": f"{CTMS}/ValueSet/no-such", "system": ROLE_CS, "code": "monitor"})
    assert r.status_code == 404
    bad = [
        {"url": ROLE_VS},                                   # nothing to check
        {"url": ROLE_VS, "code": "monitor"},                # code without system
        {"url": ROLE_VS, "system": ROLE_CS},                # system without code
        {"url": ROLE_VS, "system": ROLE_CS, "code": "monitor", "coding": "x"},  # two things
        {"url": ROLE_VS, "system": ROLE_CS, "code": "monitor", "wrong": "1"},   # unknown parameter
        {"system": ROLE_CS, "code": "monitor"},             # no value set
    ]
    for params in bad:
        r = await client.get("/ValueSet/$validate-code", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.post("/ValueSet/$validate-code", json=_parameters(
        ("url", "valueUri", ROLE_VS), ("coding", "valueCoding", {"code": "monitor"})))
    assert r.status_code == 400  # a coding without a system
    r = await client.get("/ValueSet/$validate-code",
                         params={"url": ROLE_VS, "system": ROLE_CS, "code": "monitor", "context": "x"})
    assert r.status_code == 422 and outcome_codes(r) == ["not-supported"]


@pytest.mark.parametrize("op", ["expand", "validate-code"])
async def test_operations_are_declared_from_the_official_definitions(client, op):
    r = await client.get("/metadata")
    vs = next(x for x in r.json()["rest"][0]["resource"] if x["type"] == "ValueSet")
    assert {"name": op, "definition": f"http://hl7.org/fhir/OperationDefinition/ValueSet-{op}"} in vs["operation"]
    d = json.loads((TERMINOLOGY.parent / "profiles" / f"OperationDefinition-ValueSet-{op}.json").read_text())
    assert (d["version"], d["code"], d["resource"]) == ("5.0.0", op, ["ValueSet"])
