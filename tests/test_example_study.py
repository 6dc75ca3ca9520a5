"""The example study of ``examples/``: it loads through the API (both transactions), what the
server then holds matches the table of ``examples/README.md``, the amendment gives the study,
the sites and the protocol url two versions, loading again changes nothing, and every resource
conforms to the CTMS profile it claims.

The figures are counted here from what the server returns (searches, reads, histories), by the
state table of ``profiles/README.md``, and compared with the README's tables: the script that
writes the README is never asked for the answer.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FILES = [EXAMPLES / "acme-101-1-study.json", EXAMPLES / "acme-101-2-amendment.json"]
README = EXAMPLES / "README.md"
TODAY = dt.date(2026, 11, 23)
CTMS = "http://fhir-ctms.org/fhir"
PROTOCOL_URL = f"{CTMS}/PlanDefinition/acme-101-protocol"
SITE_PROTOCOL = f"{CTMS}/StructureDefinition/site-protocol"
PROTOCOL_VISIT = f"{CTMS}/StructureDefinition/protocol-visit"
OFFSET_RANGE = "http://hl7.org/fhir/uv/vulcan-schedule/StructureDefinition/AcceptableOffsetRangeSoa"
SITE_MILESTONE = f"{CTMS}/CodeSystem/site-milestone"
COLUMNS = ["target", "screened", "screen failures", "enrolled", "active", "withdrawn", "completed"]


def _build_module():
    spec = importlib.util.spec_from_file_location("build_example", EXAMPLES / "build_example.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def bundle(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def readme_table(heading: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under ``### heading``, as {column: cell} (backticks dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"### {heading}\n", 1)[1]
    lines = []
    for ln in section.strip().splitlines():
        if not ln.startswith("|"):
            break
        lines.append(ln)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip().replace("`", "") for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[2:]]


# -- counting by the state table of profiles/README.md -----------------------------------------


def code(concept: dict[str, Any] | None) -> str | None:
    codings = (concept or {}).get("coding") or [{}]
    return codings[0].get("code")


def figures(subjects: list[dict[str, Any]]) -> dict[str, int]:
    current = [code(s["progress"][-1]["subjectState"]) for s in subjects]
    return {
        "screened": len(subjects),
        "screen failures": sum(
            code(s["progress"][-1]["subjectState"]) == "ineligible"
            and code(s["progress"][-1].get("reason")) == "screen-failure" for s in subjects),
        "enrolled": sum(any(code(p["subjectState"]) == "on-study" for p in s["progress"]) for s in subjects),
        "active": sum(c in ("on-study", "follow-up") for c in current),
        "withdrawn": sum(c == "withdrawn" for c in current),
        "completed": sum(
            code(s["progress"][-1]["subjectState"]) == "off-study"
            and code(s["progress"][-1].get("reason")) == "completed" for s in subjects),
    }


def enrolment(subject: dict[str, Any]) -> dt.date | None:
    starts = [p["startDate"] for p in subject["progress"] if code(p["subjectState"]) == "on-study"]
    return dt.date.fromisoformat(starts[0]) if starts else None


def milestones(site: dict[str, Any], actual: bool) -> dict[str, str]:
    return {code(p["state"]): p["period"]["start"] for p in site.get("progressStatus", [])
            if p.get("actual") is actual and p["state"]["coding"][0]["system"] == SITE_MILESTONE}


def activation_state(site: dict[str, Any], subjects: list[dict[str, Any]]) -> str:
    done = milestones(site, True)
    if "closed" in done:
        return "closed"
    if "enrolment-closed" in done:
        return "enrolment closed"
    if "activated" in done:
        return "recruiting" if any(enrolment(s) for s in subjects) else "activated, no recruit"
    if "irb-approved" in done and "activated" in milestones(site, False):
        return "approved, activation planned"
    if set(done) == {"selected"}:
        return "selected only"
    return "other"


def runs(site: dict[str, Any], day: dt.date) -> str | None:
    """The protocol version a site runs on ``day`` (its site-protocol entries)."""
    entries = []
    for ext in site.get("extension", []):
        if ext["url"] == SITE_PROTOCOL:
            parts = {e["url"]: e for e in ext["extension"]}
            entries.append((parts["effective"]["valueDate"], parts["protocol"]["valueCanonical"].split("|")[1]))
    entries = [e for e in entries if dt.date.fromisoformat(e[0]) <= day]
    return max(entries)[1] if entries else None


# -- server helpers ------------------------------------------------------------------------------


async def load(client, *paths: Path) -> None:
    for path in paths or FILES:
        r = await client.post("", content=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:2000]
        assert all(e["response"]["status"].startswith(("200", "201")) for e in r.json()["entry"])


async def search(client, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    r = await client.get(path, params={**(params or {}), "_count": "1000"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not any(link["relation"] == "next" for link in body.get("link", [])), "one page expected"
    return [e["resource"] for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match"]


async def total(client, path: str, params: dict[str, str] | None = None) -> int:
    r = await client.get(path, params={**(params or {}), "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


async def history(client, path: str) -> list[dict[str, Any]]:
    r = await client.get(f"{path}/_history")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if "resource" in e]


# -- without a server ----------------------------------------------------------------------------


def test_files_are_what_the_script_writes():
    """The bundles and the README are generated: committed files cannot drift from the tables."""
    for path, text in _build_module().outputs().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name}: run python examples/build_example.py"


def test_ids_are_fixed_and_every_resource_claims_its_profile():
    expected = {"ResearchSubject": "ctms-subject", "PractitionerRole": "ctms-site-staff",
                "Practitioner": "ctms-investigator", "PlanDefinition": "ctms-protocol",
                "CarePlan": "ctms-visit-plan", "Appointment": "ctms-planned-visit", "Encounter": "ctms-study-visit",
                "ChargeItemDefinition": "ctms-fee"}
    levels = {"study": "ctms-study", "country": "ctms-country", "site": "ctms-site"}
    for path in FILES:
        b = bundle(path)
        assert b["type"] == "transaction"
        for e in b["entry"]:
            r = e["resource"]
            assert e["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
            if r["resourceType"] == "ResearchStudy":
                want = levels[r["classifier"][0]["coding"][0]["code"]]
            else:
                want = expected.get(r["resourceType"])
            if want:
                assert r["meta"]["profile"] == [f"{CTMS}/StructureDefinition/{want}"], r["id"]


def test_every_resource_conforms_to_the_profile_it_claims():
    validation = pytest.importorskip("fhir_ctms.validation", reason="the profile validator is not there yet")
    checked = Counter()
    for path in FILES:
        for e in bundle(path)["entry"]:
            r = e["resource"]
            issues = validation.validate(r, ())
            assert [i for i in issues if i.severity in ("error", "fatal")] == [], (r["resourceType"], r["id"], issues)
            if r.get("meta", {}).get("profile"):
                checked[r["meta"]["profile"][0].rsplit("/", 1)[1]] += 1
    assert set(checked) == {"ctms-study", "ctms-country", "ctms-site", "ctms-subject", "ctms-site-staff",
                            "ctms-investigator", "ctms-protocol", "ctms-visit-plan", "ctms-planned-visit",
                            "ctms-study-visit", "ctms-fee"}


def test_the_example_has_what_the_issue_asks_for():
    everything = [e["resource"] for p in FILES for e in bundle(p)["entry"]]
    subjects = {r["id"]: r for r in everything if r["resourceType"] == "ResearchSubject"}
    assert len(subjects) >= 60
    assert {code(s["progress"][-1]["subjectState"]) for s in subjects.values()} == {
        "screening", "ineligible", "on-study", "follow-up", "withdrawn", "off-study"}
    assert {code(s["progress"][-1].get("reason")) for s in subjects.values()
            if code(s["progress"][-1]["subjectState"]) == "withdrawn"} >= {
        "withdrawn-adverse-event", "lost-to-follow-up", "withdrawn-by-subject", "withdrawn-by-investigator"}
    protocols = [r for r in everything if r["resourceType"] == "PlanDefinition"]
    assert sorted(p["version"] for p in protocols) == ["1.0", "2.0"] and {p["url"] for p in protocols} == {PROTOCOL_URL}
    for p in protocols:
        assert len(p["action"]) >= 8
        (scr,) = [a for a in p["action"] if a["id"] == "scr"]
        assert scr["relatedAction"][0]["relationship"] == "before-start"
    v1, v2 = ({a["id"]: a for a in p["action"]} for p in sorted(protocols, key=lambda p: p["version"]))
    assert set(v1) ^ set(v2)  # a visit added or removed
    assert v1["w8"]["relatedAction"] != v2["w8"]["relatedAction"]  # a window changed
    # double-blind: the CTMS holds no arm assignment; the design says so
    assert not any("assignedComparisonGroup" in s or "actualComparisonGroup" in s for s in subjects.values())
    study = next(r for r in everything if r["resourceType"] == "ResearchStudy" and r["id"] == "acme-101")
    design = {c["code"] for concept in study["studyDesign"] for c in concept["coding"]
              if c["system"] == "http://hl7.org/fhir/study-design"}
    assert design >= {"SEVCO:01003", "SEVCO:01011", "SEVCO:01060", "SEVCO:01061"}  # randomised, parallel, blinded
    assert {g["type"]["coding"][0]["code"] for g in study["comparisonGroup"]} == {"experimental", "placebo-comparator"}
    # pseudonymised Patients: the subject number, gender and year of birth only
    patients = [r for r in everything if r["resourceType"] == "Patient"]
    numbers = {i["value"] for s in subjects.values() for i in s["identifier"]}
    assert len(patients) == len(subjects)
    for pat in patients:
        assert "name" not in pat and "telecom" not in pat and "address" not in pat, pat["id"]
        assert re.fullmatch(r"\d{4}", pat["birthDate"]) and pat["gender"] in ("female", "male")
        assert [(i["system"], i["value"] in numbers) for i in pat["identifier"]] == [
            ("http://acme-therapeutics.example.org/acme-101/subject-number", True)]
    # payments: a procedure fee naming the CT scan's code, the CT scans of the week 12 visits as
    # completed Procedures at those visits, and every site institution with a vendor number
    encounters = {r["id"]: r for r in everything if r["resourceType"] == "Encounter"}
    procedures = [r for r in everything if r["resourceType"] == "Procedure"]
    assert procedures and len(procedures) == sum(e["id"].endswith("-w12") for e in encounters.values())
    for proc in procedures:
        enc = encounters[proc["encounter"]["reference"].split("/")[1]]
        assert proc["status"] == "completed" and proc["subject"] == enc["subject"] and enc["id"].endswith("-w12")
        assert proc["occurrenceDateTime"][:10] == enc["actualPeriod"]["start"][:10]
        assert proc["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    fees = [r for r in everything if r["resourceType"] == "ChargeItemDefinition"]
    ct = {e["valueString"] for f in fees if f["code"]["coding"][0]["code"] == "procedure" for e in f["extension"]}
    assert ct == {"http://snomed.info/sct|77477000"}
    institutions = [r for r in everything if r["resourceType"] == "Organization" and r["id"].startswith("org-")]
    assert len(institutions) == 8 and all(
        [i["system"] for i in o["identifier"]] == [f"{CTMS}/sid/vendor"] for o in institutions)
    quals = [q for r in everything if r["resourceType"] == "Practitioner" for q in r["qualification"]]
    assert {code(q["code"]) for q in quals} >= {"gcp-training", "medical-licence"}
    assert any(dt.date.fromisoformat(q["period"]["end"]) < TODAY for q in quals)  # one expired
    assert all("end" in q["period"] for q in quals)


# -- through the API -----------------------------------------------------------------------------


async def test_loaded_example(client):
    """One load of both files, then every check that only reads (loading costs seconds)."""
    await load(client)
    await check_readme_table(client)
    await check_visits(client)
    await check_searches(client)
    await check_current_state(client)
    await check_site_queries(client)
    await check_enrollment(client)


async def check_readme_table(client):

    sites = {s["id"]: s for s in await search(client, "/ResearchStudy", {
        "classifier": f"{CTMS}/CodeSystem/study-level|site"})}
    by_site: dict[str, list[dict[str, Any]]] = {}
    for row in readme_table("Per site"):
        site = sites.pop(row["site"])
        subjects = await search(client, "/ResearchSubject", {"study": f"ResearchStudy/{site['id']}"})
        by_site[site["id"]] = subjects
        got = {"target": site["recruitment"]["targetNumber"], **figures(subjects)}
        assert {c: int(row[c]) for c in COLUMNS} == got, site["id"]
        planned, done = milestones(site, False), milestones(site, True)
        assert row["activation"] == (done["activated"] if "activated" in done else f"{planned['activated']} (planned)")
        first = min((d for d in map(enrolment, subjects) if d), default=None)
        assert row["first subject in"] == (first.isoformat() if first else "-")
        assert done.get("first-subject-in") == (first.isoformat() if first else None)
        assert row["protocol"] == (runs(site, TODAY) or "-")
    assert sites == {}, "sites missing from the README"

    for row in readme_table("Per country"):
        country = (await client.get(f"/ResearchStudy/{row['ResearchStudy']}")).json()
        subjects = await search(client, "/ResearchSubject", {"study.part-of": f"ResearchStudy/{country['id']}"})
        assert {c: int(row[c]) for c in COLUMNS} == {"target": country["recruitment"]["targetNumber"],
                                                     **figures(subjects)}, row["country"]
        assert country["region"][0]["coding"][0]["code"] == row["country"]

    (row,) = readme_table("The study")
    study = (await client.get("/ResearchStudy/acme-101")).json()
    subjects = await search(client, "/ResearchSubject")
    assert {c: int(row[c]) for c in COLUMNS} == {"target": study["recruitment"]["targetNumber"], **figures(subjects)}
    assert sorted(s["id"] for s in subjects) == sorted(s["id"] for v in by_site.values() for s in v)

    states = Counter(code(s["progress"][-1]["subjectState"]) for s in subjects)
    table = {r["state"]: r for r in readme_table("Subjects per current state")}
    labels = {"screening": "screening", "ineligible": "screen failure (ineligible)",
              "on-study": "on study / randomised (on-study)", "follow-up": "follow-up", "withdrawn": "withdrawn",
              "off-study": "completed (off-study, reason completed)"}
    for state, label in labels.items():
        cell = table[label]
        assert int(cell["subjects"]) == states[state] > 0, state
        ids = {i.strip() for i in cell["ids"].split(",")}
        assert ids == {s["id"] for s in subjects if code(s["progress"][-1]["subjectState"]) == state}

    activation = {sid: activation_state((await client.get(f"/ResearchStudy/{sid}")).json(), subs)
                  for sid, subs in by_site.items()}
    assert set(activation.values()) == {"recruiting", "activated, no recruit", "enrolment closed",
                                        "approved, activation planned", "selected only", "closed"}


async def check_visits(client):
    """Every Appointment's window and target day, worked out here from the PlanDefinition version
    it names and the subject's enrolment date; Encounters, late, missed and cancelled visits as the
    README says."""
    protocols = {p["version"]: {a["id"]: a for a in p["action"]}
                 for p in await search(client, "/PlanDefinition", {"url": PROTOCOL_URL})}
    subjects = {s["id"]: s for s in await search(client, "/ResearchSubject")}
    appointments = await search(client, "/Appointment")
    encounters = await search(client, "/Encounter")
    by_appt = {e["appointment"][0]["reference"].split("/")[1]: e for e in encounters}
    late = 0
    for a in appointments:
        (key,) = [i["value"] for i in a["identifier"] if i["system"] == f"{CTMS}/sid/planned-visit"]
        subject_id, action = key.split("/")
        (canonical,) = [x["valueCanonical"] for x in a["extension"] if x["url"] == PROTOCOL_VISIT]
        url, rest = canonical.split("|")
        version, action_id = rest.split("#")
        assert url == PROTOCOL_URL and action_id == action
        day1 = enrolment(subjects[subject_id])
        assert day1 is not None, subject_id
        timing = protocols[version][action].get("relatedAction")
        if timing is None:
            low = high = target = day1
        else:
            (ra,) = timing
            sign = -1 if ra["relationship"] == "before-start" else 1
            (rng,) = [x["valueRange"] for x in ra["extension"] if x["url"] == OFFSET_RANGE]
            ends = sorted(sign * rng[k]["value"] for k in ("low", "high"))
            low, high = (day1 + dt.timedelta(days=n) for n in ends)
            target = day1 + dt.timedelta(days=sign * ra["offsetDuration"]["value"])
        assert a["requestedPeriod"] == [{"start": low.isoformat(), "end": high.isoformat()}], a["id"]
        assert a["start"] == f"{target.isoformat()}T00:00:00Z", a["id"]
        enc = by_appt.get(a["id"])
        assert (a["status"] == "fulfilled") == (enc is not None), a["id"]
        if enc is not None:
            done = dt.date.fromisoformat(enc["actualPeriod"]["start"][:10])
            assert done <= TODAY and enc["status"] == "completed"
            late += done > high
        elif a["status"] in ("booked", "proposed"):
            assert target > TODAY or high >= TODAY, a["id"]
        elif a["status"] == "noshow":
            assert high < TODAY
    text = README.read_text(encoding="utf-8")
    said = {k: int(v) for v, k in re.findall(r"(\d+) (Encounters|done late|missed|still planned)", text)}
    cancelled = int(re.search(r"removed by the amendment: (\d+)", text).group(1))
    statuses = Counter(a["status"] for a in appointments)
    assert said == {"Encounters": len(encounters), "done late": late, "missed": statuses["noshow"],
                    "still planned": statuses["booked"] + statuses["proposed"]}
    assert cancelled == statuses["cancelled"] and late > 0 and statuses["noshow"] > 0


async def test_amendment_versions_and_idempotent_reload(client):
    await load(client)
    versions = await search(client, "/PlanDefinition", {"url": PROTOCOL_URL})
    assert sorted(p["version"] for p in versions) == ["1.0", "2.0"]
    (v2,) = await search(client, "/PlanDefinition", {"url": PROTOCOL_URL, "version": "2.0"})
    assert v2["relatedArtifact"][0] == {"type": "predecessor", "resource": f"{PROTOCOL_URL}|1.0"}

    study = await history(client, "/ResearchStudy/acme-101")
    assert [s["protocol"][0]["reference"] for s in study] == [
        f"PlanDefinition/{v2['id']}", "PlanDefinition/acme-101-protocol-1-0"]  # newest first
    for sid, n in (("site-gb-01", 2), ("site-fr-01", 2), ("site-de-01", 1)):
        assert len(await history(client, f"/ResearchStudy/{sid}")) == n, sid

    counts = {t: await total(client, f"/{t}") for t in ("Provenance", "AuditEvent", "Appointment", "ResearchSubject")}
    assert len(await history(client, "/CarePlan/plan-gb-01-010")) == 2
    await load(client, FILES[1])  # the amendment again: every entry is a no-op update
    assert counts == {t: await total(client, f"/{t}") for t in counts}

    # Both files again, in order: only what the amendment changed gets two more versions
    # (protocol 1.0's, then 2.0's again); every other entry is a no-op; nothing is duplicated.
    first, second = ({(e["resource"]["resourceType"], e["resource"]["id"]): e["resource"] for e in bundle(p)["entry"]}
                     for p in FILES)
    changed = [k for k in first.keys() & second.keys() if first[k] != second[k]]
    assert ("ResearchStudy", "acme-101") in changed
    await load(client)
    after = {t: await total(client, f"/{t}") for t in counts}
    assert after == {**counts, "Provenance": counts["Provenance"] + 2 * len(changed),
                     "AuditEvent": counts["AuditEvent"] + 2 * len(changed)}
    assert len(await history(client, "/ResearchStudy/acme-101")) == 4
    assert len(await history(client, "/ResearchStudy/site-de-01")) == 1
    assert (await client.get("/ResearchStudy/acme-101")).json()["protocol"] == [{"reference": f"PlanDefinition/{v2['id']}"}]


async def test_each_file_loads_idempotently(client):
    """The study file loaded twice: the second load writes nothing."""
    before = await total(client, "/Provenance")
    await load(client, FILES[0])
    counts = {t: await total(client, f"/{t}") for t in ("Provenance", "AuditEvent", "Encounter", "Patient")}
    assert counts["Patient"] > 0 and counts["Provenance"] - before == len(bundle(FILES[0])["entry"])
    await load(client, FILES[0])
    assert counts == {t: await total(client, f"/{t}") for t in counts}

async def check_searches(client):
    """Which sites run 2.0, who works at a site (the CTMS search parameters of profiles/)."""
    adopted = await search(client, "/ResearchStudy", {"site-protocol": f"{PROTOCOL_URL}|2.0"})
    assert {s["id"] for s in adopted} == {"site-gb-01", "site-gb-02", "site-fr-01", "site-fr-02"}
    still = await search(client, "/ResearchStudy", {"site-protocol": f"{PROTOCOL_URL}|1.0"})
    assert {s["id"] for s in still if runs(s, TODAY) == "1.0"} == {"site-de-01", "site-de-02", "site-fr-03"}
    staff = await search(client, "/PractitionerRole", {"research-study": "ResearchStudy/site-de-02"})
    assert {r["id"] for r in staff} == {"role-de-02-pi", "role-de-02-study-coordinator", "role-cra-eu", "role-dm-01"}
    pis = await search(client, "/PractitionerRole", {
        "role": "http://fhir-ctms.org/fhir/CodeSystem/staff-role|principal-investigator"})
    assert len(pis) == 8
    expired = [p for p in await search(client, "/Practitioner")
               if any(dt.date.fromisoformat(q["period"]["end"]) < TODAY for q in p["qualification"])]
    assert [p["id"] for p in expired] == ["prac-fr-01-pi"]


SITE_LEVEL = f"{CTMS}/CodeSystem/study-level|site"
SUBJECT_STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"


async def check_current_state(client):
    """current-state (profiles/SearchParameter-ResearchSubject-current-state.json) finds subjects by
    the state they are in now, per site as in the README's site table and overall as in its state
    table; R5 subject_state matches any entry of the history."""
    by_state = {r["state"]: r for r in readme_table("Subjects per current state")}
    labels = {"screening": "screening", "ineligible": "screen failure (ineligible)",
              "on-study": "on study / randomised (on-study)", "follow-up": "follow-up", "withdrawn": "withdrawn",
              "off-study": "completed (off-study, reason completed)"}
    for state, label in labels.items():
        found = await search(client, "/ResearchSubject", {"current-state": f"{SUBJECT_STATE}|{state}"})
        assert {s["id"] for s in found} == {i.strip() for i in by_state[label]["ids"].split(",")}, state
        assert all(code(s["progress"][-1]["subjectState"]) == state for s in found)
    # everyone was screened once; only those still screening are there now
    assert await total(client, "/ResearchSubject", {"subject_state": f"{SUBJECT_STATE}|screening"}) == 64
    assert await total(client, "/ResearchSubject", {"current-state": "screening"}) == int(by_state["screening"]["subjects"])
    for row in readme_table("Per site"):
        site = f"ResearchStudy/{row['site']}"
        now = {states: await total(client, "/ResearchSubject", {"study": site, "current-state": states})
               for states in ("ineligible", "on-study,follow-up", "withdrawn", "off-study",
                              "screening,ineligible,on-study,follow-up,withdrawn,off-study")}
        assert list(now.values()) == [int(row[c]) for c in (
            "screen failures", "active", "withdrawn", "completed", "screened")], row["site"]


async def check_site_queries(client):
    """A study's sites in one search (each site is partOf its study and its country), and the
    sites running a protocol version today (the site's protocol element)."""
    table = {r["site"]: r for r in readme_table("Per site")}
    sites = await search(client, "/ResearchStudy", {"classifier": SITE_LEVEL, "part-of": "ResearchStudy/acme-101"})
    assert {s["id"] for s in sites} == set(table)
    for country in ("gb", "de", "fr"):
        mine = await search(client, "/ResearchStudy", {"classifier": SITE_LEVEL,
                                                         "part-of": f"ResearchStudy/acme-101-{country}"})
        assert {s["id"] for s in mine} == {k for k, r in table.items() if r["country"] == country.upper()}
    # the two levels under the study: three countries and eight sites, each once
    children = await search(client, "/ResearchStudy", {"part-of": "ResearchStudy/acme-101"})
    assert len(children) == 11
    versions = {p["version"]: p["id"] for p in await search(client, "/PlanDefinition", {"url": PROTOCOL_URL})}
    for version, pid in versions.items():
        running = await search(client, "/ResearchStudy", {"classifier": SITE_LEVEL, "protocol": f"PlanDefinition/{pid}"})
        assert {s["id"] for s in running} == {k for k, r in table.items() if r["protocol"] == version}, version
        assert all(runs(s, TODAY) == version for s in running)  # the element agrees with the history
    unapproved = [s for s in sites if runs(s, TODAY) is None]
    assert [s["id"] for s in unapproved] == ["site-gb-03"] and "protocol" not in unapproved[0]


async def check_enrollment(client):
    """$enrollment on the example: site-fr-03 recruited slowly (3 subjects in 9 months) and is
    flagged lagging while it was open; the study row names no single region (three countries)."""
    r = await client.get("/ResearchStudy/acme-101/$enrollment", params={"date": "2026-02-01"})
    assert r.status_code == 200, r.text
    rows = {}
    for p in r.json()["parameter"]:
        if p["name"] in ("study", "country", "site"):
            parts = {x["name"]: next(v for k, v in x.items() if k.startswith("value")) for x in p["part"]}
            rows[parts["reference"]["reference"].split("/")[1]] = parts
    assert rows["site-fr-03"]["lagging"] is True and rows["site-fr-03"]["enrolled"] == 1
    assert rows["site-gb-01"]["lagging"] is False  # the fastest site, open long enough to be judged
    assert "region" not in rows["acme-101"]
    assert {rows[f"acme-101-{c}"]["region"] for c in ("gb", "de", "fr")} == {"GB", "DE", "FR"}
    assert rows["site-fr-03"]["region"] == "FR"
    assert rows["site-fr-03"]["partOf"]["reference"] == "ResearchStudy/acme-101-fr"
