"""HTTP <-> interaction values: reading requests (with the body size limit) and writing responses."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
from fastapi import Request
from fastapi.responses import Response

from ..audit.records import Actor
from ..errors import BadRequest, PayloadTooLarge
from ..interactions.context import Context, FhirRequest, FhirResponse, etag, http_date
from ..interactions.table import INTERACTIONS
from ..resources.json import dumps, dumps_pretty
from .negotiation import response_type

_WRITES = {name for name, spec in INTERACTIONS.items() if spec.writes}
_HEADERS = ("if-match", "if-none-match", "if-none-exist", "if-modified-since", "prefer", "x-reason")


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


def context(request: Request) -> Context:
    reason = request.headers.get("x-reason")
    if reason is not None and len(reason) > 1024:
        raise BadRequest("X-Reason is limited to 1024 characters")
    client = request.client.host if request.client else None
    return Context(repo=request.app.state.repo, settings=request.app.state.settings,
                   base=base_url(request), actor=Actor(address=client), reason=reason or None)


def fhir_request(request: Request, interaction: str, *, type: str | None = None, id: str | None = None,
                 vid: str | None = None, body: bytes = b"",
                 params: tuple[tuple[str, str], ...] | None = None) -> FhirRequest:
    headers = {h: v for h in _HEADERS if (v := request.headers.get(h)) is not None}
    return FhirRequest(method=request.method, type=type, id=id, vid=vid,
                       params=params if params is not None else tuple(request.query_params.multi_items()),
                       query=request.url.query, headers=headers, body=body, interaction=interaction)


def _serialise(value: object, pretty: bool) -> bytes:
    if pretty:
        return dumps_pretty(orjson.loads(dumps(value)))
    return dumps(value)


def negotiate(request: Request) -> str:
    """The response media type, decided before anything runs (406 changes nothing)."""
    return response_type(request.query_params.get("_format"), request.headers.get("accept"))


def render(request: Request, req: FhirRequest, res: FhirResponse, media: str) -> Response:
    """An interaction's result as an HTTP response: headers, Prefer, _format and _pretty."""
    pretty = request.query_params.get("_pretty") == "true"
    headers = dict(res.headers)
    st = res.stored
    base = base_url(request)
    if st is not None:
        headers["ETag"] = etag(st.version)
        headers["Last-Modified"] = http_date(st.ts_us)
        if req.method in ("POST", "PUT", "PATCH") and not st.deleted and res.status in (200, 201):
            headers["Location"] = f"{base}/{st.type}/{st.id}/_history/{st.version}"
    status = res.status
    body: bytes | None = None
    if status == 304:
        body = None
    elif req.interaction in _WRITES:  # Prefer: return applies to the result of a write
        prefer = req.prefer("return")
        if prefer == "OperationOutcome":
            outcome = res.outcome or {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "diagnostics": f"{req.interaction}: {status} at {datetime.now(timezone.utc).isoformat()}"}]}
            body = _serialise(outcome, pretty)
            if status == 204:
                status = 200
        elif prefer != "minimal" and status != 204:
            body = _body(res, pretty)
    else:
        body = _body(res, pretty)
    if body is None:
        return Response(status_code=status, headers=headers)
    return Response(body, status_code=status, headers=headers, media_type=f"{media}; charset=utf-8")


def _body(res: FhirResponse, pretty: bool) -> bytes | None:
    if res.raw is not None:
        return dumps_pretty(orjson.loads(res.raw)) if pretty else res.raw.encode()
    if res.body is not None:
        return _serialise(res.body, pretty)
    return None
