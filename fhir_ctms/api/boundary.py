"""The one boundary where errors become OperationOutcomes with their HTTP status.

Everything below raises :class:`fhir_ctms.errors.FhirError`; routing failures
from Starlette (unknown path: 404, wrong method: 405) and anything unexpected
(500, logged) are converted here too, so no client ever gets a non-FHIR error.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import FhirError, Issue, operation_outcome
from ..resources.json import dumps
from . import routes
from .negotiation import FHIR_JSON

log = logging.getLogger("fhir_ctms")

_CODES = {400: "invalid", 404: "not-found", 405: "not-supported", 406: "not-supported",
          413: "too-costly", 415: "not-supported"}


def outcome_response(status: int, outcome: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(outcome), status_code=status, media_type=FHIR_JSON + "; charset=utf-8",
                    headers=headers)


def _allowed(request: Request) -> set[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in routes.router.routes:
        match, _ = route.matches(request.scope)
        if match in (Match.FULL, Match.PARTIAL):
            methods |= getattr(route, "methods", set())
    return methods


def install(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir_error(_: Request, exc: FhirError) -> Response:
        return outcome_response(exc.status, exc.outcome(), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _CODES.get(exc.status_code, "processing")
        text = "No such endpoint" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(_allowed(request)))
            text = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        return outcome_response(exc.status_code, operation_outcome([Issue(code, text)]), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return outcome_response(400, operation_outcome([Issue("invalid", str(err.get("msg")))
                                                        for err in exc.errors()]))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return outcome_response(500, operation_outcome([Issue("exception", "Internal server error")]))
