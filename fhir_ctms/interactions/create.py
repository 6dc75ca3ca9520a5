"""create (R5 http.html#create), with conditional create (``If-None-Exist``, #ccreate).

The server assigns the id (any id in the body is ignored, as the spec says).
Conditional create: no match creates, one match returns it with 200, several
matches fail with 412.
"""

from __future__ import annotations


from ..resources.validate import validate_resource
from ..storage.repository import Session
from .common import body_resource, forbid_audit_write, match_conditional, require_type, single_match
from ..config import Settings
from .context import Context, FhirRequest, FhirResponse
from .persist import new_id, write


def prepare(req: FhirRequest, settings: Settings) -> FhirRequest:
    """Everything create checks without the database: type, body and validation."""
    rtype = require_type(req.type)
    forbid_audit_write(rtype, "create")  # only the server writes audit records
    resource = body_resource(req, rtype)
    resource.pop("id", None)
    validate_resource(resource, settings)
    return req.prepared_with(resource)


async def create(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    if not req.prepared:
        req = prepare(req, ctx.settings)
    rtype, resource = req.type, req.resource
    assert rtype is not None and resource is not None
    criteria = req.header("if-none-exist")
    if criteria:
        existing = single_match(await match_conditional(s, rtype, criteria, what="If-None-Exist"),
                                "If-None-Exist")
        if existing is not None:
            return FhirResponse(200, raw=existing.content, stored=existing)
    # in a transaction the id is assigned before processing (so references can point at it)
    stored = await write(s, ctx, rtype, req.id or new_id(), resource, "create", None)
    return FhirResponse(201, raw=stored.content, stored=stored)
