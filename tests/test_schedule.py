"""``POST ResearchSubject/[id]/$schedule`` through the HTTP API, on every database.

A small study built here: protocol 1.0 (screening before Day 1, Day 1, Day 15 +/- 3, Day 29 +/- 3,
Day 57 +/- 7), a site running it since 2026-01-01, a subject screened 2026-02-20 and enrolled
(on study) 2026-03-10. The dates, worked out by hand (2026 is not a leap year):
  scr   2026-02-24 in 2026-02-10..2026-03-09   (14 d before, window 28..1 d before)
  day1  2026-03-10
  d15   2026-03-24 in 2026-03-21..2026-03-27   (14 d after, 11..17)
  d29   2026-04-07 in 2026-04-04..2026-04-10   (28 d after, 25..31)
  d57   2026-05-05 in 2026-04-28..2026-05-12   (56 d after, 49..63)
Amendment 2.0, adopted by the site on 2026-04-01: d15 window 12..16, d29 becomes Day 31
(2026-04-09 in 2026-04-06..2026-04-12), d57 removed, d85 added (2026-06-02 in 2026-05-26..2026-06-09).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fhir.resources.operationdefinition import OperationDefinition
from fhir.resources.parameters import Parameters

from fhir_ctms.ctms import schedule as soa

from .fhir import outcome_codes

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
URL = "http://example.org/fhir/PlanDefinition/sched-protocol"
LEVEL = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
STATE_TYPE = "http://terminology.hl7.org/CodeSystem/research-subject-state-type"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def days(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}


def action(aid: str, title: str, offset: int | None = None, low: int = 0, high: int = 0,
           rel: str = "after-start") -> dict[str, Any]:
    a: dict[str, Any] = {"id": aid, "title": title}
    if offset is not None:
        a["relatedAction"] = [{"targetId": "day1", "relationship": rel, "offsetDuration": days(offset),
                               "extension": [{"url": soa.OFFSET_RANGE,
                                              "valueRange": {"low": days(low), "high": days(high)}}]}]
    return a


def protocol(version: str, rid: str) -> dict[str, Any]:
    if version == "1.0":
        actions = [action("scr", "Screening", 14, 1, 28, rel="before-start"), action("day1", "Day 1"),
                   action("d15", "Day 15", 14, 11, 17), action("d29", "Day 29", 28, 25, 31),
                   action("d57", "Day 57", 56, 49, 63)]
    else:
        actions = [action("scr", "Screening", 14, 1, 28, rel="before-start"), action("day1", "Day 1"),
                   action("d15", "Day 15", 14, 12, 16), action("d29", "Day 31", 30, 27, 33),
                   action("d85", "Day 85", 84, 77, 91)]
    p: dict[str, Any] = {
        "resourceType": "PlanDefinition", "id": rid, "url": URL, "version": version, "status": "active",
        "title": "Schedule test protocol",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                             "code": "clinical-protocol"}]},
        "action": actions}
    if version == "2.0":
        p["relatedArtifact"] = [{"type": "predecessor", "resource": f"{URL}|1.0"}]
    return p


def study(rid: str, level: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "id": rid, "status": "active",
            "classifier": [{"coding": [{"system": LEVEL, "code": level}]}], **fields}


def adoption(version: str, effective: str) -> dict[str, Any]:
    return {"url": soa.SITE_PROTOCOL, "extension": [
        {"url": "protocol", "valueCanonical": f"{URL}|{version}"},
        {"url": "effective", "valueDate": effective}]}


def subject(rid: str, patient: str, site: str, *progress: tuple[str, str]) -> dict[str, Any]:
    return {"resourceType": "ResearchSubject", "id": rid, "status": "active",
            "identifier": [{"system": "http://example.org/subject-number", "value": rid}],
            "study": {"reference": f"ResearchStudy/{site}"}, "subject": {"reference": f"Patient/{patient}"},
            "progress": [{"type": {"coding": [{"system": STATE_TYPE, "code": "Enrollment"}]},
                          "subjectState": {"coding": [{"system": STATE, "code": state}]}, "startDate": start}
                         for state, start in progress]}


async def put(client, *resources: dict[str, Any]) -> None:
    for r in resources:
        resp = await client.put(f"/{r['resourceType']}/{r['id']}", json=r)
        assert resp.status_code in (200, 201), resp.text


async def build(client) -> None:
    await put(client,
              {"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"},
              protocol("1.0", "proto-1"),
              study("study", "study", protocol=[{"reference": "PlanDefinition/proto-1"}]),
              study("site", "site", partOf=[{"reference": "ResearchStudy/study"}],
                    extension=[adoption("1.0", "2026-01-01")]),
              subject("rs1", "p1", "site", ("screening", "2026-02-20"), ("on-study", "2026-03-10")))


async def schedule(client, rid: str = "rs1", expect: int = 200, **params: str) -> dict[str, Any]:
    body = {"resourceType": "Parameters",
            "parameter": [{"name": k, "valueDate": v} for k, v in params.items()]}
    resp = await client.post(f"/ResearchSubject/{rid}/$schedule", json=body)
    assert resp.status_code == expect, resp.text
    return resp.json()


def counts(out: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["valueInteger"] for p in out["parameter"] if "valueInteger" in p}


def visit_results(out: dict[str, Any]) -> dict[str, str]:
    res = {}
    for p in out["parameter"]:
        if p["name"] == "visit":
            parts = {q["name"]: q for q in p["part"]}
            res[parts["action"]["valueString"]] = parts["result"]["valueCode"]
    return res


async def search(client, query: str) -> list[dict[str, Any]]:
    resp = await client.get(query)
    assert resp.status_code == 200, resp.text
    return [e["resource"] for e in resp.json().get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"]


async def visit(client, rs: str, aid: str) -> dict[str, Any]:
    key = quote(f"{rs}/{aid}", safe="")
    found = await search(client, f"/Appointment?identifier={quote(soa.VISIT_SYSTEM)}|{key}")
    assert len(found) == 1, found
    return found[0]


async def versions(client, ref: str) -> int:
    return len((await client.get(f"/{ref}/_history")).json().get("entry", []))


async def provenances(client, ref: str) -> int:
    return (await client.get(f"/Provenance?target={ref}&_total=accurate&_count=0")).json()["total"]


def test_operation_definition_is_valid_r5():
    d = json.loads((PROFILES / "OperationDefinition-ResearchSubject-schedule.json").read_text())
    OperationDefinition.model_validate(d)
    assert (d["url"], d["code"], d["resource"], d["instance"], d["affectsState"]) == (
        "http://fhir-ctms.org/fhir/OperationDefinition/ResearchSubject-schedule", "schedule",
        ["ResearchSubject"], True, True)
    assert not d["system"] and not d["type"]


async def test_capability_statement_lists_schedule(client):
    cs = (await client.get("/metadata")).json()
    rs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "ResearchSubject")
    assert {"name": "schedule",
            "definition": "http://fhir-ctms.org/fhir/OperationDefinition/ResearchSubject-schedule"} in [
        {k: o[k] for k in ("name", "definition")} for o in rs.get("operation", [])]


async def test_first_schedule_creates_plan_and_visits_with_hand_worked_dates(client):
    await build(client)
    out = await schedule(client, date="2026-03-12")
    Parameters.model_validate(out)
    assert counts(out) == {"created": 5, "updated": 0, "unchanged": 0, "cancelled": 0, "fulfilled": 0,
                           "kept": 0, "skipped": 0}
    assert next(p for p in out["parameter"] if p["name"] == "protocol")["valueCanonical"] == f"{URL}|1.0"
    assert next(p for p in out["parameter"] if p["name"] == "anchor")["valueDate"] == "2026-03-10"

    plans = await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|rs1")
    assert len(plans) == 1
    cp = plans[0]
    assert cp["instantiatesCanonical"] == [f"{URL}|1.0"]
    assert cp["subject"] == {"reference": "Patient/p1"}
    assert cp["supportingInfo"] == [{"reference": "ResearchSubject/rs1"}]
    assert (cp["status"], cp["intent"]) == ("active", "plan")

    expected = {"scr": ("2026-02-24", "2026-02-10", "2026-03-09"),
                "day1": ("2026-03-10", "2026-03-10", "2026-03-10"),
                "d15": ("2026-03-24", "2026-03-21", "2026-03-27"),
                "d29": ("2026-04-07", "2026-04-04", "2026-04-10"),
                "d57": ("2026-05-05", "2026-04-28", "2026-05-12")}
    for aid, (start, low, high) in expected.items():
        a = await visit(client, "rs1", aid)
        assert a["start"] == f"{start}T00:00:00Z", aid
        assert a["requestedPeriod"] == [{"start": low, "end": high}], aid
        assert a["basedOn"] == [{"reference": f"CarePlan/{cp['id']}"}]
        assert a["subject"] == {"reference": "Patient/p1"}
        assert a["extension"] == [{"url": soa.PROTOCOL_VISIT, "valueCanonical": f"{URL}|1.0#{aid}"}]
        assert a["status"] == "proposed"
        assert await provenances(client, f"Appointment/{a['id']}") == 1
    assert await provenances(client, f"CarePlan/{cp['id']}") == 1
    by_subject = await search(client, "/Appointment?subject=Patient/p1&_count=50")
    assert len(by_subject) == 5


async def test_second_call_writes_nothing_but_is_audited(client):
    await build(client)
    await schedule(client, date="2026-03-12")
    appts = await search(client, "/Appointment?subject=Patient/p1&_count=50")
    total_before = (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"]
    audit = "/AuditEvent?entity=ResearchSubject/rs1&_total=accurate&_count=0"
    calls_before = (await client.get(audit)).json()["total"]

    out = await schedule(client, date="2026-03-12")
    # screening and Day 1 windows ended before 03-12: past, kept as they are; the rest unchanged
    assert visit_results(out) == {"scr": "kept", "day1": "kept", "d15": "unchanged", "d29": "unchanged",
                                  "d57": "unchanged"}
    for a in appts:
        assert await versions(client, f"Appointment/{a['id']}") == 1
    cp = (await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|rs1"))[0]
    assert await versions(client, f"CarePlan/{cp['id']}") == 1
    assert (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"] == total_before
    calls = await search(client, "/AuditEvent?entity=ResearchSubject/rs1&_count=50")
    assert len(calls) == calls_before + 1
    ops = [e for e in calls if e["code"].get("text") == "$schedule"]
    assert len(ops) == 2 and all(e["action"] == "E" for e in ops)


async def record_visit(client, rs: str, aid: str, start: str, status: str = "completed") -> dict[str, Any]:
    """The actual visit: an Encounter (ctms-study-visit) pointing at the planned Appointment."""
    a = await visit(client, rs, aid)
    enc = {"resourceType": "Encounter", "status": status,
           "meta": {"profile": ["http://fhir-ctms.org/fhir/StructureDefinition/ctms-study-visit"]},
           "class": [{"coding": [{"system": ACT_CODE, "code": "AMB"}]}],
           "subject": a["subject"], "appointment": [{"reference": f"Appointment/{a['id']}"}],
           "basedOn": a["basedOn"], "actualPeriod": {"start": start}}
    resp = await client.post("/Encounter", json=enc)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_encounter_marks_the_visit_done_and_fulfilled(client):
    await build(client)
    await schedule(client, date="2026-03-12")
    enc = await record_visit(client, "rs1", "day1", "2026-03-10T09:00:00Z")
    a = await visit(client, "rs1", "day1")
    found = await search(client, f"/Encounter?appointment=Appointment/{a['id']}")
    assert [e["id"] for e in found] == [enc["id"]]
    await record_visit(client, "rs1", "d15", "2026-03-23T10:00:00Z", status="in-progress")

    out = await schedule(client, date="2026-03-23")
    assert visit_results(out)["day1"] == "fulfilled"
    assert visit_results(out)["d15"] == "kept"     # in progress: done, not yet fulfilled
    after = await visit(client, "rs1", "day1")
    assert after["status"] == "fulfilled" and after["meta"]["versionId"] == "2"
    assert {k: v for k, v in after.items() if k not in ("meta", "status")} == \
        {k: v for k, v in a.items() if k not in ("meta", "status")}
    assert await provenances(client, f"Appointment/{a['id']}") == 2
    assert (await visit(client, "rs1", "d15"))["status"] == "proposed"
    again = await schedule(client, date="2026-03-23")
    assert visit_results(again)["day1"] == "kept"
    assert await versions(client, f"Appointment/{a['id']}") == 2


async def test_amendment_reschedules_open_visits_only(client):
    await build(client)
    await schedule(client, date="2026-03-12")
    for aid, start in (("scr", "2026-02-24T09:00:00Z"), ("day1", "2026-03-10T09:00:00Z"),
                       ("d15", "2026-03-23T09:00:00Z")):
        await record_visit(client, "rs1", aid, start)
    await schedule(client, date="2026-03-24")  # the three become fulfilled
    done_before = {aid: await visit(client, "rs1", aid) for aid in ("scr", "day1", "d15")}
    assert {a["status"] for a in done_before.values()} == {"fulfilled"}

    # the amendment: PlanDefinition 2.0 (same url), the study points at it, the site adopts it on 04-01
    await put(client, protocol("2.0", "proto-2"),
              study("study", "study", protocol=[{"reference": "PlanDefinition/proto-2"}]),
              study("site", "site", partOf=[{"reference": "ResearchStudy/study"}],
                    extension=[adoption("1.0", "2026-01-01"), adoption("2.0", "2026-04-01")]))
    # before the site adopts 2.0 nothing changes
    out = await schedule(client, date="2026-03-31")
    assert next(p for p in out["parameter"] if p["name"] == "protocol")["valueCanonical"] == f"{URL}|1.0"
    assert counts(out)["created"] == counts(out)["updated"] == counts(out)["cancelled"] == 0

    d29_before = await visit(client, "rs1", "d29")
    out = await schedule(client, date="2026-04-02")
    assert next(p for p in out["parameter"] if p["name"] == "protocol")["valueCanonical"] == f"{URL}|2.0"
    assert visit_results(out) == {"scr": "kept", "day1": "kept", "d15": "kept", "d29": "updated",
                                  "d85": "created", "d57": "cancelled"}
    for aid, before in done_before.items():  # done visits did not change at all
        assert await visit(client, "rs1", aid) == before
    d29 = await visit(client, "rs1", "d29")
    assert d29["id"] == d29_before["id"] and d29["meta"]["versionId"] == "2"
    assert d29["requestedPeriod"] == [{"start": "2026-04-06", "end": "2026-04-12"}]
    assert d29["start"] == "2026-04-09T00:00:00Z" and d29["description"] == "Day 31"
    assert d29["extension"][0]["valueCanonical"] == f"{URL}|2.0#d29"
    d85 = await visit(client, "rs1", "d85")
    assert d85["requestedPeriod"] == [{"start": "2026-05-26", "end": "2026-06-09"}]
    assert d85["start"] == "2026-06-02T00:00:00Z"
    d57 = await visit(client, "rs1", "d57")   # cancelled, not deleted
    assert d57["status"] == "cancelled" and d57["meta"]["versionId"] == "2"
    cp = (await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|rs1"))[0]
    assert cp["instantiatesCanonical"] == [f"{URL}|2.0"]
    for ref, n in ((f"Appointment/{d29['id']}", 2), (f"Appointment/{d85['id']}", 1),
                   (f"Appointment/{d57['id']}", 2), (f"CarePlan/{cp['id']}", 2)):
        assert await provenances(client, ref) == n, ref
    # and once more: nothing
    again = await schedule(client, date="2026-04-02")
    assert counts(again)["created"] + counts(again)["updated"] + counts(again)["cancelled"] == 0
    assert await versions(client, f"Appointment/{d29['id']}") == 2


async def test_concurrent_calls_do_not_duplicate_visits(client):
    await build(client)
    outs = await asyncio.gather(*(schedule(client, date="2026-03-12") for _ in range(3)))
    assert all(next(p for p in o["parameter"] if p["name"] == "protocol") for o in outs)
    assert len(await search(client, "/Appointment?subject=Patient/p1&_count=50")) == 5
    assert len(await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|rs1")) == 1
    for a in await search(client, "/Appointment?subject=Patient/p1&_count=50"):
        assert a["meta"]["versionId"] == "1"


async def test_subject_not_enrolled_needs_an_anchor(client):
    await build(client)
    await put(client, subject("rs2", "p2", "site", ("screening", "2026-02-01")))
    resp = await client.post("/ResearchSubject/rs2/$schedule", json={"resourceType": "Parameters"})
    assert resp.status_code == 422
    assert "not enrolled" in resp.json()["issue"][0]["diagnostics"]
    out = await schedule(client, "rs2", anchor="2026-02-15", date="2026-02-01")
    assert counts(out)["created"] == 5
    scr = await visit(client, "rs2", "scr")
    assert scr["start"] == "2026-02-01T00:00:00Z"      # 14 days before the planned Day 1
    assert scr["requestedPeriod"] == [{"start": "2026-01-18", "end": "2026-02-14"}]


async def test_anchor_parameter_overrides_the_enrolment_date(client):
    await build(client)
    await schedule(client, anchor="2026-03-11", date="2026-03-01")
    assert (await visit(client, "rs1", "d15"))["start"] == "2026-03-25T00:00:00Z"


async def test_dates_beyond_the_calendar_are_422_not_500(client):
    """Anchors whose visits fall outside years 1 to 9999, and offsets no calendar holds: a 422
    naming the problem, nothing written; a Day 1 near the first representable date works."""
    await build(client)
    for anchor, where in (("0001-01-01", "scr"), ("9999-12-31", "day1"), ("9999-11-01", "d57")):
        out = await schedule(client, expect=422, anchor=anchor, date="2026-03-01")
        text = out["issue"][0]["diagnostics"]
        assert "outside the dates" in text and where in text and anchor in text, text
    assert await search(client, "/Appointment?subject=Patient/p1") == []
    out = await schedule(client, anchor="0001-02-15", date="0001-01-01")  # screening 0001-01-18..
    assert counts(out)["created"] == 5
    assert (await visit(client, "rs1", "scr"))["requestedPeriod"] == [{"start": "0001-01-18",
                                                                        "end": "0001-02-14"}]
    # the evaluation date at the end of the calendar: every visit is past, none written again
    out = await schedule(client, date="9999-12-31")
    assert counts(out)["created"] == 0

    # offsets no calendar holds, and fractions of days, in the protocol itself
    for value, text in ((100_000_000, "more days than the calendar"), (1e300, "more days than the calendar"),
                        (1.5, "whole number of days")):
        proto = protocol("1.0", "proto-1")
        proto["action"][2]["relatedAction"][0]["offsetDuration"]["value"] = value
        proto["action"][2]["relatedAction"][0]["extension"][0]["valueRange"]["high"]["value"] = value
        await put(client, proto)
        out = await schedule(client, expect=422, date="2026-03-01")
        issue = out["issue"][0]
        assert text in issue["diagnostics"], issue
        assert issue["expression"][0].startswith("PlanDefinition.action[2].relatedAction"), issue


async def test_errors(client):
    await build(client)
    assert (await client.post("/ResearchSubject/nobody/$schedule")).status_code == 404
    resp = await client.get("/ResearchSubject/rs1/$schedule")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert (await client.post("/ResearchSubject/$schedule")).status_code == 404  # instance level only
    resp = await client.post("/ResearchSubject/rs1/$schedule", json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueString": "tomorrow"}]})
    assert resp.status_code == 400 and outcome_codes(resp) == ["invalid"]
    resp = await client.post("/ResearchSubject/rs1/$schedule", json={
        "resourceType": "Parameters", "parameter": [{"name": "speed", "valueString": "fast"}]})
    assert resp.status_code == 400

    # the subject's study is the study, not a site
    await put(client, subject("rs3", "p2", "study", ("on-study", "2026-03-10")))
    resp = await client.post("/ResearchSubject/rs3/$schedule")
    assert resp.status_code == 422 and "not a site" in resp.json()["issue"][0]["diagnostics"]
    # a site running no protocol (none of its own, none on its study)
    await put(client, study("study-b", "study"),
              study("site-b", "site", partOf=[{"reference": "ResearchStudy/study-b"}]),
              subject("rs4", "p2", "site-b", ("on-study", "2026-03-10")))
    resp = await client.post("/ResearchSubject/rs4/$schedule")
    assert resp.status_code == 422 and "runs no protocol" in resp.json()["issue"][0]["diagnostics"]
    # a site-protocol entry naming a version that does not exist
    await put(client, study("site-b", "site", partOf=[{"reference": "ResearchStudy/study-b"}],
                            extension=[adoption("9.9", "2026-01-01")]))
    resp = await client.post("/ResearchSubject/rs4/$schedule")
    assert resp.status_code == 422 and "matches 0 PlanDefinitions" in resp.json()["issue"][0]["diagnostics"]
    # a protocol without timing
    untimed = protocol("1.0", "proto-untimed")
    untimed.update(url="http://example.org/fhir/PlanDefinition/untimed")
    for a in untimed["action"]:
        a.pop("relatedAction", None)
    await put(client, untimed,
              study("study-b", "study", protocol=[{"reference": "PlanDefinition/proto-untimed"}]),
              study("site-b", "site", partOf=[{"reference": "ResearchStudy/study-b"}]))
    resp = await client.post("/ResearchSubject/rs4/$schedule")
    assert resp.status_code == 422 and "exactly one anchor visit" in resp.json()["issue"][0]["diagnostics"]
    assert await search(client, "/Appointment?subject=Patient/p2") == []
    assert await search(client, "/CarePlan?subject=Patient/p2") == []


async def test_a_failing_write_writes_nothing(client):
    """Two stray Appointments (of another patient) already carry rs1's Day 15 key: the conditional
    create of that visit matches both (412), so the whole transaction fails: no plan, no visit."""
    await build(client)
    stray = {"resourceType": "Appointment", "status": "proposed",
             "identifier": [{"system": soa.VISIT_SYSTEM, "value": "rs1/d15"}],
             "participant": [{"actor": {"reference": "Patient/p2"}, "status": "needs-action"}],
             "subject": {"reference": "Patient/p2"}}
    for _ in range(2):
        assert (await client.post("/Appointment", json=stray)).status_code == 201
    provenance_before = (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"]
    resp = await client.post("/ResearchSubject/rs1/$schedule", json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": "2026-03-12"}]})
    assert resp.status_code == 412, resp.text
    assert await search(client, "/Appointment?subject=Patient/p1") == []
    assert await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|rs1") == []
    assert (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"] == provenance_before


async def test_withdrawn_subject_has_its_open_visits_cancelled(client):
    await build(client)
    await schedule(client, date="2026-03-12")
    await record_visit(client, "rs1", "day1", "2026-03-10T09:00:00Z")
    await put(client, subject("rs1", "p1", "site", ("screening", "2026-02-20"), ("on-study", "2026-03-10"),
                              ("withdrawn", "2026-03-15")))
    out = await schedule(client, date="2026-03-16")
    results = visit_results(out)
    assert results["day1"] == "fulfilled" and results["scr"] == "kept"  # screening window ended 03-09
    assert {results[a] for a in ("d15", "d29", "d57")} == {"cancelled"}
    assert (await visit(client, "rs1", "d29"))["status"] == "cancelled"


@pytest.mark.parametrize("missing", ["subject", "patient"])
async def test_broken_references_are_422(client, missing):
    await build(client)
    rs = subject("rs5", "p2", "site", ("on-study", "2026-03-10"))
    if missing == "subject":
        rs["subject"] = {"reference": "Group/g1"}
    else:
        rs["study"] = {"reference": "ResearchStudy/nowhere"}
    await put(client, rs)
    assert (await client.post("/ResearchSubject/rs5/$schedule")).status_code == 422


async def test_the_example_study_is_already_scheduled(client):
    """The example study's visits (examples/, built by its own script from the same rules) are
    what $schedule plans: on the example's today, no enrolled subject's plan or visit changes."""
    files = sorted(EXAMPLES.glob("acme-101-*.json"))
    if not files:
        pytest.skip("the example study is not in examples/")
    for f in files:
        resp = await client.post("/", json=json.loads(f.read_text()), headers={"prefer": "return=minimal"})
        assert resp.status_code == 200, resp.text[:500]
    plans = await search(client, f"/CarePlan?identifier={quote(soa.PLAN_SYSTEM)}|&_count=500")
    enrolled = sorted(p["identifier"][0]["value"] for p in plans)
    assert len(enrolled) == 48  # the README's study table: enrolled
    provenance_before = (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"]
    seen: dict[str, int] = {}
    for rid in enrolled:
        out = await schedule(client, rid, date="2026-11-23")
        changes = {k: v for k, v in counts(out).items()
                   if k in ("created", "updated", "cancelled", "fulfilled")}
        assert set(changes.values()) == {0}, (rid, visit_results(out))
        cp = next(p for p in out["parameter"] if p["name"] == "carePlan")
        assert {q["name"]: q for q in cp["part"]}["result"]["valueCode"] == "unchanged", rid
        for kind, n in counts(out).items():
            seen[kind] = seen.get(kind, 0) + n
    assert (await client.get("/Provenance?_total=accurate&_count=0")).json()["total"] == provenance_before
    # open visits were checked against the protocol (not only kept as done or past)
    assert seen["unchanged"] > 0 and seen["kept"] > 0


# -- under a SMART token ------------------------------------------------------------------------

async def test_scopes_are_enforced_on_the_operation_and_on_each_write(repo):
    """$schedule needs read of the ResearchSubject (system/ or user/); each write of its
    transaction needs its own permission (a token that may read everything but write nothing, or
    may not create Appointments, writes nothing); the audit records name the token's user."""
    from .conftest import make_client
    from .smart import minter, registered

    mint = minter(await registered(repo))

    async def bearer(scope: str) -> dict[str, str]:
        return await mint(scope, context={"fhirUser": "Practitioner/prac-1"})

    async with make_client(repo) as open_, make_client(repo, auth_enabled=True) as http:
        await build(open_)
        body = {"resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": "2026-03-12"}]}
        url = "/ResearchSubject/rs1/$schedule"
        r = await http.post(url, json=body, headers=await bearer("user/*.rs"))
        assert r.status_code == 403, r.text
        r = await http.post(url, json=body, headers=await bearer("user/ResearchSubject.u"))
        assert r.status_code == 403 and "read on ResearchSubject" in r.text, r.text
        r = await http.post(url, json=body, headers=await bearer(
            "user/*.rs user/CarePlan.crus"))
        assert r.status_code == 403, r.text
        assert "Appointment" in r.json()["issue"][0]["diagnostics"]
        assert await search(open_, "/CarePlan?subject=Patient/p1") == []
        assert await search(open_, "/Appointment?subject=Patient/p1") == []
        r = await http.post(url, json=body, headers=await bearer("user/*.cruds"))
        assert r.status_code == 200, r.text
        assert counts(r.json())["created"] == 5
        a = await visit(open_, "rs1", "d15")
        prov = await search(open_, f"/Provenance?target=Appointment/{a['id']}")
        assert [ag["who"].get("reference") for ag in prov[0]["agent"]][0] == "Practitioner/prac-1"
