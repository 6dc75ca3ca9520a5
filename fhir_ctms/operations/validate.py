"""``$validate`` (R5 resource-operation-validate.html; the official OperationDefinition
``Resource-validate``, profiles/OperationDefinition-Resource-validate.json).

``[type]/$validate`` checks the ``resource`` parameter, ``[type]/[id]/$validate`` the given one
or, without it, the stored current version. What is checked is what a write checks
(``resources.validate.check_resource``: the R5 model, required bindings, the CTMS profiles the
resource claims and its CTMS extensions, with the server's ``require_profiles`` and
``reject_unknown_profiles`` settings) plus the ``profile`` parameter's profile (one the server
does not know is an error: it was asked for). ``mode``:

- none: the content only;
- ``create``: and that it may be created (audit records may not: the server writes them);
- ``update`` (instance level): and that it may update the resource of the URL (its id is the
  URL's id; not an audit record);
- ``delete`` (instance level): the content is ignored; whether the resource may be deleted (an
  audit record may not; a missing one "succeeds", as a delete of it would).

The answer is 200 with an OperationOutcome whether the resource is valid or not (an
``information`` issue "No issues detected" when there is nothing to say); 400 when the operation
cannot run (no resource to validate, a resource of another type, an unknown mode or parameter),
404/410 when the instance does not exist or was deleted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import BadRequest, Gone, Issue, NotFound, operation_outcome
from ..interactions.context import Context, FhirRequest, FhirResponse
from ..resources.json import loads
from ..resources.registry import AUDIT_TYPES
from ..resources.validate import check_resource

_INPUTS = {"resource", "mode", "profile", "usageContext"}
_MODES = {"create", "update", "delete"}


def _one(params: list[tuple[str, Any]], name: str) -> Any:
    values = [v for n, v in params if n == name]
    if len(values) > 1:
        raise BadRequest(f"$validate: {name} may be given once")
    return values[0] if values else None


async def validate(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    unknown = sorted({n for n, _ in params} - _INPUTS)
    if unknown:
        raise BadRequest(f"$validate: unknown parameter(s) {', '.join(unknown)}")
    rtype = req.type or ""
    mode = _one(params, "mode")
    if mode is not None and mode not in _MODES:
        raise BadRequest(f"$validate: mode must be one of create, update, delete (not {mode!r})")
    if mode in ("update", "delete") and req.id is None:
        raise BadRequest(f"$validate: mode {mode} needs the instance level ([type]/[id]/$validate)")
    profile = _one(params, "profile")
    if profile is not None and not isinstance(profile, str):
        raise BadRequest("$validate: profile is a canonical URL")
    resource = _one(params, "resource")
    if isinstance(resource, str):  # operations.html: only primitive parameters in the URL
        raise BadRequest("$validate: a resource cannot be given in the URL: POST a Parameters body")

    issues: list[Issue] = []
    if mode == "delete":
        issues = await _delete(ctx, rtype, req.id or "")
        return _answer(issues)
    if resource is None:
        if req.id is None:
            raise BadRequest("$validate: the resource parameter is required at the type level")
        resource = await _stored(ctx, rtype, req.id)
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        found = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        raise BadRequest(f"$validate: the resource must be a {rtype} (found {found})")
    if mode in ("create", "update") and rtype in AUDIT_TYPES:
        issues.append(Issue("business-rule", f"{rtype} records are part of the audit trail: "
                            f"{mode} is not allowed", expression=(rtype,)))
    if mode == "update" and resource.get("id") != req.id:
        issues.append(Issue("invalid", f"The resource id {resource.get('id')!r} does not match "
                            f"the URL's id {req.id!r}", expression=(f"{rtype}.id",)))
    if mode == "create":
        resource = {k: v for k, v in resource.items() if k != "id"}  # create ignores the id
    settings = ctx.settings
    found = check_resource(resource, (profile,) if profile else (),
                           require=settings.require_profiles,
                           reject_unknown=settings.reject_unknown_profiles)
    if profile:  # asked for explicitly: not knowing it is an error
        found = [replace(i, severity="error") if i.code == "not-supported" and profile in i.diagnostics
                 else i for i in found]
    issues.extend(found)
    return _answer(issues)


async def _stored(ctx: Context, rtype: str, rid: str) -> dict[str, Any]:
    async with ctx.repo.session(write=False) as s:
        st = await s.current(rtype, rid)
    if st is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if st.deleted or st.content is None:
        raise Gone(f"{rtype}/{rid} was deleted")
    return loads(st.content)


async def _delete(ctx: Context, rtype: str, rid: str) -> list[Issue]:
    if rtype in AUDIT_TYPES:
        return [Issue("business-rule", f"{rtype} records are part of the audit trail: delete is "
                      "not allowed", expression=(rtype,))]
    async with ctx.repo.session(write=False) as s:
        st = await s.current(rtype, rid)
    if st is None or st.deleted:
        return [Issue("informational", f"{rtype}/{rid} does not exist: a delete would succeed "
                      "and change nothing", severity="information")]
    return []


def _answer(issues: list[Issue]) -> FhirResponse:
    if not issues:
        issues = [Issue("informational", "No issues detected", severity="information")]
    return FhirResponse(200, body=operation_outcome(issues))
