"""batch and transaction (R5 http.html#transaction).

transaction: every entry runs in ONE database transaction; the first failing
entry rolls everything back and the client gets that entry's OperationOutcome
and status. Before anything is written, POST entries get their ids (or resolve
``ifNoneExist``), conditional PUTs are resolved, and every ``urn:uuid:`` /
fullUrl reference and every conditional reference (``Patient?identifier=...``)
in the entries' resources is rewritten to the resource it means. Entries are
then processed in the spec's order: DELETE, POST, PUT/PATCH, then GET/HEAD;
the response lists them in the request's order.

batch: each entry is processed on its own (its own database transaction), and
a failure is reported in that entry's response.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from ..errors import BadRequest, FhirError, Forbidden, Issue, PreconditionFailed, operation_outcome
from ..resources.json import loads
from ..search.parse import parse
from ..search.unsaved import matches_unsaved
from ..storage.repository import Session
from . import access, references
from .bundles import bundle
from .common import match_conditional, require_type, single_match
from .context import Context, FhirRequest, FhirResponse, etag, instant, now_us
from .persist import new_id
from .router import entry_request
from .table import perform

log = logging.getLogger("fhir_ctms")

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 304: "304 Not Modified"}


@dataclass(slots=True)
class Entry:
    index: int
    full_url: str | None
    request: FhirRequest


def _entries(body: dict[str, Any], ctx: Context) -> list[Entry]:
    raw = body.get("entry", [])
    if not isinstance(raw, list):
        raise BadRequest("Bundle.entry must be an array")
    if len(raw) > ctx.settings.max_bundle_entries:
        raise BadRequest(f"A Bundle may have at most {ctx.settings.max_bundle_entries} entries")
    return [_entry(i, e, ctx) for i, e in enumerate(raw)]


def _entry(index: int, e: Any, ctx: Context) -> Entry:
    try:
        if not isinstance(e, dict) or not isinstance(e.get("request"), dict):
            raise BadRequest("every entry needs a request")
        r = e["request"]
        method, target = r.get("method"), r.get("url")
        if not isinstance(method, str) or not isinstance(target, str):
            raise BadRequest("request.method and request.url are required strings")
        headers = {h: r[k] for k, h in (("ifMatch", "if-match"), ("ifNoneExist", "if-none-exist"),
                                        ("ifNoneMatch", "if-none-match"),
                                        ("ifModifiedSince", "if-modified-since"))
                   if isinstance(r.get(k), str)}
        req = entry_request(method, target, ctx.base, headers)
        resource = e.get("resource")
        if req.method in ("POST", "PUT"):
            if not isinstance(resource, dict):
                raise BadRequest(f"a {req.method} entry needs a resource")
            req = replace(req, resource=resource)
        elif req.method == "PATCH":
            req = _patch_request(req, resource)
        full_url = e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None
        return Entry(index, full_url, req)
    except FhirError as exc:
        raise _at(exc, index) from exc


def _patch_request(req: FhirRequest, resource: Any) -> FhirRequest:
    """A PATCH entry carries a Binary whose data is the JSON Patch document (base64)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise BadRequest("a PATCH entry carries its JSON Patch as a Binary resource")
    try:
        ops = loads(base64.b64decode(resource.get("data", ""), validate=True))
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"the PATCH entry's Binary.data is not base64 JSON: {exc}") from exc
    return replace(req, resource=ops)  # type: ignore[arg-type]


def _at(exc: FhirError, index: int) -> FhirError:
    """The same error, saying which entry failed."""
    exc.issues = [Issue(i.code, f"Bundle.entry[{index}]: {i.diagnostics}", i.severity,
                        i.expression or (f"Bundle.entry[{index}]",)) for i in exc.issues]
    return exc


def _response_entry(ctx: Context, prefer: str, res: FhirResponse) -> dict[str, Any]:
    st = res.stored
    response: dict[str, Any] = {"status": _STATUS_TEXT.get(res.status, str(res.status))}
    if st is not None:
        response["etag"] = etag(st.version)
        response["lastModified"] = instant(st.ts_us)
        if res.status == 201 or (res.status == 200 and res.raw is not None and not st.deleted):
            response["location"] = f"{st.type}/{st.id}/_history/{st.version}"
    entry: dict[str, Any] = {}
    if st is not None and not st.deleted:
        entry["fullUrl"] = f"{ctx.base}/{st.type}/{st.id}"
    if prefer == "OperationOutcome":
        response["outcome"] = res.outcome or operation_outcome(
            [Issue("informational", f"{response['status']}", severity="information")])
    elif prefer != "minimal":
        if res.body is not None:
            entry["resource"] = res.body
        elif res.raw is not None:
            entry["resource"] = orjson.Fragment(res.raw)
    entry["response"] = response
    return entry


async def _resolve(entries: list[Entry], ctx: Context, s: Session) -> tuple[dict[str, str], dict[int, FhirResponse]]:
    """Assign ids and resolve conditions before any write. Returns the fullUrl map and
    the entries already answered (a conditional create that found its match)."""
    ids: dict[str, str] = {}
    answered: dict[int, FhirResponse] = {}
    targets: set[tuple[str, str]] = set()
    creates: set[str] = set()
    for e in entries:
        req = e.request
        try:
            if req.method == "POST":
                rtype = require_type(req.type)
                existing = None
                criteria = req.header("if-none-exist")
                if criteria:
                    key = f"{rtype}?{urlencode(sorted(parse_qsl(criteria, keep_blank_values=True)))}"
                    if key in creates:
                        raise BadRequest(f"Two entries create {key} conditionally: make them one")
                    creates.add(key)
                    existing = single_match(await match_conditional(access.wrap(ctx, req, s), rtype, criteria,
                                                                    what="ifNoneExist"), "ifNoneExist")
                if existing is not None:
                    await access.require_read(ctx, s, existing)  # returned: the token must be allowed to read it
                    answered[e.index] = FhirResponse(200, raw=existing.content, stored=existing)
                    rid = existing.id
                else:
                    rid = new_id()
                    headers = {k: v for k, v in req.headers.items() if k != "if-none-exist"}
                    e.request = replace(req, id=rid, headers=headers)
            elif req.method in ("PUT", "PATCH", "DELETE") and req.id is None:
                rtype = require_type(req.type)
                match = single_match(await match_conditional(access.wrap(ctx, req, s), rtype, req.query,
                                                             what="Conditional " + req.method),
                                     "Conditional " + req.method)
                if match is None and req.method == "PUT":
                    body_id = (req.resource or {}).get("id")
                    rid = body_id if isinstance(body_id, str) else new_id()
                    e.request = replace(req, id=rid, resource={**(req.resource or {}), "id": rid}, query="")
                elif match is not None:
                    rid = match.id
                    e.request = replace(req, id=rid, query="")
                else:
                    continue  # conditional DELETE/PATCH with no match: the interaction reports it
            elif req.method in ("PUT", "PATCH", "DELETE"):
                rtype, rid = require_type(req.type), req.id or ""
            else:
                continue
            if (rtype, rid) in targets:
                raise BadRequest(f"{rtype}/{rid} is the target of more than one entry")
            targets.add((rtype, rid))
            if e.full_url:
                ids[e.full_url] = f"{rtype}/{rid}"
        except FhirError as exc:
            raise _at(exc, e.index) from exc
    return ids, answered


async def _resolve_conditional_references(entries: list[Entry], s: Session, ids: dict[str, str]) -> None:
    """Each ``Type?criteria`` reference must match exactly one resource, stored or in the Bundle
    (``s`` guarded as a search when a token applies)."""
    written = [(e.request.type, e.request.id, e.request.resource) for e in entries
               if e.request.method in ("POST", "PUT") and isinstance(e.request.resource, dict)]
    for e in entries:
        for ref in references.conditional_references(e.request.resource):
            if ref in ids:
                continue
            rtype, _, query = ref.partition("?")
            try:
                found = {st.id for st in await match_conditional(s, require_type(rtype), query,
                                                                  what=f"The conditional reference {ref!r}")}
                # the Bundle's own entries are not stored yet: matched on _id and identifier only
                q = parse((rtype,), parse_qsl(query, keep_blank_values=True), strict=True)
                found |= {rid for t, rid, res in written if t == rtype and rid and matches_unsaved(q, rid, res)}
                if len(found) != 1:
                    raise PreconditionFailed(f"The conditional reference {ref!r} matches {len(found)} resources")
            except FhirError as exc:
                raise _at(exc, e.index) from exc
            ids[ref] = f"{rtype}/{found.pop()}"


async def transaction(body: dict[str, Any], ctx: Context, prefer: str) -> FhirResponse:
    entries = _entries(body, ctx)
    for e in entries:  # an entry the token does not permit fails the whole transaction, before any work
        try:
            access.guard(e.request, ctx)
        except FhirError as exc:
            if isinstance(exc, Forbidden):
                access.note_denial(ctx, e.request, exc)
            raise _at(exc, e.index) from exc
    async with ctx.repo.session(write=True) as s:
        ids, results = await _resolve(entries, ctx, s)
        await _resolve_conditional_references(entries, access.wrap(ctx, None, s), ids)
        for e in entries:
            if e.request.resource is not None and e.request.method in ("POST", "PUT"):
                dangling = references.rewrite(e.request.resource, e.full_url, ids)
                if dangling:
                    raise _at(BadRequest(f"The reference {dangling[0]!r} names no entry of this Bundle"), e.index)
        for e in sorted(entries, key=lambda e: (_ORDER[e.request.method], e.index)):
            if e.index in results:
                continue
            try:
                results[e.index] = await perform(e.request, ctx, s)
            except FhirError as exc:
                raise _at(exc, e.index) from exc
    out = [_response_entry(ctx, prefer, results[e.index]) for e in entries]
    return FhirResponse(200, body=bundle("transaction-response", out, [("self", ctx.base)], instant(now_us())))


async def batch(body: dict[str, Any], ctx: Context, prefer: str) -> FhirResponse:
    raw = body.get("entry", [])
    if not isinstance(raw, list):
        raise BadRequest("Bundle.entry must be an array")
    if len(raw) > ctx.settings.max_bundle_entries:
        raise BadRequest(f"A Bundle may have at most {ctx.settings.max_bundle_entries} entries")
    out = []
    for i, item in enumerate(raw):
        try:
            res = await perform(_entry(i, item, ctx).request, ctx)
            out.append(_response_entry(ctx, prefer, res))
        except FhirError as exc:
            out.append({"response": {"status": str(exc.status), "outcome": exc.outcome()}})
        except Exception:  # entries before this one are committed: they must still be reported
            log.exception("batch entry %d failed", i)
            out.append({"response": {"status": "500", "outcome": operation_outcome(
                [Issue("exception", "Internal server error")])}})
    return FhirResponse(200, body=bundle("batch-response", out, [("self", ctx.base)], instant(now_us())))


async def process(req: FhirRequest, ctx: Context) -> FhirResponse:
    """POST [base] with a Bundle of type batch or transaction."""
    body = loads(req.body) if req.resource is None else req.resource
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base URL takes a Bundle of type batch or transaction")
    prefer = req.prefer("return") or "representation"
    kind = body.get("type")
    if kind == "transaction":
        return await transaction(body, ctx, prefer)
    if kind == "batch":
        return await batch(body, ctx, prefer)
    raise BadRequest(f"Bundle.type {kind!r}: only batch and transaction can be processed")


#: the CapabilityStatement codes of the system interactions this module implements
CODES = ("transaction", "batch")
