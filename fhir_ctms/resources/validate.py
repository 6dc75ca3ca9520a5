"""Validation on write: the fhir.resources R5 model, then the required code bindings.

fhir.resources checks structure, cardinality and primitive formats but not
bindings; :mod:`.bindings` checks every required binding against the R5 value
sets extracted from ``hl7.fhir.r5.core`` 5.0.0.  Both report locations as
``OperationOutcome.issue.expression`` paths.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources import get_fhir_model_class
from pydantic import ValidationError

from ..errors import Issue, Unprocessable
from .bindings import check_required_bindings
from .registry import is_valid_id

#: pydantic error types that mean "wrong structure" rather than "wrong value"
_STRUCTURE_ERRORS = {"extra_forbidden", "missing", "list_type", "dict_type", "model_type",
                     "model_attributes_type"}


@lru_cache(maxsize=None)
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "__root__":
            out += f".{part}"
    return out


def _text(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise :class:`Unprocessable` (422) listing every problem found, or return."""
    rtype = resource["resourceType"]
    issues: list[Issue] = []
    if "id" in resource and not is_valid_id(resource["id"]):
        issues.append(Issue("value", "id must be 1 to 64 characters of [A-Za-z0-9.-]",
                            expression=(f"{rtype}.id",)))
    try:
        _model(rtype).model_validate(resource)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            code = "structure" if err.get("type") in _STRUCTURE_ERRORS else "value"
            issues.append(Issue(code, _text(err), expression=(_expression(rtype, tuple(err.get("loc", ()))),)))
    except (ValueError, TypeError, RecursionError) as exc:  # defensive: odd input the models trip over
        issues.append(Issue("structure", f"Invalid resource: {exc}", expression=(rtype,)))
    if not issues:
        for bi in check_required_bindings(resource):
            issues.append(Issue("code-invalid", bi.message, expression=(bi.expression,)))
    if issues:
        raise Unprocessable(issues[0].diagnostics, issues=issues)
