"""``$validate-code`` on ValueSet (R5 valueset-operation-validate-code.html; the official
OperationDefinition ``ValueSet-validate-code``, profiles/OperationDefinition-ValueSet-validate-code.json):
is a code in a value set, and is its display right?

The value set is found as for ``$expand`` (``operations/expand.py``: the instance, ``valueSet``,
or ``url`` with ``valueSetVersion``; unknown: 404; not expandable here: 422). What is checked:
exactly one of ``code`` (with ``system``; ``systemVersion`` must then be the held code system's
version), ``coding`` or ``codeableConcept`` (POST only: they are not primitive), else a 400.

Output (a Parameters resource): ``result`` true when the code is a member and the display, if
given, is the code's display (compared ignoring case and surrounding white space, as displays
vary in case); false otherwise, with a ``message`` saying why, which is also an error ``issues``
entry; ``display`` the code's display when the code is known to the server; ``code``, ``system``
and ``version`` of the coding that was checked (for a CodeableConcept the first valid one, else
the first), and ``codeableConcept`` echoed. A CodeableConcept is valid when one of its codings is
(R5: "at least one coding").

Accepted and ignored: ``abstract`` (the held value sets have no abstract concepts),
``displayLanguage`` (displays are English only). ``context``, ``date`` and ``useSupplement`` are
a 422 ``not-supported``.
"""

from __future__ import annotations

from typing import Any

from .. import terminology
from ..errors import BadRequest
from ..interactions.context import Context, FhirRequest, FhirResponse
from .expand import boolean, check_names, single, target

_KNOWN = {"url", "valueSet", "valueSetVersion", "code", "system", "systemVersion", "display",
          "coding", "codeableConcept"}
_IGNORED = {"abstract", "displayLanguage"}
_UNSUPPORTED = {"context", "date", "useSupplement"}
_OP = "validate-code"


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"${_OP}: {name} must be a non-empty string")
    return value


def _coding(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"${_OP}: {name} must be a Coding (POST a Parameters body)")
    for key in ("system", "code", "display", "version"):
        if key in value and not isinstance(value[key], str):
            raise BadRequest(f"${_OP}: {name}.{key} must be a string")
    if not value.get("code"):
        raise BadRequest(f"${_OP}: {name} has no code")
    if not value.get("system"):
        raise BadRequest(f"${_OP}: {name} has no system")
    return value


def _codings(params: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The codings to check, and the CodeableConcept they came from (if any)."""
    code = _text(single(params, "code", _OP), "code")
    system = _text(single(params, "system", _OP), "system")
    version = _text(single(params, "systemVersion", _OP), "systemVersion")
    display = _text(single(params, "display", _OP), "display")
    coding = single(params, "coding", _OP)
    concept = single(params, "codeableConcept", _OP)
    given = [x is not None for x in (code, coding, concept)]
    if sum(given) != 1:
        raise BadRequest(f"${_OP}: give exactly one of code (with system), coding or codeableConcept")
    if code is not None:
        if system is None:
            raise BadRequest(f"${_OP}: system is required with code")
        c = {"system": system, "code": code}
        if version:
            c["version"] = version
        if display:
            c["display"] = display
        return [c], None
    if system is not None or version is not None:
        raise BadRequest(f"${_OP}: system and systemVersion go with code only")
    if coding is not None:
        c = dict(_coding(coding, "coding"))
        if display is not None:
            c["display"] = display
        return [c], None
    if not isinstance(concept, dict):
        raise BadRequest(f"${_OP}: codeableConcept must be a CodeableConcept (POST a Parameters body)")
    codings = concept.get("coding")
    if not isinstance(codings, list) or not codings:
        raise BadRequest(f"${_OP}: codeableConcept has no coding")
    return [_coding(c, f"codeableConcept.coding[{i}]") for i, c in enumerate(codings)], concept


def _check(c: dict[str, Any], members: dict[tuple[str, str], terminology.Concept],
           vs_name: str) -> tuple[bool, str | None, str | None]:
    """(valid, message, display) of one coding."""
    system, code = c["system"], c["code"]
    member = members.get((system, code))
    cs = terminology.code_system(system)
    known = cs.concepts.get(code) if cs else None
    display = member.display if member is not None and member.display else (known[0] if known else None)
    version = c.get("version")
    if version and cs is not None and cs.version and version != cs.version:
        return False, (f"The code system {system} version {version} is not known to this server "
                       f"(it holds version {cs.version})"), display
    if member is None:
        if cs is not None and known is None and cs.complete:
            return False, f"Unknown code '{code}' in the code system {system}", None
        return False, f"The code {system}#{code} is not in the value set {vs_name}", display
    given = c.get("display")
    if given is not None and display is not None and given.strip().lower() != display.strip().lower():
        return False, (f"Wrong display '{given}' for {system}#{code}: it should be "
                       f"'{display}'"), display
    return True, None, display


async def validate_code(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    check_names(params, _OP, _KNOWN, _IGNORED, _UNSUPPORTED)
    boolean(single(params, "abstract", _OP), "abstract", _OP)
    codings, concept = _codings(params)  # bad input is a 400 before the value set is read
    t = await target(req, ctx, params, _OP)
    vs_name = str(t.resource.get("url") or (f"ValueSet/{req.id}" if req.id else "given"))
    if t.resource.get("url") and t.resource.get("version"):
        vs_name += f"|{t.resource['version']}"
    members = {(m.system, m.code): m for m in t.members}

    checked = [(c, *_check(c, members, vs_name)) for c in codings]
    valid = [x for x in checked if x[1]]
    chosen = valid[0] if valid else checked[0]
    coding, _, _, display = chosen
    messages = [m for _, ok, m, _ in checked if m and not ok] if not valid else []
    if concept is not None and not valid and len(checked) > 1:
        messages.append(f"None of the codings of the CodeableConcept is valid in {vs_name}")
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(valid)}]
    if messages:
        out.append({"name": "message", "valueString": "; ".join(messages)})
    if display:
        out.append({"name": "display", "valueString": display})
    out.append({"name": "code", "valueCode": coding["code"]})
    out.append({"name": "system", "valueUri": coding["system"]})
    cs = terminology.code_system(coding["system"])
    if cs is not None and cs.version:
        out.append({"name": "version", "valueString": cs.version})
    if concept is not None:
        out.append({"name": "codeableConcept", "valueCodeableConcept": concept})
    if messages:
        out.append({"name": "issues", "resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "code-invalid", "details": {"text": m}}
            for m in messages]}})
    return FhirResponse(200, body={"resourceType": "Parameters", "parameter": out})
