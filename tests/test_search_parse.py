"""The search request parser (``fhir_ctms.search.parse``) against R5 search.html: names,
modifiers, chains, ``_has``, every value type, escaping, result parameters, strict and
lenient handling, and the round trip through ``format_query``. Pure: no database, no HTTP."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest

from fhir_ctms.errors import BadRequest
from fhir_ctms.resources.dates import date_range
from fhir_ctms.search.extract import extract_param, normalise, precision_range
from fhir_ctms.search.parameters import param
from fhir_ctms.search.parse import MAX_VALUES, format_query, parse
from fhir_ctms.search.query import Clause, Has, Include, SearchQuery, Sort, Value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(*args, tz=UTC) -> int:
    """Microseconds since 1970 UTC of a datetime."""
    return (datetime(*args, tzinfo=tz) - _EPOCH) // timedelta(microseconds=1)


def q(types: str | tuple[str, ...], query: str, **kw) -> SearchQuery:
    """Parse a query string as a server receives it (percent-decoded, blanks kept)."""
    if isinstance(types, str):
        types = (types,)
    return parse(types, parse_qsl(query, keep_blank_values=True), **kw)


def clause(types, query: str, **kw) -> Clause:
    found = q(types, query, **kw)
    assert len(found.clauses) == 1, found
    return found.clauses[0]


def value(types, query: str, **kw) -> Value:
    c = clause(types, query, **kw)
    assert len(c.values) == 1, c
    return c.values[0]


def bad(types, query: str, *words: str, **kw) -> str:
    """The query is a 400 whose diagnostics contain every word."""
    with pytest.raises(BadRequest) as err:
        q(types, query, **kw)
    for word in words:
        assert word in err.value.diagnostics, err.value.diagnostics
    return err.value.diagnostics


# --------------------------------------------------------------------------- string


def test_string_default_is_normalised_starts_with_text():
    c = clause("Patient", "given=Évé")
    assert (c.param, c.type, c.modifier) == ("given", "string", None)
    assert c.values == (Value("Évé", text="eve"),)


def test_string_exact_keeps_case_and_accents():
    assert value("Patient", "given:exact=Eve").text == "Eve"
    assert clause("Patient", "given:exact=Eve").modifier == "exact"


def test_string_contains_and_text():
    assert clause("Patient", "given:contains=EVE").values[0].text == "eve"
    assert clause("Patient", "name:text=Peter").modifier == "text"


def test_string_value_compares_with_what_extract_stores():
    patient = {"resourceType": "Patient", "name": [{"given": ["Évelyne"]}]}
    stored = extract_param(patient, param("Patient", "given"))
    assert stored[0].normalised.startswith(value("Patient", "given=eve").text)
    assert stored[0].exact == value("Patient", "given:exact=Évelyne").text


# --------------------------------------------------------------------------- token


@pytest.mark.parametrize("text,system,code", [
    ("http://acme.org/patient|2345", "http://acme.org/patient", "2345"),
    ("2345", None, "2345"),
    ("|2345", "", "2345"),
    ("http://acme.org/patient|", "http://acme.org/patient", None),
])
def test_token_forms(text, system, code):
    v = value("Patient", f"identifier={text}")
    assert (v.system, v.code, v.text) == (system, code, None)


def test_token_value_compares_with_what_extract_stores():
    patient = {"resourceType": "Patient",
               "identifier": [{"system": "http://acme.org/patient", "value": "2345"}]}
    stored = extract_param(patient, param("Patient", "identifier"))[0]
    v = value("Patient", "identifier=http://acme.org/patient|2345")
    assert (stored.system, stored.code) == (v.system, v.code)


def test_token_modifiers():
    assert clause("Patient", "gender:not=male").modifier == "not"
    assert value("Patient", "gender:not=male").code == "male"
    assert value("Condition", "code:text=Headache").text == "headache"
    assert value("Condition", "code:code-text=Headache").text == "headache"
    assert value("Condition", "code:below=http://snomed.info/sct|126851005").code == "126851005"
    assert clause("Condition", "code:above=http://snomed.info/sct|3738000").modifier == "above"
    vs = "http://snomed.info/sct?fhir_vs=isa/126851005"
    v = value("Condition", "code:in=http%3A%2F%2Fsnomed.info%2Fsct%3Ffhir_vs%3Disa%2F126851005")
    assert v.text == vs and v.code is None
    assert value("Condition", "code:not-in=ValueSet/123").text == "ValueSet/123"


def test_token_of_type():
    v = value("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053")
    assert (v.type_system, v.type_code, v.text) == (
        "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "446053")
    bad("Patient", "identifier:of-type=MR|446053", "identifier:of-type", "all three")
    bad("Patient", "identifier:of-type=|MR|446053", "all three")
    bad("Patient", "gender:of-type=a|b|c", "Identifier")  # gender is a code, not an Identifier


def test_token_bad_values():
    bad("Patient", "identifier=a|b|c", "identifier", "more than one")
    bad("Patient", "identifier=|", "identifier")


def test_id_is_a_token_on_the_id():
    c = clause("Patient", "_id=23,24")
    assert (c.param, c.type) == ("_id", "token")
    assert [v.code for v in c.values] == ["23", "24"]


def test_tag_and_security_are_tokens():
    v = value("Condition", "_tag=http://acme.org/codes|needs-review")
    assert (v.system, v.code) == ("http://acme.org/codes", "needs-review")
    assert clause("Condition", "_security=R").type == "token"


# --------------------------------------------------------------------------- reference


def test_reference_forms():
    v = value("Observation", "subject=Patient/23")
    assert (v.ref_type, v.ref_id, v.ref_version, v.text) == ("Patient", "23", None, None)
    v = value("Observation", "subject=Patient/23/_history/2")
    assert (v.ref_type, v.ref_id, v.ref_version) == ("Patient", "23", "2")
    v = value("Observation", "subject=23")  # several targets: any type
    assert (v.ref_type, v.ref_id) == (None, "23")
    v = value("Observation", "patient=23")  # the only target
    assert (v.ref_type, v.ref_id) == ("Patient", "23")
    assert clause("Observation", "patient=23").target_type == "Patient"
    v = value("Observation", "subject=http://example.org/fhir/Patient/123")
    assert (v.text, v.ref_type, v.ref_id) == ("http://example.org/fhir/Patient/123", "Patient", "123")


def test_reference_type_modifier():
    c = clause("Observation", "subject:Patient=23")
    assert (c.modifier, c.target_type) == (None, "Patient")
    assert (c.values[0].ref_type, c.values[0].ref_id) == ("Patient", "23")
    bad("Observation", "subject:Patient=Group/1", "subject:Patient", "not a Patient reference")
    bad("Observation", "patient:Group=1", "cannot refer to a Group")
    bad("Observation", "subject:Foo=1", "unknown modifier :Foo")


def test_reference_canonical_and_hierarchy():
    url = "http://example.org/fhir/questionnaire/patient-intake"
    v = value("QuestionnaireResponse", f"questionnaire={url}|3.0")
    assert (v.text, v.ref_version) == (url, "3.0")
    c = clause("QuestionnaireResponse", f"questionnaire:below={url}|1")
    assert c.modifier == "below" and c.values[0].ref_version == "1"
    assert clause("Procedure", "location:below=42").values[0].ref_id == "42"
    assert clause("MedicationAdministration", "encounter:above=21").modifier == "above"
    bad("Observation", "subject=Patient/1|2", "only an absolute")


def test_reference_identifier_modifier_takes_a_token():
    c = clause("Observation", "subject:identifier=http://acme.org/fhir/identifier/mrn|123456")
    assert c.modifier == "identifier"
    assert (c.values[0].system, c.values[0].code) == ("http://acme.org/fhir/identifier/mrn", "123456")


def test_reference_bad_values():
    bad("Observation", "subject=not a reference", "subject", "not a reference")
    bad("Observation", "subject=foo/bar", "not a reference")


def test_profile_is_a_canonical_reference():
    v = value("DiagnosticReport", "_profile=http://hl7.org/fhir/StructureDefinition/lipid")
    assert v.text == "http://hl7.org/fhir/StructureDefinition/lipid"
    v = value("DiagnosticReport", "_profile=StructureDefinition/lipid")
    assert (v.ref_type, v.ref_id) == ("StructureDefinition", "lipid")


# --------------------------------------------------------------------------- date


@pytest.mark.parametrize("text,low,high", [
    ("2024", us(2024, 1, 1), us(2025, 1, 1)),
    ("2024-03", us(2024, 3, 1), us(2024, 4, 1)),
    ("2024-02", us(2024, 2, 1), us(2024, 3, 1)),  # a leap year: 29 days
    ("2024-03-05", us(2024, 3, 5), us(2024, 3, 6)),
    ("2024-03-05T10:00Z", us(2024, 3, 5, 10), us(2024, 3, 5, 10, 1)),
    ("2024-03-05T10:00:30Z", us(2024, 3, 5, 10, 0, 30), us(2024, 3, 5, 10, 0, 31)),
    ("2024-03-05T10:00:30.25Z", us(2024, 3, 5, 10, 0, 30, 250000), us(2024, 3, 5, 10, 0, 30, 260000)),
    ("2024-03-05T10:00:30.123456Z", us(2024, 3, 5, 10, 0, 30, 123456), us(2024, 3, 5, 10, 0, 30, 123457)),
    ("2024-03-05T10:00:00+05:00", us(2024, 3, 5, 5), us(2024, 3, 5, 5, 0, 1)),
    ("2024-03-05T10:00:00-03:30", us(2024, 3, 5, 13, 30), us(2024, 3, 5, 13, 30, 1)),
    ("2024-03-05T10:00:00", us(2024, 3, 5, 10), us(2024, 3, 5, 10, 0, 1)),  # no zone: UTC
])
def test_date_ranges(text, low, high):
    v = value("Patient", f"birthdate={text.replace('+', '%2B')}")
    assert (v.prefix, v.low, v.high) == ("eq", low, high)


def test_date_prefixes():
    v = value("Patient", "birthdate=ge2010-01-01")
    assert (v.prefix, v.low, v.high) == ("ge", us(2010, 1, 1), us(2010, 1, 2))
    for prefix in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"):
        assert value("Patient", f"birthdate={prefix}2010").prefix == prefix


def test_date_compares_with_what_extract_stores():
    patient = {"resourceType": "Patient", "birthDate": "2010-01-01"}
    stored = extract_param(patient, param("Patient", "birthdate"))[0]
    v = value("Patient", "birthdate=2010-01-01")
    assert (v.low, v.high) == (stored.low, stored.high) == date_range("2010-01-01")


def test_date_zone_plus_decoded_as_space_is_restored():
    """An unencoded ``+`` in a URL decodes to a space: ``10:00+05:00`` still means +05:00."""
    v = value("Observation", "date=ge2024-03-05T10:00+05:00")
    assert v.low == us(2024, 3, 5, 5)


def test_date_repeated_is_an_and_range():
    found = q("Procedure", "date=ge2010-01-01&date=le2011-12-31")
    assert [c.values[0].prefix for c in found.clauses] == ["ge", "le"]


@pytest.mark.parametrize("text", [
    "2024-13", "2024-02-30", "23 May 2009", "2024-03-05T10", "2024-03-05T25:00Z",
    "xx2024", "GE2024", "ge", "2024/03/05", "2024-3-5",
])
def test_bad_dates_are_400(text):
    bad("Patient", f"birthdate={text}", "birthdate")


def test_lastupdated_is_a_date():
    c = clause("Observation", "_lastUpdated=gt2010-10-01")
    assert (c.type, c.values[0].prefix, c.values[0].low) == ("date", "gt", us(2010, 10, 1))


# --------------------------------------------------------------------------- number, quantity


def test_number_precision_ranges():
    v = value("ResearchStudy", "recruitment-target=100")
    assert (v.number, v.low, v.high) == (Decimal("100"), Decimal("99.5"), Decimal("100.5"))
    v = value("ResearchStudy", "recruitment-target=100.00")
    assert (v.low, v.high) == (Decimal("99.995"), Decimal("100.005"))
    v = value("RiskAssessment", "probability=gt0.8")
    assert (v.prefix, v.number, v.low, v.high) == ("gt", Decimal("0.8"), Decimal("0.75"), Decimal("0.85"))
    v = value("RiskAssessment", "probability=gt8e-1")
    assert v.number == Decimal("0.8")
    assert (v.low, v.high) == precision_range(Decimal("8e-1"))  # as extract.py ranges it


def test_number_compares_with_what_extract_stores():
    study = {"resourceType": "ResearchStudy", "status": "active",
             "recruitment": {"targetNumber": 100}}
    stored = extract_param(study, param("ResearchStudy", "recruitment-target"))[0]
    v = value("ResearchStudy", "recruitment-target=100")
    assert (v.number, v.low, v.high) == (stored.value, stored.low, stored.high)


@pytest.mark.parametrize("text", ["abc", "xx100", "1,5x", "1_000", "NaN", "Infinity", ".5", "+5"])
def test_bad_numbers_are_400(text):
    bad("ResearchStudy", f"recruitment-target={text}", "recruitment-target")


def test_quantity_forms():
    v = value("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg")
    assert (v.prefix, v.number, v.system, v.code) == ("eq", Decimal("5.4"), "http://unitsofmeasure.org", "mg")
    assert (v.low, v.high) == (Decimal("5.35"), Decimal("5.45"))
    v = value("Observation", "value-quantity=5.40e-3|http://unitsofmeasure.org|g")
    assert (v.low, v.high) == (Decimal("0.005395"), Decimal("0.005405"))
    v = value("Observation", "value-quantity=5.4||mg")
    assert (v.system, v.code) == (None, "mg")
    v = value("Observation", "value-quantity=5.4")
    assert (v.system, v.code, v.number) == (None, None, Decimal("5.4"))
    v = value("Observation", "value-quantity=le5.4|http://unitsofmeasure.org|mg")
    assert v.prefix == "le"
    assert value("Observation", "value-quantity=ap5.4|http://unitsofmeasure.org|mg").prefix == "ap"


def test_bad_quantities_are_400():
    bad("Observation", "value-quantity=5.4|mg", "value-quantity", "number|system|code")
    bad("Observation", "value-quantity=mg", "not a number")
    bad("Observation", "value-quantity=zz5.4", "not a prefix")


# --------------------------------------------------------------------------- uri


def test_uri_forms_and_modifiers():
    assert value("ValueSet", "url=http://acme.org/fhir/ValueSet/123").text == "http://acme.org/fhir/ValueSet/123"
    assert clause("ValueSet", "url:below=http://acme.org/fhir/").modifier == "below"
    assert clause("ValueSet", "url:above=http://acme.org/fhir/ValueSet/123/_history/5").modifier == "above"
    assert value("ValueSet", "url=urn:oid:1.2.3.4.5").text == "urn:oid:1.2.3.4.5"
    assert clause("Observation", "_source=http://example.org/source").type == "uri"
    bad("ValueSet", "url:exact=x", "url:exact", ":exact")


# --------------------------------------------------------------------------- composite


def test_composite_components_typed_by_their_parameters():
    v = value("Observation", "code-value-quantity=http://loinc.org|12907-2$ge150")
    token, quantity = v.components
    assert (token.system, token.code) == ("http://loinc.org", "12907-2")
    assert (quantity.prefix, quantity.number, quantity.low, quantity.high) == (
        "ge", Decimal("150"), Decimal("149.5"), Decimal("150.5"))


def test_composite_or_values_and_unknown_component_definitions():
    c = clause("Group", "characteristic-value=gender$mixed,owner$Eve")
    assert [[x.code for x in v.components] for v in c.values] == [["gender", "mixed"], ["owner", "Eve"]]
    # ResearchStudy-state is not in the R5 package: typed from the element (CodeableConcept)
    v = value("ResearchStudy", "progress-status-state-period=active$ge2024")
    assert v.components[0].code == "active"
    assert (v.components[1].prefix, v.components[1].low) == ("ge", us(2024, 1, 1))


def test_composite_bad_values_and_modifiers():
    bad("Observation", "code-value-quantity=http://loinc.org|12907-2", "2 joined by '$'")
    bad("Observation", "code-value-quantity=a$b$c", "code-value-quantity")
    bad("Observation", "code-value-quantity=a$xx5", "not a prefix")
    bad("Observation", "code-value-quantity:missing=true", ":missing", "composite")


def test_composite_at_the_end_of_a_chain():
    c = clause("DiagnosticReport",
               "result.code-value-quantity=http://loinc.org|2823-3$gt5.4|http://unitsofmeasure.org|mmol/L")
    assert (c.param, c.target_type, c.chain.param, c.chain.type) == (
        "result", "Observation", "code-value-quantity", "composite")
    quantity = c.chain.values[0].components[1]
    assert (quantity.prefix, quantity.code) == ("gt", "mmol/L")


# --------------------------------------------------------------------------- :missing, modifiers


def test_missing():
    c = clause("Patient", "given:missing=true")
    assert (c.modifier, c.values[0].text) == ("missing", "true")
    assert value("Patient", "birthdate:missing=false").text == "false"
    assert clause("Observation", "subject:missing=true").modifier == "missing"
    bad("Patient", "given:missing=yes", "given:missing", "true or false")


@pytest.mark.parametrize("strict", [False, True])
def test_unknown_or_disallowed_modifiers_are_always_400(strict):
    """search.html#modifiers: "a server SHALL reject any search request that contains a search
    parameter with an unsupported modifier"."""
    bad("Patient", "given:foo=x", "given:foo", "unknown modifier", strict=strict)
    bad("Patient", "birthdate:exact=2010", "birthdate:exact", "not supported on date", strict=strict)
    bad("Condition", "onset-date:text=1995", "onset-date:text", strict=strict)
    bad("Patient", "gender:contains=ma", "gender:contains", strict=strict)
    bad("Observation", "subject:text=peter", "subject:text", strict=strict)


def test_modifiers_can_be_switched_to_lenient(monkeypatch):
    """The one switch for unsupported modifiers: ignored (not strict) instead of a 400."""
    from fhir_ctms.search import parse as module
    monkeypatch.setattr(module, "REJECT_UNSUPPORTED_MODIFIERS", False)
    found = q("Patient", "given:foo=x&birthdate:exact=2010&family=y")
    assert [c.param for c in found.clauses] == ["family"]
    assert [name for name, _ in found.ignored] == ["given:foo", "birthdate:exact"]
    bad("Patient", "given:foo=x", "given:foo", strict=True)


def test_id_not():
    c = clause("Patient", "_id:not=23")
    assert (c.param, c.modifier, c.values[0].code) == ("_id", "not", "23")


def test_prefix_letters_on_unordered_types_are_part_of_the_value():
    """Prefixes exist only for number, date and quantity: ``family=gevers`` is a name."""
    assert value("Patient", "family=gevers").text == "gevers"
    assert value("Patient", "gender=ge").code == "ge"


# --------------------------------------------------------------------------- escaping, OR, AND


def test_escapes():
    assert [v.code for v in clause("Observation", "code=a,b").values] == ["a", "b"]
    v = value("Observation", r"code=a\,b")
    assert (v.raw, v.code) == (r"a\,b", "a,b")
    v = value("Patient", r"identifier=sys\|x|12\$3")
    assert (v.system, v.code) == ("sys|x", "12$3")
    assert value("Patient", r"given=xx\\xx").text == "xx\\xx"
    v = value("Group", r"characteristic-value=a\$b$c")
    assert [c.code for c in v.components] == ["a$b", "c"]
    url = "http://acme.org/fhir/ValueSet/124,ValueSet/125"
    c = clause("ValueSet", r"url=http://acme.org/fhir/ValueSet/123,http://acme.org/fhir/ValueSet/124\,ValueSet/125")
    assert [v.text for v in c.values] == ["http://acme.org/fhir/ValueSet/123", url]


@pytest.mark.parametrize("text", [r"xx\xx", "xx\\", r"a\b"])
def test_bad_escapes_are_400(text):
    bad("Patient", f"given={text}", "given", "escaping")


def test_empty_values_are_ignored():
    found = q("Patient", "given=&family=,&name=a,,b")
    assert [c.param for c in found.clauses] == ["name"]
    assert [v.text for v in found.clauses[0].values] == ["a", "b"]
    assert found.used == (("name", "a,b"),)
    assert found.ignored == ()


def test_and_by_repetition():
    found = q("Patient", "given=a,b&given=c")
    assert [[v.text for v in c.values] for c in found.clauses] == [["a", "b"], ["c"]]


def test_at_most_100_values():
    ok = ",".join(str(i) for i in range(MAX_VALUES))
    assert len(clause("Patient", f"_id={ok}").values) == MAX_VALUES
    bad("Patient", f"_id={ok},x", f"At most {MAX_VALUES}")
    half = ",".join(str(i) for i in range(50))
    bad("Patient", f"_id={half}&given={half}&family=x", f"At most {MAX_VALUES}")
    bad("Patient", f"_id={ok}&_include=Patient:organization", f"At most {MAX_VALUES}")


def test_nul_is_400():
    with pytest.raises(BadRequest, match="NUL"):
        parse(("Patient",), [("given", "a\x00b")])


# --------------------------------------------------------------------------- chaining


def test_chain_with_type_modifier():
    c = clause("DiagnosticReport", "subject:Patient.name=peter")
    assert (c.param, c.type, c.values, c.target_type) == ("subject", "reference", (), "Patient")
    assert (c.chain.param, c.chain.type, c.chain.values[0].text) == ("name", "string", "peter")


def test_chain_through_a_single_target():
    c = clause("Observation", "patient.identifier=http://example.com/fhir/mrn|1234")
    assert c.target_type == "Patient"
    assert (c.chain.values[0].system, c.chain.values[0].code) == ("http://example.com/fhir/mrn", "1234")


def test_chain_through_several_targets_needs_one_with_the_parameter():
    c = clause("DiagnosticReport", "subject.name=peter")
    assert c.target_type is None and c.chain.param == "name"
    c = clause("Patient", "general-practitioner.name=Joe")  # Organization and Practitioner
    assert c.target_type is None and c.chain.type == "string"


def test_chain_several_levels():
    c = clause("Observation", "subject:Patient.general-practitioner:Practitioner.name=Joe")
    assert (c.param, c.target_type) == ("subject", "Patient")
    assert (c.chain.param, c.chain.target_type) == ("general-practitioner", "Practitioner")
    assert (c.chain.chain.param, c.chain.chain.values[0].text) == ("name", "joe")
    c = clause("ResearchSubject", "study.part-of.title=ACME")
    assert (c.target_type, c.chain.target_type, c.chain.chain.param) == (
        "ResearchStudy", "ResearchStudy", "title")


def test_chain_errors():
    bad("Patient", "name.family=x", "name.family", "only reference parameters")
    bad("Observation", "subject:identifier.name=x", "cannot be chained")
    bad("Observation", "patient:Group.name=x", "cannot refer to a Group")
    bad("ResearchSubject", "study.part-of.part-of.part-of.part-of.title=x", "levels")
    found = q("Observation", "subject:Patient.foo=x")
    assert found.clauses == () and found.ignored[0][0] == "subject:Patient.foo"
    bad("Observation", "subject:Patient.foo=x", "subject:Patient.foo", "foo", strict=True)


# --------------------------------------------------------------------------- _has


def test_has():
    (h,) = q("Patient", "_has:Observation:patient:code=1234-5").clauses
    assert isinstance(h, Has)
    assert (h.source_type, h.param, h.then.param, h.then.values[0].code) == (
        "Observation", "patient", "code", "1234-5")


def test_has_or_values_and_repetition():
    found = q("Patient", "_has:Observation:patient:code=123,456&_has:Observation:patient:code=789")
    assert [[v.code for v in h.then.values] for h in found.clauses] == [["123", "456"], ["789"]]


def test_has_nested_and_with_a_modifier():
    (h,) = q("Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent=MyUserId").clauses
    assert (h.source_type, h.then.source_type, h.then.param, h.then.then.param) == (
        "Observation", "AuditEvent", "entity", "agent")
    (h,) = q("Patient", "_has:Observation:patient:code:not=1234-5").clauses
    assert h.then.modifier == "not"


def test_has_then_a_chain():
    (h,) = q("Patient", "_has:ResearchSubject:patient:study.title=ACME").clauses
    assert (h.source_type, h.param, h.then.param, h.then.target_type) == (
        "ResearchSubject", "patient", "study", "ResearchStudy")
    assert (h.then.chain.param, h.then.chain.values[0].text) == ("title", "acme")


def test_has_errors():
    bad("Patient", "_has:Observation:code:code=1", "_has:Observation:code:code", "reference")
    bad("Patient", "_has:Foo:patient:code=1", "not a resource type")
    bad("Patient", "_has:Observation:patient=1", "_has:[type]")
    found = q("Patient", "_has:Observation:nope:code=1")
    assert found.clauses == () and found.ignored[0][0] == "_has:Observation:nope:code"
    bad("Patient", "_has:Observation:nope:code=1", "nope", strict=True)


# --------------------------------------------------------------------------- common parameters


@pytest.mark.parametrize("name", ["_text", "_content", "_list", "_filter", "_query"])
def test_unsupported_common_parameters(name):
    found = q("Condition", f"{name}=bone&code=x")
    assert [c.param for c in found.clauses] == ["code"]
    assert found.ignored[0][0] == name and found.used == (("code", "x"),)
    bad("Condition", f"{name}=bone", name, strict=True)


def test_special_parameters_are_unsupported():
    found = q("Location", "near=42.25|-83.69|10|km")
    assert found.clauses == () and "special" in found.ignored[0][1]
    bad("Location", "near=42.25|-83.69", "near", strict=True)


def test_contained_defaults_are_no_ops():
    assert q("Patient", "_contained=false&_containedType=container") == SearchQuery(types=("Patient",))
    found = q("Patient", "_contained=true")
    assert found.ignored == (("_contained", "_contained is not supported"),)
    bad("Patient", "_contained=both", "_contained", strict=True)


def test_caller_parameters_are_left_alone():
    found = q("Patient", "_format=json&_pretty=true&_cursor=abc", strict=True)
    assert found == SearchQuery(types=("Patient",))


# --------------------------------------------------------------------------- _type


def test_type_at_system_level():
    found = q((), "_type=Observation,Condition&code=http://loinc.org|1234-5&_lastUpdated=ge2024")
    assert found.types == ("Observation", "Condition")
    assert [c.param for c in found.clauses] == ["code", "_lastUpdated"]
    assert found.used[0] == ("_type", "Observation,Condition")


def test_type_allows_only_parameters_common_to_every_type():
    found = q((), "_type=Observation,Condition&value-quantity=5")
    assert found.clauses == () and found.ignored[0][0] == "value-quantity"
    bad((), "_type=Observation,Condition&value-quantity=5", "value-quantity", strict=True)
    found = q((), "code=x&_id=1")  # no _type: the parameters of every resource only
    assert [c.param for c in found.clauses] == ["_id"] and found.ignored[0][0] == "code"


def test_type_errors_and_intersection():
    bad((), "_type=Observation,Foo", "_type", "Foo")
    assert q("Observation", "_type=Observation,Condition").types == ("Observation",)
    bad("Patient", "_type=Observation", "_type")
    assert q((), "_type=Observation,Condition&_type=Condition").types == ("Condition",)


# --------------------------------------------------------------------------- result parameters


def test_count():
    assert q("Patient", "_count=10").count == 10
    assert q("Patient", "_count=0").count == 0
    assert q("Patient", "_count=5000").count == 1000
    assert q("Patient", "_count=50", max_count=20).count == 20
    assert q("Patient", "").count is None
    for text in ("-1", "abc", "1.5", "1e3", " 5"):
        bad("Patient", f"_count={text}", "_count")
    bad("Patient", "_count=1&_count=2", "only once")


def test_sort():
    found = q("Observation", "_sort=-date,status")
    assert found.sort == (Sort("date", "date", True), Sort("status", "token", False))
    assert q("Patient", "_sort=_id,-_lastUpdated").sort == (
        Sort("_id", "token"), Sort("_lastUpdated", "date", True))
    assert q((), "_type=Observation,Condition&_sort=code").sort == (Sort("code", "token"),)
    bad("Observation", "_sort=foo", "_sort", "foo")
    bad("Observation", "_sort=-date,foo", "_sort", "foo", strict=False)
    bad("Observation", "_sort=code-value-quantity", "composite")
    bad("Observation", "_sort=date&_sort=status", "only once")
    bad("Observation", "_sort:asc=date", "_sort")


def test_include_and_revinclude():
    found = q("ResearchSubject", "_include=ResearchSubject:study&_include=ResearchSubject:subject:Patient"
              "&_revinclude=Provenance:target&_include:iterate=ResearchStudy:part-of")
    assert found.includes == (
        Include("ResearchSubject", "study"),
        Include("ResearchSubject", "subject", "Patient"),
        Include("ResearchStudy", "part-of", iterate=True),
    )
    assert found.revincludes == (Include("Provenance", "target", reverse=True),)
    assert q("Observation", "_include=*").includes == (Include("*", "*"),)
    assert q("Observation", "_revinclude=Provenance:*").revincludes == (
        Include("Provenance", "*", reverse=True),)


@pytest.mark.parametrize("text,word", [
    ("_include=Observation:code", "not a reference"),
    ("_include=Foo:bar", "not a resource type"),
    ("_include=Observation:nope", "no search parameter"),
    ("_include=Observation:subject:Foo", "not a resource type"),
    ("_include=Observation:patient:Group", "cannot refer to a Group"),
    ("_include=Observation:patient,Observation:subject", "repeat the parameter"),
    ("_include=Observation", "expected"),
    ("_include=Observation:*:Patient", "target type"),
    ("_include:recurse=Observation:patient", "iterate"),
])
def test_bad_includes_are_400(text, word):
    bad("Observation", text, word)


def test_total_summary_elements():
    found = q("Patient", "_total=accurate&_summary=count&_elements=identifier,active,link")
    assert (found.total, found.summary, found.elements) == ("accurate", "count", ("identifier", "active", "link"))
    assert q("Patient", "").total == "none"
    assert q("Patient", "_elements=Patient.gender").elements == ("Patient.gender",)
    bad("Patient", "_total=all", "_total")
    bad("Patient", "_summary=yes", "_summary")
    bad("Patient", "_elements=a b", "_elements")
    bad("Patient", "_summary=text&_include=Patient:organization", "_summary=text")


# --------------------------------------------------------------------------- strict vs lenient


def test_unknown_parameter_lenient_is_reported_and_left_out_of_the_self_link():
    found = q("Patient", "foo=bar&given=eve")
    assert found.ignored == (("foo", "unknown search parameter 'foo' for Patient"),)
    assert found.used == (("given", "eve"),)
    assert format_query(found) == "given=eve"


def test_unknown_parameter_strict_is_400_naming_it():
    bad("Patient", "foo=bar&given=eve", "'foo'", strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_malformed_values_of_known_parameters_are_always_400(strict):
    bad("Patient", "birthdate=yesterday", "birthdate", strict=strict)
    bad("Patient", "_count=-1", "_count", strict=strict)
    bad("Observation", "_sort=nope", "_sort", strict=strict)


# --------------------------------------------------------------------------- compartments


def test_compartment():
    found = q("ResearchSubject", "status=on-study", compartment=("Patient", "1"))
    assert found.compartment == ("Patient", "1")
    with pytest.raises(BadRequest, match="not in the Patient compartment"):
        parse(("ResearchStudy",), [], compartment=("Patient", "1"))
    with pytest.raises(BadRequest, match="not a compartment"):
        parse(("ResearchSubject",), [], compartment=("Study", "1"))
    with pytest.raises(BadRequest, match="valid id"):
        parse(("ResearchSubject",), [], compartment=("Patient", "a b"))


# --------------------------------------------------------------------------- CTMS searches


def test_ctms_subjects_of_a_patient_with_their_study():
    found = q("ResearchSubject", "patient=Patient/1&_include=ResearchSubject:study")
    (c,) = found.clauses
    assert (c.param, c.target_type, c.values[0].ref_type, c.values[0].ref_id) == (
        "patient", "Patient", "Patient", "1")
    assert found.includes == (Include("ResearchSubject", "study"),)


def test_ctms_active_substudies():
    part_of, status = q("ResearchStudy", "part-of=ResearchStudy/x&status=active").clauses
    assert (part_of.values[0].ref_type, part_of.values[0].ref_id) == ("ResearchStudy", "x")
    assert (status.type, status.values[0].code) == ("token", "active")


def test_ctms_more():
    found = q("ResearchSubject", "study=ResearchStudy/acme-101&status=on-study,screening"
              "&date=ge2024-01-01&_sort=-date&_count=50&_total=accurate")
    assert [c.param for c in found.clauses] == ["study", "status", "date"]
    assert [v.code for v in found.clauses[1].values] == ["on-study", "screening"]
    (h,) = q("Patient", "_has:ResearchSubject:patient:study=ResearchStudy/acme-101").clauses
    assert (h.source_type, h.then.values[0].ref_id) == ("ResearchSubject", "acme-101")
    assert q("ResearchStudy", "_revinclude=ResearchSubject:study").revincludes == (
        Include("ResearchSubject", "study", reverse=True),)
    assert value("ResearchStudy", "recruitment-target=ge100").prefix == "ge"
    c = clause("ResearchSubject", "study.title:contains=acme")
    assert (c.target_type, c.chain.modifier, c.chain.values[0].text) == ("ResearchStudy", "contains", "acme")


# --------------------------------------------------------------------------- format_query


ROUND_TRIPS = [
    ("Patient", "birthdate=ge2010-01-01&given:exact=Eve&identifier=http://acme.org/patient|2345"),
    ("DiagnosticReport", "subject:Patient.name=peter&_sort=-date"),
    ("Patient", "_has:Observation:patient:code=1234-5,5678-9&_count=20"),
    ("Observation", "code-value-quantity=http://loinc.org|12907-2$ge150&_total=accurate"),
    ("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg&_sort=-date,status"),
    ("ResearchSubject", "patient=Patient/1&_include=ResearchSubject:study&_include:iterate=ResearchStudy:part-of"),
    ("ResearchStudy", "part-of=ResearchStudy/x&status=active&_revinclude=ResearchSubject:study"),
    ("Observation", r"code=a\,b,c&code:text=heart attack&date=lt2024-03-05T10:00:00%2B05:00"),
    ((), "_type=Observation,Condition&_lastUpdated=gt2010-10-01&_summary=count"),
    ("Patient", "given=Évé&_elements=identifier,name&_count=0&name:missing=false"),
    ("QuestionnaireResponse", "questionnaire:below=http://example.org/fhir/questionnaire/patient-intake|1"),
    ("Patient", r"identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|44\|6&_sort=_id"),
    ("Group", "characteristic-value=gender$mixed,owner$Eve&_include=*"),
    ("Observation", "subject:identifier=http://acme.org/mrn|1&subject:Patient=23&_count=5000"),
]


@pytest.mark.parametrize("types,query", ROUND_TRIPS)
def test_format_query_round_trips(types, query):
    types = (types,) if isinstance(types, str) else types
    first = q(types, query)
    assert first.ignored == ()
    text = format_query(first)
    assert parse(types, parse_qsl(text, keep_blank_values=True)) == first


def test_format_query_leaves_out_what_was_ignored_and_appends_extra():
    found = q("Patient", "foo=1&given=eve&_count=10&_format=json")
    text = format_query(found, [("_cursor", "abc")])
    assert text == "given=eve&_count=10&_cursor=abc"
    again = parse(("Patient",), parse_qsl(text))
    assert again == replace(found, ignored=())


def test_format_query_is_readable():
    found = q("DiagnosticReport", "subject:Patient.name=peter&date=ge2024,le2025&_sort=-date")
    assert format_query(found) == "subject:Patient.name=peter&date=ge2024,le2025&_sort=-date"


def test_self_link_values_are_the_non_empty_or_values():
    found = q("Patient", "given=a,,b")
    assert format_query(found) == "given=a,b"


def test_normalise_is_the_extract_helper():
    assert value("Patient", "family=ÅNGSTRÖM").text == normalise("ÅNGSTRÖM") == "angstrom"
