"""Unit tests for fhir_ctms.resources.bindings (required terminology bindings)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from fhir_ctms.resources.bindings import BindingIssue, check_required_bindings

EXAMPLES_DIR = Path(__file__).parent / "data" / "r5-examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.json"))
EXAMPLES_WITH_STATUS = [
    p
    for p in EXAMPLE_FILES
    if isinstance(json.loads(p.read_text(encoding="utf-8")).get("status"), str)
]
DEFINITIONS = (
    Path(__file__).resolve().parent.parent / "fhir_ctms" / "definitions" / "required-bindings.json"
)

PUBLICATION_STATUS = "http://hl7.org/fhir/ValueSet/publication-status|5.0.0"
GENDER = "http://hl7.org/fhir/ValueSet/administrative-gender|5.0.0"
DEVICE_ASSOC_STATUS = "http://hl7.org/fhir/ValueSet/deviceassociation-status|5.0.0"
DEVICE_ASSOC_SYSTEM = "http://hl7.org/fhir/deviceassociation-status"
DAYS_OF_WEEK = "http://hl7.org/fhir/ValueSet/days-of-week|5.0.0"


def expressions(resource: dict) -> list[str]:
    return [issue.expression for issue in check_required_bindings(resource)]


def study(**fields) -> dict:
    return {"resourceType": "ResearchStudy", "id": "s1", "status": "active", **fields}


# --------------------------------------------------------------------------- basics


def test_bogus_research_study_status_is_rejected():
    issues = check_required_bindings(study(status="bogus"))
    assert issues == [
        BindingIssue(
            expression="ResearchStudy.status",
            message=f"Value 'bogus' is not in the required value set {PUBLICATION_STATUS}",
        )
    ]


def test_valid_research_study_is_accepted():
    resource = study(
        title="A study",
        phase={
            "coding": [{"system": "http://hl7.org/fhir/research-study-phase", "code": "phase-2"}]
        },
        progressStatus=[{"state": {"text": "recruiting"}, "actual": True}],
        associatedParty=[{"name": "Sponsor", "role": {"text": "sponsor"}}],
        recruitment={"targetNumber": 100},
    )
    assert check_required_bindings(resource) == []


@pytest.mark.parametrize("status", ["draft", "active", "retired", "unknown"])
def test_every_publication_status_code_is_accepted(status):
    assert check_required_bindings(study(status=status)) == []


def test_binding_issue_is_a_frozen_dataclass():
    issue = BindingIssue(expression="X.y", message="m")
    assert dataclasses.is_dataclass(issue)
    assert [f.name for f in dataclasses.fields(issue)] == ["expression", "message"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        issue.message = "other"  # type: ignore[misc]


def test_unknown_resource_type_and_missing_status_are_not_issues():
    assert check_required_bindings({"resourceType": "NotAResource", "status": "bogus"}) == []
    assert check_required_bindings({"resourceType": "ResearchStudy"}) == []


# --------------------------------------------------------------------------- nesting


def test_nested_datatype_and_backbone_element():
    patient = {
        "resourceType": "Patient",
        "gender": "female",
        "identifier": [{"use": "bogus", "value": "1"}, {"use": "official", "value": "2"}],
        "name": [{"use": "official", "family": "Doe"}],
        "telecom": [{"system": "phone", "value": "1", "use": "home"}],
        "contact": [{"gender": "unknown"}, {"gender": "nope"}],
    }
    issues = check_required_bindings(patient)
    assert [i.expression for i in issues] == [
        "Patient.identifier[0].use",
        "Patient.contact[1].gender",
    ]
    assert issues[1].message == f"Value 'nope' is not in the required value set {GENDER}"


def test_deeper_datatype_nesting():
    # Patient.contact[0].address.use (Address inside a backbone element) and
    # Patient.identifier[0].assigner.identifier.use (Identifier inside Reference inside Identifier)
    patient = {
        "resourceType": "Patient",
        "contact": [{"address": {"use": "spaceship"}}],
        "identifier": [{"assigner": {"identifier": {"use": "weird"}}}],
    }
    assert sorted(expressions(patient)) == [
        "Patient.contact[0].address.use",
        "Patient.identifier[0].assigner.identifier.use",
    ]


def test_choice_element_is_expanded_to_its_wire_name():
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "valueQuantity": {"value": 80, "comparator": "about"},
    }
    issues = check_required_bindings(observation)
    assert [i.expression for i in issues] == ["Observation.valueQuantity.comparator"]
    assert "quantity-comparator" in issues[0].message

    observation["valueQuantity"]["comparator"] = "<="
    assert check_required_bindings(observation) == []


def test_choice_element_in_extension_and_component():
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "bp"},
        "extension": [{"url": "http://example.org/x", "valueQuantity": {"comparator": "~"}}],
        "component": [{"code": {"text": "sys"}, "valueRange": {"low": {"comparator": "?"}}}],
    }
    assert expressions(observation) == [
        "Observation.extension[0].valueQuantity.comparator",
        "Observation.component[0].valueRange.low.comparator",
    ]


def test_content_reference_elements_are_followed():
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {
                "linkId": "1",
                "type": "group",
                "item": [
                    {"linkId": "1.1", "type": "string"},
                    {
                        "linkId": "1.2",
                        "type": "bogus-type",
                        "item": [{"linkId": "x", "type": "no"}],
                    },
                ],
            }
        ],
    }
    assert expressions(questionnaire) == [
        "Questionnaire.item[0].item[1].type",
        "Questionnaire.item[0].item[1].item[0].type",
    ]


def test_array_of_codes_reports_the_index():
    search_parameter = {
        "resourceType": "SearchParameter",
        "status": "active",
        "base": ["Patient", "NotAType"],
        "type": "token",
    }
    assert expressions(search_parameter) == ["SearchParameter.base[1]"]


# --------------------------------------------------------------------------- Coding / CC


def device_association(status: dict) -> dict:
    return {
        "resourceType": "DeviceAssociation",
        "device": {"reference": "Device/1"},
        "status": status,
    }


def test_codeable_concept_with_valid_coding_is_accepted():
    cc = {"coding": [{"system": DEVICE_ASSOC_SYSTEM, "code": "attached"}]}
    assert check_required_bindings(device_association(cc)) == []


def test_codeable_concept_with_only_text_is_accepted():
    assert check_required_bindings(device_association({"text": "attached somehow"})) == []


def test_codeable_concept_with_unknown_code_in_value_set_system():
    cc = {"coding": [{"system": DEVICE_ASSOC_SYSTEM, "code": "glued"}]}
    issues = check_required_bindings(device_association(cc))
    assert issues == [
        BindingIssue(
            "DeviceAssociation.status.coding[0].code",
            f"Value 'glued' is not in the required value set {DEVICE_ASSOC_STATUS}",
        )
    ]


def test_codeable_concept_with_only_foreign_codings_is_rejected():
    cc = {"coding": [{"system": "http://example.org/local", "code": "attached"}]}
    issues = check_required_bindings(device_association(cc))
    assert [i.expression for i in issues] == ["DeviceAssociation.status"]
    assert DEVICE_ASSOC_STATUS in issues[0].message


def test_codeable_concept_with_one_valid_and_one_foreign_coding_is_accepted():
    cc = {
        "coding": [
            {"system": "http://example.org/local", "code": "A"},
            {"system": DEVICE_ASSOC_SYSTEM, "code": "implanted"},
        ]
    }
    assert check_required_bindings(device_association(cc)) == []


def test_codeable_concept_with_required_binding_inside_backbone():
    product = {
        "resourceType": "AdministrableProductDefinition",
        "status": "active",
        "property": [
            {
                "type": {"text": "t"},
                "status": {
                    "coding": [{"system": "http://hl7.org/fhir/publication-status", "code": "x"}]
                },
            }
        ],
    }
    assert expressions(product) == [
        "AdministrableProductDefinition.property[0].status.coding[0].code"
    ]


def appointment_with_day(coding: dict) -> dict:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "recurrenceTemplate": [
            {
                "recurrenceType": {"text": "monthly"},
                "monthlyTemplate": {"dayOfWeek": coding, "monthInterval": 1},
            }
        ],
    }


def test_plain_coding_with_required_binding():
    path = "Appointment.recurrenceTemplate[0].monthlyTemplate.dayOfWeek"
    system = "http://hl7.org/fhir/days-of-week"

    assert check_required_bindings(appointment_with_day({"system": system, "code": "mon"})) == []

    issues = check_required_bindings(appointment_with_day({"system": system, "code": "funday"}))
    assert issues == [
        BindingIssue(
            f"{path}.code", f"Value 'funday' is not in the required value set {DAYS_OF_WEEK}"
        )
    ]

    # a plain Coding needs a system from the value set
    issues = check_required_bindings(appointment_with_day({"code": "mon"}))
    assert [i.expression for i in issues] == [path]
    issues = check_required_bindings(
        appointment_with_day({"system": "http://example.org/days", "code": "mon"})
    )
    assert [i.expression for i in issues] == [path]
    assert "http://example.org/days" in issues[0].message

    # nothing coded: nothing to check
    assert check_required_bindings(appointment_with_day({"display": "Monday"})) == []


# --------------------------------------------------------------------------- nested resources


def test_contained_resource():
    patient = {
        "resourceType": "Patient",
        "contained": [
            {"resourceType": "Organization", "id": "o1", "name": "Org"},
            {"resourceType": "RelatedPerson", "id": "r1", "gender": "bogus"},
        ],
        "gender": "male",
    }
    assert expressions(patient) == ["Patient.contained[1].ofType(RelatedPerson).gender"]


def test_bundle_entry_resource():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "gender": "female"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "gender": "bogus"},
                "request": {"method": "BOGUS", "url": "Patient"},
            },
        ],
    }
    assert expressions(bundle) == [
        "Bundle.entry[1].resource.ofType(Patient).gender",
        "Bundle.entry[1].request.method",
    ]


def test_bundle_type_and_nested_bundle_and_contained_in_entry():
    bundle = {
        "resourceType": "Bundle",
        "type": "not-a-type",
        "entry": [
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "ResearchSubject",
                                "status": "active",
                                "contained": [{"resourceType": "ResearchStudy", "status": "bogus"}],
                            }
                        }
                    ],
                }
            }
        ],
    }
    assert expressions(bundle) == [
        "Bundle.type",
        (
            "Bundle.entry[0].resource.ofType(Bundle).entry[0].resource.ofType(ResearchSubject)"
            ".contained[0].ofType(ResearchStudy).status"
        ),
    ]


def test_parameters_resource():
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "a", "valueCode": "anything"},
            {
                "name": "b",
                "part": [{"name": "c", "resource": {"resourceType": "Patient", "gender": "x"}}],
            },
            {"name": "d", "resource": {"resourceType": "ResearchStudy", "status": "bogus"}},
        ],
    }
    assert expressions(parameters) == [
        "Parameters.parameter[1].part[0].resource.ofType(Patient).gender",
        "Parameters.parameter[2].resource.ofType(ResearchStudy).status",
    ]


# --------------------------------------------------------------------------- robustness


def test_primitive_extension_siblings_are_ignored():
    patient = {
        "resourceType": "Patient",
        "gender": "male",
        "_gender": {"extension": [{"url": "http://example.org/x", "valueCode": "whatever"}]},
        "_status": "bogus",
        "_identifier": [{"use": "bogus"}],
    }
    assert check_required_bindings(patient) == []


@pytest.mark.parametrize(
    "resource",
    [
        None,
        [],
        "Patient",
        42,
        {},
        {"resourceType": None},
        {"resourceType": 5},
        {"resourceType": ["Patient"]},
        {"resourceType": "Patient", "gender": 5},
        {"resourceType": "Patient", "gender": None},
        {"resourceType": "Patient", "gender": {"value": "bogus"}},
        {"resourceType": "Patient", "identifier": "x"},
        {"resourceType": "Patient", "identifier": [None, 3, "x", [], {"use": 7}]},
        {"resourceType": "Patient", "contained": [None, {"resourceType": "Nope"}, {"gender": "x"}]},
        {"resourceType": "Patient", "unknownElement": {"use": "bogus"}},
        {"resourceType": "Bundle", "entry": [{"resource": "Patient"}, {"resource": None}]},
        {"resourceType": "DeviceAssociation", "status": {"coding": "x"}},
        {"resourceType": "DeviceAssociation", "status": {"coding": [None, {"system": 1}]}},
        {"resourceType": "Patient", 1: "x", ("a",): {"b": 1}},
    ],
)
def test_malformed_input_never_raises(resource):
    result = check_required_bindings(resource)  # type: ignore[arg-type]
    assert isinstance(result, list)
    assert all(isinstance(i, BindingIssue) for i in result)


def test_wrong_cardinality_is_still_checked_but_does_not_raise():
    # a single object where an array is expected: structure is someone else's problem,
    # but the coded value can still be reported
    patient = {"resourceType": "Patient", "contact": {"gender": "bogus"}}
    assert expressions(patient) == ["Patient.contact.gender"]


def test_deep_nesting_does_not_hit_the_recursion_limit():
    depth = 20_000
    innermost = {"linkId": "leaf", "type": "bogus"}
    node = innermost
    for i in range(depth):
        node = {"linkId": str(i), "type": "group", "item": [node]}
    questionnaire = {"resourceType": "Questionnaire", "status": "active", "item": [node]}
    result = check_required_bindings(questionnaire)  # must not raise RecursionError
    assert isinstance(result, list)

    shallow = {"linkId": "leaf", "type": "bogus"}
    for i in range(50):
        shallow = {"linkId": str(i), "type": "group", "item": [shallow]}
    questionnaire["item"] = [shallow]
    issues = check_required_bindings(questionnaire)
    assert len(issues) == 1
    assert issues[0].expression == "Questionnaire" + ".item[0]" * 51 + ".type"


def test_not_enumerable_value_sets_are_skipped():
    # all-languages (BCP-47), mimetypes and ucum-units cannot be enumerated from the package
    patient = {
        "resourceType": "Patient",
        "language": "xx-not-a-language",
        "photo": [{"contentType": "application/whatever"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "zz"}]}}],
    }
    assert check_required_bindings(patient) == []


# --------------------------------------------------------------------------- real examples


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_official_examples_have_no_issues(path):
    resource = json.loads(path.read_text(encoding="utf-8"))
    assert check_required_bindings(resource) == []


def test_example_set_covers_a_dozen_types():
    types = {json.loads(p.read_text(encoding="utf-8"))["resourceType"] for p in EXAMPLE_FILES}
    assert len(types) >= 12
    assert {"ResearchStudy", "ResearchSubject", "Patient", "Bundle", "Parameters"} <= types


@pytest.mark.parametrize("path", EXAMPLES_WITH_STATUS, ids=lambda p: p.stem)
def test_official_examples_with_a_corrupted_status_are_rejected(path):
    resource = json.loads(path.read_text(encoding="utf-8"))
    mutated = copy.deepcopy(resource)
    mutated["status"] = "definitely-not-a-status"
    issues = check_required_bindings(mutated)
    assert [i.expression for i in issues] == [f"{resource['resourceType']}.status"]


def test_official_example_nested_corruption_is_found():
    bundle = json.loads((EXAMPLES_DIR / "Bundle-bundle-response-medsallergies.json").read_text())
    bundle["entry"][0]["resource"]["telecom"][1]["use"] = "pager"
    bundle["entry"][0]["resource"]["contact"][0]["address"]["type"] = "cave"
    assert expressions(bundle) == [
        "Bundle.entry[0].resource.ofType(Patient).telecom[1].use",
        "Bundle.entry[0].resource.ofType(Patient).contact[0].address.type",
    ]


# --------------------------------------------------------------------------- the definitions file


def test_definitions_file_shape():
    data = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    assert data["source"] == {"package": "hl7.fhir.r5.core", "version": "5.0.0"}
    types = data["types"]
    for name in [
        "Identifier",
        "HumanName",
        "ContactPoint",
        "Address",
        "Quantity",
        "Narrative",
        "Period",
        "Coding",
        "Meta",
        "Attachment",
        "Timing",
        "Dosage",
        "Extension",
        "Reference",
    ]:
        assert types[name]["kind"] == "datatype", name
    assert types["Patient"]["kind"] == "resource"
    assert types["Patient.contact"]["kind"] == "backbone"
    assert types["Timing.repeat"]["kind"] == "backbone"
    assert types["Observation"]["elements"]["valueQuantity"] == ["Quantity"]
    assert types["Questionnaire.item"]["elements"]["item"] == ["Questionnaire.item"]
    assert types["Bundle.entry"]["elements"]["resource"] == ["Resource"]
    assert types["ResearchStudy"]["elements"]["status"] == ["code", PUBLICATION_STATUS]
    value_sets = data["valueSets"]
    assert value_sets[PUBLICATION_STATUS] == {
        "systems": {
            "http://hl7.org/fhir/publication-status": ["active", "draft", "retired", "unknown"]
        }
    }
    assert "notEnumerable" in value_sets["http://hl7.org/fhir/ValueSet/all-languages|5.0.0"]
    assert DEFINITIONS.stat().st_size < 3_000_000


# --------------------------------------------------------------------------- THO code systems

SUBJECT_STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
SUBJECT_MILESTONE = "http://terminology.hl7.org/CodeSystem/research-subject-milestone"
#: R5 researchsubject.html / valueset-research-subject-state.html
SUBJECT_STATES = ("candidate", "eligible", "follow-up", "ineligible", "not-registered", "off-study",
                  "on-study", "on-study-intervention", "on-study-observation", "pending-on-study",
                  "potential-candidate", "screening", "withdrawn")


def research_subject(*states: dict) -> dict:
    return {"resourceType": "ResearchSubject", "id": "rs", "status": "active",
            "study": {"reference": "ResearchStudy/s"}, "subject": {"reference": "Patient/p"},
            "progress": [{"subjectState": s, "startDate": "2026-01-01"} for s in states]}


def test_the_definitions_say_where_the_tho_code_systems_come_from():
    raw = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    source = raw["codeSystemsFrom"]
    assert source["package"] == "hl7.terminology.r5"
    assert {u.split("|")[0] for u in source["codeSystems"]} == {SUBJECT_STATE, SUBJECT_MILESTONE}
    vs = raw["valueSets"]["http://hl7.org/fhir/ValueSet/research-subject-state|5.0.0"]
    assert vs == {"systems": {SUBJECT_STATE: sorted(SUBJECT_STATES)}}


def test_research_subject_state_is_a_required_binding_now_checked():
    assert check_required_bindings(research_subject(*(
        {"coding": [{"system": SUBJECT_STATE, "code": c}]} for c in SUBJECT_STATES))) == []
    bogus = research_subject({"coding": [{"system": SUBJECT_STATE, "code": "on-study"}]},
                             {"coding": [{"system": SUBJECT_STATE, "code": "bogus"}]})
    assert expressions(bogus) == ["ResearchSubject.progress[1].subjectState.coding[0].code"]
    # the old (wrong) system of the R4 drafts, alone: not from the value set
    other = research_subject({"coding": [{"system": "http://hl7.org/fhir/research-subject-state",
                                          "code": "on-study"}]})
    assert expressions(other) == ["ResearchSubject.progress[0].subjectState"]
    assert check_required_bindings(research_subject({"text": "on study"})) == []


async def test_a_bogus_subject_state_is_a_422_and_nothing_is_stored(client):
    bad = research_subject({"coding": [{"system": SUBJECT_STATE, "code": "bogus"}]})
    r = await client.put("/ResearchSubject/rs", json=bad)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["ResearchSubject.progress[0].subjectState.coding[0].code"]
    assert "research-subject-state" in issue["diagnostics"]
    assert (await client.get("/ResearchSubject/rs")).status_code == 404
    good = research_subject({"coding": [{"system": SUBJECT_STATE, "code": "on-study"}]})
    assert (await client.put("/ResearchSubject/rs", json=good)).status_code == 201


async def test_the_server_holds_the_research_subject_milestone_value_set(client):
    r = await client.get("/ValueSet/$expand",
                         params={"url": "http://hl7.org/fhir/ValueSet/research-subject-milestone"})
    assert r.status_code == 200, r.text
    contains = r.json()["expansion"]["contains"]
    assert [(c["system"], c["code"]) for c in contains] == [
        (SUBJECT_MILESTONE, c) for c in ("SignedUp", "Screened", "Randomized")]
    assert all(c.get("display") for c in contains)
    r = await client.get("/ValueSet/$validate-code", params={
        "url": "http://hl7.org/fhir/ValueSet/research-subject-milestone",
        "system": SUBJECT_MILESTONE, "code": "Enrolled"})
    assert r.status_code == 200
    assert next(p for p in r.json()["parameter"] if p["name"] == "result")["valueBoolean"] is False


def test_a_rejection_lists_its_errors_first():
    """A 422 names an error in its summary and lists the errors before the warnings (a warning,
    an extensible binding, came first in the profile's order)."""
    from fhir_ctms.errors import Unprocessable
    from fhir_ctms.resources.validate import validate_resource

    r = research_subject({"coding": [{"system": SUBJECT_STATE, "code": "screening"}]},
                         {"coding": [{"system": SUBJECT_STATE, "code": "on-study"}]})
    r["meta"] = {"profile": ["http://fhir-ctms.org/fhir/StructureDefinition/ctms-subject"]}
    r["identifier"] = [{"system": "urn:x", "value": "1"}]
    r["consent"] = [{"reference": "Consent/c1"}]  # ctms-subject-4
    r["progress"][0]["reason"] = {"coding": [{"system": "http://example.org/other", "code": "x"}]}
    del r["progress"][1]["startDate"]
    with pytest.raises(Unprocessable) as caught:
        validate_resource(r)
    issues = caught.value.issues
    assert [i.severity for i in issues] == ["error", "warning"]
    assert issues[0].expression == ("ResearchSubject.progress[1].startDate",)
    assert str(caught.value) == issues[0].diagnostics
