"""Checks shared by several interactions: the URL's type and id, ETags, conditional matches."""

from __future__ import annotations

import re
from typing import Any

from ..errors import BadRequest, Issue, MethodNotAllowed, NotFound, PreconditionFailed
from ..resources.json import parse_resource
from ..resources.registry import AUDIT_TYPES, is_resource_type, is_valid_id
from ..search import criteria as search_criteria
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
    """The resource a write carries: parsed from the body, or given (a Bundle entry's)."""
    if req.resource is None:
        return parse_resource(req.body, rtype)
    if req.resource.get("resourceType") != rtype:
        raise BadRequest(f"resourceType {req.resource.get('resourceType')!r} does not match {rtype}",
                         issues=[Issue("invalid", f"resourceType does not match {rtype}",
                                       expression=("resourceType",))])
    return req.resource


def forbid_audit_change(rtype: str, interaction: str) -> None:
    if rtype in AUDIT_TYPES:
        raise MethodNotAllowed(f"{rtype} records are part of the audit trail: {interaction} is not allowed")


def etag_version(value: str | None) -> str | None:
    """The version in an ETag such as ``W/"3"`` (None when the header is absent)."""
    if value is None:
        return None
    m = _ETAG.fullmatch(value)
    if not m:
        raise BadRequest(f"Malformed ETag {value!r}: expected W/\"<versionId>\"")
    return m.group(1)


def check_if_match(req: FhirRequest, current: Stored | None) -> None:
    """``If-Match``: the write applies only to the version the client read (412 otherwise)."""
    wanted = etag_version(req.header("if-match"))
    if wanted is None:
        return
    if current is None or current.deleted:
        raise PreconditionFailed(f"If-Match {wanted}: {req.type}/{req.id} has no current version")
    if str(current.version) != wanted:
        raise PreconditionFailed(
            f"If-Match {wanted}: {req.type}/{req.id} is at version {current.version}")


async def match_conditional(s: Session, rtype: str, query: str, *, what: str) -> list[Stored]:
    """Current resources matching conditional criteria (at most two: enough to tell 0, 1, many).

    The criteria are locked first, so two conditional writes with the same criteria
    cannot both find nothing and both create."""
    crit = search_criteria.parse_query(query)
    if crit.empty:
        raise BadRequest(f"{what}: no search criteria given")
    await s.lock(f"{rtype}?{crit.key()}")
    return await s.find(rtype, crit.ids, crit.tokens, limit=2)


def single_match(matches: list[Stored], what: str) -> Stored | None:
    if len(matches) > 1:
        raise PreconditionFailed(f"{what}: the criteria match more than one resource")
    return matches[0] if matches else None
