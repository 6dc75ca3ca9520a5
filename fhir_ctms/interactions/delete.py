"""delete (R5 http.html#delete) and conditional delete (#cdelete), If-Match.

A deletion is a new version with no content (history keeps everything before
it; read then answers 410). Deleting what does not exist, or is already
deleted, succeeds and writes nothing, as the spec allows. Conditional delete
supports a single match; several matches fail with 412.
"""

from __future__ import annotations

from ..storage.repository import Session
from .common import check_preconditions, forbid_audit_write, match_conditional, require_id, require_type, single_match
from .context import Context, FhirRequest, FhirResponse
from .persist import write


async def delete(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype = require_type(req.type)
    forbid_audit_write(rtype, "delete")
    if req.id is not None:
        rid = require_id(req.id)
    else:
        match = single_match(await match_conditional(s, rtype, req.query, what="Conditional delete"),
                             "Conditional delete")
        if match is None:
            return FhirResponse(204, outcome=_outcome("No resource matched: nothing was deleted"))
        rid = match.id
    current = await s.current(rtype, rid)
    check_preconditions(req, current)
    if current is None or current.deleted:
        return FhirResponse(204, stored=current, outcome=_outcome(f"{rtype}/{rid}: nothing to delete"))
    stored = await write(s, ctx, rtype, rid, None, "delete", current)
    return FhirResponse(204, stored=stored, outcome=_outcome(f"{rtype}/{rid} deleted"))


def _outcome(text: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": text}]}
