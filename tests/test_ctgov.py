"""ClinicalTrials.gov import (``fhir-ctms import --clinicaltrials-gov``) and ``$registry-export``.

The round trip runs on the 8 real records of shared/data/clinicaltrials-gov: each is imported
through the importer (the CLI's code path: one transaction per record) into a real database,
then exported over HTTP, and every field of ``fhir_ctms.ctgov.fields.MAPPED`` must come back
unchanged, module by module; every other field of the records must be in the documented
``UNMAPPED`` list.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from fhir_ctms.config import Settings
from fhir_ctms.ctgov import carried, convert
from fhir_ctms.ctgov.fields import MAPPED, leaves, unknown
from fhir_ctms.importer import import_clinicaltrials_gov

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinicaltrials-gov"
if not DATA.is_dir():  # a checkout beside shared/ (CI) or /work/main
    DATA = Path("/work/shared/data/clinicaltrials-gov")
RECORDS = sorted(DATA.glob("NCT*.json"))
LEVEL = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
CLI = [sys.executable, "-m", "fhir_ctms.cli"]

pytestmark = pytest.mark.skipif(len(RECORDS) != 8, reason="shared/data/clinicaltrials-gov is not beside the checkout")


def record(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def nct_of(path: Path) -> str:
    return json.loads(path.read_text())["protocolSection"]["identificationModule"]["nctId"]


async def imported(repo, paths):
    report = await import_clinicaltrials_gov(list(paths), repo, Settings())
    return report


# -- the field lists (no database) --------------------------------------------------------------

@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_field_of_the_records_is_mapped_or_listed_unmapped(path):
    rec = json.loads(path.read_text())
    assert unknown(rec) == []
    kept = [p for p, _ in leaves(carried(rec))]
    assert kept and all(p in MAPPED for p in kept)
    if path.stem != "NCT00465816":  # the partial one
        assert len(set(kept)) > 40, "the round trip must compare a substantial part of the record"


def test_phases_map_to_r5_codes():
    rec = record("NCT03418623.json")
    for phases, code in ((["PHASE1", "PHASE2"], "phase-1-phase-2"), (["NA"], "n-a"),
                         (["EARLY_PHASE1"], "early-phase-1"), (["PHASE3"], "phase-3")):
        rec["protocolSection"]["designModule"]["phases"] = phases
        study = convert(rec).resources[0]
        assert {"system": "http://hl7.org/fhir/research-study-phase", "code": code} in study["phase"]["coding"]


# -- through a real server ----------------------------------------------------------------------

async def test_round_trip_of_every_record(client, repo):
    report = await imported(repo, RECORDS)
    assert report.rejected == []
    assert len(report.studies) == 8
    for path in RECORDS:
        rec = json.loads(path.read_text())
        nct = rec["protocolSection"]["identificationModule"]["nctId"]
        r = await client.get(f"/ResearchStudy/{nct.lower()}/$registry-export")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        out = r.json()
        expected = carried(rec)
        assert set(out) == {"protocolSection"}
        modules = set(expected["protocolSection"]) | set(out["protocolSection"])
        for module in sorted(modules):
            assert out["protocolSection"].get(module) == expected["protocolSection"].get(module), f"{nct} {module}"


async def test_imported_study_follows_the_ctms_model(client, repo):
    report = await imported(repo, [DATA / "NCT03418623.json"])
    assert report.rejected == []
    study = (await client.get("/ResearchStudy/nct03418623")).json()
    assert {"system": "https://clinicaltrials.gov", "value": "NCT03418623"} in study["identifier"]
    sponsor_protocol = [i for i in study["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code") == "sponsor-protocol"]
    assert sponsor_protocol[0]["value"] == "GET73 \u00b9H-MRS"
    assert study["classifier"][0]["coding"][0] == {"system": LEVEL, "code": "study"}
    roles = {c["code"] for p in study["associatedParty"] for c in p["role"].get("coding", [])
             if c["system"] == "http://hl7.org/fhir/research-study-party-role"}
    assert {"sponsor", "lead-sponsor", "collaborator", "primary-investigator"} <= roles
    assert study["recruitment"]["actualNumber"] == 24 and "targetNumber" not in study["recruitment"]
    starts = {c["code"]: (e.get("actual"), e["period"]["start"]) for e in study["progressStatus"]
              for c in e["state"]["coding"]}
    assert starts["first-subject-in"] == (True, "2018-03-08")
    assert starts["completed"] == (True, "2020-10")
    # ACTUAL enrolment gives no target: the study does not claim ctms-study, and the import said so
    assert "meta" not in study or "profile" not in study["meta"]
    assert any("does not claim the ctms-study profile" in n and "targetNumber" in n for n in report.notes)
    site = (await client.get("/ResearchStudy/nct03418623-site-001")).json()
    # partOf the study and its country (profiles/README.md): one search lists a study's sites
    assert site["partOf"] == [{"reference": "ResearchStudy/nct03418623-us"},
                              {"reference": "ResearchStudy/nct03418623"}]
    assert site["region"][0]["coding"][0]["code"] == "US"
    location = (await client.get("/Location/nct03418623-site-001")).json()
    assert location["address"]["postalCode"] == "29425" and location["position"]["latitude"] == 32.77657
    country = (await client.get("/ResearchStudy/nct03418623-us")).json()
    assert country["classifier"][0]["coding"][0]["code"] == "country"
    assert country["site"] == [{"reference": "ResearchStudy/nct03418623-site-001"}]


async def test_a_study_with_an_estimated_target_claims_ctms_study(client, repo, tmp_path):
    rec = record("NCT03418623.json")
    rec["protocolSection"]["designModule"]["enrollmentInfo"] = {"count": 30, "type": "ESTIMATED"}
    path = tmp_path / "estimated.json"
    path.write_text(json.dumps(rec))
    report = await imported(repo, [path])
    assert report.rejected == []
    study = (await client.get("/ResearchStudy/nct03418623")).json()
    assert study["meta"]["profile"] == ["http://fhir-ctms.org/fhir/StructureDefinition/ctms-study"]
    assert study["recruitment"]["targetNumber"] == 30
    assert not any("ctms-study" in n for n in report.notes)
    out = (await client.get("/ResearchStudy/nct03418623/$registry-export")).json()
    assert out["protocolSection"]["designModule"]["enrollmentInfo"] == {"count": 30, "type": "ESTIMATED"}


async def test_105_sites_are_found_by_part_of_and_classifier(client, repo):
    path = DATA / "NCT02278341.json"  # the file's record is NCT02552212
    nct = nct_of(path).lower()
    report = await imported(repo, [path])
    assert report.rejected == []
    q = f"/ResearchStudy?part-of=ResearchStudy/{nct}&classifier={LEVEL}|site&_count=200&_total=accurate"
    bundle = (await client.get(q)).json()
    assert bundle["total"] == 105 and len(bundle["entry"]) == 105
    ids = sorted(e["resource"]["id"] for e in bundle["entry"])
    assert ids[0] == f"{nct}-site-001" and ids[-1] == f"{nct}-site-105"
    countries = (await client.get(f"/ResearchStudy?part-of=ResearchStudy/{nct}&classifier={LEVEL}|country"
                                  "&_total=accurate")).json()
    assert countries["total"] == 9
    poland = (await client.get(f"/ResearchStudy?part-of=ResearchStudy/{nct}&site-country=urn:iso:std:iso:3166|PL"
                               f"&classifier={LEVEL}|site&_total=accurate")).json()
    assert poland["total"] == 14
    for rtype in ("Organization", "Location"):
        found = (await client.get(f"/{rtype}?_id={nct}-site-105&_total=accurate")).json()
        assert found["total"] == 1
    out = (await client.get(f"/ResearchStudy/{nct}/$registry-export")).json()
    assert len(out["protocolSection"]["contactsLocationsModule"]["locations"]) == 105


async def test_reimport_changes_nothing_and_an_update_duplicates_nothing(client, repo, tmp_path):
    path = DATA / "NCT00763412.json"
    first = await imported(repo, [path])
    assert first.rejected == []
    total_before = await _count_all(client)
    audit_before = (await client.get("/AuditEvent?_total=accurate&_count=0")).json()["total"]
    again = await imported(repo, [path])
    assert again.rejected == []
    assert await _count_all(client) == total_before
    assert (await client.get("/AuditEvent?_total=accurate&_count=0")).json()["total"] == audit_before
    history = (await client.get("/ResearchStudy/nct00763412/_history")).json()
    assert len(history["entry"]) == 1  # no new version of an unchanged record
    rec = record("NCT00763412.json")
    rec["protocolSection"]["identificationModule"]["briefTitle"] = "A changed title"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(rec))
    assert (await imported(repo, [changed])).rejected == []
    assert await _count_all(client) == total_before  # updated, not duplicated
    history = (await client.get("/ResearchStudy/nct00763412/_history")).json()
    assert len(history["entry"]) == 2
    site_history = (await client.get("/ResearchStudy/nct00763412-site-001/_history")).json()
    assert len(site_history["entry"]) == 1


async def _count_all(client) -> int:
    n = 0
    for rtype in ("ResearchStudy", "Organization", "Location"):
        n += (await client.get(f"/{rtype}?_total=accurate&_count=0")).json()["total"]
    return n


async def test_partial_record_imports_what_it_has_and_reports_the_rest(client, repo):
    report = await imported(repo, [DATA / "NCT00465816.json"])
    assert report.rejected == []
    assert report.studies == ["NCT00465816: ResearchStudy/nct00465816 with 0 site(s) in 0 country(ies), 1 resources"]
    for module in ("statusModule", "designModule", "contactsLocationsModule", "eligibilityModule"):
        assert any(n.startswith(f"NCT00465816: the record has no {module}") for n in report.notes), module
    assert any("no phase" in n for n in report.notes)
    assert "NCT00465816: not kept by the CTMS (fhir_ctms/ctgov/fields.py): hasResults, referencesModule.availIpds[].*" \
        in report.notes
    study = (await client.get("/ResearchStudy/nct00465816")).json()
    assert study["title"] == "Primary Study to Demonstrate..."
    assert len(study["relatedArtifact"]) == 3


async def test_malformed_input_is_rejected_with_a_clear_message_and_nothing_written(client, repo, tmp_path):
    not_json = tmp_path / "not.json"
    not_json.write_text("{oops")
    not_record = tmp_path / "bundle.json"
    not_record.write_text(json.dumps({"resourceType": "Bundle", "type": "collection"}))
    bad_nct = tmp_path / "badnct.json"
    rec = record("NCT03418623.json")
    rec["protocolSection"]["identificationModule"]["nctId"] = "12345"
    bad_nct.write_text(json.dumps(rec))
    bad_shape = tmp_path / "badshape.json"
    rec = record("NCT03418623.json")
    rec["protocolSection"]["contactsLocationsModule"]["locations"] = "Charleston"
    bad_shape.write_text(json.dumps(rec))
    report = await imported(repo, [not_json, not_record, bad_nct, bad_shape, tmp_path / "missing.json"])
    assert report.studies == [] and len(report.rejected) == 5
    text = "\n".join(report.rejected)
    assert "not.json: not JSON" in text
    assert "bundle.json: not a ClinicalTrials.gov API v2 study record" in text
    assert "badnct.json: protocolSection.identificationModule.nctId must be NCT followed by 8 digits" in text
    assert "badshape.json: locations must be an array" in text
    assert "missing.json" in text
    assert (await client.get("/ResearchStudy?_total=accurate&_count=0")).json()["total"] == 0


async def test_a_failing_record_writes_nothing(client, repo, tmp_path):
    rec = record("NCT03418623.json")
    rec["protocolSection"]["statusModule"]["completionDateStruct"]["date"] = "2020-13-45"  # no such date
    path = tmp_path / "baddate.json"
    path.write_text(json.dumps(rec))
    report = await imported(repo, [path])
    assert len(report.rejected) == 1 and "nothing from this record was imported" in report.rejected[0]
    assert "ResearchStudy.progressStatus" in report.rejected[0]
    assert await _count_all(client) == 0


async def test_registry_export_errors(client, repo):
    assert (await client.get("/ResearchStudy/nope/$registry-export")).status_code == 404
    await imported(repo, [DATA / "NCT03418623.json"])
    r = await client.get("/ResearchStudy/nct03418623-site-001/$registry-export")
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
    r = await client.get("/ResearchStudy/nct03418623/$registry-export?format=xml")
    assert r.status_code == 400
    r = await client.post("/ResearchStudy/nct03418623/$registry-export")
    assert r.status_code == 200 and r.json()["protocolSection"]["identificationModule"]["nctId"] == "NCT03418623"
    assert (await client.get("/Patient/x/$registry-export")).status_code == 404
    meta = (await client.get("/metadata")).json()
    ops = [o for res in meta["rest"][0]["resource"] if res["type"] == "ResearchStudy" for o in res.get("operation", [])]
    assert {"name": "registry-export",
            "definition": "http://fhir-ctms.org/fhir/OperationDefinition/ResearchStudy-registry-export"} in \
        [{"name": o["name"], "definition": o["definition"]} for o in ops]


async def test_a_study_made_in_the_ctms_exports_too(client):
    study = {"resourceType": "ResearchStudy", "id": "native", "status": "active", "title": "Native study",
             "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT09990101"}],
             "classifier": [{"coding": [{"system": LEVEL, "code": "study"}]}],
             "phase": {"coding": [{"system": "http://hl7.org/fhir/research-study-phase", "code": "phase-2-phase-3"}]},
             "recruitment": {"targetNumber": 120},
             "progressStatus": [{"state": {"coding": [{"system": "http://fhir-ctms.org/fhir/CodeSystem/study-milestone",
                                                       "code": "first-subject-in"}]},
                                 "actual": False, "period": {"start": "2027-01-15"}}],
             "comparisonGroup": [{"linkId": "a", "name": "Drug",
                                  "type": {"coding": [{"system": "http://hl7.org/fhir/research-study-arm-type",
                                                       "code": "experimental"}]}}]}
    site = {"resourceType": "ResearchStudy", "id": "native-site", "status": "active",
            "classifier": [{"coding": [{"system": LEVEL, "code": "site"}]}],
            "partOf": [{"reference": "ResearchStudy/native"}],
            "region": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "FR", "display": "France"}]}],
            "site": [{"reference": "Organization/native-org"}]}
    org = {"resourceType": "Organization", "id": "native-org", "name": "Hopital Test"}
    for r in (study, org, site):
        assert (await client.put(f"/{r['resourceType']}/{r['id']}", json=r)).status_code == 201
    out = (await client.get("/ResearchStudy/native/$registry-export")).json()["protocolSection"]
    assert out["identificationModule"] == {"nctId": "NCT09990101", "briefTitle": "Native study"}
    assert out["statusModule"]["startDateStruct"] == {"date": "2027-01-15", "type": "ESTIMATED"}
    assert out["designModule"]["phases"] == ["PHASE2", "PHASE3"]
    assert out["designModule"]["enrollmentInfo"] == {"count": 120, "type": "ESTIMATED"}
    assert out["armsInterventionsModule"]["armGroups"] == [{"label": "Drug", "type": "EXPERIMENTAL"}]
    assert out["contactsLocationsModule"]["locations"] == [{"facility": "Hopital Test", "country": "France"}]


# -- the command line ---------------------------------------------------------------------------

def run_cli(database_url, *args):
    env = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)


def test_cli_reports_the_partial_record_and_fails_on_a_malformed_file(fresh_database_url, tmp_path):
    url = fresh_database_url()
    partial = run_cli(url, "import", "--clinicaltrials-gov", str(DATA / "NCT00465816.json"),
                      str(DATA / "NCT03418623.json"))
    assert partial.returncode == 0, partial.stderr
    assert "imported NCT00465816: ResearchStudy/nct00465816" in partial.stdout
    assert "imported NCT03418623: ResearchStudy/nct03418623 with 1 site(s) in 1 country(ies)" in partial.stdout
    assert "note: NCT00465816: the record has no statusModule: no overall status, no start or completion dates" \
        in partial.stderr
    assert "Traceback" not in partial.stderr
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"studies": "none"}))
    failed = run_cli(url, "import", "--clinicaltrials-gov", str(bad))
    assert failed.returncode == 1
    assert "rejected: " in failed.stderr and "not a ClinicalTrials.gov API v2 study record" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_conversion_is_deterministic():
    rec = record("NCT04207047.json")
    a, b = convert(rec), convert(copy.deepcopy(rec))
    assert orjson.dumps(a.bundle()) == orjson.dumps(b.bundle())
    assert [r["id"] for r in a.resources][:3] == ["nct04207047", "nct04207047-us", "nct04207047-site-001"]


def test_fields_absent_from_the_sample_records_round_trip_too():
    """Location status, a CTIS number, other outcomes, a sponsor-investigator, observational
    design, an unknown country: converted and back without a server."""
    from fhir_ctms.ctgov import to_record
    rec = record("NCT03418623.json")
    ps = rec["protocolSection"]
    ps["identificationModule"]["secondaryIdInfos"] = [
        {"id": "2023-501234-12-00", "type": "CTIS"}, {"id": "X-1", "type": "OTHER", "domain": "Acme"}]
    ps["statusModule"].update(overallStatus="RECRUITING", whyStopped="Funding")
    ps["statusModule"]["startDateStruct"] = {"date": "2018-03"}  # no type: neither actual nor planned
    ps["sponsorCollaboratorsModule"]["responsibleParty"] = {
        "type": "SPONSOR_INVESTIGATOR", "investigatorFullName": "Ann Smith", "investigatorTitle": "Professor",
        "investigatorAffiliation": "Univ"}
    ps["designModule"] = {"studyType": "OBSERVATIONAL", "phases": ["PHASE1", "PHASE2"],
                          "designInfo": {"observationalModel": "COHORT", "timePerspective": "PROSPECTIVE",
                                         "primaryPurpose": "ECT"},
                          "enrollmentInfo": {"count": 300, "type": "ESTIMATED"}}
    ps["outcomesModule"]["otherOutcomes"] = [{"measure": "Other", "timeFrame": "1 year"}]
    ps["eligibilityModule"].update(samplingMethod="PROBABILITY_SAMPLE", studyPopulation="Adults",
                                   genderBased=True, genderDescription="Self-identified", minimumAge="6 Months")
    ps["contactsLocationsModule"]["locations"] += [
        {"facility": "Clinic B", "status": "RECRUITING", "city": "Lyon", "country": "France"},
        {"facility": "Clinic C", "status": "WITHDRAWN", "city": "Nowhere", "country": "Atlantis"}]
    conversion = convert(rec)
    by_id = {r["id"]: r for r in conversion.resources if r["resourceType"] == "ResearchStudy"}
    study = by_id["nct03418623"]
    no_design = copy.deepcopy(rec)
    no_design["protocolSection"]["designModule"] = {"phases": ["PHASE2"],
                                                    "enrollmentInfo": {"count": 30, "type": "ESTIMATED"}}
    lacking = convert(no_design)
    assert "meta" not in lacking.resources[0]  # ctms-study requires a studyDesign
    assert any("no study design" in m for m in lacking.missing)
    assert {"system": "https://euclinicaltrials.eu/clinicalTrialId", "value": "2023-501234-12-00",
            "type": {"coding": [{"system": "https://clinicaltrials.gov/data-api/about-api/study-data-structure#SecondaryIdType",
                                 "code": "CTIS"}]}} in study["identifier"]
    assert study["meta"]["profile"] == ["http://fhir-ctms.org/fhir/StructureDefinition/ctms-study"]
    start = next(e for e in study["progressStatus"] if e["state"]["coding"][0]["code"] == "first-subject-in")
    assert "actual" not in start
    lyon = by_id["nct03418623-site-002"]
    # a recruiting location: the R5 status as of the statusVerifiedDate, not an 'activated' milestone
    assert lyon["progressStatus"] == [{"state": {"coding": [
        {"system": "http://hl7.org/fhir/research-study-status", "code": "recruiting"},
        {"system": "https://clinicaltrials.gov/data-api/about-api/study-data-structure#RecruitmentStatus",
         "code": "RECRUITING"}]}, "actual": True, "period": {"start": "2020-10"}}]
    assert "nct03418623-fr" in by_id and by_id["nct03418623-fr"]["site"] == [{"reference": "ResearchStudy/nct03418623-site-002"}]
    assert any("'Atlantis' has no ISO 3166 code" in m for m in conversion.missing)
    assert "nct03418623-atlantis" in by_id
    sites = [r for r in conversion.resources if r["resourceType"] == "ResearchStudy" and "-site-" in r["id"]]
    related = {f"{r['resourceType']}/{r['id']}": r for r in conversion.resources
               if r["resourceType"] in ("Organization", "Location")}
    assert to_record(study, sites, related) == carried(rec)


def test_values_of_the_wrong_type_are_a_clear_rejection_never_a_crash():
    """Seeded mutations of every record: a value replaced by one of another JSON type either
    converts or raises NotARecord (the import's clear message), nothing else."""
    import random

    from fhir_ctms.ctgov import NotARecord
    rng = random.Random(6)
    wrong = [1, "x", [], {}, None, True, 2.5, ["a"], [{}], {"a": 1}]

    def paths(v, p=()):
        if p:
            yield p
        if isinstance(v, dict):
            for k, x in v.items():
                yield from paths(x, (*p, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                yield from paths(x, (*p, i))
    for path in RECORDS:
        rec = json.loads(path.read_text())
        where = list(paths(rec))
        for _ in range(60):
            mutated = copy.deepcopy(rec)
            p = rng.choice(where)
            target = mutated
            for k in p[:-1]:
                target = target[k]
            target[p[-1]] = rng.choice(wrong)
            try:
                convert(mutated)
            except NotARecord:
                pass


# -- sites partOf their country: $enrollment's roll-up ----------------------------------------

async def test_an_imported_site_rolls_up_into_its_country_in_enrollment(client, repo):
    """NCT00973089 has one site, in Israel: a subject on study there counts at the site, in the
    country row (the site is partOf its country and the study) and in the study row."""
    report = await imported(repo, [DATA / "NCT00973089.json"])
    assert report.rejected == []
    site = (await client.get("/ResearchStudy/nct00973089-site-001")).json()
    assert site["partOf"] == [{"reference": "ResearchStudy/nct00973089-il"},
                              {"reference": "ResearchStudy/nct00973089"}]
    for part_of in ("nct00973089", "nct00973089-il"):  # one search lists the sites, at either level
        found = (await client.get(f"/ResearchStudy?classifier={LEVEL}|site&part-of=ResearchStudy/{part_of}"
                                  "&_total=accurate")).json()
        assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == "nct00973089-site-001"
    patient = {"resourceType": "Patient", "id": "il-1", "gender": "female"}
    state = "http://terminology.hl7.org/CodeSystem/research-subject-state"
    subject = {"resourceType": "ResearchSubject", "id": "il-1-subject", "status": "active",
               "identifier": [{"system": "http://example.org/subject", "value": "IL-001"}],
               "study": {"reference": "ResearchStudy/nct00973089-site-001"},
               "subject": {"reference": "Patient/il-1"},
               "progress": [
                   {"subjectState": {"coding": [{"system": state, "code": "screening"}]},
                    "startDate": "2026-01-05", "endDate": "2026-01-19"},
                   {"subjectState": {"coding": [{"system": state, "code": "on-study"}]},
                    "startDate": "2026-01-19"}]}
    for r in (patient, subject):
        assert (await client.put(f"/{r['resourceType']}/{r['id']}", json=r)).status_code == 201
    r = await client.get("/ResearchStudy/nct00973089/$enrollment", params={"_format": "csv", "date": "2026-06-01"})
    assert r.status_code == 200, r.text
    rows = {row["reference"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert set(rows) == {"ResearchStudy/nct00973089", "ResearchStudy/nct00973089-il",
                         "ResearchStudy/nct00973089-site-001"}
    country = rows["ResearchStudy/nct00973089-il"]
    assert (country["level"], country["region"], country["screened"], country["enrolled"], country["active"]) \
        == ("country", "IL", "1", "1", "1")
    assert rows["ResearchStudy/nct00973089-site-001"]["partOf"] == "ResearchStudy/nct00973089-il"
    assert rows["ResearchStudy/nct00973089"]["enrolled"] == "1"


# -- the registry export of a study made in the CTMS: the example study -----------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: the registry's names of the example's countries (ISO 3166 codes in the CTMS)
REGISTRY_COUNTRY = {"GB": "United Kingdom", "DE": "Germany", "FR": "France"}


def example_sites() -> list[dict[str, str]]:
    """The rows of examples/README.md's "Per site" table: site, country, state (in words)."""
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8").split("### Per site\n", 1)[1]
    lines = [ln for ln in text.strip().splitlines()]
    lines = lines[:next(i for i, ln in enumerate(lines) if not ln.startswith("|"))]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip().strip("`") for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[2:]]


def registry_status(state: str) -> str:
    """The README's description of a site's state as the registry's location status."""
    if state.startswith("closed"):
        return "COMPLETED"
    if "enrolment closed" in state:
        return "ACTIVE_NOT_RECRUITING"
    if state.startswith("activated"):
        return "RECRUITING"
    assert state.startswith(("selected", "IRB approved")), state
    return "NOT_YET_RECRUITING"


async def test_registry_export_of_the_example_study(client):
    files = sorted(EXAMPLES.glob("acme-101-*.json"))
    assert len(files) == 2
    for path in files:
        r = await client.post("", content=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:2000]
    before = dt.datetime.now(dt.timezone.utc).date()
    r = await client.get("/ResearchStudy/acme-101/$registry-export")
    assert r.status_code == 200, r.text
    out = r.json()["protocolSection"]
    ident = out["identificationModule"]
    assert ident["nctId"] == "NCT09990101" and ident["orgStudyIdInfo"] == {"id": "ACME-101"}
    assert {"id": "2024-519901-27-00", "type": "CTIS"} in ident["secondaryIdInfos"]
    # the sponsor (R5 role sponsor) is the organization and the lead sponsor; its Organization's
    # type (organization-type bus) gives the class
    assert ident["organization"] == {"fullName": "Acme Therapeutics plc", "class": "INDUSTRY"}
    sponsors = out["sponsorCollaboratorsModule"]
    assert sponsors["leadSponsor"] == {"name": "Acme Therapeutics plc", "class": "INDUSTRY"}
    assert sponsors["collaborators"] == [{"name": "Northwind Clinical Research Ltd", "class": "INDUSTRY"}]
    # three sites recruit: the study recruits, verified on the export date
    status = out["statusModule"]
    assert status["overallStatus"] == "RECRUITING"
    assert status["statusVerifiedDate"] in {before.isoformat()[:7],
                                            dt.datetime.now(dt.timezone.utc).date().isoformat()[:7]}
    assert status["startDateStruct"] == {"date": "2025-03-31", "type": "ACTUAL"}
    # studyDesign's SEVCO codes: interventional, randomized, parallel; participants, intervention
    # providers (care providers and investigators) and outcome assessors blinded: four roles
    design = out["designModule"]
    assert design["studyType"] == "INTERVENTIONAL" and design["phases"] == ["PHASE2"]
    assert design["designInfo"] == {
        "allocation": "RANDOMIZED", "interventionModel": "PARALLEL", "primaryPurpose": "TREATMENT",
        "maskingInfo": {"masking": "QUADRUPLE",
                        "whoMasked": ["PARTICIPANT", "CARE_PROVIDER", "INVESTIGATOR", "OUTCOMES_ASSESSOR"]}}
    assert design["enrollmentInfo"] == {"count": 90, "type": "ESTIMATED"}
    # one location per site (each once, though partOf its country and the study), in site id
    # order, with the registry's country name and the status the site's milestones give
    rows = sorted(example_sites(), key=lambda row: row["site"])
    assert len(rows) == 8
    bundle = json.loads(files[0].read_text(encoding="utf-8"))
    by_ref = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}
    facilities = [next(by_ref[s["reference"]]["name"] for s in by_ref[f"ResearchStudy/{row['site']}"]["site"]
                       if s["reference"].startswith("Organization/")) for row in rows]
    locations = out["contactsLocationsModule"]["locations"]
    assert [(loc["facility"], loc["country"], loc["status"]) for loc in locations] == [
        (facility, REGISTRY_COUNTRY[row["country"]], registry_status(row["state"]))
        for facility, row in zip(facilities, rows, strict=True)]
    assert {loc["status"] for loc in locations} == {"RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED",
                                                    "NOT_YET_RECRUITING"}
    assert locations[0]["city"] == "Köln"


# -- the export's rules for a study made in the CTMS (no server) ------------------------------

SEVCO_SYSTEM = "http://hl7.org/fhir/study-design"
SITE_MS = "http://fhir-ctms.org/fhir/CodeSystem/site-milestone"
STUDY_MS = "http://fhir-ctms.org/fhir/CodeSystem/study-milestone"
R5_STATUS = "http://hl7.org/fhir/research-study-status"


def native(**fields) -> dict:
    return {"resourceType": "ResearchStudy", "id": "n", "status": "active",
            "classifier": [{"coding": [{"system": LEVEL, "code": "study"}]}], **fields}


def entry(system: str, code: str, start: str, actual: bool = True) -> dict:
    return {"state": {"coding": [{"system": system, "code": code}]}, "actual": actual, "period": {"start": start}}


def a_site(rid: str, *entries: dict) -> dict:
    return {"resourceType": "ResearchStudy", "id": rid, "status": "active",
            "classifier": [{"coding": [{"system": LEVEL, "code": "site"}]}],
            "region": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "TW"}]}],
            "progressStatus": list(entries)}


def test_import_adds_the_sevco_codes_and_the_export_reads_them():
    study = convert(record("NCT00973089.json")).resources[0]
    codings = [c for concept in study["studyDesign"] for c in concept["coding"]]
    sevco = [c["code"] for c in codings if c["system"] == SEVCO_SYSTEM]
    # INTERVENTIONAL, RANDOMIZED, PARALLEL; SINGLE masking has no code; whoMasked INVESTIGATOR is
    # an intervention provider
    assert sevco == ["SEVCO:01001", "SEVCO:01003", "SEVCO:01011", "SEVCO:01061"]
    from fhir_ctms.ctgov import to_record
    only_sevco = native(studyDesign=[{"coding": [c]} for c in codings if c["system"] == SEVCO_SYSTEM])
    design = to_record(only_sevco, [], {})["protocolSection"]["designModule"]
    assert design == {"studyType": "INTERVENTIONAL", "designInfo": {
        "allocation": "RANDOMIZED", "interventionModel": "PARALLEL",
        "maskingInfo": {"masking": "DOUBLE", "whoMasked": ["CARE_PROVIDER", "INVESTIGATOR"]}}}
    # more specific SEVCO codes, a blinding code with no registry role, CT.gov's code winning
    other = native(studyDesign=[
        {"coding": [{"system": SEVCO_SYSTEM, "code": "SEVCO:01007"}]},  # stratified randomization
        {"coding": [{"system": SEVCO_SYSTEM, "code": "SEVCO:01025"}]},  # single-arm crossover
        {"coding": [{"system": SEVCO_SYSTEM, "code": "SEVCO:01063"}]},  # data analysts blinded
        {"coding": [{"system": "https://clinicaltrials.gov/data-api/about-api/study-data-structure#StudyType",
                     "code": "OBSERVATIONAL"}]},
        {"coding": [{"system": SEVCO_SYSTEM, "code": "SEVCO:01001"}]}])
    design = to_record(other, [], {})["protocolSection"]["designModule"]
    assert design == {"studyType": "OBSERVATIONAL",
                      "designInfo": {"allocation": "RANDOMIZED", "interventionModel": "CROSSOVER"}}


@pytest.mark.parametrize(("entries", "expected"), [
    ([], None),
    ([entry(SITE_MS, "selected", "2026-01-01"), entry(SITE_MS, "activated", "2026-09-01", actual=False)],
     "NOT_YET_RECRUITING"),
    ([entry(SITE_MS, "siv-done", "2026-01-01"), entry(SITE_MS, "activated", "2026-02-01")], "RECRUITING"),
    ([entry(SITE_MS, "activated", "2026-02-01"), entry(SITE_MS, "enrolment-closed", "2026-05-01")],
     "ACTIVE_NOT_RECRUITING"),
    ([entry(SITE_MS, "activated", "2026-02-01"), entry(SITE_MS, "enrolment-closed", "2026-05-01"),
      entry(SITE_MS, "close-out-visit", "2026-06-01"), entry(SITE_MS, "closed", "2026-06-02")], "COMPLETED"),
    # an R5 status entry dated after the milestone that says otherwise wins, and the other way round
    ([entry(SITE_MS, "activated", "2026-02-01"), entry(R5_STATUS, "temporarily-closed-to-accrual", "2026-03-01")],
     "SUSPENDED"),
    ([entry(R5_STATUS, "temporarily-closed-to-accrual", "2026-03-01"), entry(SITE_MS, "closed", "2026-04-01")],
     "COMPLETED"),
], ids=["none", "selected", "activated", "enrolment-closed", "closed", "suspended", "closed-after-suspension"])
def test_a_ctms_site_status(entries, expected):
    from fhir_ctms.ctgov import to_record
    out = to_record(native(), [a_site("s1", *entries)], {})["protocolSection"]
    location = out["contactsLocationsModule"]["locations"][0]
    assert location.get("status") == expected
    assert location["country"] == "Taiwan"  # the registry's name, not ISO's "Taiwan, Province of China"


@pytest.mark.parametrize(("study_entries", "site_entries", "why", "expected"), [
    ([], [], None, None),  # nothing to derive a status from: none
    ([entry(STUDY_MS, "protocol-approved", "2026-01-01")], [], None, "NOT_YET_RECRUITING"),
    ([entry(STUDY_MS, "first-site-activated", "2026-02-01")], [], None, "RECRUITING"),
    ([entry(STUDY_MS, "first-site-activated", "2026-02-01")],
     [[entry(SITE_MS, "enrolment-closed", "2026-05-01")], [entry(SITE_MS, "closed", "2026-06-01")]], None,
     "ACTIVE_NOT_RECRUITING"),
    ([entry(STUDY_MS, "first-site-activated", "2026-02-01")],
     [[entry(SITE_MS, "closed", "2026-05-01")], [entry(SITE_MS, "closed", "2026-06-01")]], None, "COMPLETED"),
    ([], [[entry(SITE_MS, "selected", "2026-05-01")], [entry(SITE_MS, "activated", "2026-06-01")]], None,
     "RECRUITING"),
    ([entry(STUDY_MS, "last-subject-in", "2026-02-01")], [[entry(SITE_MS, "activated", "2026-01-01")]], None,
     "ACTIVE_NOT_RECRUITING"),
    ([entry(STUDY_MS, "last-subject-in", "2026-02-01"), entry(STUDY_MS, "last-subject-last-visit", "2026-08-01")],
     [], None, "COMPLETED"),
    ([entry(STUDY_MS, "study-closed", "2026-02-01")], [], "Sponsor decision", "TERMINATED"),
    ([entry(R5_STATUS, "active", "2026-01-01")], [[entry(SITE_MS, "irb-approved", "2026-01-01")]], None,
     "NOT_YET_RECRUITING"),
    ([entry(R5_STATUS, "closed-to-accrual", "2026-04-01")], [[entry(SITE_MS, "activated", "2026-01-01")]], None,
     "ACTIVE_NOT_RECRUITING"),
    ([entry(STUDY_MS, "last-subject-last-visit", "2026-08-01", actual=False)], [], None, None),  # planned only
], ids=["nothing", "approved", "site-activated", "closing", "all-closed", "sites-only", "last-subject-in",
        "last-visit", "terminated", "active-not-yet", "closed-to-accrual", "planned"])
def test_a_ctms_overall_status(study_entries, site_entries, why, expected):
    from fhir_ctms.ctgov import to_record
    study = native(progressStatus=study_entries, **({"whyStopped": {"text": why}} if why else {}))
    sites = [a_site(f"s{i}", *e) for i, e in enumerate(site_entries)]
    status = to_record(study, sites, {}, today=dt.date(2026, 11, 23))["protocolSection"].get("statusModule", {})
    assert status.get("overallStatus") == expected
    if expected:
        assert status["statusVerifiedDate"] == "2026-11"


def test_sponsor_class_and_country_names():
    from fhir_ctms.ctgov import to_record
    from fhir_ctms.ctgov.countries import alpha2, registry_name
    assert [registry_name(c) for c in ("DE", "GB", "US", "TW", "KR", "VN", "CZ", "XK", "ZZ")] == [
        "Germany", "United Kingdom", "United States", "Taiwan", "Korea, Republic of", "Vietnam", "Czechia",
        "Kosovo", None]
    assert all(alpha2(registry_name(c)) == c for c in ("DE", "TW", "KR", "VN", "XK", "BO"))
    role = {"coding": [{"system": "http://hl7.org/fhir/research-study-party-role", "code": "sponsor"}]}
    org_type = "http://hl7.org/fhir/research-study-party-organization-type"
    related = {"Organization/u": {"resourceType": "Organization", "id": "u", "name": "Univ",
                                  "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                                        "code": "edu"}]}]}}
    for party, expected in (
            ({"role": role, "party": {"reference": "Organization/u"}}, {"name": "Univ", "class": "OTHER"}),
            ({"role": role, "name": "Gov", "classifier": [{"coding": [{"system": org_type, "code": "government"}]}]},
             {"name": "Gov", "class": "OTHER_GOV"}),
            ({"role": role, "name": "Nobody"}, {"name": "Nobody"})):
        out = to_record(native(associatedParty=[party]), [], related)["protocolSection"]
        assert out["sponsorCollaboratorsModule"]["leadSponsor"] == expected
        assert out["identificationModule"]["organization"] == {"fullName": expected["name"],
                                                               **({"class": expected["class"]} if "class" in expected else {})}
    # an imported record's organization never stands in for the lead sponsor (NCT00465816 has none)
    partial = convert(record("NCT00465816.json")).resources[0]
    out = to_record(partial, [], {})["protocolSection"]
    assert out["identificationModule"]["organization"] == {"fullName": "GlaxoSmithKline", "class": "INDUSTRY"}
    assert "sponsorCollaboratorsModule" not in out and "statusModule" not in out
    # a site whose Location gives the country as a code, and one whose address has a name
    site = a_site("s", entry(SITE_MS, "activated", "2026-01-01"))
    site["site"] = [{"reference": "Location/l"}]
    for country, expected in (("DE", "Germany"), ("Deutschland", "Deutschland"), (None, "Taiwan")):
        loc = {"resourceType": "Location", "id": "l", "address": {"city": "X", **({"country": country} if country else {})}}
        out = to_record(native(), [site], {"Location/l": loc})["protocolSection"]
        assert out["contactsLocationsModule"]["locations"][0]["country"] == expected
