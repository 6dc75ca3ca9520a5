"""Profile validation: a resource checked against the CTMS StructureDefinitions of ``profiles/``.

R5 validation.html lists what validating a resource means (structure, cardinality, values,
bindings, invariants, profiles); structure, primitive formats and the core required bindings
are checked on every write by ``resources/validate.py``; this package adds the profiles:

- :func:`validate` -- the issues of a resource against the profiles it claims in
  ``meta.profile`` (and any given), the CTMS profile of its kind when profiles are mandatory, and
  every extension it carries whose url is one of the CTMS extension definitions (context, value
  type, sub-extensions, invariants), wherever it sits;
- :func:`compiled_profile` -- one compiled profile by canonical URL (``url`` or ``url|version``),
  compiled once per process (``profile.compile_profile``).

Profiles the server does not know: R5 (resource.html#Meta, profiling.html#profile-tags) makes
``meta.profile`` a claim a server may check, and does not require it to know every profile, so
an unknown claim is reported as a warning (``$validate``) and a write goes ahead, unless
``FHIR_CTMS_REJECT_UNKNOWN_PROFILES`` is set, when it is an error (422).

Mandatory profiles (``FHIR_CTMS_REQUIRE_PROFILES``): a resource of a CTMS kind must conform to its
profile whether it claims it or not: a ResearchStudy to ``ctms-study``, ``ctms-country`` or
``ctms-site`` by its ``study-level`` classifier (none is an error), a ResearchSubject to
``ctms-subject``, a PractitionerRole to ``ctms-site-staff``, a Practitioner to
``ctms-investigator``, a PlanDefinition of type ``clinical-protocol`` to ``ctms-protocol``, a
CarePlan with a ``sid/visit-plan`` identifier to ``ctms-visit-plan`` and an Appointment with a
``sid/planned-visit`` identifier to ``ctms-planned-visit``, a ChargeItemDefinition coded from
``payable-event`` (a fee) to ``ctms-fee``. PlanDefinitions, CarePlans,
Appointments and Encounters have other uses in a CTMS (visit definitions, monitoring visits,
care outside the study), so only those that are recognisably the CTMS's own are held to the
profile; an Encounter is a ``ctms-study-visit`` only when it claims it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from ..errors import Issue
from ..resources import profiles as _files
from .profile import Profile, compile_profile

__all__ = ["CANONICAL", "Profile", "compiled_profile", "mandatory_profile", "structure_definitions",
           "validate"]

CANONICAL = "http://fhir-ctms.org/fhir/StructureDefinition/"
_MARK = CANONICAL.encode()
_LEVEL_SYSTEM = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
_BY_TYPE = {"ResearchSubject": "ctms-subject", "PractitionerRole": "ctms-site-staff",
            "Practitioner": "ctms-investigator"}
_BY_IDENTIFIER = {"CarePlan": ("http://fhir-ctms.org/fhir/sid/visit-plan", "ctms-visit-plan"),
                  "Appointment": ("http://fhir-ctms.org/fhir/sid/planned-visit", "ctms-planned-visit")}


@cache
def structure_definitions() -> dict[str, dict[str, Any]]:
    """The StructureDefinitions of ``profiles/`` by canonical URL."""
    return {sd["url"]: sd for sd in _files.resources("StructureDefinition") if "url" in sd}


def _base_type(url: str) -> str | None:
    sd = structure_definitions().get(url)
    return sd.get("type") if sd else None


def _unversioned(url: str) -> str | None:
    """The URL of a known profile named ``url`` or ``url|version`` (this version), else None."""
    base, _, version = url.partition("|")
    sd = structure_definitions().get(base)
    if sd is None or (version and version != sd.get("version")):
        return None
    return base


@cache
def _compiled(url: str) -> Profile:
    return compile_profile(structure_definitions()[url], _base_type)


def compiled_profile(url: str) -> Profile | None:
    """The compiled profile of a canonical URL (``|version`` allowed), None when unknown."""
    known = _unversioned(url)
    return _compiled(known) if known else None


@cache
def _extensions() -> dict[str, Profile]:
    return {url: _compiled(url) for url, sd in structure_definitions().items()
            if sd.get("type") == "Extension" and sd.get("derivation") == "constraint"}


_PAYABLE_EVENT = "http://fhir-ctms.org/fhir/CodeSystem/payable-event"


def mandatory_profile(resource: dict[str, Any]) -> str | Issue | None:
    """The CTMS profile a resource must conform to when profiles are mandatory (its URL), an
    issue when it cannot be told (a ResearchStudy without a level), None for other kinds."""
    rtype = resource.get("resourceType")
    if rtype == "ResearchStudy":
        levels = {c.get("code") for cc in resource.get("classifier") or [] if isinstance(cc, dict)
                  for c in cc.get("coding") or [] if isinstance(c, dict)
                  and c.get("system") == _LEVEL_SYSTEM}
        level = next((lv for lv in ("study", "country", "site") if lv in levels), None)
        if level is None or len(levels) != 1:
            return Issue("required", "ResearchStudy: a classifier coding of " + _LEVEL_SYSTEM +
                         " (study, country or site) is required: CTMS profiles are mandatory "
                         "on this server", expression=("ResearchStudy.classifier",))
        return CANONICAL + ("ctms-" + level)
    if rtype in _BY_TYPE:
        return CANONICAL + _BY_TYPE[rtype]
    if rtype == "PlanDefinition":
        coded = [c for c in ((resource.get("type") or {}).get("coding") or []) if isinstance(c, dict)]
        if any(c.get("code") == "clinical-protocol" for c in coded):
            return CANONICAL + "ctms-protocol"
    if rtype == "ChargeItemDefinition":
        code = resource.get("code")
        coded = code.get("coding") if isinstance(code, dict) else None
        if any(isinstance(c, dict) and c.get("system") == _PAYABLE_EVENT for c in coded or []):
            return CANONICAL + "ctms-fee"
    if rtype in _BY_IDENTIFIER:
        system, pid = _BY_IDENTIFIER[rtype]
        if any(isinstance(i, dict) and i.get("system") == system
               for i in resource.get("identifier") or []):
            return CANONICAL + pid
    return None


def _claims(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    claimed = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in claimed or [] if isinstance(p, str)]


def validate(resource: dict[str, Any], extra: tuple[str, ...] = (), *, require: bool = False,
             reject_unknown: bool = False) -> list[Issue]:
    """Every issue of a resource (a JSON dict that passed the structural validation) against
    the profiles it claims, those in ``extra`` and, with ``require``, its mandatory one; and
    against the CTMS extension definitions of the extensions it carries."""
    rtype = resource.get("resourceType", "")
    issues: list[Issue] = []
    urls: list[str] = []
    for url in [*_claims(resource), *extra]:
        known = _unversioned(url)
        if known is None:
            issues.append(Issue("not-supported", f"The profile {url} is not known to this server; "
                                "the resource was not checked against it",
                                severity="error" if reject_unknown else "warning",
                                expression=(f"{rtype}.meta.profile",)))
            continue
        sd_type = structure_definitions()[known].get("type")
        if sd_type != rtype:
            issues.append(Issue("invalid", f"The profile {known} is a profile of {sd_type}, "
                                f"not of {rtype}", expression=(f"{rtype}.meta.profile",)))
            continue
        if known not in urls:
            urls.append(known)
    if require:
        needed = mandatory_profile(resource)
        if isinstance(needed, Issue):
            issues.append(needed)
        elif needed is not None and needed not in urls:
            urls.append(needed)
    for url in urls:
        issues.extend(_compiled(url).validate(resource))
    issues.extend(_check_extensions(resource))
    return issues


def _check_extensions(resource: dict[str, Any]) -> list[Issue]:
    """Each extension of a CTMS url, wherever it is, against its definition."""
    if _MARK not in orjson.dumps(resource, default=str):  # a few us; a walk costs far more
        return []
    known = _extensions()
    issues: list[Issue] = []
    rtype = resource.get("resourceType", "")
    # (JSON node, FHIRPath expression, element path, the nearest resource) of each object, depth
    # first: an extension's invariants see that resource as %resource (FHIRPath: the resource
    # containing the node; a Bundle entry's, a contained one's), the outermost as %rootResource
    stack: list[tuple[Any, str, str, dict[str, Any]]] = [(resource, rtype, rtype, resource)]
    while stack:
        node, expr, path, nearest = stack.pop()
        for key, value in node.items():
            if key == "resourceType" or key.startswith("_"):
                continue
            items = value if isinstance(value, list) else [value]
            many = isinstance(value, list)
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                where = f"{expr}.{key}[{i}]" if many else f"{expr}.{key}"
                if "resourceType" in item:  # contained / nested resources: their own root
                    stack.append((item, where, item["resourceType"], item))
                    continue
                url = item.get("url") if key in ("extension", "modifierExtension") else None
                if isinstance(url, str) and url.startswith(CANONICAL):
                    ext = known.get(url)
                    if ext is None:
                        issues.append(Issue("extension", f"{where}: the extension {url} is not "
                                            "defined by this server", severity="warning",
                                            expression=(where,)))
                    else:
                        if ext.contexts and path not in ext.contexts:
                            issues.append(Issue("extension", f"{where}: the extension {url} is not "
                                                f"allowed on {path} (only on "
                                                f"{', '.join(ext.contexts)})", expression=(where,)))
                        issues.extend(ext.validate(item, nearest, where, root=resource))
                    continue
                stack.append((item, where, f"{path}.{key}", nearest))
    return issues
