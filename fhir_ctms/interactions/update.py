"""update (R5 http.html#update), update-as-create, conditional update (#cond-update), If-Match.

- The body's id must equal the URL's id (400 otherwise).
- A new id is created with the client's id (update as create, 201).
- ``If-Match`` makes the update apply only to the version the client read (412).
- An update that changes nothing but ``meta.versionId``/``lastUpdated`` creates
  no new version (a no-op update, 200 with the current version).
- ``If-None-Match`` (``*`` or versions) refuses the update when it matches (412).
- Conditional update: no match creates (with the body's id if any; 409 when that
  id exists), one match updates it, several fail with 412.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..errors import BadRequest, Conflict
from ..resources.json import loads
from ..resources.validate import validate_resource
from ..storage.repository import Session, Stored
from .common import (body_resource, check_preconditions, forbid_audit_write, match_conditional, require_id,
                     require_type, single_match)
from .context import Context, FhirRequest, FhirResponse
from .persist import new_id, write


def _same_content(a: dict[str, Any], stored: Stored) -> bool:
    if stored.deleted or stored.content is None:
        return False
    b = loads(stored.content)

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        meta = dict(r.get("meta") or {})
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
        if meta:
            r["meta"] = meta
        else:
            r.pop("meta", None)
        return r

    return strip(a) == strip(b)


def prepare(req: FhirRequest, settings: Settings) -> FhirRequest:
    """An update by id, checked without the database: type, body, id and validation.
    (A conditional update learns its id from the database, so it validates there.)"""
    if req.id is None:
        return req
    rtype = require_type(req.type)
    forbid_audit_write(rtype, "update")
    resource = body_resource(req, rtype)
    rid = require_id(req.id)
    if resource.get("id") != rid:
        raise BadRequest(f"The resource id {resource.get('id')!r} does not match the URL's id {rid!r}")
    validate_resource(resource, settings)
    return req.prepared_with(resource)


async def update(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    if req.id is not None:
        if not req.prepared:
            req = prepare(req, ctx.settings)
        rtype, resource, rid = req.type, req.resource, req.id
        assert rtype is not None and resource is not None
    else:
        rtype, resource = await _conditional_target(req, s)
        rid = resource["id"]
        validate_resource(resource, ctx.settings)
    current = await s.current(rtype, rid)
    check_preconditions(req, current)
    if current is not None and _same_content(resource, current):
        return FhirResponse(200, raw=current.content, stored=current)
    stored = await write(s, ctx, rtype, rid, resource, "update", current)
    created = current is None or current.deleted  # update as create, or a resurrection
    return FhirResponse(201 if created else 200, raw=stored.content, stored=stored)


async def _conditional_target(req: FhirRequest, s: Session) -> tuple[str, dict[str, Any]]:
    """The type and the resource (with its id set) of a conditional update (#cond-update)."""
    rtype = require_type(req.type)
    forbid_audit_write(rtype, "update")
    resource = body_resource(req, rtype)
    body_id = resource.get("id")
    match = single_match(await match_conditional(s, rtype, req.query, what="Conditional update"),
                         "Conditional update")
    if match is not None:
        if body_id is not None and body_id != match.id:
            raise BadRequest(f"The resource id {body_id!r} is not the id of the matching resource")
        rid = match.id
    else:
        rid = body_id if isinstance(body_id, str) else new_id()
        existing = await s.current(rtype, require_id(rid))
        if existing is not None and not existing.deleted:
            # no match, but the body names a resource that exists (http.html#cond-update)
            raise Conflict(f"No resource matches the criteria, and {rtype}/{rid} exists")
    resource["id"] = rid
    return rtype, resource
