"""``$milestones`` through the HTTP API, on every database (tests/conftest.py), and the
``X-Provenance`` header of the write that records a milestone.

The study ``ms`` is built by hand below; every date, variance and state is worked out in the
comments (the rules: fhir_ctms/ctms/milestones.py). Evaluation date D = 2026-07-01.

Enrolments (the first on-study entry of each subject) on or before D, in order:
  1 s1 2026-03-10 (ms-1)   2 s2 2026-04-02 (ms-1)   3 t1 2026-04-05 (ms-2)
  4 t2 2026-04-20 (ms-2)   5 s3 2026-05-20 (ms-1)   6 t3 2026-06-10 (ms-2, withdrawn later)
  7 s4 2026-06-25 (ms-1)
(s5 is only screened; s6 goes on study on 2026-07-10, after D.) Target 12, so k = ceil(p x 12):
25 % -> 3, 50 % -> 6, 75 % -> 9, 100 % -> 12.

Study ``ms`` (study-milestone):
- protocol-approved: plan 01-15, recorded 01-10 -> met, 10 - 15 = -5;
- first-site-activated: plan 02-01, not recorded; derived: the earliest site activation,
  ms-1 02-10 (ms-2 03-01) -> met-late, +9 (Feb 1 -> Feb 10), source derived;
- first-subject-in: plan 03-01, recorded 03-01 -> met, 0; the data give 03-10 (s1), so a
  discrepancy (recorded 03-01, derived 03-10); the recorded date stays the actual;
- enrolled-25: plan 04-15; the 3rd enrolment is 04-05 -> met, -10, derived;
- enrolled-50: plan 06-01; the 6th enrolment is 06-10 -> met-late, +9, derived;
- enrolled-75: plan 07-03 (two days after D): 9 needed, 7 enrolled; the forecast of 2 more
  recruits in two days at about 7 recruits per 263 site-days (0.027 a day per site) is weeks
  away -> at-risk, variance = forecast - plan > 0;
- last-subject-in: plan 12-31; enrolment is not closed, so nothing derived; forecast of the 12th
  recruit = $enrollment's forecastMedian of the study (the same model, draws and seed): 5 more
  from ms-1, ms-2, ms-3 (planned, due now) and ms-4 (from 09-01) at ~0.027 a day each is about
  two months (the model: late August), well before the plan -> upcoming, variance < 0;
- last-subject-last-visit: plan 06-01, no actual -> overdue, D - plan = 30 (Jun 1 -> Jul 1);
- database-lock: plan 2027-06-30 -> upcoming, no variance (no forecast).

Site ``ms-1`` (partOf ms): irb-approved plan 01-20, actual 01-25 -> met-late +5; activated plan
02-01, actual 02-10 -> met-late +9; first-subject-in plan 03-15, derived 03-10 (s1) -> met -5.
Site ``ms-2`` (partOf ms): activated plan 03-01, actual 03-01 -> met 0; first-subject-in plan
04-01, recorded 04-05 = derived 04-05 (t1, no discrepancy) -> met-late +4, source recorded.
Country ``ms-fr`` (no milestones: nothing listed for it), with:
Site ``ms-3``: selected recorded 01-05 without a plan -> met, no variance; activated plan 06-01,
not reached -> overdue 30; first-subject-in plan 07-02: the site is not open, its prior rate
(~0.027 a day) puts the first recruit about 25 days away -> at-risk.
Site ``ms-4``: selected plan 08-01 and an actual entry dated 07-20, after D (ignored) ->
upcoming, no actual; activated plan 09-01 -> upcoming.

Study ``ms2`` (phase 3, no sites): protocol-approved plan 05-01, not reached -> overdue, 61
(May 1 -> Jul 1: 31 + 30); database-lock plan 2027-01-01 -> upcoming. No subject, no target
reached: no derived milestone is listed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.parameters import Parameters

pytestmark = pytest.mark.asyncio

LEVEL = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
STUDY_MS = "http://fhir-ctms.org/fhir/CodeSystem/study-milestone"
SITE_MS = "http://fhir-ctms.org/fhir/CodeSystem/site-milestone"
REASON = "http://fhir-ctms.org/fhir/CodeSystem/subject-progress-reason"
PHASE = "http://terminology.hl7.org/CodeSystem/research-study-phase"
D = "2026-07-01"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def study(rid: str, level: str, target: int | None, part_of: str | None = None,
          milestones: list[tuple[str, bool, str]] = (), phase: str | None = None) -> dict:
    system = STUDY_MS if level == "study" else SITE_MS
    r: dict[str, Any] = {
        "resourceType": "ResearchStudy", "id": rid, "status": "active", "title": f"Title {rid}",
        "classifier": [{"coding": [{"system": LEVEL, "code": level}]}]}
    if part_of:
        r["partOf"] = [{"reference": f"ResearchStudy/{part_of}"}]
    if phase:
        r["phase"] = {"coding": [{"system": PHASE, "code": phase}]}
    if target is not None:
        r["recruitment"] = {"targetNumber": target}
    if milestones:
        r["progressStatus"] = [{"state": {"coding": [{"system": system, "code": code}]},
                                "actual": actual, "period": {"start": start}}
                               for code, actual, start in milestones]
    return r


def subject(rid: str, site: str, *progress: tuple) -> dict:
    """progress: (state, start[, reason]) in order; each entry ends when the next starts."""
    entries = []
    for i, p in enumerate(progress):
        e: dict[str, Any] = {"subjectState": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/research-subject-state", "code": p[0]}]},
            "startDate": p[1]}
        if i + 1 < len(progress):
            e["endDate"] = progress[i + 1][1]
        if len(p) > 2:
            e["reason"] = {"coding": [{"system": REASON, "code": p[2]}]}
        entries.append(e)
    return {"resourceType": "ResearchSubject", "id": rid, "status": "active",
            "study": {"reference": f"ResearchStudy/{site}"},
            "subject": {"reference": f"Patient/p-{rid}"}, "progress": entries}


P, A = False, True  # planned, actual
RESOURCES = [
    study("ms", "study", 12, phase="phase-2", milestones=[
        ("protocol-approved", P, "2026-01-15"), ("protocol-approved", A, "2026-01-10"),
        ("first-site-activated", P, "2026-02-01"),
        ("first-subject-in", P, "2026-03-01"), ("first-subject-in", A, "2026-03-01"),
        ("enrolled-25", P, "2026-04-15"), ("enrolled-50", P, "2026-06-01"),
        ("enrolled-75", P, "2026-07-03"), ("last-subject-in", P, "2026-12-31"),
        ("last-subject-last-visit", P, "2026-06-01"), ("database-lock", P, "2027-06-30")]),
    study("ms-1", "site", 6, "ms", [("irb-approved", P, "2026-01-20"), ("irb-approved", A, "2026-01-25"),
                                    ("activated", P, "2026-02-01"), ("activated", A, "2026-02-10"),
                                    ("first-subject-in", P, "2026-03-15")]),
    study("ms-2", "site", 4, "ms", [("activated", P, "2026-03-01"), ("activated", A, "2026-03-01"),
                                    ("first-subject-in", P, "2026-04-01"),
                                    ("first-subject-in", A, "2026-04-05")]),
    study("ms-fr", "country", None, "ms"),
    study("ms-3", "site", 2, "ms-fr", [("selected", A, "2026-01-05"), ("activated", P, "2026-06-01"),
                                       ("first-subject-in", P, "2026-07-02")]),
    study("ms-4", "site", 2, "ms-fr", [("selected", P, "2026-08-01"), ("selected", A, "2026-07-20"),
                                       ("activated", P, "2026-09-01")]),
    study("ms2", "study", 10, phase="phase-3", milestones=[
        ("protocol-approved", P, "2026-05-01"), ("database-lock", P, "2027-01-01")]),
    subject("s1", "ms-1", ("screening", "2026-02-28"), ("on-study", "2026-03-10")),
    subject("s2", "ms-1", ("screening", "2026-03-20"), ("on-study", "2026-04-02")),
    subject("s3", "ms-1", ("screening", "2026-05-05"), ("on-study", "2026-05-20")),
    subject("s4", "ms-1", ("screening", "2026-06-10"), ("on-study", "2026-06-25")),
    subject("s5", "ms-1", ("screening", "2026-06-20")),
    subject("s6", "ms-1", ("screening", "2026-06-28"), ("on-study", "2026-07-10")),
    subject("t1", "ms-2", ("screening", "2026-03-25"), ("on-study", "2026-04-05")),
    subject("t2", "ms-2", ("screening", "2026-04-08"), ("on-study", "2026-04-20")),
    subject("t3", "ms-2", ("screening", "2026-05-28"), ("on-study", "2026-06-10"),
            ("withdrawn", "2026-06-20", "withdrawn-by-subject")),
]

# (study, code) -> (planned, actual, source, variance, state); None: absent
EXPECTED = {
    ("ms", "protocol-approved"): ("2026-01-15", "2026-01-10", "recorded", -5, "met"),
    ("ms", "first-site-activated"): ("2026-02-01", "2026-02-10", "derived", 9, "met-late"),
    ("ms", "first-subject-in"): ("2026-03-01", "2026-03-01", "recorded", 0, "met"),
    ("ms", "enrolled-25"): ("2026-04-15", "2026-04-05", "derived", -10, "met"),
    ("ms", "enrolled-50"): ("2026-06-01", "2026-06-10", "derived", 9, "met-late"),
    ("ms", "last-subject-last-visit"): ("2026-06-01", None, None, 30, "overdue"),
    ("ms", "database-lock"): ("2027-06-30", None, None, None, "upcoming"),
    ("ms-1", "irb-approved"): ("2026-01-20", "2026-01-25", "recorded", 5, "met-late"),
    ("ms-1", "activated"): ("2026-02-01", "2026-02-10", "recorded", 9, "met-late"),
    ("ms-1", "first-subject-in"): ("2026-03-15", "2026-03-10", "derived", -5, "met"),
    ("ms-2", "activated"): ("2026-03-01", "2026-03-01", "recorded", 0, "met"),
    ("ms-2", "first-subject-in"): ("2026-04-01", "2026-04-05", "recorded", 4, "met-late"),
    ("ms-3", "selected"): (None, "2026-01-05", "recorded", None, "met"),
    ("ms-3", "activated"): ("2026-06-01", None, None, 30, "overdue"),
    ("ms-4", "selected"): ("2026-08-01", None, None, None, "upcoming"),
    ("ms-4", "activated"): ("2026-09-01", None, None, None, "upcoming"),
}
FORECAST = {("ms", "enrolled-75"): "at-risk", ("ms", "last-subject-in"): "upcoming",
            ("ms-3", "first-subject-in"): "at-risk"}


async def load(client, resources: list[dict]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}
    r = await client.post("", json=bundle)
    assert r.status_code == 200, r.text


def value(part: dict) -> Any:
    if "part" in part:
        return {q["name"]: value(q) for q in part["part"]}
    v = next(v for k, v in part.items() if k.startswith("value"))
    return v["reference"] if isinstance(v, dict) and "reference" in v else v


def report(params: dict) -> dict[tuple[str, str], dict[str, Any]]:
    """The milestone parameters by (study id, code): {part name: value}."""
    out = {}
    for p in params["parameter"]:
        if p["name"] == "milestone":
            row = {q["name"]: value(q) for q in p["part"]}
            key = (row["reference"].split("/")[1], row["milestone"]["code"])
            assert key not in out, key
            out[key] = row
    return out


async def get(client, path: str, **params: str) -> dict:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    Parameters.model_validate(r.json())
    return r.json()


async def test_every_state_variance_and_derived_date(client):
    await load(client, RESOURCES)
    body = await get(client, "/ResearchStudy/ms/$milestones", date=D)
    assert body["parameter"][0] == {"name": "date", "valueDate": D}
    got = report(body)
    assert set(got) == set(EXPECTED) | set(FORECAST)  # nothing for ms-fr, nothing of ms2
    for key, (planned, actual, source, variance, state) in EXPECTED.items():
        row = got[key]
        assert (row.get("planned"), row.get("actual"), row.get("source"), row.get("variance"),
                row["state"]) == (planned, actual, source, variance, state), key
        assert "forecast" not in row, key
    # levels and references
    assert got[("ms", "enrolled-50")]["level"] == "study"
    assert got[("ms-3", "activated")]["level"] == "site"
    assert got[("ms-3", "activated")]["study"] == "ResearchStudy/ms"
    assert got[("ms-1", "activated")]["milestone"] == {"system": SITE_MS, "code": "activated",
                                                       "display": "Activated"}
    assert got[("ms", "enrolled-50")]["milestone"]["display"] == "50% enrolled"
    # derived dates shown beside recorded ones; the contradiction reported
    assert got[("ms", "first-subject-in")]["derived"] == "2026-03-10"
    assert got[("ms", "first-subject-in")]["discrepancy"]["recorded"] == "2026-03-01"
    assert got[("ms", "first-subject-in")]["discrepancy"]["derived"] == "2026-03-10"
    assert got[("ms-2", "first-subject-in")]["derived"] == "2026-04-05"
    assert "discrepancy" not in got[("ms-2", "first-subject-in")]
    assert sum("discrepancy" in row for row in got.values()) == 1
    # the enrolment forecasts: past the plan -> at risk, else upcoming
    for key, state in FORECAST.items():
        row = got[key]
        assert "actual" not in row and row["state"] == state, key
        days = (dt(row["forecast"]) - dt(row["planned"])).days
        assert row["variance"] == days, key
        assert (days > 0) == (state == "at-risk"), key
    assert got[("ms", "enrolled-75")]["forecast"] > "2026-07-10"  # weeks away, not two days
    # the 100 % forecast is $enrollment's forecast of the study's target
    enr = (await get(client, "/ResearchStudy/ms/$enrollment", date=D))["parameter"]
    study_row = next({q["name"]: value(q) for q in p["part"]} for p in enr if p["name"] == "study")
    assert got[("ms", "last-subject-in")]["forecast"] == study_row["forecastMedian"]


def dt(text: str):
    import datetime
    return datetime.date.fromisoformat(text)


async def test_country_and_site_invocation_and_post(client):
    await load(client, RESOURCES)
    got = report(await get(client, "/ResearchStudy/ms-fr/$milestones", date=D))
    assert {k[0] for k in got} == {"ms-3", "ms-4"}
    assert got[("ms-3", "activated")]["state"] == "overdue"
    got = report(await get(client, "/ResearchStudy/ms-1/$milestones", date=D))
    assert set(got) == {("ms-1", "irb-approved"), ("ms-1", "activated"), ("ms-1", "first-subject-in")}
    r = await client.post("/ResearchStudy/ms/$milestones", json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": D},
                                                    {"name": "state", "valueString": "met-late"}]})
    assert r.status_code == 200, r.text
    assert set(report(r.json())) == {("ms", "first-site-activated"), ("ms", "enrolled-50"),
                                     ("ms-1", "irb-approved"), ("ms-1", "activated"),
                                     ("ms-2", "first-subject-in")}
    # a later date: s6 (on study 07-10) is counted; last-subject-last-visit still overdue, by more
    got = report(await get(client, "/ResearchStudy/ms/$milestones", date="2026-07-15"))
    assert got[("ms", "last-subject-last-visit")]["variance"] == 44  # Jun 1 -> Jul 15
    assert "actual" not in got[("ms-4", "selected")]  # 07-20 is still after 07-15


async def test_portfolio_with_state_filter_and_search_parameters(client):
    await load(client, RESOURCES)
    body = await get(client, "/ResearchStudy/$milestones", date=D, state="overdue,met-late")
    got = report(body)
    # every late milestone of every study, sites under their study (never a study of their own)
    assert set(got) == {("ms", "first-site-activated"), ("ms", "enrolled-50"),
                        ("ms", "last-subject-last-visit"), ("ms-1", "irb-approved"),
                        ("ms-1", "activated"), ("ms-2", "first-subject-in"),
                        ("ms-3", "activated"), ("ms2", "protocol-approved")}
    assert got[("ms2", "protocol-approved")]["variance"] == 61
    assert got[("ms2", "protocol-approved")]["study"] == "ResearchStudy/ms2"
    assert got[("ms-3", "activated")]["study"] == "ResearchStudy/ms"
    # a search parameter narrows the studies
    got = report(await get(client, "/ResearchStudy/$milestones", date=D, state="overdue",
                           phase=f"{PHASE}|phase-3"))
    assert set(got) == {("ms2", "protocol-approved")}
    got = report(await get(client, "/ResearchStudy/$milestones", date=D, phase="phase-2",
                           state="upcoming"))
    assert set(got) == {("ms", "last-subject-in"), ("ms", "database-lock"),
                        ("ms-4", "selected"), ("ms-4", "activated")}
    # a search that finds nothing, and _id
    assert report(await get(client, "/ResearchStudy/$milestones", date=D, status="completed")) == {}
    got = report(await get(client, "/ResearchStudy/$milestones", date=D, _id="ms2"))
    assert set(got) == {("ms2", "protocol-approved"), ("ms2", "database-lock")}
    # _id of a site: not a study-level ResearchStudy, so nothing
    assert report(await get(client, "/ResearchStudy/$milestones", date=D, _id="ms-1")) == {}
    # POST: search parameters as string parameters
    r = await client.post("/ResearchStudy/$milestones", json={
        "resourceType": "Parameters", "parameter": [
            {"name": "date", "valueDate": D}, {"name": "phase", "valueString": "phase-3"}]})
    assert r.status_code == 200, r.text
    assert {k[0] for k in report(r.json())} == {"ms2"}


def party(role: str, org: str) -> dict:
    return {"role": {"coding": [{"system": "http://hl7.org/fhir/research-study-party-role", "code": role}]},
            "party": {"reference": f"Organization/{org}"}}


async def test_portfolio_of_a_sponsor(client):
    """R5 has no sponsor search parameter: profiles/SearchParameter-ResearchStudy-sponsor.json
    (the party of an associatedParty with role sponsor or lead-sponsor). ``ms`` is sponsored by
    org-a; ``ms2`` by org-b (lead-sponsor), with org-a only a collaborator."""
    ms, ms2 = (dict(r) for r in RESOURCES if r["id"] in ("ms", "ms2"))
    ms["associatedParty"] = [party("sponsor", "org-a")]
    ms2["associatedParty"] = [party("collaborator", "org-a"), party("lead-sponsor", "org-b")]
    orgs = [{"resourceType": "Organization", "id": o, "name": o} for o in ("org-a", "org-b")]
    await load(client, [*orgs, *(ms if r["id"] == "ms" else ms2 if r["id"] == "ms2" else r for r in RESOURCES)])

    async def ids(**params: str) -> list[str]:
        r = await client.get("/ResearchStudy", params=params)
        assert r.status_code == 200, r.text
        return sorted(e["resource"]["id"] for e in r.json().get("entry", []))

    assert await ids(sponsor="Organization/org-a") == ["ms"]
    assert await ids(sponsor="Organization/org-b") == ["ms2"]
    assert await ids(sponsor="org-b") == ["ms2"]
    assert await ids(sponsor="Organization/org-a,Organization/org-b") == ["ms", "ms2"]
    assert await ids(sponsor="Organization/nobody") == []
    # a sponsor's sites and countries: a chain through part-of
    assert await ids(**{"part-of:ResearchStudy.sponsor": "Organization/org-a"}) == ["ms-1", "ms-2", "ms-fr"]
    # the portfolio: every milestone of the sponsor's studies, and only theirs
    got = report(await get(client, "/ResearchStudy/$milestones", date=D, sponsor="Organization/org-b"))
    assert set(got) == {("ms2", "protocol-approved"), ("ms2", "database-lock")}
    got = report(await get(client, "/ResearchStudy/$milestones", date=D, state="overdue",
                           sponsor="Organization/org-a"))
    assert set(got) == {("ms", "last-subject-last-visit"), ("ms-3", "activated")}
    r = await client.post("/ResearchStudy/$milestones", json={"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": D}, {"name": "sponsor", "valueString": "Organization/org-b"}]})
    assert r.status_code == 200, r.text
    assert {k[0] for k in report(r.json())} == {"ms2"}
    # the CapabilityStatement lists it
    cap = (await client.get("/metadata")).json()
    rs = next(x for x in cap["rest"][0]["resource"] if x["type"] == "ResearchStudy")
    assert {"name": "sponsor", "type": "reference",
            "definition": "http://fhir-ctms.org/fhir/SearchParameter/ResearchStudy-sponsor"} in rs["searchParam"]


async def test_a_recorded_milestone_the_data_contradict_follows_the_data(client):
    """ms-3 and ms-4 have no subject, yet ms-3 records first-subject-in on 06-20 (plan 07-02) and
    ms-4 on 06-15 (plan 06-20). The data say neither happened: the recorded date is shown as the
    actual, with the discrepancy, and the state is the data's: ms-3 at risk (its forecast, about
    25 days away, is after the plan), ms-4 overdue (plan passed; forecast after its planned
    activation on 09-01, so variance = forecast - plan > 0). Before the fix both were met-late/met
    and a state=overdue or at-risk filter hid them."""
    changed = []
    for r in RESOURCES:
        if r["id"] in ("ms-3", "ms-4"):
            r = json.loads(json.dumps(r))
            day, plan = ("2026-06-20", None) if r["id"] == "ms-3" else ("2026-06-15", "2026-06-20")
            if plan:
                r["progressStatus"].append({"state": {"coding": [{"system": SITE_MS, "code": "first-subject-in"}]},
                                            "actual": False, "period": {"start": plan}})
            r["progressStatus"].append({"state": {"coding": [{"system": SITE_MS, "code": "first-subject-in"}]},
                                        "actual": True, "period": {"start": day}})
        changed.append(r)
    await load(client, changed)
    got = report(await get(client, "/ResearchStudy/ms/$milestones", date=D))
    m3, m4 = got[("ms-3", "first-subject-in")], got[("ms-4", "first-subject-in")]
    assert (m3["planned"], m3["actual"], m3["source"], m3["state"]) == ("2026-07-02", "2026-06-20", "recorded", "at-risk")
    assert m3["variance"] == (dt(m3["forecast"]) - dt("2026-07-02")).days > 0
    assert "derived" not in m3
    assert m3["discrepancy"] == {"recorded": "2026-06-20",
                                 "text": "recorded 2026-06-20, the data show it has not happened"}
    assert (m4["planned"], m4["actual"], m4["state"]) == ("2026-06-20", "2026-06-15", "overdue")
    assert m4["forecast"] > "2026-09-01" and m4["variance"] == (dt(m4["forecast"]) - dt("2026-06-20")).days
    assert m4["discrepancy"]["recorded"] == "2026-06-15"
    # the state filters find them
    assert ("ms-4", "first-subject-in") in report(await get(client, "/ResearchStudy/$milestones", date=D, state="overdue"))
    assert ("ms-3", "first-subject-in") in report(await get(client, "/ResearchStudy/ms/$milestones", date=D, state="at-risk"))
    assert not {("ms-3", "first-subject-in"), ("ms-4", "first-subject-in")} & set(
        report(await get(client, "/ResearchStudy/ms/$milestones", date=D, state="met,met-late")))
    # the rest of the report is unchanged
    for key, (planned, actual, source, variance, state) in EXPECTED.items():
        assert (got[key].get("actual"), got[key]["state"]) == (actual, state), key


async def test_csv(client):
    await load(client, RESOURCES)
    r = await client.get("/ResearchStudy/ms/$milestones", params={"date": D, "_format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == len(EXPECTED) + len(FORECAST)
    fsi = next(x for x in rows if x["reference"] == "ResearchStudy/ms" and x["code"] == "first-subject-in")
    assert (fsi["planned"], fsi["actual"], fsi["source"], fsi["derived"], fsi["variance"], fsi["state"],
            fsi["discrepancyRecorded"], fsi["discrepancyDerived"]) == (
        "2026-03-01", "2026-03-01", "recorded", "2026-03-10", "0", "met", "2026-03-01", "2026-03-10")
    late = next(x for x in rows if x["reference"] == "ResearchStudy/ms-3" and x["code"] == "activated")
    assert (late["level"], late["study"], late["actual"], late["variance"], late["state"]) == (
        "site", "ResearchStudy/ms", "", "30", "overdue")
    r = await client.get("/ResearchStudy/$milestones", params={"date": D, "_format": "csv",
                                                                "state": "overdue"})
    assert r.status_code == 200
    assert sorted((x["reference"], x["code"]) for x in csv.DictReader(io.StringIO(r.text))) == [
        ("ResearchStudy/ms", "last-subject-last-visit"), ("ResearchStudy/ms-3", "activated"),
        ("ResearchStudy/ms2", "protocol-approved")]


@pytest.mark.parametrize("path,params,status", [
    ("/ResearchStudy/nope/$milestones", {"date": D}, 404),
    ("/ResearchStudy/ms/$milestones", {"date": "2026-02-30"}, 400),
    ("/ResearchStudy/ms/$milestones", {"date": "July 1"}, 400),
    ("/ResearchStudy/ms/$milestones", {"date": D, "foo": "bar"}, 400),
    ("/ResearchStudy/ms/$milestones", {"date": D, "phase": "phase-2"}, 400),  # instance: no search
    ("/ResearchStudy/ms/$milestones", {"state": "late"}, 400),
    ("/ResearchStudy/$milestones", {"foo": "bar"}, 400),
    ("/ResearchStudy/$milestones", {"_count": "5"}, 400),
    ("/ResearchStudy/$milestones", {"_sort": "title"}, 400),
    ("/Patient/$milestones", {}, 404),
])
async def test_errors(client, path, params, status):
    await load(client, RESOURCES)
    r = await client.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_recording_a_milestone_with_x_provenance(client):
    """Recording a milestone is an update of the ResearchStudy; the reason and activity given in
    ``X-Provenance`` (R5 provenance.html) are those of the Provenance the server writes."""
    await load(client, RESOURCES)
    site = (await client.get("/ResearchStudy/ms-3")).json()
    site["progressStatus"].append({"state": {"coding": [{"system": SITE_MS, "code": "activated"}]},
                                   "actual": True, "period": {"start": "2026-06-28"}})
    given = {"resourceType": "Provenance",
             "authorization": [{"concept": {"text": "Activation confirmed by the CRA"}}],
             "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                      "code": "RECORDMGT"}], "text": "milestone recorded"}}
    # bad JSON, or not a Provenance: 400 and nothing written
    for bad in ("{not json", json.dumps({"resourceType": "Patient"}),
                json.dumps({"resourceType": "Provenance", "activity": "x"})):
        r = await client.put("/ResearchStudy/ms-3", json=site, headers={"X-Provenance": bad})
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    assert (await client.get("/ResearchStudy/ms-3")).json()["meta"]["versionId"] == "1"
    r = await client.put("/ResearchStudy/ms-3", json=site, headers={"X-Provenance": json.dumps(given)})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    r = await client.get("/Provenance", params={"target": "ResearchStudy/ms-3/_history/2"})
    [prov] = [e["resource"] for e in r.json()["entry"]]
    assert prov["authorization"] == [{"concept": {"text": "Activation confirmed by the CRA"}}]
    assert prov["activity"]["text"] == "milestone recorded"
    assert [c["code"] for c in prov["activity"]["coding"]] == ["RECORDMGT", "UPDATE"]
    # the Provenance is indexed as written: searchable by the client's activity code
    r = await client.get("/Provenance", params={"activity": "RECORDMGT"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [prov["id"]]
    r = await client.get("/AuditEvent", params={"entity": "ResearchStudy/ms-3/_history/2"})
    [audit] = [e["resource"] for e in r.json()["entry"]]
    assert audit["authorization"] == [{"text": "Activation confirmed by the CRA"}]
    # X-Reason wins over X-Provenance's reason
    r = await client.put("/ResearchStudy/ms-3", json=site, headers={
        "X-Provenance": json.dumps(given), "X-Reason": "Typed again"})
    assert r.status_code == 200
    # the milestone is now reached: activated plan 06-01, actual 06-28 -> met-late +27
    got = report(await get(client, "/ResearchStudy/ms-3/$milestones", date=D))
    assert (got[("ms-3", "activated")]["actual"], got[("ms-3", "activated")]["variance"],
            got[("ms-3", "activated")]["state"]) == ("2026-06-28", 27, "met-late")


async def test_the_example_study(client):
    """examples/README.md: ACME-101 on its "today", 2026-11-23 (target 90: 25 % is the 23rd
    enrolment, 50 % the 45th; 48 enrolled)."""
    for name in ("acme-101-1-study.json", "acme-101-2-amendment.json"):
        r = await client.post("", content=(EXAMPLES / name).read_bytes(),
                              headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:500]
    got = report(await get(client, "/ResearchStudy/acme-101/$milestones", date="2026-11-23"))
    # the sponsor's portfolio is the same study
    r = await client.get("/ResearchStudy", params={"sponsor": "Organization/sponsor-acme"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["acme-101"]
    assert report(await get(client, "/ResearchStudy/$milestones", date="2026-11-23",
                            sponsor="Organization/sponsor-acme")) == got
    def row(rid, code):
        x = got[(rid, code)]
        return x.get("planned"), x.get("actual"), x.get("source"), x.get("variance"), x["state"]
    # first site activated: plan 2025-03-01, site-gb-01 activated 2025-03-10 -> +9, late
    assert row("acme-101", "first-site-activated") == ("2025-03-01", "2025-03-10", "recorded", 9, "met-late")
    assert got[("acme-101", "first-site-activated")]["derived"] == "2025-03-10"
    # first subject in: plan 2025-04-01, 2025-03-31 (the README's study table) -> -1
    assert row("acme-101", "first-subject-in") == ("2025-04-01", "2025-03-31", "recorded", -1, "met")
    # enrolled-25: plan 2025-12-31, recorded 2026-02-02 = the 23rd enrolment -> +33, late
    assert row("acme-101", "enrolled-25") == ("2025-12-31", "2026-02-02", "recorded", 33, "met-late")
    assert got[("acme-101", "enrolled-25")]["derived"] == "2026-02-02"
    # enrolled-50: plan 2026-08-31, recorded 2026-09-21 = the 45th enrolment -> +21, late
    assert row("acme-101", "enrolled-50") == ("2026-08-31", "2026-09-21", "recorded", 21, "met-late")
    assert got[("acme-101", "enrolled-50")]["derived"] == "2026-09-21"
    assert not any("discrepancy" in x for x in got.values())  # the example's dates agree with its data
    # enrolled-75 (68 of 90; 48 enrolled at ~2.4 a month) by 2027-03-31: at risk
    assert got[("acme-101", "enrolled-75")]["state"] == "at-risk"
    assert got[("acme-101", "last-subject-in")]["state"] == "at-risk"
    # site-de-02 (activated 2026-10-20, no subject) planned its first subject for 2026-09-20
    assert got[("site-de-02", "first-subject-in")]["state"] == "overdue"
    assert row("site-de-02", "activated") == ("2026-08-20", "2026-10-20", "recorded", 61, "met-late")
    # site-gb-02 closed enrolment 2026-06-30, planned 2026-09-30 -> 92 days early
    assert row("site-gb-02", "enrolment-closed") == ("2026-09-30", "2026-06-30", "recorded", -92, "met")
    # the sites' first subjects (the README's site table), derived from the subjects
    for rid, first in (("site-gb-01", "2025-03-31"), ("site-gb-02", "2025-05-06"),
                       ("site-de-01", "2025-04-15"), ("site-fr-01", "2025-05-26"),
                       ("site-fr-03", "2025-06-30")):
        assert got[(rid, "first-subject-in")]["derived"] == first, rid
    # planned, not yet due
    assert row("site-gb-03", "activated") == ("2027-01-20", None, None, None, "upcoming")
    assert row("site-fr-02", "siv-done") == ("2026-12-01", None, None, None, "upcoming")
    # far in the future: the enrolment forecasts would fall after 9999-12-31 (no 500)
    for date in ("9990-01-01", "9999-12-31"):
        late = report(await get(client, "/ResearchStudy/acme-101/$milestones", date=date))
        assert late[("acme-101", "last-subject-in")]["state"] == "overdue"
        assert all("forecast" not in x or x["forecast"] <= "9999-12-31" for x in late.values())


VISIT_PLAN = "http://fhir-ctms.org/fhir/sid/visit-plan"


def plan(subject_id: str) -> dict:
    return {"resourceType": "CarePlan", "id": f"plan-{subject_id}", "status": "active", "intent": "plan",
            "subject": {"reference": f"Patient/p-{subject_id}"},
            "identifier": [{"system": VISIT_PLAN, "value": subject_id}]}


def visit(rid: str, subject_id: str, status: str, start: str) -> dict:
    return {"resourceType": "Encounter", "id": rid, "status": status,
            "subject": {"reference": f"Patient/p-{subject_id}"},
            "basedOn": [{"reference": f"CarePlan/plan-{subject_id}"}],
            "actualPeriod": {"start": start}}


async def test_last_subject_last_visit_derived_from_the_visits(client):
    """Study ``lv`` (target 2) closed to accrual on 2026-04-01; u1 (on study 02-01) completed on
    05-20, u2 (on study 03-01) withdrawn on 06-10. Completed visits: u1 02-15 and 05-20, u2 06-05
    (a cancelled one on 06-20 and a completed one dated after D do not count; ``other``'s visit
    is of a subject of another study). On D = 07-01:
    - last-subject-in: enrolment closed, the latest enrolment 03-01, no plan -> met, derived;
    - last-subject-last-visit: everyone off study: the latest visit, 06-05; plan 06-15 -> met -10.
    On 06-01, u2 is still on study: nothing derived, the plan 06-15 is upcoming. On 03-15 the
    closing (04-01) has not happened: last-subject-in is not derived either."""
    status = {"coding": [{"system": "http://hl7.org/fhir/research-study-status", "code": "closed-to-accrual"}]}
    top = study("lv", "study", 2, milestones=[("last-subject-last-visit", P, "2026-06-15")])
    top["progressStatus"].append({"state": status, "actual": True, "period": {"start": "2026-04-01"}})
    await load(client, [
        top, study("lv-1", "site", 2, "lv", [("activated", A, "2026-01-10")]),
        subject("u1", "lv-1", ("on-study", "2026-02-01"), ("off-study", "2026-05-20", "completed")),
        subject("u2", "lv-1", ("on-study", "2026-03-01"), ("withdrawn", "2026-06-10", "withdrawn-by-subject")),
        plan("u1"), plan("u2"), plan("other"),
        visit("e1", "u1", "completed", "2026-02-15"), visit("e2", "u1", "completed", "2026-05-20"),
        visit("e3", "u2", "completed", "2026-06-05"), visit("e4", "u2", "cancelled", "2026-06-20"),
        visit("e5", "u2", "completed", "2026-07-05"), visit("e6", "other", "completed", "2026-06-30")])
    got = report(await get(client, "/ResearchStudy/lv/$milestones", date=D))
    lsi, lslv = got[("lv", "last-subject-in")], got[("lv", "last-subject-last-visit")]
    assert (lsi.get("planned"), lsi["actual"], lsi["source"], lsi.get("variance"), lsi["state"]) == (
        None, "2026-03-01", "derived", None, "met")
    assert (lslv["planned"], lslv["actual"], lslv["source"], lslv["variance"], lslv["state"]) == (
        "2026-06-15", "2026-06-05", "derived", -10, "met")
    got = report(await get(client, "/ResearchStudy/lv/$milestones", date="2026-06-01"))
    assert "actual" not in got[("lv", "last-subject-last-visit")]
    assert got[("lv", "last-subject-last-visit")]["state"] == "upcoming"
    assert got[("lv", "last-subject-in")]["actual"] == "2026-03-01"  # closed on 04-01 already
    got = report(await get(client, "/ResearchStudy/lv/$milestones", date="2026-03-15"))
    assert ("lv", "last-subject-in") not in got  # no plan, not closed: nothing to list


async def test_forecasts_after_the_calendar_are_omitted(client):
    """Study ``ff`` runs in year 9999: site ff-1 activated 9999-01-01 enrolls a subject a month
    (10 by 9999-10-15, about 0.03 a day); target 20. On 9999-12-20 the 15th (enrolled-75) and
    20th (last-subject-in) enrolments are months away, after 9999-12-31: no forecast date (as
    ``$enrollment``), a note, and the plans (9999-12-25, 9999-12-30) are at risk; never a 500."""
    subjects = [subject(f"ff-s{m}", "ff-1", ("on-study", f"9999-{m:02d}-15")) for m in range(1, 11)]
    await load(client, [
        study("ff", "study", 20, milestones=[("enrolled-75", P, "9999-12-25"),
                                             ("last-subject-in", P, "9999-12-30")]),
        study("ff-1", "site", 20, "ff", [("activated", A, "9999-01-01")]), *subjects])
    got = report(await get(client, "/ResearchStudy/ff/$milestones", date="9999-12-20"))
    for code in ("enrolled-75", "last-subject-in"):
        row = got[("ff", code)]
        assert "forecast" not in row and "actual" not in row, row
        assert row["forecastNote"] == "beyond the last date of the calendar (9999-12-31)"
        assert row["state"] == "at-risk" and "variance" not in row
    assert got[("ff", "first-subject-in")]["actual"] == "9999-01-15"
    assert got[("ff", "enrolled-25")]["actual"] == "9999-05-15"  # the 5th
    # on the last day: the plans are past, so overdue; the portfolio answers too
    got = report(await get(client, "/ResearchStudy/$milestones", date="9999-12-31"))
    assert got[("ff", "last-subject-in")]["state"] == "overdue"
    assert got[("ff", "last-subject-in")]["variance"] == 1  # D - plan
    # and the first day of the calendar: nothing has happened yet, every plan is upcoming
    got = report(await get(client, "/ResearchStudy/$milestones", date="0001-01-01"))
    assert {k: row["state"] for k, row in got.items()} == {
        ("ff", "enrolled-75"): "upcoming", ("ff", "last-subject-in"): "upcoming"}
