"""Code systems and value maps between ClinicalTrials.gov API v2 enumerations and FHIR R5 codes.

CT.gov's enumerations (``AgencyClass``, ``Status``, ``Phase``...; the "Enum types" of the API's
study data structure page) have no FHIR code system of their own, so an imported value keeps its
CT.gov code in a coding of the system ``CTGOV + <enum name>`` beside the R5 code it maps to (where
R5 has one). The export reads the CT.gov coding first and falls back on the R5 code, so a study
created in the CTMS (R5 codes only) exports too, and an imported one round-trips exactly.
"""

from __future__ import annotations

CTGOV = "https://clinicaltrials.gov/data-api/about-api/study-data-structure#"

NCT_SYSTEM = "https://clinicaltrials.gov"
#: accepted on import as NCT identifier systems too (profiles/README.md)
NCT_SYSTEMS = (NCT_SYSTEM, "http://clinicaltrials.gov", "urn:oid:2.16.840.1.113883.3.1077")
EU_CT_SYSTEM = "https://euclinicaltrials.eu/clinicalTrialId"
ISO3166 = "urn:iso:std:iso:3166"

BASE = "http://fhir-ctms.org/fhir"
STUDY_LEVEL = f"{BASE}/CodeSystem/study-level"
STUDY_MILESTONE = f"{BASE}/CodeSystem/study-milestone"
SITE_MILESTONE = f"{BASE}/CodeSystem/site-milestone"
IDENTIFIER_TYPE = f"{BASE}/CodeSystem/identifier-type"
PROFILE = f"{BASE}/StructureDefinition/"

STUDY_STATUS = "http://hl7.org/fhir/research-study-status"
PARTY_ROLE = "http://hl7.org/fhir/research-study-party-role"
PHASE = "http://hl7.org/fhir/research-study-phase"
PURPOSE = "http://hl7.org/fhir/research-study-prim-purp-type"
ARM_TYPE = "http://hl7.org/fhir/research-study-arm-type"
OBJECTIVE_TYPE = "http://hl7.org/fhir/research-study-objective-type"
TITLE_TYPE = "http://hl7.org/fhir/title-type"
UCUM = "http://unitsofmeasure.org"
PUBMED = "https://pubmed.ncbi.nlm.nih.gov/"


def ctgov(enum: str) -> str:
    """The system of a CT.gov enumeration's codes (or of a module's field names)."""
    return CTGOV + enum


#: overallStatus (and a location's status) -> R5 research-study-status
STATUS = {
    "ACTIVE_NOT_RECRUITING": "active-but-not-recruiting",
    "COMPLETED": "completed",
    "ENROLLING_BY_INVITATION": "enrolling-by-invitation",
    "NOT_YET_RECRUITING": "not-yet-recruiting",
    "RECRUITING": "recruiting",
    "SUSPENDED": "temporarily-closed-to-accrual",
    "TERMINATED": "terminated",
    "WITHDRAWN": "withdrawn",
    "APPROVED_FOR_MARKETING": "approved",
    "AVAILABLE": "active",
    # NO_LONGER_AVAILABLE, TEMPORARILY_NOT_AVAILABLE, WITHHELD, UNKNOWN: no R5 code, CT.gov's only
}

#: designModule.phases (as a sorted tuple) -> R5 research-study-phase
PHASES = {
    ("NA",): "n-a",
    ("EARLY_PHASE1",): "early-phase-1",
    ("PHASE1",): "phase-1",
    ("PHASE1", "PHASE2"): "phase-1-phase-2",
    ("PHASE2",): "phase-2",
    ("PHASE2", "PHASE3"): "phase-2-phase-3",
    ("PHASE3",): "phase-3",
    ("PHASE4",): "phase-4",
}

#: designInfo.primaryPurpose -> R5 research-study-prim-purp-type (ECT and OTHER have none)
PURPOSES = {
    "TREATMENT": "treatment", "PREVENTION": "prevention", "DIAGNOSTIC": "diagnostic",
    "SUPPORTIVE_CARE": "supportive-care", "SCREENING": "screening",
    "HEALTH_SERVICES_RESEARCH": "health-services-research", "BASIC_SCIENCE": "basic-science",
    "DEVICE_FEASIBILITY": "device-feasibility",
}

#: armGroups[].type -> R5 research-study-arm-type
ARM_TYPES = {
    "EXPERIMENTAL": "experimental", "ACTIVE_COMPARATOR": "active-comparator",
    "PLACEBO_COMPARATOR": "placebo-comparator", "SHAM_COMPARATOR": "sham-comparator",
    "NO_INTERVENTION": "no-intervention", "OTHER": "other-arm-type",
}

#: overallOfficials[].role -> R5 research-study-party-role
OFFICIAL_ROLES = {
    "PRINCIPAL_INVESTIGATOR": "primary-investigator", "STUDY_CHAIR": "study-chair",
    "STUDY_DIRECTOR": "study-director", "SUB_INVESTIGATOR": "sub-investigator",
}

#: interventions[].type -> the prefix CT.gov writes in armGroups[].interventionNames
INTERVENTION_TYPES = {
    "BEHAVIORAL": "Behavioral", "BIOLOGICAL": "Biological", "COMBINATION_PRODUCT": "Combination Product",
    "DEVICE": "Device", "DIAGNOSTIC_TEST": "Diagnostic Test", "DIETARY_SUPPLEMENT": "Dietary Supplement",
    "DRUG": "Drug", "GENETIC": "Genetic", "PROCEDURE": "Procedure", "RADIATION": "Radiation", "OTHER": "Other",
}

#: the outcome lists of outcomesModule -> R5 research-study-objective-type
OUTCOME_TYPES = {"primaryOutcomes": "primary", "secondaryOutcomes": "secondary", "otherOutcomes": "exploratory"}

#: statusModule date structs -> (CT.gov date name, the CTMS study milestone that is that date, or None)
DATES = {
    "startDateStruct": ("start", "first-subject-in"),
    "primaryCompletionDateStruct": ("primary-completion", None),
    "completionDateStruct": ("completion", "last-subject-last-visit"),
}

#: age units of eligibilityModule minimumAge/maximumAge ("18 Years") -> UCUM
AGE_UNITS = {"Year": "a", "Years": "a", "Month": "mo", "Months": "mo", "Week": "wk", "Weeks": "wk",
             "Day": "d", "Days": "d", "Hour": "h", "Hours": "h", "Minute": "min", "Minutes": "min"}


def reverse(mapping: dict) -> dict:
    return {v: k for k, v in mapping.items()}


def coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def code_of(concept: dict | None, system: str) -> str | None:
    """The code of ``concept``'s first coding in ``system``."""
    for c in (concept or {}).get("coding") or []:
        if c.get("system") == system and c.get("code"):
            return c["code"]
    return None

ORG_TYPE = "http://hl7.org/fhir/research-study-party-organization-type"
#: AgencyClass -> R5 research-study-party-organization-type (the others keep CT.gov's code only)
AGENCY_CLASSES = {"INDUSTRY": "industry", "NIH": "nih", "FED": "government", "OTHER_GOV": "government"}
