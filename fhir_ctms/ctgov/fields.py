"""Which fields of a ClinicalTrials.gov API v2 record the CTMS carries, and which it does not.

A field is named by its path in the record, lists marked ``[]``:
``protocolSection.armsInterventionsModule.armGroups[].label``. :data:`MAPPED` lists the fields the
import maps into FHIR and the registry export writes back: an import followed by an export gives
them back unchanged (``tests/test_ctgov.py`` compares, record by record, :func:`carried` of the
input with the export). :data:`UNMAPPED` lists, with the reason, the fields the CTMS does not keep;
a pattern ending in ``.*`` covers everything below it. A field in neither list is reported by the
import as not carried (:func:`not_carried`), and the round-trip test fails on it, so every field
of the test records is accounted for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

P = "protocolSection."

MAPPED: frozenset[str] = frozenset(P + f for f in (
    # identificationModule -> identifier, title, label, associatedParty (sponsor)
    "identificationModule.nctId",
    "identificationModule.orgStudyIdInfo.id",
    "identificationModule.organization.fullName",
    "identificationModule.organization.class",
    "identificationModule.secondaryIdInfos[].id",
    "identificationModule.secondaryIdInfos[].type",
    "identificationModule.secondaryIdInfos[].domain",
    "identificationModule.briefTitle",
    "identificationModule.officialTitle",
    "identificationModule.acronym",
    # statusModule -> progressStatus, whyStopped (a CTMS study's overall status: from_fhir)
    "statusModule.overallStatus",
    "statusModule.statusVerifiedDate",
    "statusModule.whyStopped",
    "statusModule.startDateStruct.date",
    "statusModule.startDateStruct.type",
    "statusModule.primaryCompletionDateStruct.date",
    "statusModule.primaryCompletionDateStruct.type",
    "statusModule.completionDateStruct.date",
    "statusModule.completionDateStruct.type",
    # sponsorCollaboratorsModule -> associatedParty
    "sponsorCollaboratorsModule.leadSponsor.name",
    "sponsorCollaboratorsModule.leadSponsor.class",
    "sponsorCollaboratorsModule.collaborators[].name",
    "sponsorCollaboratorsModule.collaborators[].class",
    "sponsorCollaboratorsModule.responsibleParty.type",
    "sponsorCollaboratorsModule.responsibleParty.investigatorFullName",
    "sponsorCollaboratorsModule.responsibleParty.investigatorTitle",
    "sponsorCollaboratorsModule.responsibleParty.investigatorAffiliation",
    # oversightModule -> classifier
    "oversightModule.oversightHasDmc",
    "oversightModule.isFdaRegulatedDrug",
    "oversightModule.isFdaRegulatedDevice",
    "oversightModule.isUnapprovedDevice",
    "oversightModule.isPpsd",
    "oversightModule.isUsExport",
    "oversightModule.fdaaa801Violation",
    # descriptionModule -> descriptionSummary, description
    "descriptionModule.briefSummary",
    "descriptionModule.detailedDescription",
    # conditionsModule -> condition, keyword
    "conditionsModule.conditions[]",
    "conditionsModule.keywords[]",
    # designModule -> studyDesign (CT.gov's codes, each with its R5 study-design (SEVCO) code where
    # there is one: codes.DESIGN_TO_SEVCO; a study made in the CTMS exports from the SEVCO codes),
    # phase, primaryPurposeType, recruitment
    "designModule.studyType",
    "designModule.phases[]",
    "designModule.designInfo.allocation",
    "designModule.designInfo.interventionModel",
    "designModule.designInfo.interventionModelDescription",
    "designModule.designInfo.primaryPurpose",
    "designModule.designInfo.observationalModel",
    "designModule.designInfo.timePerspective",
    "designModule.designInfo.maskingInfo.masking",
    "designModule.designInfo.maskingInfo.maskingDescription",
    "designModule.designInfo.maskingInfo.whoMasked[]",
    "designModule.enrollmentInfo.count",
    "designModule.enrollmentInfo.type",
    # armsInterventionsModule -> comparisonGroup, focus, contained EvidenceVariables
    "armsInterventionsModule.armGroups[].label",
    "armsInterventionsModule.armGroups[].type",
    "armsInterventionsModule.armGroups[].description",
    "armsInterventionsModule.armGroups[].interventionNames[]",
    "armsInterventionsModule.interventions[].type",
    "armsInterventionsModule.interventions[].name",
    "armsInterventionsModule.interventions[].description",
    "armsInterventionsModule.interventions[].otherNames[]",
    "armsInterventionsModule.interventions[].armGroupLabels[]",
    # outcomesModule -> outcomeMeasure (+ contained EvidenceVariable for the time frame)
    *(f"outcomesModule.{kind}[].{f}" for kind in ("primaryOutcomes", "secondaryOutcomes", "otherOutcomes")
      for f in ("measure", "description", "timeFrame")),
    # eligibilityModule -> recruitment.eligibility (a contained Group)
    "eligibilityModule.eligibilityCriteria",
    "eligibilityModule.healthyVolunteers",
    "eligibilityModule.sex",
    "eligibilityModule.genderBased",
    "eligibilityModule.genderDescription",
    "eligibilityModule.minimumAge",
    "eligibilityModule.maximumAge",
    "eligibilityModule.stdAges[]",
    "eligibilityModule.studyPopulation",
    "eligibilityModule.samplingMethod",
    # contactsLocationsModule -> associatedParty (officials); sites (partOf their country and the
    # study), Organizations, Locations. A CTMS site's status comes from its milestones and its
    # country name from its ISO 3166 code (from_fhir)
    "contactsLocationsModule.overallOfficials[].name",
    "contactsLocationsModule.overallOfficials[].affiliation",
    "contactsLocationsModule.overallOfficials[].role",
    "contactsLocationsModule.locations[].facility",
    "contactsLocationsModule.locations[].status",
    "contactsLocationsModule.locations[].city",
    "contactsLocationsModule.locations[].state",
    "contactsLocationsModule.locations[].zip",
    "contactsLocationsModule.locations[].country",
    "contactsLocationsModule.locations[].geoPoint.lat",
    "contactsLocationsModule.locations[].geoPoint.lon",
    # referencesModule -> relatedArtifact
    "referencesModule.references[].pmid",
    "referencesModule.references[].type",
    "referencesModule.references[].citation",
    "referencesModule.seeAlsoLinks[].label",
    "referencesModule.seeAlsoLinks[].url",
))

#: pattern -> why the CTMS does not keep it
UNMAPPED: dict[str, str] = {
    P + "identificationModule.orgStudyIdInfo.type": "an identifier type CT.gov rarely sets",
    P + "identificationModule.orgStudyIdInfo.link": "FHIR Identifier has no link",
    P + "identificationModule.secondaryIdInfos[].link": "FHIR Identifier has no link",
    P + "identificationModule.nctIdAliases[]": "obsolete registry numbers",
    P + "statusModule.lastKnownStatus": "registry bookkeeping of UNKNOWN studies",
    P + "statusModule.delayedPosting": "registry bookkeeping",
    P + "statusModule.expandedAccessInfo.*": "expanded access programmes are not managed by the CTMS",
    P + "statusModule.studyFirstSubmitDate": "registry submission dates",
    P + "statusModule.studyFirstSubmitQcDate": "registry submission dates",
    P + "statusModule.studyFirstPostDateStruct.*": "registry posting dates",
    P + "statusModule.resultsFirstSubmitDate": "registry submission dates",
    P + "statusModule.resultsFirstSubmitQcDate": "registry submission dates",
    P + "statusModule.resultsFirstPostDateStruct.*": "registry posting dates",
    P + "statusModule.resultsWaived": "registry bookkeeping",
    P + "statusModule.dispFirstSubmitDate": "registry submission dates",
    P + "statusModule.dispFirstSubmitQcDate": "registry submission dates",
    P + "statusModule.dispFirstPostDateStruct.*": "registry posting dates",
    P + "statusModule.lastUpdateSubmitDate": "registry submission dates",
    P + "statusModule.lastUpdatePostDateStruct.*": "registry posting dates",
    P + "sponsorCollaboratorsModule.responsibleParty.oldNameTitle": "obsolete",
    P + "sponsorCollaboratorsModule.responsibleParty.oldOrganization": "obsolete",
    P + "designModule.patientRegistry": "observational registry flag",
    P + "designModule.targetDuration": "observational registry follow-up",
    P + "designModule.bioSpec.*": "biospecimen retention",
    P + "designModule.expandedAccessTypes.*": "expanded access programmes",
    P + "designModule.nPtrsToThisExpAccNctId": "registry bookkeeping",
    P + "contactsLocationsModule.centralContacts[].*": "contact details belong to the site staff records",
    P + "contactsLocationsModule.locations[].contacts[].*": "contact details belong to the site staff records",
    P + "contactsLocationsModule.locations[].countryCode": "derived from the country (region)",
    P + "referencesModule.references[].retractions[].*": "retraction notices",
    P + "referencesModule.availIpds[].*": "data sharing (IPD) is not managed by the CTMS",
    P + "ipdSharingStatementModule.*": "data sharing (IPD) is not managed by the CTMS",
    P + "largeDocumentModule.*": "documents belong in the eTMF",
    P + "miscInfoModule.*": "registry bookkeeping",
    "resultsSection.*": "results are not managed by the CTMS",
    "annotationSection.*": "registry annotations",
    "documentSection.*": "documents belong in the eTMF",
    "derivedSection.*": "computed by the registry (MeSH terms, browse branches)",
    "hasResults": "computed by the registry",
}


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar of a record with its path (``a.b[].c``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v, path + "[]")
    else:
        yield path, value


def unmapped_pattern(path: str) -> str | None:
    """The :data:`UNMAPPED` entry that covers ``path`` (None: not listed)."""
    if path in UNMAPPED:
        return path
    for pattern in UNMAPPED:
        if pattern.endswith(".*") and (path + ".").startswith(pattern[:-1]):
            return pattern
    return None


def unmapped_reason(path: str) -> str | None:
    pattern = unmapped_pattern(path)
    return UNMAPPED[pattern] if pattern else None


def not_carried(record: dict[str, Any]) -> list[str]:
    """The paths (sorted, each once) present in ``record`` that the CTMS does not carry."""
    return sorted({p for p, _ in leaves(record) if p not in MAPPED})


def unknown(record: dict[str, Any]) -> list[str]:
    """The paths present in ``record`` in neither list (to be decided and documented)."""
    return sorted({p for p in not_carried(record) if unmapped_reason(p) is None})


def carried(value: Any, path: str = "") -> Any:
    """``value`` with only the :data:`MAPPED` fields (empty objects and lists dropped): what the
    registry export of an imported record gives back."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            c = carried(v, f"{path}.{k}" if path else k)
            if c is not None:
                out[k] = c
        return out or None
    if isinstance(value, list):
        items = [c for v in value if (c := carried(v, path + "[]")) is not None]
        return items or None
    return value if path in MAPPED else None
