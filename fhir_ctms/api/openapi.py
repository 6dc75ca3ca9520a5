"""The OpenAPI document of the FHIR REST API, generated from the routing table.

Every route of ``fhir_ctms.interactions.router.ROUTES`` and each of its methods
becomes an operation, so the document (served at ``/openapi.json``, browsed at
``/docs``, fuzzed by schemathesis in CI) describes exactly what is routed.
FHIR has its own rules for bodies and parameters, so the schemas stay loose:
a body is "an object with a resourceType", parameters are strings.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..interactions.router import COMPARTMENT, FORM, ID, OP, PATCH, RESOURCE, ROUTES, TYPE, VID

_QUERY = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
          for name in ("_format", "_pretty", "_count", "_since", "_at", "_id", "identifier")]

_BODIES: dict[str, dict[str, Any]] = {
    RESOURCE: {"required": True, "content": {"application/fhir+json": {"schema": {
        "type": "object", "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
        "additionalProperties": True}}}},
    PATCH: {"required": True, "content": {"application/json-patch+json": {"schema": {
        "type": "array", "items": {
            "type": "object", "required": ["op", "path"],
            "properties": {"op": {"type": "string"}, "path": {"type": "string"}, "from": {"type": "string"},
                           "value": {}}}}}}},
    FORM: {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "additionalProperties": {"type": "string"}}}}},
}

_PATH_PARAMS = {TYPE: "type", ID: "id", VID: "vid", COMPARTMENT: "compartment", OP: "operation"}


def document(app: FastAPI, prefix: str) -> dict[str, Any]:
    if app.openapi_schema is None:
        paths: dict[str, Any] = {}
        for route in ROUTES:
            names = [_PATH_PARAMS[s] for s in route.shape if s in _PATH_PARAMS]
            params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
            item = paths.setdefault(prefix + route.path, {})
            for method, interaction in route.methods.items():
                op: dict[str, Any] = {
                    "operationId": f"{interaction}-{method.lower()}-{'-'.join(names) or 'base'}",
                    "summary": f"FHIR {interaction}",
                    "parameters": params + _QUERY,
                    "responses": {"default": {"description": "a FHIR resource or an OperationOutcome"}},
                }
                if method in route.bodies:
                    op["requestBody"] = _BODIES[route.bodies[method]]
                item[method.lower()] = op
        app.openapi_schema = {
            "openapi": "3.1.0",
            "info": {"title": app.title, "version": app.version, "description": app.description},
            "paths": paths,
        }
    return app.openapi_schema
