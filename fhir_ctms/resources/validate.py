"""Validation on write: the fhir.resources R5 model, the required code bindings, then the
CTMS profiles.

fhir.resources checks structure, cardinality and primitive formats but not
bindings; :mod:`.bindings` checks every required binding against the R5 value
sets extracted from ``hl7.fhir.r5.core`` 5.0.0. A resource that passes both is
checked against the CTMS profiles it claims in ``meta.profile`` (and, with
``FHIR_CTMS_REQUIRE_PROFILES``, the profile of its kind) and its CTMS extensions
against their definitions (``fhir_ctms.validation``); an error there is a 422
too, warnings are not. All report locations as
``OperationOutcome.issue.expression`` paths.

The two profile options come from the app's settings (the interactions pass
``ctx.settings``), else from the process's (``get_settings``: the ``FHIR_CTMS_*``
environment).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from fhir.resources import get_fhir_model_class
from pydantic import ValidationError

from ..config import Settings, get_settings
from ..errors import Issue, Unprocessable
from .bindings import check_required_bindings
from .registry import is_valid_id

_log = logging.getLogger(__name__)

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


def validate_resource(resource: dict[str, Any], settings: Settings | None = None) -> None:
    """Raise :class:`Unprocessable` (422) listing every problem found, or return. The profile
    options come from ``settings`` (the app's), else the process's."""
    settings = settings or get_settings()
    issues = check_resource(resource, require=settings.require_profiles,
                            reject_unknown=settings.reject_unknown_profiles)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:  # the errors first (the summary names one), then the warnings
        raise Unprocessable(errors[0].diagnostics,
                            issues=errors + [i for i in issues if i not in errors])


def check_resource(resource: dict[str, Any], profiles: tuple[str, ...] = (), *,
                   require: bool = False, reject_unknown: bool = False) -> list[Issue]:
    """Every issue of a resource (errors and warnings): the model, the required bindings, then
    (when those pass) the profiles it claims, ``profiles``, and with ``require`` its mandatory
    profile (``fhir_ctms.validation.validate``). ``$validate`` reports these as they are."""
    from .. import validation

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
    if not issues:
        try:
            issues.extend(validation.validate(resource, profiles, require=require,
                                              reject_unknown=reject_unknown))
        except Exception:  # noqa: BLE001 - a validator bug must not become a 500 or a bad write
            _log.exception("profile validation of a %s failed", rtype)
            issues.append(Issue("exception", "The resource could not be checked against its "
                                "profiles (a server error, logged)", expression=(rtype,)))
    return issues
