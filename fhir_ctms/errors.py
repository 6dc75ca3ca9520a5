"""The one error tree of fhir-ctms.

Every failure a client can cause is raised as a :class:`FhirError` (or a
subclass) anywhere below the API layer, and converted to an OperationOutcome
with its HTTP status at exactly one boundary (``fhir_ctms.api.boundary``)::

    FhirError                      status  issue.code
    ├── BadRequest                 400     invalid / structure / value
    ├── Unauthorized               401     login
    ├── Forbidden                  403     forbidden
    ├── NotFound                   404     not-found
    ├── MethodNotAllowed           405     not-supported
    ├── NotAcceptable              406     not-supported
    ├── Conflict                   409     conflict
    ├── Gone                       410     deleted
    ├── PreconditionFailed         412     conflict
    ├── PayloadTooLarge            413     too-costly
    ├── UnsupportedMediaType       415     not-supported
    ├── Unprocessable              422     invariant / structure / code-invalid
    └── ServiceUnavailable         503     transient (busy database; retry)

An error carries one or more :class:`Issue` values (the pydantic-core
``ErrorDetails`` shape: a code slug, a location, a message), which map one to one
onto ``OperationOutcome.issue`` code, expression and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code,
                               "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


class FhirError(Exception):
    """Base of every client-visible failure; subclasses fix ``status`` and ``code``."""

    status = 500
    code = "exception"

    def __init__(self, diagnostics: str = "error", *, issues: list[Issue] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.issues = issues or [Issue(self.code, diagnostics)]
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class NotFound(FhirError):
    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Gone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class ServiceUnavailable(FhirError):
    status, code = 503, "transient"
