"""A ClinicalTrials.gov API v2 study record as CTMS resources (profiles/README.md) and one
transaction Bundle.

What becomes what (the field lists are in :mod:`fields`; codes in :mod:`codes`):

- the study: ``ResearchStudy/nct<8 digits>``, classifier ``study-level#study``. Identifiers: the
  NCT number (system ``https://clinicaltrials.gov``), the org study id (type
  ``identifier-type#sponsor-protocol``, assigner the organization), secondary ids (type their
  CT.gov type; a CTIS number gets the EU CT system). Titles: ``title`` = briefTitle, ``label``
  official (officialTitle) and acronym. Parties (``associatedParty``): the organization
  (``sponsor``, its role also coded ``identificationModule#organization``, so that the export
  tells it from a CTMS study's sponsor, which stands for the lead sponsor too), leadSponsor
  (``lead-sponsor``), collaborators (``collaborator``), the responsible party (role coded with
  CT.gov's ResponsiblePartyType), overall officials (``primary-investigator``, ``study-chair``,
  ``study-director``, ``sub-investigator``); people's affiliation and title in a contained
  PractitionerRole. Agency class: ``associatedParty.classifier``.
- status: ``progressStatus`` entries: start (``first-subject-in``), primary completion, completion
  (``last-subject-last-visit``), each with CT.gov's date name, ``period.start`` the date and
  ``actual`` = (type == ACTUAL), omitted when CT.gov gives no type; the overall status as an entry
  with the R5 ``research-study-status`` code (and CT.gov's) reached (``actual``) on the
  statusVerifiedDate. ``ResearchStudy.status`` is the publication status: ``active``.
- design: ``phase`` (research-study-phase; PHASE1+PHASE2 is ``phase-1-phase-2``),
  ``primaryPurposeType``, ``studyDesign`` (study type, allocation, models, masking: CT.gov codes,
  each with the R5 ``study-design`` (SEVCO) code of the same meaning where there is one,
  ``codes.DESIGN_TO_SEVCO``; a description is the concept's text), oversight flags as
  ``classifier`` codes ``field=true|false``; enrolment: ``recruitment.targetNumber`` (ESTIMATED)
  or ``actualNumber`` (ACTUAL).
- arms: ``comparisonGroup`` (linkId ``arm-N``); interventions: ``focus``, each a contained
  EvidenceVariable (description; other names as notes) that arms point at through
  ``intendedExposure``; outcomes: ``outcomeMeasure`` with a contained EvidenceVariable holding the
  time frame; eligibility: a contained Group (definitional: criteria text as description, sex,
  ages, healthy volunteers... as characteristics); references and links: ``relatedArtifact``.
- each location: a site ``ResearchStudy/nct...-site-NNN`` (classifier ``site``, partOf its
  country and the study, region the ISO 3166 country) pointing at
  ``Organization/nct...-site-NNN`` (the facility) and ``Location/nct...-site-NNN`` (address,
  geoPoint). The location's recruitment status, when given, becomes a ``progressStatus`` entry
  with the R5 research-study-status code (``recruiting``...) as of the statusVerifiedDate, NOT the
  site's ``activated`` milestone: the registry says that a site recruits, not since when, and an
  invented activation date would distort enrolment rates.
- each country: ``ResearchStudy/nct...-<iso alpha-2>`` (classifier ``country``, partOf the study,
  ``site`` listing its sites). A site is ``partOf`` both its country and the study (the CTMS
  model, profiles/README.md: R5 partOf is 0..*; the country first), so
  ``ResearchStudy?part-of=ResearchStudy/nct...&classifier=...|site`` lists them all,
  ``site-country`` narrows them (SearchParameter-ResearchStudy-site-country), and ``$enrollment``
  rolls a site up into its country. A location without a country is partOf the study only.

Profiles: the study claims ``ctms-study`` only when it has what the profile requires (a phase, a
target number, a sponsor...); otherwise it is imported without the claim and the report says what
is missing. Countries and sites never claim ``ctms-country``/``ctms-site``: the registry gives no
per-site target and no investigator's PractitionerRole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import codes as C
from .countries import alpha2
from .fields import P, not_carried, unmapped_pattern


class NotARecord(ValueError):
    """The input is not a ClinicalTrials.gov API v2 study record (or is malformed)."""


@dataclass
class Conversion:
    nct_id: str
    resources: list[dict[str, Any]]
    #: what the record lacks or what could not be mapped, one sentence each
    missing: list[str] = field(default_factory=list)
    #: fields present in the record that the CTMS does not keep
    not_carried: list[str] = field(default_factory=list)

    def bundle(self) -> dict[str, Any]:
        """One transaction Bundle: every resource PUT to its deterministic id."""
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
             "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in self.resources]}


_NCT = re.compile(r"NCT\d{8}")

#: modules whose absence the import reports, with what is then not imported
EXPECTED = {
    "statusModule": "no overall status, no start or completion dates",
    "sponsorCollaboratorsModule": "no lead sponsor, no collaborators",
    "descriptionModule": "no summary or description",
    "conditionsModule": "no conditions or keywords",
    "designModule": "no phase, no study design, no enrolment",
    "armsInterventionsModule": "no arms, no interventions",
    "outcomesModule": "no outcome measures",
    "eligibilityModule": "no eligibility criteria",
    "contactsLocationsModule": "no sites, no overall officials",
}


def study_id(nct: str) -> str:
    return nct.lower()


def convert(record: Any) -> Conversion:
    """The resources of one record (study, countries, sites, Organizations, Locations)."""
    if not isinstance(record, dict) or not isinstance(record.get("protocolSection"), dict):
        raise NotARecord("not a ClinicalTrials.gov API v2 study record (no protocolSection object)")
    ps = record["protocolSection"]
    ident = _obj(ps, "identificationModule")
    nct = ident.get("nctId")
    if not isinstance(nct, str) or not _NCT.fullmatch(nct):
        raise NotARecord(f"protocolSection.identificationModule.nctId must be NCT followed by 8 digits, "
                         f"got {nct!r}")
    sid = study_id(nct)
    out = Conversion(nct, [])
    for module, what in EXPECTED.items():
        if module not in ps:
            out.missing.append(f"the record has no {module}: {what}")
    study: dict[str, Any] = {"resourceType": "ResearchStudy", "id": sid}
    contained: list[dict[str, Any]] = []
    study["identifier"] = _identifiers(ident, nct)
    _set(study, "title", _str(ident, "briefTitle"))
    labels = [{"type": _cc(C.TITLE_TYPE, t), "value": v} for t, v in
              (("official", _str(ident, "officialTitle")), ("acronym", _str(ident, "acronym"))) if v]
    _set(study, "label", labels)
    study["status"] = "active"

    design = _obj(ps, "designModule")
    info = _obj(design, "designInfo", "designModule.")
    purpose = _str(info, "primaryPurpose")
    if purpose:
        study["primaryPurposeType"] = _concept((C.PURPOSE, C.PURPOSES.get(purpose)),
                                               (C.ctgov("PrimaryPurpose"), purpose))
    phases = _strs(design, "phases")
    if phases:
        r5 = C.PHASES.get(tuple(sorted(phases)))
        if r5 is None:
            out.missing.append(f"phases {phases} have no R5 research-study-phase code (kept as CT.gov codes)")
        study["phase"] = {"coding": ([C.coding(C.PHASE, r5)] if r5 else [])
                          + [C.coding(C.ctgov("Phase"), p) for p in phases]}
    _set(study, "studyDesign", _design(design, info))
    arms = _obj(ps, "armsInterventionsModule")
    focus, groups = _arms(arms, contained)
    _set(study, "focus", focus)
    cond = _obj(ps, "conditionsModule")
    _set(study, "condition", [{"text": c} for c in _strs(cond, "conditions")])
    _set(study, "keyword", [{"text": k} for k in _strs(cond, "keywords")])
    desc = _obj(ps, "descriptionModule")
    _set(study, "descriptionSummary", _str(desc, "briefSummary"))
    _set(study, "description", _str(desc, "detailedDescription"))

    classifier = [{"coding": [C.coding(C.STUDY_LEVEL, "study")]}]
    for k, v in _obj(ps, "oversightModule").items():
        if isinstance(v, bool):
            classifier.append({"coding": [C.coding(C.ctgov("oversightModule"), f"{k}={'true' if v else 'false'}")]})
    study["classifier"] = classifier
    study["associatedParty"] = _parties(ident, _obj(ps, "sponsorCollaboratorsModule"),
                                        _obj(ps, "contactsLocationsModule"), contained)
    if not study["associatedParty"]:
        del study["associatedParty"]
    status = _obj(ps, "statusModule")
    _set(study, "progressStatus", _progress(status))
    why = _str(status, "whyStopped")
    if why:
        study["whyStopped"] = {"text": why}
    recruitment = _recruitment(design, _obj(ps, "eligibilityModule"), contained)
    _set(study, "recruitment", recruitment)
    _set(study, "comparisonGroup", groups)
    _set(study, "outcomeMeasure", _outcomes(_obj(ps, "outcomesModule"), contained))
    _set(study, "relatedArtifact", _references(_obj(ps, "referencesModule")))
    sites, countries = _sites(sid, _obj(ps, "contactsLocationsModule"), status, out)
    regions = [c["region"][0] for c in countries]
    _set(study, "region", regions)
    if contained:
        study["contained"] = contained
    lacking = ctms_study_gaps(study)
    if lacking:
        out.missing.append(f"ResearchStudy/{sid} does not claim the ctms-study profile: {'; '.join(lacking)}")
    else:
        study["meta"] = {"profile": [C.PROFILE + "ctms-study"]}
    out.resources = [study, *countries, *sites]
    out.not_carried = not_carried(record)
    unknown = [p for p in out.not_carried if unmapped_pattern(p) is None]
    kept_out = sorted({pattern.removeprefix(P) for p in out.not_carried if (pattern := unmapped_pattern(p))})
    if kept_out:
        out.missing.append(f"not kept by the CTMS (fhir_ctms/ctgov/fields.py): {', '.join(kept_out)}")
    if unknown:
        out.missing.append(f"fields not imported (no place in the CTMS model): {', '.join(unknown)}")
    return out


def ctms_study_gaps(study: dict[str, Any]) -> list[str]:
    """What ``study`` lacks for the ctms-study profile (profiles/README.md), one phrase each."""
    gaps = []
    if not study.get("title"):
        gaps.append("no title (briefTitle)")
    if not study.get("phase"):
        gaps.append("no phase")
    if not study.get("studyDesign"):
        gaps.append("no study design (designModule.studyType, designInfo)")
    recruitment = study.get("recruitment") or {}
    if recruitment.get("targetNumber") is None:
        gaps.append("no recruitment.targetNumber" + (" (the registry gives the ACTUAL enrolment, not the target)"
                                                      if recruitment.get("actualNumber") is not None else ""))
    if not any(C.code_of(p.get("role"), C.PARTY_ROLE) in ("sponsor", "lead-sponsor")
               for p in study.get("associatedParty", [])):
        gaps.append("no sponsor")
    if any(not (p.get("period") or {}).get("start") for p in study.get("progressStatus", [])):
        gaps.append("a status without a date (statusVerifiedDate)")
    return gaps


# -- the parts ---------------------------------------------------------------------------------

def _identifiers(ident: dict[str, Any], nct: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"system": C.NCT_SYSTEM, "value": nct}]
    org_id = _str(_obj(ident, "orgStudyIdInfo", "identificationModule."), "id")
    if org_id:
        ident_ = {"type": _cc(C.IDENTIFIER_TYPE, "sponsor-protocol"), "value": org_id}
        org_name = _str(_obj(ident, "organization", "identificationModule."), "fullName")
        if org_name:
            ident_["assigner"] = {"display": org_name}
        out.append(ident_)
    for i, sec in enumerate(_list(ident, "secondaryIdInfos")):
        sec = _as_obj(sec, f"identificationModule.secondaryIdInfos[{i}]")
        value = _str(sec, "id")
        if not value:
            continue
        entry: dict[str, Any] = {}
        kind = _str(sec, "type")
        if kind:
            entry["type"] = _cc(C.ctgov("SecondaryIdType"), kind)
        if kind == "CTIS":
            entry["system"] = C.EU_CT_SYSTEM
        entry["value"] = value
        if _str(sec, "domain"):
            entry["assigner"] = {"display": sec["domain"]}
        out.append(entry)
    return out


def _parties(ident, sponsors, contacts, contained) -> list[dict[str, Any]]:
    out = []
    org = _obj(ident, "organization", "identificationModule.")
    if org.get("fullName") or org.get("class"):
        party = _org_party("sponsor", org.get("fullName"), org.get("class"))
        party["role"]["coding"].append(C.coding(C.ctgov("identificationModule"), "organization"))
        out.append(party)
    lead = _obj(sponsors, "leadSponsor", "sponsorCollaboratorsModule.")
    if lead:
        out.append(_org_party("lead-sponsor", lead.get("name"), lead.get("class")))
    for i, c in enumerate(_list(sponsors, "collaborators")):
        c = _as_obj(c, f"sponsorCollaboratorsModule.collaborators[{i}]")
        out.append(_org_party("collaborator", c.get("name"), c.get("class")))
    rp = _obj(sponsors, "responsibleParty", "sponsorCollaboratorsModule.")
    if rp:
        kind = _str(rp, "type")
        role = {"coding": ([C.coding(C.PARTY_ROLE, "sponsor-investigator")] if kind == "SPONSOR_INVESTIGATOR" else [])
                + ([C.coding(C.ctgov("ResponsiblePartyType"), kind)] if kind else []), "text": "responsible party"}
        party: dict[str, Any] = {"role": role}
        _set(party, "name", _str(rp, "investigatorFullName"))
        ref = _person(contained, "responsible-party", _str(rp, "investigatorFullName"),
                      _str(rp, "investigatorAffiliation"), _str(rp, "investigatorTitle"))
        if ref:
            party["party"] = ref
        out.append(party)
    for i, o in enumerate(_list(contacts, "overallOfficials")):
        o = _as_obj(o, f"contactsLocationsModule.overallOfficials[{i}]")
        kind = _str(o, "role")
        role = {"coding": ([C.coding(C.PARTY_ROLE, C.OFFICIAL_ROLES[kind])] if kind in C.OFFICIAL_ROLES else [])
                + ([C.coding(C.ctgov("OfficialRole"), kind)] if kind else [])}
        if not role["coding"]:
            role = {"text": "overall official"}
        party = {"role": role}
        _set(party, "name", _str(o, "name"))
        ref = _person(contained, f"official-{i + 1}", _str(o, "name"), _str(o, "affiliation"), None)
        if ref:
            party["party"] = ref
        out.append(party)
    return out


def _org_party(role: str, name: Any, agency: Any) -> dict[str, Any]:
    party: dict[str, Any] = {}
    if isinstance(name, str) and name:
        party["name"] = name
    party["role"] = _cc(C.PARTY_ROLE, role)
    if isinstance(agency, str) and agency:
        codings = [C.coding(C.ctgov("AgencyClass"), agency)]
        if agency in C.AGENCY_CLASSES:
            codings.append(C.coding(C.ORG_TYPE, C.AGENCY_CLASSES[agency]))
        party["classifier"] = [{"coding": codings}]
    return party


def _person(contained, cid, name, affiliation, title) -> dict[str, Any] | None:
    """A contained PractitionerRole for a person's affiliation and title (None: nothing to say)."""
    if not affiliation and not title:
        return None
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": cid}
    if name:
        role["practitioner"] = {"display": name}
    if affiliation:
        role["organization"] = {"display": affiliation}
    if title:
        role["code"] = [{"text": title}]
    contained.append(role)
    return {"reference": f"#{cid}"}


def _progress(status: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, (name, milestone) in C.DATES.items():
        struct = _obj(status, key, "statusModule.")
        date = _str(struct, "date")
        if not date:
            continue
        codings = [C.coding(C.STUDY_MILESTONE, milestone)] if milestone else []
        codings.append(C.coding(C.ctgov("StudyDate"), name))
        entry: dict[str, Any] = {"state": {"coding": codings}}
        kind = _str(struct, "type")
        if kind:
            entry["actual"] = kind == "ACTUAL"
        entry["period"] = {"start": date}
        out.append(entry)
    overall = _str(status, "overallStatus")
    if overall:
        r5 = C.STATUS.get(overall)
        entry = {"state": {"coding": ([C.coding(C.STUDY_STATUS, r5)] if r5 else [])
                           + [C.coding(C.ctgov("OverallStatus"), overall)]}, "actual": True}
        verified = _str(status, "statusVerifiedDate")
        if verified:
            entry["period"] = {"start": verified}
        out.append(entry)
    return out


def _design(design: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if _str(design, "studyType"):
        out.append(_design_concept("StudyType", design["studyType"]))
    for key, enum, text in (("allocation", "DesignAllocation", None),
                            ("interventionModel", "InterventionalAssignment", "interventionModelDescription"),
                            ("observationalModel", "ObservationalModel", None),
                            ("timePerspective", "DesignTimePerspective", None)):
        if _str(info, key):
            concept = _design_concept(enum, info[key])
            if text and _str(info, text):
                concept["text"] = info[text]
            out.append(concept)
    masking = _obj(info, "maskingInfo", "designModule.designInfo.")
    if _str(masking, "masking"):
        concept = _design_concept("DesignMasking", masking["masking"])
        if _str(masking, "maskingDescription"):
            concept["text"] = masking["maskingDescription"]
        out.append(concept)
    out += [_design_concept("WhoMasked", w) for w in _strs(masking, "whoMasked")]
    return out


def _design_concept(enum: str, code: str) -> dict[str, Any]:
    """CT.gov's code and, where R5's study-design value set has one, the SEVCO code."""
    codings = [C.coding(C.ctgov(enum), code)]
    sevco = C.DESIGN_TO_SEVCO.get((enum, code))
    if sevco:
        codings.append(C.coding(C.STUDY_DESIGN, sevco, C.SEVCO[sevco]))
    return {"coding": codings}


def intervention_label(kind: str | None, name: str | None) -> str:
    """How CT.gov names an intervention in armGroups[].interventionNames: ``Drug: Aspirin``."""
    return f"{C.INTERVENTION_TYPES.get(kind or '', (kind or '').title())}: {name or ''}"


def _arms(arms: dict[str, Any], contained: list[dict[str, Any]]):
    focus, by_label = [], {}
    for i, iv in enumerate(_list(arms, "interventions")):
        iv = _as_obj(iv, f"armsInterventionsModule.interventions[{i}]")
        cid = f"intervention-{i + 1}"
        ev: dict[str, Any] = {"resourceType": "EvidenceVariable", "id": cid, "status": "active"}
        _set(ev, "title", _str(iv, "name"))
        _set(ev, "description", _str(iv, "description"))
        _set(ev, "note", [{"text": n} for n in _strs(iv, "otherNames")])
        contained.append(ev)
        concept: dict[str, Any] = {}
        if _str(iv, "type"):
            concept["coding"] = [C.coding(C.ctgov("InterventionType"), iv["type"])]
        _set(concept, "text", _str(iv, "name"))
        focus.append({"concept": concept, "reference": {"reference": f"#{cid}"}} if concept
                     else {"reference": {"reference": f"#{cid}"}})
        by_label.setdefault(intervention_label(_str(iv, "type"), _str(iv, "name")), cid)
    groups = []
    for i, arm in enumerate(_list(arms, "armGroups")):
        arm = _as_obj(arm, f"armsInterventionsModule.armGroups[{i}]")
        group: dict[str, Any] = {"linkId": f"arm-{i + 1}", "name": _str(arm, "label") or f"arm {i + 1}"}
        kind = _str(arm, "type")
        if kind:
            group["type"] = _concept((C.ARM_TYPE, C.ARM_TYPES.get(kind)), (C.ctgov("ArmGroupType"), kind))
        _set(group, "description", _str(arm, "description"))
        exposures = []
        for name in _strs(arm, "interventionNames"):
            cid = by_label.get(name)
            exposures.append({"reference": f"#{cid}", "display": name} if cid else {"display": name})
        _set(group, "intendedExposure", exposures)
        groups.append(group)
    return focus, groups


def _outcomes(outcomes: dict[str, Any], contained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind, objective in C.OUTCOME_TYPES.items():
        for i, o in enumerate(_list(outcomes, kind)):
            o = _as_obj(o, f"outcomesModule.{kind}[{i}]")
            m: dict[str, Any] = {}
            _set(m, "name", _str(o, "measure"))
            m["type"] = [_cc(C.OBJECTIVE_TYPE, objective)]
            _set(m, "description", _str(o, "description"))
            frame = _str(o, "timeFrame")
            if frame:
                cid = f"outcome-{objective}-{i + 1}"
                contained.append({"resourceType": "EvidenceVariable", "id": cid, "status": "active",
                                  **({"title": o["measure"]} if _str(o, "measure") else {}),
                                  "characteristic": [{
                                      "definitionCodeableConcept": {"text": _str(o, "measure") or "outcome"},
                                      "timeFromEvent": [{"description": frame}]}]})
                m["reference"] = {"reference": f"#{cid}"}
            out.append(m)
    return out


_AGE = re.compile(r"(\d+(?:\.\d+)?) ([A-Za-z]+)")


def _recruitment(design, elig, contained) -> dict[str, Any]:
    out: dict[str, Any] = {}
    enrol = _obj(design, "enrollmentInfo", "designModule.")
    count = enrol.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        out["actualNumber" if enrol.get("type") == "ACTUAL" else "targetNumber"] = count
    group = _eligibility(elig)
    if group is not None:
        contained.append(group)
        out["eligibility"] = {"reference": "#eligibility"}
    return out


def _eligibility(elig: dict[str, Any]) -> dict[str, Any] | None:
    chars = []
    system = C.ctgov("eligibilityModule")

    def add(key: str, **value: Any) -> None:
        chars.append({"code": _cc(system, key), **value, "exclude": False})

    for key in ("healthyVolunteers", "genderBased"):
        if isinstance(elig.get(key), bool):
            add(key, valueBoolean=elig[key])
    for key, enum in (("sex", "Sex"), ("samplingMethod", "SamplingMethod")):
        if _str(elig, key):
            add(key, valueCodeableConcept=_cc(C.ctgov(enum), elig[key]))
    for key in ("genderDescription", "studyPopulation"):
        if _str(elig, key):
            add(key, valueCodeableConcept={"text": elig[key]})
    for key in ("minimumAge", "maximumAge"):
        age = _str(elig, key)
        if not age:
            continue
        m = _AGE.fullmatch(age.strip())
        if m and m.group(2) in C.AGE_UNITS:
            number = float(m.group(1))
            add(key, valueQuantity={"value": int(number) if number.is_integer() else number, "unit": m.group(2),
                                    "system": C.UCUM, "code": C.AGE_UNITS[m.group(2)]})
        else:
            add(key, valueCodeableConcept={"text": age})
    for age in _strs(elig, "stdAges"):
        add("stdAges", valueCodeableConcept=_cc(C.ctgov("StandardAge"), age))
    criteria = _str(elig, "eligibilityCriteria")
    if not chars and not criteria:
        return None
    group: dict[str, Any] = {"resourceType": "Group", "id": "eligibility", "type": "person",
                             "membership": "definitional"}
    _set(group, "description", criteria)
    _set(group, "characteristic", chars)
    return group


def _references(refs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(_list(refs, "references")):
        r = _as_obj(r, f"referencesModule.references[{i}]")
        a: dict[str, Any] = {"type": "citation"}
        if _str(r, "type"):
            a["classifier"] = [_cc(C.ctgov("ReferenceType"), r["type"])]
        _set(a, "citation", _str(r, "citation"))
        if _str(r, "pmid"):
            a["document"] = {"url": f"{C.PUBMED}{r['pmid']}/"}
        out.append(a)
    for i, link in enumerate(_list(refs, "seeAlsoLinks")):
        link = _as_obj(link, f"referencesModule.seeAlsoLinks[{i}]")
        a = {"type": "documentation"}
        _set(a, "display", _str(link, "label"))
        if _str(link, "url"):
            a["document"] = {"url": link["url"]}
        out.append(a)
    return out


def _sites(sid: str, contacts: dict[str, Any], status: dict[str, Any], out: Conversion):
    locations = _list(contacts, "locations")
    width = max(3, len(str(len(locations))))
    sites: list[dict[str, Any]] = []
    countries: dict[str, dict[str, Any]] = {}
    verified = _str(status, "statusVerifiedDate")
    unknown_countries = set()
    for i, loc in enumerate(locations):
        loc = _as_obj(loc, f"contactsLocationsModule.locations[{i}]")
        rid = f"{sid}-site-{i + 1:0{width}d}"
        facility, country = _str(loc, "facility"), _str(loc, "country")
        code = alpha2(country) if country else None
        if country and code is None:
            unknown_countries.add(country)
        region = {"coding": [C.coding(C.ISO3166, code, country)]} if code else {}
        if country:
            region["text"] = country
        site: dict[str, Any] = {"resourceType": "ResearchStudy", "id": rid, "status": "active",
                                "classifier": [{"coding": [C.coding(C.STUDY_LEVEL, "site")]}],
                                "partOf": [{"reference": f"ResearchStudy/{sid}"}]}
        cid = f"{sid}-{code.lower() if code else _slug(country or '')}" if region else None
        if cid:  # the country first, then the study (profiles/README.md; consumers go by classifier)
            site["partOf"].insert(0, {"reference": f"ResearchStudy/{cid}"})
        _set(site, "title", facility)
        refs = []
        if facility:
            refs.append({"reference": f"Organization/{rid}", "display": facility})
            org = {"resourceType": "Organization", "id": rid, "active": True, "name": facility}
        else:
            org = None
        location = {"resourceType": "Location", "id": rid, "status": "active"}
        _set(location, "name", facility)
        address: dict[str, Any] = {}
        for k, a in (("city", "city"), ("state", "state"), ("zip", "postalCode"), ("country", "country")):
            _set(address, a, _str(loc, k))
        _set(location, "address", address)
        geo = _obj(loc, "geoPoint", "locations[].")
        if _is_number(geo.get("lat")) and _is_number(geo.get("lon")):
            location["position"] = {"longitude": geo["lon"], "latitude": geo["lat"]}
        if org:
            location["managingOrganization"] = {"reference": f"Organization/{rid}"}
        refs.append({"reference": f"Location/{rid}"})
        site["site"] = refs
        if region:
            site["region"] = [region]
        loc_status = _str(loc, "status")
        if loc_status:
            entry: dict[str, Any] = {"state": {"coding": ([C.coding(C.STUDY_STATUS, C.STATUS[loc_status])]
                                                          if loc_status in C.STATUS else [])
                                               + [C.coding(C.ctgov("RecruitmentStatus"), loc_status)]},
                                     "actual": True}
            if verified:
                entry["period"] = {"start": verified}
            site["progressStatus"] = [entry]
        sites.append(site)
        if org:
            sites.append(org)
        sites.append(location)
        if cid:
            if cid not in countries:
                countries[cid] = {"resourceType": "ResearchStudy", "id": cid, "status": "active",
                                  "classifier": [{"coding": [C.coding(C.STUDY_LEVEL, "country")]}],
                                  "title": f"{out.nct_id} {country}",
                                  "partOf": [{"reference": f"ResearchStudy/{sid}"}],
                                  "region": [region], "site": []}
            countries[cid]["site"].append({"reference": f"ResearchStudy/{rid}"})
    for name in sorted(unknown_countries):
        out.missing.append(f"country {name!r} has no ISO 3166 code: its sites carry the name only")
    return sites, list(countries.values())


# -- defensive access: wrong shapes are a NotARecord, never a traceback --------------------------

def _obj(parent: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    return _as_obj(value, where + key)


def _as_obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise NotARecord(f"{where} must be an object")
    return value


def _list(parent: dict[str, Any], key: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise NotARecord(f"{key} must be an array")
    return value


def _str(parent: dict[str, Any], key: str) -> str | None:
    value = parent.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotARecord(f"{key} must be a string, got {value!r}")
    return value


def _strs(parent: dict[str, Any], key: str) -> list[str]:
    values = _list(parent, key)
    if not all(isinstance(v, str) for v in values):
        raise NotARecord(f"{key} must be an array of strings")
    return [v for v in values if v]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [C.coding(system, code)]}


def _concept(*pairs: tuple[str, str | None]) -> dict[str, Any]:
    return {"coding": [C.coding(s, c) for s, c in pairs if c]}


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", [], {}):
        target[key] = value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unknown"
