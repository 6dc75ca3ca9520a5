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

#: R5 research-study-party-organization-type -> AgencyClass, for a study made in the CTMS (the
#: import's FED and OTHER_GOV both became ``government``: a CTMS government sponsor is taken as
#: OTHER_GOV, FED being the US federal government; FDA is one of its agencies)
AGENCY_BY_ORG_TYPE = {"industry": "INDUSTRY", "nih": "NIH", "fda": "FED", "government": "OTHER_GOV",
                      "academic": "OTHER", "nonprofit": "OTHER"}

THO_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
#: Organization.type (terminology.hl7.org organization-type) -> AgencyClass. CT.gov's OTHER is
#: "universities, hospitals, foundations...": providers, departments, schools, religious and
#: community groups. Insurers, payers and "clinical research sponsor" (crs) say nothing of the class.
AGENCY_BY_THO_ORG_TYPE = {"bus": "INDUSTRY", "govt": "OTHER_GOV", "prov": "OTHER", "dept": "OTHER",
                          "team": "OTHER", "edu": "OTHER", "reli": "OTHER", "cg": "OTHER", "other": "OTHER"}

# -- study design: CT.gov designModule <-> R5 study-design (SEVCO) -----------------------------

STUDY_DESIGN = "http://hl7.org/fhir/study-design"
#: the codes of http://hl7.org/fhir/ValueSet/study-design (hl7.fhir.r5.core 5.0.0) the mapping uses
SEVCO = {
    "SEVCO:01001": "Interventional research",
    "SEVCO:01002": "Observational research",
    "SEVCO:01003": "randomized assignment",
    "SEVCO:01005": "Non-randomized assignment",
    "SEVCO:01011": "Parallel cohort design",
    "SEVCO:01012": "Crossover cohort design",
    "SEVCO:01013": "Case control design",
    "SEVCO:01016": "Uncontrolled cohort design",
    "SEVCO:01020": "Family study design",
    "SEVCO:01027": "Cross sectional data collection",
    "SEVCO:01038": "Expanded Access study",
    "SEVCO:01044": "Ecological design",
    "SEVCO:01060": "Blinding of study participants",
    "SEVCO:01061": "Blinding of intervention providers",
    "SEVCO:01062": "Blinding of outcome assessors",
}
#: (CT.gov enum, CT.gov code) -> SEVCO code: each CT.gov value with a SEVCO code of the same meaning.
#: The blinding codes follow profiles/README.md ("Study design"): SEVCO:01061, intervention
#: providers, are care providers and investigators alike. Not mapped (no SEVCO code in the R5 value
#: set): allocation NA; interventionModel FACTORIAL and SEQUENTIAL; masking levels (SEVCO codes
#: who is blinded, not how many: see MASKING_LEVELS); observationalModel COHORT, CASE_ONLY, CASE_CROSSOVER,
#: DEFINED_POPULATION, NATURAL_HISTORY, OTHER; timePerspective PROSPECTIVE, RETROSPECTIVE, OTHER.
DESIGN_TO_SEVCO = {
    ("StudyType", "INTERVENTIONAL"): "SEVCO:01001",
    ("StudyType", "OBSERVATIONAL"): "SEVCO:01002",
    ("StudyType", "EXPANDED_ACCESS"): "SEVCO:01038",
    ("DesignAllocation", "RANDOMIZED"): "SEVCO:01003",
    ("DesignAllocation", "NON_RANDOMIZED"): "SEVCO:01005",
    ("InterventionalAssignment", "PARALLEL"): "SEVCO:01011",
    ("InterventionalAssignment", "CROSSOVER"): "SEVCO:01012",
    ("InterventionalAssignment", "SINGLE_GROUP"): "SEVCO:01016",
    ("ObservationalModel", "CASE_CONTROL"): "SEVCO:01013",
    ("ObservationalModel", "FAMILY_BASED"): "SEVCO:01020",
    ("ObservationalModel", "ECOLOGIC_OR_COMMUNITY"): "SEVCO:01044",
    ("DesignTimePerspective", "CROSS_SECTIONAL"): "SEVCO:01027",
    ("WhoMasked", "PARTICIPANT"): "SEVCO:01060",
    ("WhoMasked", "CARE_PROVIDER"): "SEVCO:01061",
    ("WhoMasked", "INVESTIGATOR"): "SEVCO:01061",
    ("WhoMasked", "OUTCOMES_ASSESSOR"): "SEVCO:01062",
}
#: SEVCO code -> (CT.gov enum, code) for the export of a study made in the CTMS: the inverse of
#: DESIGN_TO_SEVCO (blinding aside) plus the more specific SEVCO codes under a mapped one (simple,
#: stratified, block, adaptive randomization; quasi-randomized; the two crossover designs)
SEVCO_TO_DESIGN = {**{v: k for k, v in DESIGN_TO_SEVCO.items() if k[0] != "WhoMasked"}, **{
    "SEVCO:01006": ("DesignAllocation", "RANDOMIZED"), "SEVCO:01007": ("DesignAllocation", "RANDOMIZED"),
    "SEVCO:01008": ("DesignAllocation", "RANDOMIZED"), "SEVCO:01009": ("DesignAllocation", "RANDOMIZED"),
    "SEVCO:01004": ("DesignAllocation", "NON_RANDOMIZED"),
    "SEVCO:01024": ("InterventionalAssignment", "CROSSOVER"),
    "SEVCO:01025": ("InterventionalAssignment", "CROSSOVER"),
}}
#: a blinding code -> the CT.gov roles it masks (whoMasked, in CT.gov's order); SEVCO:01063, data
#: analysts, is no CT.gov role
SEVCO_TO_WHO_MASKED = {"SEVCO:01060": ("PARTICIPANT",), "SEVCO:01061": ("CARE_PROVIDER", "INVESTIGATOR"),
                       "SEVCO:01062": ("OUTCOMES_ASSESSOR",)}
WHO_MASKED_ORDER = ("PARTICIPANT", "CARE_PROVIDER", "INVESTIGATOR", "OUTCOMES_ASSESSOR")
#: how many of the CT.gov roles are masked -> maskingInfo.masking (a CTMS study's blinding codes)
MASKING_LEVELS = {1: "SINGLE", 2: "DOUBLE", 3: "TRIPLE", 4: "QUADRUPLE"}

# -- overall and location status of a study made in the CTMS ------------------------------------

#: R5 research-study-status -> CT.gov Status, for a study or site made in the CTMS (an imported one
#: keeps CT.gov's own code). ``active`` ("opened for accrual") is RECRUITING at a site and, for the
#: study, what its sites say (see from_fhir). The review-board states (in-review, approved) are
#: before recruitment; disapproved is a study that will not run (WITHDRAWN).
STATUS_FROM_R5 = {
    "active": "RECRUITING", "recruiting": "RECRUITING", "not-yet-recruiting": "NOT_YET_RECRUITING",
    "in-review": "NOT_YET_RECRUITING", "approved": "NOT_YET_RECRUITING",
    "active-but-not-recruiting": "ACTIVE_NOT_RECRUITING", "closed-to-accrual": "ACTIVE_NOT_RECRUITING",
    "closed-to-accrual-and-intervention": "ACTIVE_NOT_RECRUITING",
    "temporarily-closed-to-accrual": "SUSPENDED", "temporarily-closed-to-accrual-and-intervention": "SUSPENDED",
    "enrolling-by-invitation": "ENROLLING_BY_INVITATION", "completed": "COMPLETED",
    "administratively-completed": "TERMINATED", "terminated": "TERMINATED", "withdrawn": "WITHDRAWN",
    "disapproved": "WITHDRAWN",
}
#: site-milestone -> (rank, CT.gov location status): the site's status is that of its highest
#: ranked actual milestone (activated and not closed: RECRUITING; enrolment closed: ACTIVE_NOT_RECRUITING;
#: closed: COMPLETED; start-up done but not activated: NOT_YET_RECRUITING)
SITE_MILESTONE_STATUS = {
    "selected": (1, "NOT_YET_RECRUITING"), "irb-approved": (2, "NOT_YET_RECRUITING"),
    "contract-executed": (3, "NOT_YET_RECRUITING"), "siv-done": (4, "NOT_YET_RECRUITING"),
    "activated": (5, "RECRUITING"), "first-subject-in": (6, "RECRUITING"),
    "enrolment-closed": (7, "ACTIVE_NOT_RECRUITING"), "close-out-visit": (8, "ACTIVE_NOT_RECRUITING"),
    "closed": (9, "COMPLETED"),
}
#: study-milestone -> (rank, CT.gov overall status; None: recruitment runs, or is about to:
#: what the sites say). Recruitment is over at last-subject-in, the study over at
#: last-subject-last-visit (CT.gov's completion date), database lock and closure.
STUDY_MILESTONE_STATUS = {
    "protocol-approved": (1, None), "first-site-activated": (2, None), "first-subject-in": (3, None),
    "enrolled-25": (4, None), "enrolled-50": (5, None), "enrolled-75": (6, None),
    "last-subject-in": (7, "ACTIVE_NOT_RECRUITING"), "last-subject-last-visit": (8, "COMPLETED"),
    "database-lock": (9, "COMPLETED"), "study-closed": (10, "COMPLETED"),
}
