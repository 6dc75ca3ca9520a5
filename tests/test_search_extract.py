"""Search groundwork: the extracted R5 search parameters, FHIRPath handling, index extraction."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import random
import tarfile
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from fhir_ctms.errors import BadRequest
from fhir_ctms.resources.dates import date_range
from fhir_ctms.search import extract as extract_module
from fhir_ctms.search import fhirpath
from fhir_ctms.search.extract import (
    MAX_US,
    NOT_INDEXED,
    MIN_US,
    CompositeValue,
    DateValue,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    extract,
    extract_param,
    normalise,
)
from fhir_ctms.search.parameters import (
    all_params,
    clear_custom,
    compartment_params,
    compartments,
    param,
    params_for,
    register,
    resource_types,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((Path(__file__).parent / "data" / "r5-examples").glob("*.json"))
ACME = [e["resource"] for name in ("acme-101-1-study.json", "acme-101-2-amendment.json")
        for e in json.loads((ROOT / "examples" / name).read_text(encoding="utf-8"))["entry"]]


def acme(rid: str) -> dict:
    """The example study's resource (its last version: the amendment's, when it has one)."""
    return copy.deepcopy([r for r in ACME if r["id"] == rid][-1])


def example(name: str) -> dict:
    return json.loads((Path(__file__).parent / "data" / "r5-examples" / name).read_text())


def rows(resource: dict, code: str, **kw) -> list:
    return [r for r in extract(resource, **kw) if r.param == code]


def us(text: str) -> int:
    return int((datetime.fromisoformat(text).replace(tzinfo=UTC)
                - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


def resources_of(doc: dict):
    """The resource and, for a Bundle, the resources of its entries (recursively)."""
    yield doc
    if doc.get("resourceType") == "Bundle":
        for entry in doc.get("entry", []):
            if isinstance(entry.get("resource"), dict):
                yield from resources_of(entry["resource"])


# --------------------------------------------------------------------------- the extracted data


def test_every_r5_resource_type_has_parameters():
    types = resource_types()
    assert len(types) == 158
    common = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text",
              "_content", "_list", "_has", "_type"}
    for t in types:
        assert common <= set(params_for(t)), t
    assert params_for("Patient")["_text"].type == "special"  # DomainResource's, not Resource's
    assert params_for("Bundle")["_text"].base == "Resource"  # Bundle is not a DomainResource
    assert param("Patient", "_id").expression == "Resource.id"


def test_research_study_and_subject_parameters():
    study = params_for("ResearchStudy")
    assert {"status", "phase", "part-of", "protocol", "site", "title", "identifier", "date",
            "recruitment-target", "progress-status-state-period"} <= set(study)
    assert study["status"].type == "token" and study["status"].expression == "ResearchStudy.status"
    assert study["part-of"].type == "reference" and study["part-of"].targets == ("ResearchStudy",)
    assert set(study["site"].targets) == {"Organization", "ResearchStudy", "Location"}
    assert study["title"].type == "string"
    assert study["date"].type == "date" and "ge" in study["date"].comparators
    subject = params_for("ResearchSubject")
    assert {"patient", "study", "subject", "status"} <= set(subject)
    assert subject["patient"].expression == "ResearchSubject.subject.where(resolve() is Patient)"
    assert subject["patient"].url == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    assert subject["study"].targets == ("ResearchStudy",)


def test_multi_base_expressions_are_split_per_type():
    assert param("Observation", "patient").expression == "Observation.subject.where(resolve() is Patient)"
    assert param("AllergyIntolerance", "patient").expression == "AllergyIntolerance.patient"
    assert param("Observation", "date").expression == (
        "Observation.effective.ofType(dateTime) | Observation.effective.ofType(Period) | "
        "Observation.effective.ofType(Timing) | Observation.effective.ofType(instant)")
    # the one alternative that does not start with its type lands on the right base
    assert param("Appointment", "date").expression == "(start | requestedPeriod.start).first()"
    # no expression ever mentions another base type
    for p in all_params():
        if p.expression and p.base not in ("Resource", "DomainResource"):
            for alt in fhirpath.split_union(p.expression):
                ident = fhirpath.leading_identifier(alt)
                assert not ident[:1].isupper() or ident == p.base, (p.url, p.base, alt)


def test_composite_components_know_their_types():
    p = param("Observation", "code-value-quantity")
    assert p.type == "composite" and p.expression == "Observation"
    assert [(c.expression, c.type) for c in p.components] == [
        ("code", "token"), ("value.ofType(Quantity)", "quantity")]
    urls = {q.url for q in all_params()}
    for q in all_params():  # unknown only where R5 names a SearchParameter it does not define
        for c in q.components:
            assert (c.type is None) == (c.definition not in urls), (q.url, c.definition)


def test_compartments():
    assert set(compartments()) == {"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"}
    assert compartment_params("Patient", "ResearchSubject") == ("subject",)
    assert "subject" in compartment_params("Patient", "Observation")
    assert compartment_params("Patient", "Patient") == ("{def}", "link")
    assert compartment_params("Encounter", "Observation") == ("encounter",)
    assert compartment_params("Patient", "ResearchStudy") == ()


def test_all_expressions_compile():
    expressions = {e for p in all_params()
                   for e in [p.expression, *(c.expression for c in p.components)] if e}
    assert len(expressions) > 1200
    fast = 0
    for e in expressions:
        fast += fhirpath.compile_expression(e).fast
        fhirpath.compile_expression(e, fast=False)  # fhirpathpy parses every one too
    assert fast > 0.95 * len(expressions)


# --------------------------------------------------------------------------- FHIRPath text


def test_split_union_respects_parentheses_and_strings():
    assert fhirpath.split_union("A.b | (A.c | A.d).first() | A.e.where(x='|')") == [
        "A.b", "(A.c | A.d).first()", "A.e.where(x='|')"]


def test_split_per_base():
    per, unplaced = fhirpath.split_per_base("A.x | B.y.where(resolve() is C) | (B.z)", ["A", "B"])
    assert per == {"A": "A.x", "B": "B.y.where(resolve() is C) | (B.z)"} and unplaced == []
    per, unplaced = fhirpath.split_per_base("A.x | start | C.y", ["A", "B", "C"])
    assert per == {"A": "A.x", "B": "start", "C": "C.y"} and unplaced == []


def test_strip_resolve():
    assert fhirpath.strip_resolve("Observation.subject.where(resolve() is Patient)") == (
        "Observation.subject", frozenset({"Patient"}))
    assert fhirpath.strip_resolve("(X.a.where(resolve() is B or resolve() is C))") == (
        "X.a", frozenset({"B", "C"}))
    assert fhirpath.strip_resolve("X.a") == ("X.a", None)


def test_resolve_forms_that_are_not_rewritten_use_a_stub():
    obs = {"resourceType": "Observation", "subject": {"reference": "Patient/1"}}
    for fast in (True, False):
        is_patient = fhirpath.compile_expression("(Observation.subject.resolve() is Patient)", fast)
        assert [v for v, _, _ in is_patient.evaluate(obs, "Observation")] == [True]
    other = fhirpath.compile_expression(
        "Observation.subject.where(resolve() is Patient and reference.exists())")
    assert not other.fast
    assert [v for v, _, _ in other.evaluate(obs, "Observation")] == [obs["subject"]]


@pytest.mark.parametrize("fast", [True, False])
def test_choice_elements_of_type_and_as(fast):
    obs = {"resourceType": "Observation", "effectiveDateTime": "2024-01-01",
           "valueQuantity": {"value": 1}, "component": [{"valueString": "x"}, {"valueQuantity": {}}]}
    cases = {"(Observation.effective as dateTime)": [("2024-01-01", "dateTime")],
             "Observation.effective.ofType(Period)": [],
             "Observation.value.ofType(Quantity)": [({"value": 1}, "Quantity")],
             "Observation.component.value.ofType(string)": [("x", "string")],
             "Observation.value": [({"value": 1}, "Quantity")]}
    for expression, expected in cases.items():
        compiled = fhirpath.compile_expression(expression, fast)
        assert compiled.fast == fast
        assert [(v, t) for v, t, _ in compiled.evaluate(obs, "Observation")] == expected, expression


def test_simple_paths():
    p = fhirpath.parse_simple_path("(Observation.effective as dateTime)")
    assert p.root == "Observation" and p.steps == (fhirpath.Step("effective", "dateTime"),)
    p = fhirpath.parse_simple_path("Patient.telecom.where(system='email')")
    assert p.steps == (fhirpath.Step("telecom", None, ("system", "email")),)
    assert fhirpath.parse_simple_path("value.ofType(Quantity)").root is None
    for text in ("Bundle.entry[0].resource", "Patient.deceased.exists()",
                 "(start | requestedPeriod.start).first()", "A.extension('u').value"):
        assert fhirpath.parse_simple_path(text) is None, text


# --------------------------------------------------------------------------- extraction


def test_research_study_values():
    site = acme("site-gb-01")
    site["period"] = {"start": "2026-03-01", "end": "2027-06"}
    assert rows(site, "status") == [TokenValue("status", None, "active")]
    assert rows(site, "part-of") == [ReferenceValue("part-of", "ResearchStudy", "acme-101-gb"),
                                     ReferenceValue("part-of", "ResearchStudy", "acme-101")]
    assert ReferenceValue("site", "Location", "loc-gb-01") in rows(site, "site")
    assert rows(site, "date") == [DateValue("date", us("2026-03-01"), us("2027-07-01"))]
    assert rows(site, "recruitment-target") == [
        NumberValue("recruitment-target", Decimal(16), Decimal("15.5"), Decimal("16.5"))]
    assert rows(site, "region") == [TokenValue("region", "urn:iso:std:iso:3166", "GB")]
    state_periods = rows(site, "progress-status-state-period")
    assert len(state_periods) == len(site["progressStatus"])
    assert CompositeValue("progress-status-state-period", (
        TokenValue("progress-status-state-period", "http://fhir-ctms.org/fhir/CodeSystem/site-milestone", "activated"),
        DateValue("progress-status-state-period", us("2025-03-10"), MAX_US))) in state_periods

    study = acme("acme-101")
    assert TokenValue("identifier", "https://clinicaltrials.gov", "NCT09990101") in rows(study, "identifier")
    assert TokenValue("identifier", "http://acme-therapeutics.example.org/protocols", "ACME-101",
                      "sponsor protocol number") in rows(study, "identifier")
    assert rows(study, "protocol") == [ReferenceValue("protocol", "PlanDefinition", "acme-101-protocol-2-0")]
    assert rows(study, "phase") == [
        TokenValue("phase", "http://hl7.org/fhir/research-study-phase", "phase-2")]
    assert rows(study, "condition") == [TokenValue("condition", "http://snomed.info/sct", "195967001", "asthma"),
                                        TokenValue("condition", None, None, "moderate to severe asthma")]
    assert rows(acme("site-de-01"), "title") == [StringValue(
        "title", "acme-101 at universitatsklinikum rheinau", "ACME-101 at Universitätsklinikum Rheinau")]


def test_research_subject_values():
    subject = next(r for r in ACME if r["resourceType"] == "ResearchSubject")
    study_rows, subject_rows, patient_rows = (rows(subject, c) for c in ("study", "subject", "patient"))
    assert study_rows[0].target_type == "ResearchStudy"
    assert subject_rows[0].target_type == "Patient" and patient_rows == [
        ReferenceValue("patient", "Patient", subject_rows[0].target_id)]
    assert rows(subject, "status") == [TokenValue("status", None, subject["status"])]


def test_patient_values():
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1974-12",
               "name": [{"family": "Ångström", "given": ["Zoë", "Anne"], "prefix": ["Dr"]}],
               "identifier": [{"system": "urn:site", "value": "S-1",
                               "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "MR"}], "text": "Medical record"}}],
               "telecom": [{"system": "email", "value": "zoe@example.org"},
                           {"system": "phone", "value": "+44 1"}],
               "active": True, "gender": "female",
               "meta": {"lastUpdated": "2026-01-02T03:04:05.678Z",
                        "profile": ["http://example.org/StructureDefinition/p|1.2"]}}
    assert rows(patient, "family") == [StringValue("family", "angstrom", "Ångström")]
    assert [r.normalised for r in rows(patient, "name")] == ["angstrom", "zoe", "anne", "dr"]
    assert rows(patient, "birthdate") == [DateValue("birthdate", *date_range("1974-12"))]
    assert date_range("1974-12") == (us("1974-12-01"), us("1975-01-01"))
    assert rows(patient, "identifier") == [
        TokenValue("identifier", "urn:site", "S-1", "medical record"),
        OfTypeValue("identifier", "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "S-1")]
    assert rows(patient, "email") == [TokenValue("email", None, "zoe@example.org")]
    assert rows(patient, "phone") == [TokenValue("phone", None, "+44 1")]
    assert rows(patient, "active") == [TokenValue("active", None, "true")]
    # "deceased.exists() and deceased != false" is false without deceased[x] (false and {})
    assert rows(patient, "deceased") == [TokenValue("deceased", None, "false")]
    # _id and _lastUpdated are searched on the resources table (its id, its timestamp): no rows
    assert rows(patient, "_lastUpdated") == [] and rows(patient, "_id") == []
    assert extract_param(patient, param("Patient", "_lastUpdated")) == [
        DateValue("_lastUpdated", us("2026-01-02T03:04:05.678"), us("2026-01-02T03:04:05.679"))]
    assert rows(patient, "_profile") == [ReferenceValue(  # a canonical: url, |version, type/id
        "_profile", "StructureDefinition", "p", "1.2", "http://example.org/StructureDefinition/p")]
    patient["deceasedDateTime"] = "2020"
    assert rows(patient, "deceased") == [TokenValue("deceased", None, "true")]


def test_observation_values():
    obs = example("Observation-f001.json")
    quantity = QuantityValue("value-quantity", "http://unitsofmeasure.org", "mmol/L", "mmol/l",
                             Decimal("6.3"), Decimal("6.25"), Decimal("6.35"))
    assert rows(obs, "value-quantity") == [quantity]
    code = TokenValue("code", "http://loinc.org", "15074-8", "glucose [moles/volume] in blood")
    assert rows(obs, "code") == [code]
    (composite,) = rows(obs, "code-value-quantity")
    assert composite == CompositeValue("code-value-quantity", (
        TokenValue("code-value-quantity", code.system, code.code, code.text),
        QuantityValue("code-value-quantity", *[getattr(quantity, f) for f in
                                               ("system", "code", "unit", "value", "low", "high")])))
    # Observation.subject.where(resolve() is Patient)
    assert rows(obs, "patient") == [ReferenceValue("patient", "Patient", "f001")]
    assert rows(obs, "subject") == [ReferenceValue("subject", "Patient", "f001")]
    assert rows(obs, "date") == [DateValue("date", *date_range("2013-04-02T09:30:10+01:00"))]
    obs["subject"] = {"reference": "Group/g1"}
    assert rows(obs, "patient") == []
    assert rows(obs, "subject") == [ReferenceValue("subject", "Group", "g1")]


def test_observation_components_and_periods():
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
           "effectivePeriod": {"start": "2024-05-01T10:00:00Z"},
           "component": [
               {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}},
               {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 80.0, "comparator": "<"}}]}
    assert rows(obs, "date") == [DateValue("date", us("2024-05-01T10:00:00"), MAX_US)]
    got = rows(obs, "component-code-value-quantity")
    assert [(c.components[0].code, c.components[1].value, c.components[1].low) for c in got] == [
        ("8480-6", Decimal(120), Decimal("119.5")), ("8462-4", Decimal("80.0"), None)]


def test_reference_forms():
    base = {"resourceType": "Encounter", "id": "e1",
            "contained": [{"resourceType": "Practitioner", "id": "pr1"}]}

    def subject(ref: dict) -> list:
        return rows({**base, "subject": ref}, "subject")

    assert subject({"reference": "Patient/1/_history/3"}) == [ReferenceValue("subject", "Patient", "1", "3")]
    assert subject({"reference": "https://ehr.example.org/fhir/Patient/9"}) == [
        ReferenceValue("subject", "Patient", "9", None, "https://ehr.example.org/fhir/Patient/9")]
    assert subject({"reference": "urn:uuid:0b1c"}) == [ReferenceValue("subject", None, None, None, "urn:uuid:0b1c")]
    assert subject({"identifier": {"system": "urn:mrn", "value": "42"}, "type": "Patient"}) == [
        ReferenceValue("subject", "Patient", None, None, None, "urn:mrn", "42")]
    assert subject({"display": "nobody"}) == []
    participant = rows({**base, "participant": [{"actor": {"reference": "#pr1"}}]}, "practitioner")
    assert participant == [ReferenceValue("practitioner", "Practitioner", None, None, "#pr1")]


def test_timing_and_uri():
    req = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
           "subject": {"reference": "Patient/1"},
           "instantiatesCanonical": ["http://example.org/PlanDefinition/x"],
           "dosageInstruction": [{"timing": {"event": ["2024-01-05", "2024-01-02T08:00:00Z"]}}]}
    assert rows(req, "patient") == [ReferenceValue("patient", "Patient", "1")]
    plan = {"resourceType": "PlanDefinition", "status": "draft", "url": "http://example.org/pd"}
    assert rows(plan, "url") == [UriValue("url", "http://example.org/pd")]
    proc = {"resourceType": "Procedure", "status": "completed", "subject": {"reference": "Patient/1"},
            "occurrenceTiming": {"event": ["2024-01-05", "2024-01-02T08:00:00Z"]}}
    assert rows(proc, "date") == [DateValue("date", us("2024-01-02T08:00:00"), us("2024-01-06"))]


def test_normalise():
    assert normalise("Ångström Straße ÉLODIE") == "angstrom strasse elodie"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_extracts_and_fast_path_agrees(path):
    for resource in resources_of(json.loads(path.read_text(encoding="utf-8"))):
        rtype = resource["resourceType"]
        fast, slow = set(), set()
        for p in params_for(rtype).values():
            if p.code in NOT_INDEXED:
                continue
            fast.update(extract_param(resource, p))  # raises on any failure
            slow.update(extract_param(resource, p, fast=False))
        assert fast == slow, rtype
        assert fast == set(extract(resource))


def test_odd_input_never_raises(caplog):
    odd = {"resourceType": "Patient", "id": "x", "name": "not-a-list", "birthDate": "1974-13-45",
           "telecom": [None, 5, {"value": None}], "identifier": [{"system": 3}],
           "managingOrganization": {"reference": 7}, "meta": {"lastUpdated": []}}
    assert extract(odd) == [TokenValue("deceased", None, "false")]
    assert extract({"resourceType": "NoSuchType"}) == []
    assert extract({"no": "type"}) == []
    assert rows({"resourceType": "Patient", "birthDate": "0001-01-01"}, "birthdate")[0].low == MIN_US


@pytest.fixture
def custom():
    yield
    clear_custom()


def test_custom_search_parameter(custom, caplog):
    (p,) = register({"resourceType": "SearchParameter", "url": "http://example.org/sp/actual",
                     "code": "enrolled", "base": ["ResearchStudy"], "type": "number",
                     "expression": "ResearchStudy.recruitment.actualNumber"})
    assert param("ResearchStudy", "enrolled") is p and p.custom
    study = acme("acme-101")
    study["recruitment"]["actualNumber"] = 7
    assert rows(study, "enrolled") == [NumberValue("enrolled", Decimal(7), Decimal("6.5"), Decimal("7.5"))]
    register({"resourceType": "SearchParameter", "url": "http://example.org/sp/broken",
              "code": "broken", "base": ["ResearchStudy"], "type": "token",
              "expression": "ResearchStudy.where("})
    with caplog.at_level(logging.DEBUG, logger="fhir_ctms.search.extract"):
        assert rows(study, "broken") == []
    assert "broken" in caplog.text
    with pytest.raises(ValueError):
        register({"resourceType": "SearchParameter", "url": "u", "code": "c", "base": ["Nope"],
                  "type": "token", "expression": "Nope.x"})
    clear_custom()
    assert param("ResearchStudy", "enrolled") is None


# --------------------------------------------------------------------------- the script


def _script():
    spec = importlib.util.spec_from_file_location(
        "extract_search_parameters", ROOT / "scripts" / "extract_search_parameters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extraction_script_on_a_small_package(tmp_path, capsys):
    params = [
        {"resourceType": "SearchParameter", "url": "http://x/sp/clinical-patient", "code": "patient",
         "base": ["AllergyIntolerance", "Observation"], "type": "reference", "target": ["Patient"],
         "expression": "AllergyIntolerance.patient | Observation.subject.where(resolve() is Patient)"},
        {"resourceType": "SearchParameter", "url": "http://x/sp/Resource-id", "code": "_id",
         "base": ["Resource"], "type": "token", "expression": "Resource.id"},
    ]
    compartment = {"resourceType": "CompartmentDefinition", "code": "Patient",
                   "url": "http://hl7.org/fhir/CompartmentDefinition/patient",
                   "resource": [{"code": "Observation", "param": ["subject"]}, {"code": "Basic"}]}
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, doc in (("package/package.json", {"name": "p", "version": "1"}),
                          ("package/Bundle-searchParams.json",
                           {"resourceType": "Bundle", "entry": [{"resource": p} for p in params]}),
                          ("package/CompartmentDefinition-patient.json", compartment)):
            data = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out, comp = tmp_path / "sp.json", tmp_path / "c.json"
    assert _script().main(["--package-tgz", str(tgz), "--output", str(out),
                           "--compartments-output", str(comp)]) == 0
    data = json.loads(out.read_text())
    assert data["parameters"]["Observation"]["patient"]["expression"] == (
        "Observation.subject.where(resolve() is Patient)")
    assert data["parameters"]["AllergyIntolerance"]["patient"]["expression"] == "AllergyIntolerance.patient"
    assert data["parameters"]["Resource"]["_id"]["type"] == "token"
    assert json.loads(comp.read_text())["compartments"]["Patient"]["resources"] == {
        "Observation": ["subject"]}
    assert "search parameters: 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- compiled extraction
#
# ``extract`` runs a plan compiled per resource type; ``extract_param`` and
# ``extract(fast=False)`` keep the interpreted paths (walk, fhirpathpy) it must agree with.


def interpreted(resource: dict) -> list:
    """``extract`` parameter by parameter through ``extract_param`` (walk, else fhirpathpy)."""
    return extract_module._extract_interpreted(resource, resource["resourceType"], fast=True)


def all_example_resources() -> list[dict]:
    # the example study: one resource of each type, and the amended site and protocol
    acme_sample = [*{r["resourceType"]: r for r in reversed(ACME)}.values(), acme("site-gb-01"),
                   acme("acme-101-protocol-2-0")]
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in EXAMPLES] + copy.deepcopy(acme_sample)
    return [r for doc in docs for r in resources_of(doc)]


def test_compiled_extract_agrees_with_fhirpathpy_on_every_example():
    for resource in all_example_resources():
        slow = Counter(extract(resource, fast=False))  # every expression through fhirpathpy
        assert Counter(extract(resource)) == slow, resource["resourceType"]
        assert Counter(extract(resource)) == slow  # again: from the kept (memo) rows
        assert Counter(interpreted(resource)) == slow


_ODD = [
    None, "", "x", "Ünïcode Ñame", "Patient/1", "Group/g1/_history/2", "#c1", "#c2", "#c3",
    "urn:uuid:0b1c", "https://h.example/fhir/Patient/2", "http://x/StructureDefinition/y|1.0",
    "not a / reference", "2024", "2024-02", "2024-02-30", "2024-01-01T10:00:00+01:00",
    "2024-01-01T10:00:00.123Z", "2024-01-01T24:00:00Z", "9999-12-31", "1e5", "NaN", "1.50",
    0, 1, 40, -0.0, 0.0, 6.3, 6.30, 1e308, True, False, [], {}, [None], ["a", 1, None],
    {"reference": "#c1"}, {"reference": "#c2"}, {"reference": "Patient/9", "type": "Group"},
    {"reference": "Patient/9", "type": ["x"]}, {"identifier": {"system": "s", "value": "v"}},
    {"type": "Patient", "identifier": {"value": "v"}}, {"reference": 7},
    {"coding": [{"system": "s", "code": "c", "display": "Dé"}, {"display": ""}], "text": "T"},
    {"coding": {"code": "c"}}, {"coding": [None, "c", {"code": 5}]}, {"text": ["t"]},
    {"value": 1.5, "comparator": "<", "unit": "mg", "system": "u", "code": "mg"},
    {"value": "2", "comparator": ">="}, {"low": {"value": 1, "unit": "a"}, "high": {"value": "2"}},
    {"low": {}, "high": None}, {"start": "2024", "end": "2023-01-01T00:00:00Z"}, {"start": "x"},
    {"event": ["2024-01-01", 5, "2023"]}, {"repeat": {"boundsPeriod": {"end": "2030"}}},
    {"family": "Ñoño", "given": "G", "prefix": [None, "Dr"]}, {"line": "l", "city": ["C"]},
    {"value": "555", "system": "phone"}, {"system": "email", "value": "a@b"},
    {"currency": "EUR", "value": 3}, {"value": "x", "system": 3,
                                      "type": {"coding": [{"code": "MR"}, {}], "text": "t"}},
    {"concept": {"text": "c"}, "reference": {"reference": "Patient/1"}},
    {"type": "NotAType", "identifier": {"value": "v"}}, {"reference": "abc-1", "type": "Group"},
    {"value": "x", "type": {"coding": [{"code": ""}, {"system": "s", "code": "MR"}]}},
    "urn:x", "a:b", "Patient/1|2", "http://x/fhir/Patient/1/_history/2", 12345678901234567890,
    {"concept": "c", "reference": "Patient/1"}, {"concept": ["c"]}, {"reference": ""},
    [{"concept": "c"}, {"concept": {"text": "t"}, "reference": {"reference": "#c1"}}, "Group/1"],
]
#: keys a resource of any type may get (choices, contained targets, odd ones)
_EXTRA_KEYS = ["valueQuantity", "valueString", "valueCodeableConcept", "valueBoolean",
               "valueDateTime", "valuePeriod", "valueRange", "effectivePeriod",
               "effectiveDateTime", "effectiveTiming", "deceasedBoolean", "deceasedDateTime",
               "_deceasedBoolean", "subject", "patient", "status", "code", "identifier", "name",
               "telecom", "address", "period", "date", "url", "version", "meta", "component",
               "occurrenceTiming", "extension", "notAnElement"]
_CONTAINED = [{"resourceType": "Practitioner", "id": "c1"}, {"resourceType": ["X"], "id": "c2"},
              {"resourceType": "Patient", "id": ["c3"]}]


def _mutate(rnd: random.Random, resource: dict) -> None:
    """One random change somewhere in the resource (never its resourceType)."""
    kind = rnd.randrange(6)
    if kind == 0:
        resource[rnd.choice(_EXTRA_KEYS)] = copy.deepcopy(rnd.choice(_ODD))
        return
    if kind == 1:
        resource["contained"] = copy.deepcopy(rnd.sample(_CONTAINED, rnd.randrange(1, 4)))
        return
    # a random container inside the resource
    node: dict | list = resource
    for _ in range(rnd.randrange(1, 5)):
        keys = [k for k in (node if isinstance(node, dict) else range(len(node)))
                if k != "resourceType" and isinstance(node[k], (dict, list)) and node[k]]
        if not keys:
            break
        node = node[rnd.choice(keys)]
    keys = [k for k in (node if isinstance(node, dict) else range(len(node)))
            if k != "resourceType"]
    if not keys:
        return
    k = rnd.choice(keys)
    if kind == 2:
        node[k] = copy.deepcopy(rnd.choice(_ODD))
    elif kind == 3 and isinstance(node, dict):
        del node[k]
    elif kind == 4:
        node[k] = [node[k], None] if not isinstance(node[k], list) else (node[k][:1] or None)
    elif isinstance(node, list):
        node.append(copy.deepcopy(node[k]))  # a duplicate
    else:
        node[k] = copy.deepcopy(rnd.choice(_ODD))


def test_compiled_extract_agrees_on_randomly_mutated_examples():
    rnd = random.Random(20261123)
    examples = all_example_resources()
    checked = 0
    for resource in examples:
        for _ in range(30):
            mutant = copy.deepcopy(resource)
            for _ in range(rnd.randrange(1, 6)):
                _mutate(rnd, mutant)
            fast = extract(mutant)
            assert Counter(fast) == Counter(interpreted(mutant)), (mutant["resourceType"], mutant)
            assert Counter(extract(mutant)) == Counter(fast)  # again (memo rows)
            checked += 1
    assert checked == 30 * len(examples)


def test_compiled_extract_agrees_on_odd_top_level_values():
    """Every element a parameter of the type reads (and a few more) set to every odd value."""
    bases = [example(name) for name in ("Observation-f001.json", "Patient-example.json",
                                         "Encounter-f001.json", "Appointment-example.json")]
    bases += [acme("acme-101")]
    checked = 0
    for base in bases:
        plan = extract_module._compiled_plan(base["resourceType"])
        for key in dict.fromkeys([*base, *plan.by_key, *_EXTRA_KEYS]):
            if key == "resourceType" or not (key in base or plan.by_key.get(key)):
                continue  # an unknown key nothing reads (then nothing changes)
            for value in _ODD:
                mutant = {**base, key: value}  # extraction does not change its input
                assert Counter(extract(mutant)) == Counter(interpreted(mutant)), (key, value)
                checked += 1
            with_contained = {**base, key: {"reference": "#c2"}, "contained": _CONTAINED}
            assert Counter(extract(with_contained)) == Counter(interpreted(with_contained)), key
    assert checked > 4000


def test_compiled_extract_agrees_for_every_parameter_and_element_type(custom):
    """A parameter of each type on elements of every type (value[x], a CodeableReference)."""
    for ptype in ("token", "string", "reference", "date", "number", "quantity", "uri"):
        register({"resourceType": "SearchParameter", "url": f"http://example.org/sp/x-{ptype}",
                  "code": f"x-{ptype}", "base": ["Observation", "Procedure"], "type": ptype,
                  "expression": "Observation.value | Observation.component.value | "
                                "Procedure.reason | Procedure.reason.reference"})
    choices = [f"value{c[:1].upper()}{c[1:]}"
               for c in fhirpath.model().choices["Observation.value"]]
    bases = [{"resourceType": "Observation", "status": "final", "contained": _CONTAINED},
             {"resourceType": "Procedure", "status": "done"}]
    checked = 0
    for base in bases:
        keys = choices + ["component"] if base["resourceType"] == "Observation" else ["reason"]
        for key in keys:
            for value in _ODD:
                mutant = {**base, key: [{"code": {"text": "c"}, "valueString": "v"}, {
                    k: value for k in choices}] if key == "component" else value}
                assert Counter(extract(mutant)) == Counter(interpreted(mutant)), (key, value)
                checked += 1
    assert checked > 1000


def test_odd_contained_targets_fail_only_their_parameter():
    base = {"resourceType": "Encounter", "id": "e1", "status": "planned",
            "contained": [{"resourceType": ["X"], "id": "c2"}, {"resourceType": "Practitioner",
                                                                "id": "pr1"}]}
    odd = {**base, "subject": {"reference": "#c2"},
           "participant": [{"actor": {"reference": "#pr1"}}]}
    got = extract(odd)
    assert Counter(got) == Counter(interpreted(odd))
    assert not [r for r in got if r.param == "subject"]  # an unhashable target type: skipped
    assert ReferenceValue("practitioner", "Practitioner", None, None, "#pr1") in got
    assert TokenValue("status", None, "planned") in got


@pytest.mark.parametrize("extra", [
    {}, {"deceasedBoolean": True}, {"deceasedBoolean": False}, {"deceasedDateTime": "2020"},
    {"deceasedBoolean": "false"}, {"deceasedBoolean": None}, {"deceasedBoolean": [True]},
    {"_deceasedBoolean": {"extension": []}}, {"deceasedBoolean": False, "deceasedDateTime": "2"},
    {"deceased": True}, {"deceasedBoolean": 0}, {"deceasedBoolean": 0.0}])
def test_fhirpathpy_parameters_are_kept_by_the_values_they_read(extra):
    deceased = param("Patient", "deceased")
    patient = {"resourceType": "Patient", "id": "p", "gender": "male", **extra}
    expected = extract_param(patient, deceased, fast=False)
    for _ in range(2):  # computed, then kept
        assert rows(patient, "deceased") == expected, extra


def test_first_of_a_union_agrees_with_fhirpathpy():
    """``Appointment.date`` = ``(start | requestedPeriod.start).first()``: evaluated on plain
    values without fhirpathpy, on others with it."""
    date = param("Appointment", "date")
    starts = ["2013-12-10T09:00:00Z", "", "x", None, 5, True, ["2014", "2015"], [["2014"]],
              {"x": 1}, {"resourceType": "Patient"}]
    periods = [None, [], {}, [{}], [{"start": "2012"}, {"start": "2011"}], [{"start": ""}],
               [None, {"start": "2012"}], [[{"start": "2012"}]], {"start": "2012"},
               [{"start": ["2012"]}], [{"_start": {"id": "x"}}, {"start": "2012"}],
               [{"resourceType": "Patient", "start": "2012"}], "2012", [{"start": 5}]]
    for start in starts:
        for period in periods:
            for extension in (None, {"id": "x"}):
                appointment = {"resourceType": "Appointment", "status": "booked"}
                for key, value in (("start", start), ("requestedPeriod", period),
                                   ("_start", extension)):
                    if value is not None:
                        appointment[key] = value
                expected = extract_param(appointment, date, fast=False)
                assert rows(appointment, "date") == expected, appointment


def _date_or_none(text: str):
    try:
        return date_range(text)
    except BadRequest:
        return None


def test_fast_date_ranges_match_date_range():
    rnd = random.Random(7)

    def two(*fixed: str) -> str:
        return rnd.choice([*fixed, f"{rnd.randrange(100):02d}"])

    fixed = ["2024", "2024-02", "2024-02-29", "2023-02-29", "0000-01-01", "0001-01-01",
             "9999-12-31", "9999-12-30", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999",
             "9999-12-31T23:59:59.9999999-05:00", "0001-01-01T00:00:00+14:00",
             "2026-11-23T03:20:00.123456Z", "2024-01-01T10:00", "2024-01-01T10:00Z",
             "2024-01-01T10:00:00.1234567890Z", "2024-01-01T10:00:00.", " 2024-01-01",
             "2024-01-01\n", "٢٠٢٤-01-01", "2024-01-01Z", "2024-01-01T10:00:00+24:00",
             "2024-01-01T10:00:00-23:59", "2024-01-01T10:00:00+05:99", "2024-1-01", ""]
    values = list(fixed)
    for _ in range(20000):
        year = rnd.choice(["0000", "0001", "1970", "2024", "9999", f"{rnd.randrange(10000):04d}"])
        value = f"{year}-{two('01', '02', '12', '13', '00')}-{two('01', '28', '29', '31', '00')}"
        if rnd.random() < 0.8:
            value += f"T{two('00', '23', '24')}:{two('00', '59', '60')}"
            if rnd.random() < 0.8:
                value += f":{two('00', '59', '60')}"
                if rnd.random() < 0.5:
                    value += "." + "".join(rnd.choices("0123456789", k=rnd.randrange(11)))
            value += rnd.choice(["", "Z", f"{rnd.choice('+-')}{two('00', '14', '23', '24')}:"
                                           f"{two('00', '30', '59', '60')}", "+0100", "z"])
        values.append(value)
    for value in values:
        assert extract_module._dates.__wrapped__(value) == _date_or_none(value), value


def test_number_ranges_keep_json_types_apart():
    for value, text in [(1, "1"), (1.0, "1.0"), ("1.0", "1.0"), (6.3, "6.3"), (6.30, "6.3"),
                        (-0.0, "-0.0"), (0.0, "0.0"), ("1.50", "1.50"), (Decimal("2.0"), "2.0")]:
        for _ in range(2):  # computed, then cached
            d, low, high = extract_module._number_range(value)
            assert str(d) == text and (low, high) == extract_module.precision_range(Decimal(text))
            assert [str(x) for x in (low, high)] == [str(x) for x in
                                                     extract_module.precision_range(Decimal(text))]
    assert extract_module._number_range(True) is None
    assert extract_module._number_range("NaN") is None
