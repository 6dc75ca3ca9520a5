"""The operation registry: each operation is declared by its OperationDefinition.

An :class:`Operation` is read from an OperationDefinition of the repository's ``profiles/``
directory (canonical URL, code, the resource types and levels it applies to, whether it
changes state) and carries its handler; the router (``interactions/router.py`` routes every
``$name`` URL to the interaction ``operation``), :func:`invoke` and the CapabilityStatement
all read :data:`OPERATIONS`. A new operation is a definition file, a handler and one
:func:`declare` call at the end of this module.

R5 operations.html: an operation is invoked by POST (a Parameters body, or none) at the levels
its definition allows; by GET too when it does not change state (``affectsState``), with its
parameters in the query. Here: an unknown operation, or one not defined at the level or for the
type of the URL, is a 404; GET of a state-changing one a 405 (``Allow: POST``). Operations are
not accepted as Bundle entries (yet). A handler gets the request, the context and the input
parameters as ``(name, value)`` pairs, and opens the sessions it needs itself (so it can commit
in batches).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..resources import profiles
from ..resources.json import loads
from ..resources.registry import RESOURCE_TYPES, is_valid_id


@dataclass(frozen=True, slots=True)
class Operation:
    code: str
    url: str
    resource_types: frozenset[str]
    system: bool
    type_level: bool
    instance: bool
    handler: Callable[..., Awaitable[Any]]
    affects_state: bool = True
    #: the OperationDefinition (JSON) it was declared from
    definition: dict[str, Any] = field(default_factory=dict, compare=False)

    def levels(self) -> tuple[str, ...]:
        return tuple(lv for lv, on in (("system", self.system), ("type", self.type_level),
                                       ("instance", self.instance)) if on)


OPERATIONS: list[Operation] = []
CTMS_SD = "http://fhir-ctms.org/fhir/StructureDefinition"


def declare(definition_file: str, handler: Callable[..., Awaitable[Any]]) -> Operation:
    """Register the operation an OperationDefinition file of ``profiles/`` defines."""
    d = profiles.resource(definition_file, profiles.DEFAULT)
    if d.get("resourceType") != "OperationDefinition" or d.get("kind") != "operation":
        raise ValueError(f"{definition_file}: not an OperationDefinition of kind operation")
    named = d.get("resource") or ["Resource"]
    # "Resource" (HL7's Resource-validate): every type; abstract types name no concrete one
    types = frozenset(RESOURCE_TYPES) if "Resource" in named or "DomainResource" in named else frozenset(named)
    op = Operation(d["code"], d["url"], types, bool(d.get("system")), bool(d.get("type")),
                   bool(d.get("instance")), handler, bool(d.get("affectsState", True)), d)
    OPERATIONS.append(op)
    return op


def changes_state(op: Operation, req: Any) -> bool:
    """Whether this call of ``op`` may change state: its definition's ``affectsState``, unless the
    definition names the one parameter that makes it change state (extension read-only-unless,
    profiles/README.md "Fee schedules and payments") and a GET or HEAD does not carry it. A POST
    may carry it in its body, so a POST of such an operation counts as changing state."""
    if not op.affects_state:
        return False
    unless = next((e.get("valueString") for e in op.definition.get("extension") or []
                   if e.get("url") == f"{CTMS_SD}/read-only-unless"), None)
    if unless is None or req.method not in ("GET", "HEAD"):
        return True
    return any(k == unless for k, _ in req.params)


def find(code: str | None) -> Operation | None:
    return next((op for op in OPERATIONS if op.code == code), None)


def parameters(req: Any, op: Operation) -> list[tuple[str, Any]]:
    """The input parameters: a Parameters body (POST), else the query (R5 operations.html#request:
    only primitive parameters in the URL)."""
    if req.method == "POST" and req.body.strip():
        body = loads(req.body)
        if (isinstance(body, dict) and isinstance(body.get("resourceType"), str)
                and body["resourceType"] != "Parameters" and _takes_resource(op)):
            # R5 operations.html: an operation with one resource input may be sent that
            # resource as the body ($validate), its other inputs in the query
            return [("resource", body), *((k, v) for k, v in req.params if k not in ("_format", "_pretty"))]
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise BadRequest(f"${op.code}: the body must be a Parameters resource")
        given = body.get("parameter") or []
        if not isinstance(given, list):
            raise BadRequest(f"${op.code}: Parameters.parameter must be an array")
        out: list[tuple[str, Any]] = []
        for p in given:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise BadRequest(f"${op.code}: each parameter needs a name")
            values = [v for k, v in p.items() if k.startswith("value")]
            out.append((p["name"], values[0] if values else p.get("resource")))
        return out
    return [(k, v) for k, v in req.params if k not in ("_format", "_pretty")]


def _takes_resource(op: Operation) -> bool:
    ins = [p for p in op.definition.get("parameter") or [] if p.get("use") == "in"]
    return sum(p.get("type") == "Resource" for p in ins) == 1 and any(
        p.get("name") == "resource" and p.get("type") == "Resource" for p in ins)


async def invoke(req: Any, ctx: Any, s: Any = None) -> Any:
    """The interaction ``operation``: find the operation, check level, type and method, run it."""
    op = find(req.operation)
    level = "instance" if req.id is not None else "type" if req.type is not None else "system"
    if op is None:
        raise NotFound(f"Unknown operation ${req.operation}")
    if level not in op.levels() or (req.type is not None and req.type not in op.resource_types):
        where = f"on {req.type}" if req.type else "at the system level"
        raise NotFound(f"The operation ${op.code} is not defined {where} ({level} level)")
    if req.type is not None and req.type not in RESOURCE_TYPES:
        raise NotFound(f"Unknown resource type {req.type!r}")
    if req.id is not None and not is_valid_id(req.id):
        raise NotFound(f"Invalid resource id {req.id!r}")
    if req.method != "POST" and changes_state(op, req):
        raise MethodNotAllowed(f"${op.code} changes state: invoke it with POST",
                               headers={"Allow": "POST"})
    if s is not None:
        raise BadRequest(f"${op.code} cannot be invoked inside a Bundle")
    return await op.handler(req, ctx, parameters(req, op))


# the operations, each declared by its definition (imported here: their modules use the registry)
from . import (enrollment, expand, milestones, payment_file, payments,  # noqa: E402
               registry_export, reindex, schedule, validate, validate_code)

declare("OperationDefinition-reindex.json", reindex.reindex)
declare("OperationDefinition-Resource-validate.json", validate.validate)
declare("OperationDefinition-ValueSet-expand.json", expand.expand)
declare("OperationDefinition-ValueSet-validate-code.json", validate_code.validate_code)
declare("OperationDefinition-ResearchStudy-enrollment.json", enrollment.enrollment)
declare("OperationDefinition-ResearchSubject-schedule.json", schedule.schedule)
declare("OperationDefinition-ResearchStudy-registry-export.json", registry_export.registry_export)
declare("OperationDefinition-ResearchStudy-milestones.json", milestones.milestones)
declare("OperationDefinition-ResearchStudy-payments.json", payments.payments)
declare("OperationDefinition-Invoice-payment-file.json", payment_file.payment_file)
