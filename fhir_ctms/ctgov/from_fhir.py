"""CTMS resources back to a ClinicalTrials.gov API v2 record (``{"protocolSection": {...}}``): the
inverse of :mod:`to_fhir` for the fields of :data:`fields.MAPPED`.

It reads CT.gov's own codings where the import left them and falls back on the R5 codes, so a
study entered in the CTMS exports too. Only modules with content are written. What a study made
in the CTMS (R5 codes, milestones, referenced Organizations) exports as:

- sponsors: the ``sponsor`` party is the organization and, when no party is ``lead-sponsor``,
  the lead sponsor too (an imported record's organization is told apart by its role coding
  ``identificationModule#organization``: it never stands in for a lead sponsor). A class
  (AgencyClass) comes from the party's ``classifier``, else from the type of the Organization it
  references (``codes.AGENCY_BY_ORG_TYPE``, ``codes.AGENCY_BY_THO_ORG_TYPE``: ``bus`` is INDUSTRY).
- design: ``studyDesign`` codes of R5's study-design value set (SEVCO) give studyType,
  allocation, interventionModel, observationalModel, timePerspective (``codes.SEVCO_TO_DESIGN``);
  the blinding codes give ``maskingInfo.whoMasked`` (participants PARTICIPANT; intervention
  providers CARE_PROVIDER and INVESTIGATOR, as profiles/README.md defines the code; outcome
  assessors OUTCOMES_ASSESSOR) and the masking level, the number of roles masked (all four:
  QUADRUPLE, as the registry's double-blind drug trials mostly are). CT.gov's own codes, where
  present, win field by field.
- location status, from the site's actual ``progressStatus`` entries: the highest site milestone
  reached (``codes.SITE_MILESTONE_STATUS``: start-up steps done but not activated
  NOT_YET_RECRUITING; activated or first subject in RECRUITING; enrolment closed or close-out
  visit ACTIVE_NOT_RECRUITING; closed COMPLETED) or an R5 research-study-status entry
  (``codes.STATUS_FROM_R5``), whichever is dated later (on the same date, the status entry).
- overall status, the same way from the study's milestones (``codes.STUDY_MILESTONE_STATUS``:
  last subject in ACTIVE_NOT_RECRUITING; last subject last visit, database lock, closure
  COMPLETED, TERMINATED when ``whyStopped`` says why it stopped) and R5 status entries; while
  recruitment runs (an earlier milestone, an R5 ``active`` entry, or none at all), what the sites
  say: RECRUITING if one recruits, else ENROLLING_BY_INVITATION if one does, else
  NOT_YET_RECRUITING if none has started, else COMPLETED if all are, else ACTIVE_NOT_RECRUITING;
  with no site status either: NOT_YET_RECRUITING before the first site is activated, RECRUITING
  after. A study with neither milestones, status entries nor site statuses gets none. A derived
  status is verified on the export date (``statusVerifiedDate``: its month).
- a location's country: the Location's address country when it is a name, else the registry's
  name of the ISO 3166 code (address or the site's ``region``): "DE" is "Germany"
  (:func:`countries.registry_name`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from . import codes as C
from .countries import registry_name

_PHASES = C.reverse(C.PHASES)
_PURPOSES = C.reverse(C.PURPOSES)
_ARM_TYPES = C.reverse(C.ARM_TYPES)
_OFFICIAL_ROLES = C.reverse(C.OFFICIAL_ROLES)
_OUTCOME_KINDS = C.reverse(C.OUTCOME_TYPES)
_ORGANIZATION = (C.ctgov("identificationModule"), "organization")
_ISO_CODE = re.compile(r"[A-Z]{2,3}")
_DATE_BY_MILESTONE = {m: key for key, (_, m) in C.DATES.items() if m}
_DATE_BY_NAME = {name: key for key, (name, _) in C.DATES.items()}


def to_record(study: dict[str, Any], sites: list[dict[str, Any]],
              related: dict[str, dict[str, Any]], today: dt.date | None = None) -> dict[str, Any]:
    """The record of ``study``; ``sites`` its site-level ResearchStudies in registry order,
    ``related`` the Organizations and Locations they (and the study's parties) point at, by
    ``Type/id``; ``today`` the export date (default: today, UTC), the month a derived overall
    status is verified on."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    contained = {r.get("id"): r for r in study.get("contained") or [] if isinstance(r, dict)}
    parties = study.get("associatedParty") or []
    site_statuses = [_site_status(s) for s in sites]
    modules = {
        "identificationModule": _identification(study, parties, related),
        "statusModule": _status(study, site_statuses, today),
        "sponsorCollaboratorsModule": _sponsors(parties, contained, related),
        "oversightModule": _oversight(study),
        "descriptionModule": _clean({"briefSummary": study.get("descriptionSummary"),
                                     "detailedDescription": study.get("description")}),
        "conditionsModule": _clean({"conditions": [_text(c) for c in study.get("condition") or []],
                                    "keywords": [_text(k) for k in study.get("keyword") or []]}),
        "designModule": _design(study),
        "armsInterventionsModule": _arms(study, contained),
        "outcomesModule": _outcomes(study, contained),
        "eligibilityModule": _eligibility(study, contained),
        "contactsLocationsModule": _clean({"overallOfficials": _officials(parties, contained),
                                           "locations": [_location(s, related, st)
                                                         for s, st in zip(sites, site_statuses, strict=True)]}),
        "referencesModule": _references(study),
    }
    return {"protocolSection": {k: v for k, v in modules.items() if v}}


# -- modules -----------------------------------------------------------------------------------

def _identification(study, parties, related) -> dict[str, Any]:
    out: dict[str, Any] = {}
    secondary = []
    org_name = None
    for ident in study.get("identifier") or []:
        system, value, kind = ident.get("system"), ident.get("value"), ident.get("type")
        if system in C.NCT_SYSTEMS and "nctId" not in out:
            out["nctId"] = value
        elif C.code_of(kind, C.IDENTIFIER_TYPE) == "sponsor-protocol" and "orgStudyIdInfo" not in out:
            out["orgStudyIdInfo"] = {"id": value}
            org_name = (ident.get("assigner") or {}).get("display")
        elif C.code_of(kind, C.ctgov("SecondaryIdType")) or system == C.EU_CT_SYSTEM:
            secondary.append(_clean({"id": value,
                                     "type": C.code_of(kind, C.ctgov("SecondaryIdType")) or "CTIS",
                                     "domain": (ident.get("assigner") or {}).get("display")}))
    if secondary:
        out["secondaryIdInfos"] = secondary
    sponsor = next((p for p in parties if _has(p.get("role"), *_ORGANIZATION)), None) \
        or next((p for p in parties if _role(p) == "sponsor"), None)
    if sponsor is not None:
        out["organization"] = _clean({"fullName": _party_name(sponsor, related),
                                      "class": _agency(sponsor, related)})
    elif "orgStudyIdInfo" in out and org_name:
        out["organization"] = {"fullName": org_name}
    out["briefTitle"] = study.get("title")
    for label in study.get("label") or []:
        kind = C.code_of(label.get("type"), C.TITLE_TYPE)
        if kind == "official":
            out.setdefault("officialTitle", label.get("value"))
        elif kind == "acronym":
            out.setdefault("acronym", label.get("value"))
    return _clean(out)


def _status(study, site_statuses: list[str | None], today: dt.date) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dates: dict[str, dict[str, Any]] = {}
    r5: list[tuple[str, int, str]] = []  # (date, position, R5 status code) of actual status entries
    reached: list[tuple[int, str, str]] = []  # (rank, date, milestone) of the actual milestones
    for i, entry in enumerate(study.get("progressStatus") or []):
        state, start = entry.get("state"), (entry.get("period") or {}).get("start")
        actual = entry.get("actual")
        name = C.code_of(state, C.ctgov("StudyDate"))
        milestone = C.code_of(state, C.STUDY_MILESTONE)
        if actual is True and not name and milestone in C.STUDY_MILESTONE_STATUS:
            reached.append((C.STUDY_MILESTONE_STATUS[milestone][0], start or "", milestone))
        key = _DATE_BY_NAME.get(name) if name else _DATE_BY_MILESTONE.get(milestone)
        if key:
            if key in dates and dates[key].get("type") == "ACTUAL" and actual is not True:
                continue  # an actual date wins over a planned one
            kind = None if actual is None else "ACTUAL" if actual else "ESTIMATED"
            dates[key] = _clean({"date": start, "type": kind})
            continue
        overall = C.code_of(state, C.ctgov("OverallStatus"))
        if overall and actual is not False:  # an imported record's own status, as the registry gave it
            out["overallStatus"] = overall
            out["statusVerifiedDate"] = start
            continue
        code = C.code_of(state, C.STUDY_STATUS)
        if actual is True and code in C.STATUS_FROM_R5:
            r5.append((start or "", i, code))
    if "overallStatus" not in out:
        derived = _overall(study, r5, reached, site_statuses)
        if derived:
            out["overallStatus"] = derived
            out["statusVerifiedDate"] = today.isoformat()[:7]
    if study.get("whyStopped"):
        out["whyStopped"] = _text(study["whyStopped"])
    for key in C.DATES:
        if key in dates:
            out[key] = dates[key]
    return _clean(out)


def _overall(study, r5: list[tuple[str, int, str]], reached: list[tuple[int, str, str]],
             site_statuses: list[str | None]) -> str | None:
    """The overall status of a study made in the CTMS (the rules in the module's docstring)."""
    known = [s for s in site_statuses if s]

    def recruiting(started: bool) -> str:
        """While recruitment runs: what the sites say."""
        if not known:
            return "RECRUITING" if started else "NOT_YET_RECRUITING"
        for status in ("RECRUITING", "ENROLLING_BY_INVITATION"):
            if status in known:
                return status
        if all(s == "NOT_YET_RECRUITING" for s in known):
            return "NOT_YET_RECRUITING"
        if all(s == "COMPLETED" for s in known):
            return "COMPLETED"
        return "ACTIVE_NOT_RECRUITING"

    candidates: list[tuple[str, int, str]] = []  # (date, precedence on that date, status)
    if reached:
        _, date, milestone = max(reached)
        status = C.STUDY_MILESTONE_STATUS[milestone][1]
        if status is None:
            status = recruiting(milestone != "protocol-approved")
        elif milestone == "study-closed" and study.get("whyStopped"):
            status = "TERMINATED"
        candidates.append((date, 0, status))
    if r5:
        date, _, code = max(r5)  # the latest; on one date, the last listed
        candidates.append((date, 1, recruiting(True) if code == "active" else C.STATUS_FROM_R5[code]))
    if candidates:
        return max(candidates)[2]
    return recruiting(False) if known else None


def _sponsors(parties, contained, related) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parties:
        rp = C.code_of(p.get("role"), C.ctgov("ResponsiblePartyType"))
        if rp:
            person = contained.get(_local(p.get("party"))) or {}
            out["responsibleParty"] = _clean({
                "type": rp, "investigatorFullName": p.get("name"),
                "investigatorTitle": _text(((person.get("code") or [None])[0])),
                "investigatorAffiliation": (person.get("organization") or {}).get("display")})
        elif _role(p) == "lead-sponsor":
            out["leadSponsor"] = _clean({"name": _party_name(p, related), "class": _agency(p, related)})
        elif _role(p) == "collaborator":
            out.setdefault("collaborators", []).append(
                _clean({"name": _party_name(p, related), "class": _agency(p, related)}))
    if "leadSponsor" not in out:  # a CTMS study's sponsor is its lead sponsor
        sponsor = next((p for p in parties if _role(p) == "sponsor"
                        and not _has(p.get("role"), *_ORGANIZATION)), None)
        if sponsor is not None:
            out["leadSponsor"] = _clean({"name": _party_name(sponsor, related),
                                         "class": _agency(sponsor, related)})
    return {k: out[k] for k in ("responsibleParty", "leadSponsor", "collaborators") if k in out}


def _oversight(study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for concept in study.get("classifier") or []:
        code = C.code_of(concept, C.ctgov("oversightModule"))
        if code and "=" in code:
            key, _, value = code.partition("=")
            out[key] = value == "true"
    return out


def _design(study) -> dict[str, Any]:
    info: dict[str, Any] = {}
    masking: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for concept in study.get("studyDesign") or []:
        for enum, target, key, text_key in (
                ("StudyType", out, "studyType", None), ("DesignAllocation", info, "allocation", None),
                ("InterventionalAssignment", info, "interventionModel", "interventionModelDescription"),
                ("ObservationalModel", info, "observationalModel", None),
                ("DesignTimePerspective", info, "timePerspective", None),
                ("DesignMasking", masking, "masking", "maskingDescription")):
            code = C.code_of(concept, C.ctgov(enum))
            if code:
                target[key] = code
                if text_key and concept.get("text"):
                    target[text_key] = concept["text"]
        who = C.code_of(concept, C.ctgov("WhoMasked"))
        if who:
            masking.setdefault("whoMasked", []).append(who)
    _design_from_sevco(study, out, info, masking)
    phase = study.get("phase")
    phases = [c["code"] for c in (phase or {}).get("coding") or [] if c.get("system") == C.ctgov("Phase")]
    if not phases and C.code_of(phase, C.PHASE) in _PHASES:
        phases = list(_PHASES[C.code_of(phase, C.PHASE)])
    if phases:
        out["phases"] = phases
    purpose = study.get("primaryPurposeType")
    code = C.code_of(purpose, C.ctgov("PrimaryPurpose")) or _PURPOSES.get(C.code_of(purpose, C.PURPOSE))
    if code:
        info["primaryPurpose"] = code
    if masking:
        info["maskingInfo"] = masking
    if info:
        out["designInfo"] = info
    recruitment = study.get("recruitment") or {}
    if recruitment.get("actualNumber") is not None:
        out["enrollmentInfo"] = {"count": recruitment["actualNumber"], "type": "ACTUAL"}
    elif recruitment.get("targetNumber") is not None:
        out["enrollmentInfo"] = {"count": recruitment["targetNumber"], "type": "ESTIMATED"}
    return out


def _design_from_sevco(study, out: dict[str, Any], info: dict[str, Any], masking: dict[str, Any]) -> None:
    """The fields CT.gov's own codes left unset, from the study's R5 study-design (SEVCO) codes."""
    targets = {"StudyType": (out, "studyType"), "DesignAllocation": (info, "allocation"),
               "InterventionalAssignment": (info, "interventionModel"),
               "ObservationalModel": (info, "observationalModel"),
               "DesignTimePerspective": (info, "timePerspective")}
    found: dict[str, str] = {}
    masked: list[str] = []
    for concept in study.get("studyDesign") or []:
        for c in (concept or {}).get("coding") or []:
            if c.get("system") != C.STUDY_DESIGN:
                continue
            masked += [who for who in C.SEVCO_TO_WHO_MASKED.get(c.get("code"), ()) if who not in masked]
            if c.get("code") in C.SEVCO_TO_DESIGN:
                enum, code = C.SEVCO_TO_DESIGN[c["code"]]
                found.setdefault(enum, code)
    for enum, code in found.items():
        target, key = targets[enum]
        target.setdefault(key, code)
    if masked and "masking" not in masking and "whoMasked" not in masking:
        masking["masking"] = C.MASKING_LEVELS[len(masked)]
        masking["whoMasked"] = sorted(masked, key=C.WHO_MASKED_ORDER.index)


def _arms(study, contained) -> dict[str, Any]:
    groups = study.get("comparisonGroup") or []
    arms = []
    for g in groups:
        t = g.get("type")
        arms.append(_clean({
            "label": g.get("name"),
            "type": C.code_of(t, C.ctgov("ArmGroupType")) or _ARM_TYPES.get(C.code_of(t, C.ARM_TYPE)),
            "description": g.get("description"),
            "interventionNames": [e.get("display") or _intervention_name(contained.get(_local(e)))
                                  for e in g.get("intendedExposure") or []]}))
    interventions = []
    for f in study.get("focus") or []:
        cid = _local(f.get("reference"))
        ev = contained.get(cid) or {}
        concept = f.get("concept") or {}
        interventions.append(_clean({
            "type": C.code_of(concept, C.ctgov("InterventionType")),
            "name": concept.get("text") or ev.get("title"),
            "description": ev.get("description"),
            "otherNames": [n.get("text") for n in ev.get("note") or []],
            "armGroupLabels": [g.get("name") for g in groups
                               if cid and any(_local(e) == cid for e in g.get("intendedExposure") or [])]}))
    return _clean({"armGroups": arms, "interventions": interventions})


def _intervention_name(ev: dict[str, Any] | None) -> str | None:
    return (ev or {}).get("title")


def _outcomes(study, contained) -> dict[str, Any]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in study.get("outcomeMeasure") or []:
        kind = next((C.code_of(t, C.OBJECTIVE_TYPE) for t in m.get("type") or []
                     if C.code_of(t, C.OBJECTIVE_TYPE)), "primary")
        ev = contained.get(_local(m.get("reference"))) or {}
        frame = next((t.get("description") for ch in ev.get("characteristic") or []
                      for t in ch.get("timeFromEvent") or [] if t.get("description")), None)
        out.setdefault(_OUTCOME_KINDS.get(kind, "otherOutcomes"), []).append(
            _clean({"measure": m.get("name"), "description": m.get("description"), "timeFrame": frame}))
    return {k: out[k] for k in C.OUTCOME_TYPES if k in out}


def _eligibility(study, contained) -> dict[str, Any]:
    group = contained.get(_local((study.get("recruitment") or {}).get("eligibility")))
    if not group:
        return {}
    out: dict[str, Any] = {"eligibilityCriteria": group.get("description")}
    for ch in group.get("characteristic") or []:
        key = C.code_of(ch.get("code"), C.ctgov("eligibilityModule"))
        if not key:
            continue
        if "valueBoolean" in ch:
            out[key] = ch["valueBoolean"]
        elif "valueQuantity" in ch:
            q = ch["valueQuantity"]
            value = q.get("value")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            out[key] = f"{value} {q.get('unit')}"
        elif "valueCodeableConcept" in ch:
            concept = ch["valueCodeableConcept"]
            codes = [c["code"] for c in concept.get("coding") or [] if c.get("code")]
            value = codes[0] if codes else concept.get("text")
            if key == "stdAges":
                out.setdefault("stdAges", []).append(value)
            else:
                out[key] = value
    return _clean(out)


def _officials(parties, contained) -> list[dict[str, Any]]:
    out = []
    for p in parties:
        role = p.get("role")
        if C.code_of(role, C.ctgov("ResponsiblePartyType")):
            continue
        kind = C.code_of(role, C.ctgov("OfficialRole")) or _OFFICIAL_ROLES.get(C.code_of(role, C.PARTY_ROLE))
        if not kind:
            continue
        person = contained.get(_local(p.get("party"))) or {}
        out.append(_clean({"name": p.get("name"), "affiliation": (person.get("organization") or {}).get("display"),
                           "role": kind}))
    return out


def _site_status(site: dict[str, Any]) -> str | None:
    """A site's CT.gov location status: an imported site's own, else from its milestones and R5
    status entries (the rules in the module's docstring)."""
    own = None
    r5: list[tuple[str, int, str]] = []
    reached: list[tuple[int, str, str]] = []
    for i, entry in enumerate(site.get("progressStatus") or []):
        state, actual = entry.get("state"), entry.get("actual")
        code = C.code_of(state, C.ctgov("RecruitmentStatus"))
        if code and actual is not False:
            own = code
            continue
        if actual is not True:
            continue
        start = (entry.get("period") or {}).get("start") or ""
        code = C.code_of(state, C.STUDY_STATUS)
        if code in C.STATUS_FROM_R5:
            r5.append((start, i, C.STATUS_FROM_R5[code]))
        milestone = C.code_of(state, C.SITE_MILESTONE)
        if milestone in C.SITE_MILESTONE_STATUS:
            reached.append((C.SITE_MILESTONE_STATUS[milestone][0], start, milestone))
    if own:
        return own
    candidates = []
    if reached:
        _, date, milestone = max(reached)
        candidates.append((date, 0, C.SITE_MILESTONE_STATUS[milestone][1]))
    if r5:
        date, _, status = max(r5)
        candidates.append((date, 1, status))
    return max(candidates)[2] if candidates else None


def _country(address: dict[str, Any], region: dict[str, Any]) -> str | None:
    """The registry's name of a location's country (the rule in the module's docstring)."""
    name = address.get("country")
    if isinstance(name, str) and name and not _ISO_CODE.fullmatch(name):
        return name
    for code in (name, next((c.get("code") for c in region.get("coding") or []
                             if c.get("system") == C.ISO3166 and c.get("code")), None)):
        if isinstance(code, str) and code and registry_name(code):
            return registry_name(code)
    return name or region.get("text") or next(
        (c.get("display") or c.get("code") for c in region.get("coding") or []), None)


def _location(site: dict[str, Any], related: dict[str, dict[str, Any]], status: str | None) -> dict[str, Any]:
    org = loc = None
    for ref in site.get("site") or []:
        target = related.get(ref.get("reference", ""))
        if target is None:
            continue
        if target.get("resourceType") == "Organization":
            org = org or target
        elif target.get("resourceType") == "Location":
            loc = loc or target
    address = (loc or {}).get("address") or {}
    region = (site.get("region") or [{}])[0]
    position = (loc or {}).get("position") or {}
    geo = _clean({"lat": position.get("latitude"), "lon": position.get("longitude")})
    return _clean({
        "facility": (org or {}).get("name") or (loc or {}).get("name") or site.get("title"),
        "status": status,
        "city": address.get("city"), "state": address.get("state"), "zip": address.get("postalCode"),
        "country": _country(address, region),
        "geoPoint": geo if len(geo) == 2 else None})


def _references(study) -> dict[str, Any]:
    refs, links = [], []
    for a in study.get("relatedArtifact") or []:
        url = (a.get("document") or {}).get("url")
        if a.get("type") == "citation":
            pmid = url[len(C.PUBMED):].strip("/") if isinstance(url, str) and url.startswith(C.PUBMED) else None
            kind = next((C.code_of(c, C.ctgov("ReferenceType")) for c in a.get("classifier") or []), None)
            refs.append(_clean({"pmid": pmid, "type": kind, "citation": a.get("citation")}))
        elif a.get("type") == "documentation":
            links.append(_clean({"label": a.get("display"), "url": url}))
    return _clean({"references": refs, "seeAlsoLinks": links})


# -- helpers -----------------------------------------------------------------------------------

def _role(party: dict[str, Any]) -> str | None:
    return C.code_of(party.get("role"), C.PARTY_ROLE)


def _has(concept: dict[str, Any] | None, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in (concept or {}).get("coding") or [])


def _organization(party: dict[str, Any], related: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Organization a party references (empty: none, or not at hand)."""
    ref = (party.get("party") or {}).get("reference")
    target = related.get(ref) if isinstance(ref, str) else None
    return target if (target or {}).get("resourceType") == "Organization" else {}


def _party_name(party: dict[str, Any], related: dict[str, dict[str, Any]]) -> str | None:
    return party.get("name") or _organization(party, related).get("name")


def _agency(party: dict[str, Any], related: dict[str, dict[str, Any]] | None = None) -> str | None:
    """The AgencyClass of an organisation party: its classifier (CT.gov's code, else the R5
    organization type), else the type of the Organization it references."""
    for concept in party.get("classifier") or []:
        code = C.code_of(concept, C.ctgov("AgencyClass"))
        if code:
            return code
    for concept in party.get("classifier") or []:
        code = C.code_of(concept, C.ORG_TYPE)
        if code in C.AGENCY_BY_ORG_TYPE:
            return C.AGENCY_BY_ORG_TYPE[code]
    for concept in _organization(party, related or {}).get("type") or []:
        code = C.code_of(concept, C.ORG_TYPE)
        if code in C.AGENCY_BY_ORG_TYPE:
            return C.AGENCY_BY_ORG_TYPE[code]
        code = C.code_of(concept, C.THO_ORG_TYPE)
        if code in C.AGENCY_BY_THO_ORG_TYPE:
            return C.AGENCY_BY_THO_ORG_TYPE[code]
    return None


def _local(ref: dict[str, Any] | None) -> str | None:
    value = (ref or {}).get("reference")
    return value[1:] if isinstance(value, str) and value.startswith("#") else None


def _text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    return concept.get("text") or next((c.get("display") or c.get("code") for c in concept.get("coding") or []), None)


def _clean(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}
