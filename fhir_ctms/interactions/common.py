"""Checks shared by several interactions: the URL's type and id, ETags, conditional matches."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl
from typing import Any

from ..errors import BadRequest, Issue, MethodNotAllowed, NotFound, PreconditionFailed
from ..resources.json import parse_resource
from ..resources.registry import AUDIT_TYPES, is_resource_type, is_valid_id
from ..search.parse import parse
from ..search.valuesets import resolve as resolve_value_sets
from ..storage.repository import Session, Stored
from .context import FhirRequest

_ETAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')


def require_type(rtype: str | None) -> str:
    if rtype is None or not is_resource_type(rtype):
        raise NotFound(f"Unknown resource type {rtype!r}")
    return rtype


def require_id(rid: str | None) -> str:
    if not is_valid_id(rid):
        raise NotFound(f"Invalid resource id {rid!r}")
    assert rid is not None
    return rid


def body_resource(req: FhirRequest, rtype: str) -> dict[str, Any]:
    """The resource a write carries: parsed from the body, or given (a Bundle entry's).

    ``meta.versionId`` and ``meta.lastUpdated`` are dropped: the server SHALL ignore
    them (R5 http.html#create, #update) and sets its own."""
    if req.resource is None:
        resource = parse_resource(req.body, rtype)
    elif req.resource.get("resourceType") != rtype:
        raise BadRequest(f"resourceType {req.resource.get('resourceType')!r} does not match {rtype}",
                         issues=[Issue("invalid", f"resourceType does not match {rtype}",
                                       expression=("resourceType",))])
    else:
        resource = req.resource
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if meta:
            resource["meta"] = meta
        else:
            del resource["meta"]
    return resource


def forbid_audit_write(rtype: str, interaction: str) -> None:
    if rtype in AUDIT_TYPES:
        raise MethodNotAllowed(f"{rtype} records are part of the audit trail: {interaction} is not allowed")


def etag_versions(value: str | None) -> frozenset[str] | None:
    """The versions an ``If-Match``/``If-None-Match`` header names (RFC 9110: a list of
    entity tags, weak or strong, or ``*``); None when the header is absent."""
    if value is None:
        return None
    if value.strip() == "*":
        return frozenset({"*"})
    tags = []
    for part in value.split(","):
        m = _ETAG.fullmatch(part)
        if not m:
            raise BadRequest(f"Malformed ETag list {value!r}: expected W/\"<versionId>\"")
        tags.append(m.group(1))
    return frozenset(tags)


def names(tags: frozenset[str], current: Stored | None) -> bool:
    """Whether a set of entity tags matches the current version (``*``: any existing one)."""
    if current is None or current.deleted:
        return False
    return "*" in tags or str(current.version) in tags


def check_preconditions(req: FhirRequest, current: Stored | None) -> None:
    """``If-Match``: write only over the version the client read; ``If-None-Match``:
    write only if no such version exists (``*``: create only). 412 otherwise."""
    wanted = etag_versions(req.header("if-match"))
    if wanted is not None and not names(wanted, current):
        where = f"{req.type}/{req.id}"
        state = "has no current version" if current is None or current.deleted else f"is at version {current.version}"
        raise PreconditionFailed(f"If-Match: {where} {state}")
    unwanted = etag_versions(req.header("if-none-match"))
    if unwanted is not None and names(unwanted, current):
        raise PreconditionFailed(f"If-None-Match: {req.type}/{req.id} exists at version {current.version}")


async def match_conditional(s: Session, rtype: str, query: str, *, what: str) -> list[Stored]:
    """Current resources matching conditional criteria (at most two: enough to tell 0, 1, many).

    Write sessions are serialised, so two conditional writes with the same criteria
    cannot both find nothing and both create."""
    criteria = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in ("_format", "_pretty")]
    q = parse((rtype,), criteria, strict=True)
    if not q.clauses:
        raise BadRequest(f"{what}: no search criteria given")
    q = await resolve_value_sets(q, s)
    unsupported = s.unsupported(q)
    if unsupported:
        name, why = unsupported[0][1]
        raise BadRequest(f"{what}: search parameter {name!r}: {why} is not supported")
    return [st for st, _ in await s.search(q, limit=2)]


def single_match(matches: list[Stored], what: str) -> Stored | None:
    if len(matches) > 1:
        raise PreconditionFailed(f"{what}: the criteria match more than one resource")
    return matches[0] if matches else None
