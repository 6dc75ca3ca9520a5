"""patch with JSON Patch (R5 http.html#patch, RFC 6902), conditional patch, If-Match.

A malformed patch document is a 400; a patch that cannot be applied (a failed
``test``, a missing path) is a 422, as is a patched resource that is no longer
valid or that changes ``resourceType`` or ``id``.
"""

from __future__ import annotations

import jsonpatch
import jsonpointer

from ..errors import BadRequest, Gone, Issue, NotFound, Unprocessable
from ..resources.json import loads
from ..resources.validate import validate_resource
from ..storage.repository import Session
from .common import check_preconditions, forbid_audit_write, match_conditional, require_id, require_type, single_match
from .context import Context, FhirRequest, FhirResponse
from .persist import write


def _patch_document(req: FhirRequest) -> jsonpatch.JsonPatch:
    ops = req.resource if req.resource is not None else loads(req.body)
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise BadRequest("A JSON Patch document is a JSON array of operation objects")
    try:
        return jsonpatch.JsonPatch(ops)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
        raise BadRequest(f"Invalid JSON Patch document: {exc}") from exc


async def patch(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype = require_type(req.type)
    forbid_audit_write(rtype, "patch")
    document = _patch_document(req)
    if req.id is not None:
        rid = require_id(req.id)
    else:
        match = single_match(await match_conditional(s, rtype, req.query, what="Conditional patch"),
                             "Conditional patch")
        if match is None:
            raise NotFound("Conditional patch: no resource matches the criteria")
        rid = match.id
    current = await s.current(rtype, rid)
    if current is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if current.deleted:
        raise Gone(f"{rtype}/{rid} was deleted")
    check_preconditions(req, current)
    assert current.content is not None
    try:
        patched = document.apply(loads(current.content))
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError,
            IndexError, ValueError) as exc:
        raise Unprocessable(f"The patch cannot be applied: {exc}",
                            issues=[Issue("processing", f"The patch cannot be applied: {exc}")]) from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != rtype or patched.get("id") != rid:
        raise Unprocessable("A patch may not change the resourceType or id")
    validate_resource(patched, ctx.settings)
    stored = await write(s, ctx, rtype, rid, patched, "patch", current)
    return FhirResponse(200, raw=stored.content, stored=stored)
