"""Search groundwork: the extracted R5 search parameters, FHIRPath handling, index extraction."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
import tarfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from fhir_ctms.resources.dates import date_range
from fhir_ctms.search import fhirpath
from fhir_ctms.search.extract import (
    MAX_US,
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
ACME = json.loads((ROOT / "examples" / "acme-101-study.json").read_text(encoding="utf-8"))


def acme(rid: str) -> dict:
    return copy.deepcopy(next(e["resource"] for e in ACME["entry"] if e["resource"]["id"] == rid))


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
    site = acme("site-uk-01")
    site["period"] = {"start": "2026-03-01", "end": "2027-06"}
    assert rows(site, "status") == [TokenValue("status", None, "active")]
    assert rows(site, "part-of") == [ReferenceValue("part-of", "ResearchStudy", "acme-101")]
    assert ReferenceValue("site", "Location", "loc-site-uk-01") in rows(site, "site")
    assert rows(site, "date") == [DateValue("date", us("2026-03-01"), us("2027-07-01"))]
    assert rows(site, "recruitment-target") == [
        NumberValue("recruitment-target", Decimal(40), Decimal("39.5"), Decimal("40.5"))]
    assert rows(site, "region") == [TokenValue("region", "urn:iso:std:iso:3166", "GB")]
    (state_period,) = rows(site, "progress-status-state-period")
    assert state_period.components == (
        TokenValue("progress-status-state-period", "http://hl7.org/fhir/research-study-status", "active"),
        DateValue("progress-status-state-period", us("2026-04-01"), MAX_US))

    study = acme("acme-101")
    assert TokenValue("identifier", "http://clinicaltrials.gov", "NCT09990101", "clinicaltrials.gov") \
        in rows(study, "identifier")
    assert rows(study, "protocol") == [ReferenceValue("protocol", "PlanDefinition", "protocol-acme-101")]
    assert rows(study, "phase") == [
        TokenValue("phase", "http://hl7.org/fhir/research-study-phase", "phase-2")]
    assert rows(study, "condition") == [TokenValue("condition", None, None, "asthma")]
    assert rows(acme("site-de-01"), "title") == [StringValue(
        "title", "acme-101 at charite universitatsmedizin", "ACME-101 at Charité Universitätsmedizin")]


def test_research_subject_values():
    subject = next(e["resource"] for e in ACME["entry"] if e["resource"]["resourceType"] == "ResearchSubject")
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
    assert rows(patient, "_lastUpdated") == [DateValue("_lastUpdated", us("2026-01-02T03:04:05.678"),
                                                       us("2026-01-02T03:04:05.679"))]
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
            fast.update(extract_param(resource, p))  # raises on any failure
            slow.update(extract_param(resource, p, fast=False))
        assert fast == slow, rtype
        assert fast == set(extract(resource))


def test_odd_input_never_raises(caplog):
    odd = {"resourceType": "Patient", "id": "x", "name": "not-a-list", "birthDate": "1974-13-45",
           "telecom": [None, 5, {"value": None}], "identifier": [{"system": 3}],
           "managingOrganization": {"reference": 7}, "meta": {"lastUpdated": []}}
    assert extract(odd) == [TokenValue("_id", None, "x"), TokenValue("deceased", None, "false")]
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
