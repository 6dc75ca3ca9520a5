"""CTMS resources back to a ClinicalTrials.gov API v2 record (``{"protocolSection": {...}}``): the
inverse of :mod:`to_fhir` for the fields of :data:`fields.MAPPED`.

It reads CT.gov's own codings where the import left them and falls back on the R5 codes, so a
study entered in the CTMS exports too. Only modules with content are written.
"""

from __future__ import annotations

from typing import Any

from . import codes as C

_PHASES = C.reverse(C.PHASES)
_STATUS = C.reverse(C.STATUS)
_PURPOSES = C.reverse(C.PURPOSES)
_ARM_TYPES = C.reverse(C.ARM_TYPES)
_OFFICIAL_ROLES = C.reverse(C.OFFICIAL_ROLES)
_OUTCOME_KINDS = C.reverse(C.OUTCOME_TYPES)
_AGENCY = {"industry": "INDUSTRY", "nih": "NIH"}
_DATE_BY_MILESTONE = {m: key for key, (_, m) in C.DATES.items() if m}
_DATE_BY_NAME = {name: key for key, (name, _) in C.DATES.items()}


def to_record(study: dict[str, Any], sites: list[dict[str, Any]],
              related: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record of ``study``; ``sites`` its site-level ResearchStudies in registry order,
    ``related`` the Organizations and Locations they point at, by ``Type/id``."""
    contained = {r.get("id"): r for r in study.get("contained") or [] if isinstance(r, dict)}
    parties = study.get("associatedParty") or []
    modules = {
        "identificationModule": _identification(study, parties),
        "statusModule": _status(study),
        "sponsorCollaboratorsModule": _sponsors(parties, contained),
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
                                           "locations": [_location(s, related) for s in sites]}),
        "referencesModule": _references(study),
    }
    return {"protocolSection": {k: v for k, v in modules.items() if v}}


# -- modules -----------------------------------------------------------------------------------

def _identification(study, parties) -> dict[str, Any]:
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
    sponsor = next((p for p in parties if _role(p) == "sponsor"), None)
    if sponsor is not None:
        out["organization"] = _clean({"fullName": sponsor.get("name"), "class": _agency(sponsor)})
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


def _status(study) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dates: dict[str, dict[str, Any]] = {}
    for entry in study.get("progressStatus") or []:
        state, start = entry.get("state"), (entry.get("period") or {}).get("start")
        name = C.code_of(state, C.ctgov("StudyDate"))
        key = _DATE_BY_NAME.get(name) if name else _DATE_BY_MILESTONE.get(C.code_of(state, C.STUDY_MILESTONE))
        if key:
            actual = entry.get("actual")
            if key in dates and dates[key].get("type") == "ACTUAL" and actual is not True:
                continue  # an actual date wins over a planned one
            kind = None if actual is None else "ACTUAL" if actual else "ESTIMATED"
            dates[key] = _clean({"date": start, "type": kind})
            continue
        overall = C.code_of(state, C.ctgov("OverallStatus")) or _STATUS.get(C.code_of(state, C.STUDY_STATUS))
        if overall and entry.get("actual") is not False:
            out["overallStatus"] = overall
            out["statusVerifiedDate"] = start
    if study.get("whyStopped"):
        out["whyStopped"] = _text(study["whyStopped"])
    for key in C.DATES:
        if key in dates:
            out[key] = dates[key]
    return _clean(out)


def _sponsors(parties, contained) -> dict[str, Any]:
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
            out["leadSponsor"] = _clean({"name": p.get("name"), "class": _agency(p)})
        elif _role(p) == "collaborator":
            out.setdefault("collaborators", []).append(_clean({"name": p.get("name"), "class": _agency(p)}))
    return out


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


def _location(site: dict[str, Any], related: dict[str, dict[str, Any]]) -> dict[str, Any]:
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
    status = None
    for entry in site.get("progressStatus") or []:
        code = C.code_of(entry.get("state"), C.ctgov("RecruitmentStatus")) or _STATUS.get(
            C.code_of(entry.get("state"), C.STUDY_STATUS))
        if code and entry.get("actual") is not False:
            status = code
    position = (loc or {}).get("position") or {}
    geo = _clean({"lat": position.get("latitude"), "lon": position.get("longitude")})
    return _clean({
        "facility": (org or {}).get("name") or (loc or {}).get("name") or site.get("title"),
        "status": status,
        "city": address.get("city"), "state": address.get("state"), "zip": address.get("postalCode"),
        "country": address.get("country") or region.get("text") or next(
            (c.get("display") or c.get("code") for c in region.get("coding") or []), None),
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


def _agency(party: dict[str, Any]) -> str | None:
    for concept in party.get("classifier") or []:
        code = C.code_of(concept, C.ctgov("AgencyClass"))
        if code:
            return code
        code = C.code_of(concept, C.ORG_TYPE)
        if code in _AGENCY:
            return _AGENCY[code]
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
