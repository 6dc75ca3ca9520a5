"""``$expand`` (R5 valueset-operation-expand.html; the official OperationDefinition
``ValueSet-expand``, profiles/OperationDefinition-ValueSet-expand.json): the codes of a value
set, as a ValueSet with an ``expansion``.

Which value set: at the instance level the stored ValueSet ``[id]``; at the type level the
``valueSet`` given in the body, or the one named by ``url`` (``url|version`` or with
``valueSetVersion``): one the server holds in files (``terminology/``, the R5 core value sets of
``fhir_ctms.terminology``) first, else a stored current ValueSet with that url. An unknown value
set is a 404.

What can be expanded (no terminology server): a compose that lists concepts or includes whole
code systems the server holds, or a stored ``expansion`` (``fhir_ctms.terminology.concepts``,
which reads a ValueSet as the ``:in`` search modifier does). Filters, imported value sets and
code systems the server does not hold are a 422 ``not-supported``; more than
``terminology.MAX_CODES`` codes a 422 ``too-costly``.

Parameters: ``filter`` (a case-insensitive substring of the code or the display), ``offset`` and
``count`` (paging: ``expansion.total`` is the size of the filtered expansion, ``offset`` where
the page starts; ``count`` 0 gives the total alone), ``includeDefinition`` (the value set's
``compose`` kept in the result; left out by default). Accepted and ignored: ``activeOnly``
(the server does not track concept status: every CTMS code is active, and the R5 core codes are
listed as the core package defines the value set), ``excludeNested`` (expansions are always
flat: these value sets have no hierarchy), ``includeDesignations`` (no designations are held),
``excludeNotForUI``, ``excludePostCoordinated``, ``displayLanguage`` (displays are in English
only). The other
parameters of the definition (``context``, ``date``, ``designation``, ``useSupplement``,
``property``, the system-version ones) are a 422 ``not-supported`` when given, rather than an
answer that ignores them; a parameter the definition does not have is a 400.
"""

from __future__ import annotations

import uuid
from typing import Any

from .. import terminology
from ..errors import BadRequest, Issue, NotFound, Unprocessable
from ..interactions.context import Context, FhirRequest, FhirResponse, instant, now_us
from ..resources.json import loads
from ..terminology import CannotExpand, Concept

_KNOWN = {"url", "valueSet", "valueSetVersion", "filter", "offset", "count", "includeDefinition"}
_IGNORED = {"activeOnly", "excludeNested", "includeDesignations", "excludeNotForUI",
            "excludePostCoordinated", "displayLanguage"}
_UNSUPPORTED = {"context", "contextDirection", "date", "designation", "useSupplement", "property",
                "exclude-system", "system-version", "check-system-version",
                "force-system-version"}


def single(params: list[tuple[str, Any]], name: str, op: str) -> Any:
    """The value of a parameter given at most once (None if absent)."""
    values = [v for n, v in params if n == name]
    if len(values) > 1:
        raise BadRequest(f"${op}: the parameter {name} may be given once")
    return values[0] if values else None


def check_names(params: list[tuple[str, Any]], op: str, known: set[str], ignored: set[str],
                unsupported: set[str]) -> None:
    names = {n for n, _ in params}
    unknown = sorted(names - known - ignored - unsupported)
    if unknown:
        raise BadRequest(f"${op}: unknown parameter(s) {', '.join(unknown)}")
    refused = sorted(names & unsupported)
    if refused:
        why = f"${op}: the parameter(s) {', '.join(refused)} are not supported by this server"
        raise Unprocessable(why, issues=[Issue("not-supported", why)])


def boolean(value: Any, name: str, op: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise BadRequest(f"${op}: {name} must be true or false")


def _integer(value: Any, name: str, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool):
        raise BadRequest(f"$expand: {name} must be a non-negative integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"$expand: {name} must be a non-negative integer") from None
    if n < 0 or (isinstance(value, str) and not value.strip().isdigit()):
        raise BadRequest(f"$expand: {name} must be a non-negative integer")
    return n


# -- the value set -------------------------------------------------------------------------------

class Target:
    """The value set an operation is about: its resource (or what is held of it) and members."""

    def __init__(self, resource: dict[str, Any], members: tuple[Concept, ...],
                 held: terminology.ValueSetDef | None = None) -> None:
        self.resource, self.members, self.held = resource, members, held


def _held_resource(vs: terminology.ValueSetDef) -> dict[str, Any]:
    if vs.resource is not None:
        return {k: v for k, v in vs.resource.items() if k not in ("meta", "text")}
    out: dict[str, Any] = {"resourceType": "ValueSet", "url": vs.url}
    for key, value in (("version", vs.version), ("name", vs.name), ("title", vs.title)):
        if value:
            out[key] = value
    out["status"] = "active"
    return out


def _members(vs: dict[str, Any], what: str) -> tuple[Concept, ...]:
    try:
        return terminology.concepts(vs)
    except CannotExpand as exc:
        why = f"{what} cannot be expanded by this server: {exc}"
        raise Unprocessable(why, issues=[Issue(exc.code, why)]) from exc


async def target(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]], op: str) -> Target:
    """The value set of the request (instance, ``valueSet`` or ``url``), expanded."""
    url = single(params, "url", op)
    given = single(params, "valueSet", op)
    version = single(params, "valueSetVersion", op)
    if req.id is not None:
        if url is not None or given is not None:
            raise BadRequest(f"${op}: url and valueSet are parameters of the type level only")
        async with ctx.repo.session(write=False) as s:
            st = await s.current("ValueSet", req.id)
        if st is None or st.deleted or st.content is None:
            raise NotFound(f"ValueSet/{req.id} is not known")
        vs = loads(st.content)
        return Target(vs, _members(vs, f"ValueSet/{req.id}"))
    if given is not None:
        if url is not None:
            raise BadRequest(f"${op}: give either url or valueSet, not both")
        if not isinstance(given, dict) or given.get("resourceType") != "ValueSet":
            raise BadRequest(f"${op}: valueSet must be a ValueSet resource")
        from ..resources.validate import validate_resource
        validate_resource(dict(given))
        return Target(given, _members(given, "the valueSet given"))
    if url is None:
        raise BadRequest(f"${op}: at the type level, url or valueSet is required")
    if not isinstance(url, str) or not url.strip():
        raise BadRequest(f"${op}: url must be a canonical URL")
    if version is not None and not isinstance(version, str):
        raise BadRequest(f"${op}: valueSetVersion must be a string")
    base, _, inline_version = url.partition("|")
    if inline_version and version and inline_version != version:
        raise BadRequest(f"${op}: url names version {inline_version} and valueSetVersion {version}")
    version = version or inline_version or None
    held = terminology.value_set(base, version)
    if held is not None:
        return Target(_held_resource(held), held.concepts, held)
    from ..search.valuesets import _find  # the stored ValueSet a canonical names (as for :in)

    ref = base + (f"|{version}" if version else "")
    async with ctx.repo.session(write=False) as s:
        stored = await _find(ref, s, ctx.base)
    if stored is None:
        raise NotFound(f"The value set {ref} is not known to this server")
    return Target(stored, _members(stored, f"The value set {ref}"))


# -- the operation -------------------------------------------------------------------------------

def _matches(c: Concept, text: str) -> bool:
    return text in c.code.lower() or (c.display is not None and text in c.display.lower())


async def expand(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    check_names(params, "expand", _KNOWN, _IGNORED, _UNSUPPORTED)
    text = single(params, "filter", "expand")
    if text is not None and not isinstance(text, str):
        raise BadRequest("$expand: filter must be a string")
    offset = _integer(single(params, "offset", "expand"), "offset", 0) or 0
    count = _integer(single(params, "count", "expand"), "count", None)
    definitions = boolean(single(params, "includeDefinition", "expand"), "includeDefinition",
                          "expand")
    for name in _IGNORED:  # ignored, but still checked
        value = single(params, name, "expand")
        if name != "displayLanguage" and value is not None:
            boolean(value, name, "expand")
    t = await target(req, ctx, params, "expand")

    members = list(t.members)
    if text:
        needle = text.strip().lower()
        members = [c for c in members if _matches(c, needle)]
    page = members[offset:] if count is None else members[offset:offset + count]
    contains = []
    for c in page:
        item: dict[str, Any] = {"system": c.system}
        if c.version:
            item["version"] = c.version
        item["code"] = c.code
        if c.display:
            item["display"] = c.display
        contains.append(item)
    parameters: list[dict[str, Any]] = []
    if text is not None:
        parameters.append({"name": "filter", "valueString": text})
    if offset:
        parameters.append({"name": "offset", "valueInteger": offset})
    if count is not None:
        parameters.append({"name": "count", "valueInteger": count})
    if definitions:
        parameters.append({"name": "includeDefinition", "valueBoolean": True})
    expansion: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": instant(now_us()),
        "total": len(members),
    }
    if offset or count is not None:
        expansion["offset"] = offset
    if parameters:
        expansion["parameter"] = parameters
    if contains:
        expansion["contains"] = contains
    dropped = ("meta", "text", "expansion") + (() if definitions else ("compose",))
    out = {k: v for k, v in t.resource.items() if k not in dropped}
    out["expansion"] = expansion
    return FhirResponse(200, body=out)
