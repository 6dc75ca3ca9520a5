"""The one boundary where errors become OperationOutcomes with their HTTP status.

Everything below raises :class:`fhir_ctms.errors.FhirError`; the FHIR REST app
(``rest.py``) converts it with :func:`error_response`, and anything unexpected
becomes a logged 500 there. The FastAPI app that serves the other paths
(``/openapi.json``, ``/docs``) gets the same conversion for its own 404/405 and
failures through :func:`install`, so no client ever gets a non-FHIR error.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FhirError, Issue, operation_outcome
from ..resources.json import dumps
from .http import Outgoing, outgoing
from .negotiation import FHIR_JSON

log = logging.getLogger("fhir_ctms")

_CODES = {400: "invalid", 404: "not-found", 405: "not-supported", 406: "not-supported",
          413: "too-costly", 415: "not-supported"}


def error_response(exc: BaseException) -> Outgoing:
    """The response for any exception: a FhirError as its OperationOutcome, anything else a 500."""
    if isinstance(exc, FhirError):
        return outgoing(exc.status, exc.headers, dumps(exc.outcome()), FHIR_JSON)
    log.error("unexpected error", exc_info=exc)
    return outgoing(500, {}, dumps(operation_outcome([Issue("exception", "Internal server error")])), FHIR_JSON)


def _response(out: Outgoing) -> Response:
    return Response(out.body, status_code=out.status,
                    headers={k.decode("latin-1"): v.decode("latin-1") for k, v in out.headers})


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _CODES.get(exc.status_code, "processing")
        text = "No such endpoint" if exc.status_code == 404 else str(exc.detail)
        outcome = operation_outcome([Issue(code, text)])
        return _response(outgoing(exc.status_code, dict(exc.headers or {}), dumps(outcome), FHIR_JSON))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        outcome = operation_outcome([Issue("invalid", str(err.get("msg"))) for err in exc.errors()])
        return _response(outgoing(400, {}, dumps(outcome), FHIR_JSON))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return _response(error_response(exc))
