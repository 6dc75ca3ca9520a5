"""The FHIR REST routes under ``/fhir``: each adapts HTTP to one interaction and back."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import BadRequest
from ..interactions import bundle
from ..interactions.table import perform
from ..resources.json import loads
from .http import context, fhir_request, negotiate, read_body, render
from .negotiation import FHIR_JSON, FORM, JSON_PATCH, check_body_type
from .openapi import BODY, FORM_BODY, PATCH_BODY, QUERY

router = APIRouter(prefix="/fhir")


async def _run(request: Request, interaction: str, *, type: str | None = None, id: str | None = None,
               vid: str | None = None, body_types: tuple[str, ...] | None = None) -> Response:
    media = negotiate(request)
    body, params = b"", None
    if body_types is not None:
        kind = check_body_type(request.headers.get("content-type"), body_types)
        body = await read_body(request, request.app.state.settings.max_body_bytes)
        if kind == FORM:
            try:
                form = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError as exc:
                raise BadRequest("The form body is not UTF-8") from exc
            params = tuple(request.query_params.multi_items()) + tuple(form)
            body = b""
    req = fhir_request(request, interaction, type=type, id=id, vid=vid, body=body, params=params)
    res = await perform(req, context(request))
    return render(request, req, res, media)


_RESOURCE = (FHIR_JSON, "application/json")


@router.get("/metadata", openapi_extra=QUERY)
async def metadata(request: Request) -> Response:
    return await _run(request, "capabilities")


@router.post("", openapi_extra=BODY)
@router.post("/", include_in_schema=False)
async def batch_or_transaction(request: Request) -> Response:
    media = negotiate(request)
    check_body_type(request.headers.get("content-type"), _RESOURCE)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    req = fhir_request(request, "bundle", body=body)
    res = await bundle.process(req, context(request))
    # Prefer: return applies to the entries (bundle.process), not to the response Bundle
    return render(request, req, res, media)


@router.get("/_history", openapi_extra=QUERY)
async def history_system(request: Request) -> Response:
    return await _run(request, "history-system")


@router.get("/{type}/_history", openapi_extra=QUERY)
async def history_type(request: Request, type: str) -> Response:
    return await _run(request, "history-type", type=type)


@router.get("/{type}", openapi_extra=QUERY)
async def search_get(request: Request, type: str) -> Response:
    return await _run(request, "search-type", type=type)


@router.post("/{type}/_search", openapi_extra=FORM_BODY)
async def search_post(request: Request, type: str) -> Response:
    return await _run(request, "search-type", type=type, body_types=(FORM,))


@router.post("/{type}", openapi_extra=BODY)
async def create(request: Request, type: str) -> Response:
    return await _run(request, "create", type=type, body_types=_RESOURCE)


@router.put("/{type}", openapi_extra=BODY)
async def update_conditional(request: Request, type: str) -> Response:
    return await _run(request, "update", type=type, body_types=_RESOURCE)


@router.patch("/{type}", openapi_extra=PATCH_BODY)
async def patch_conditional(request: Request, type: str) -> Response:
    return await _run(request, "patch", type=type, body_types=(JSON_PATCH,))


@router.delete("/{type}", openapi_extra=QUERY)
async def delete_conditional(request: Request, type: str) -> Response:
    return await _run(request, "delete", type=type)


@router.get("/{type}/{id}", openapi_extra=QUERY)
async def read(request: Request, type: str, id: str) -> Response:
    return await _run(request, "read", type=type, id=id)


@router.put("/{type}/{id}", openapi_extra=BODY)
async def update(request: Request, type: str, id: str) -> Response:
    return await _run(request, "update", type=type, id=id, body_types=_RESOURCE)


@router.patch("/{type}/{id}", openapi_extra=PATCH_BODY)
async def patch(request: Request, type: str, id: str) -> Response:
    return await _run(request, "patch", type=type, id=id, body_types=(JSON_PATCH,))


@router.delete("/{type}/{id}", openapi_extra=QUERY)
async def delete(request: Request, type: str, id: str) -> Response:
    return await _run(request, "delete", type=type, id=id)


@router.get("/{type}/{id}/_history", openapi_extra=QUERY)
async def history_instance(request: Request, type: str, id: str) -> Response:
    return await _run(request, "history-instance", type=type, id=id)


@router.get("/{type}/{id}/_history/{vid}", openapi_extra=QUERY)
async def vread(request: Request, type: str, id: str, vid: str) -> Response:
    return await _run(request, "vread", type=type, id=id, vid=vid)
