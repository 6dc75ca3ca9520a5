"""What the OpenAPI document says of bodies and common query parameters.

The routes read bodies and parameters raw (FHIR has its own rules for both), so
FastAPI cannot infer them; these fragments describe them for clients and for
the schemathesis run in CI."""

from __future__ import annotations

_PARAMS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    for name in ("_format", "_pretty", "_count", "_since", "_at", "_id", "identifier")
]

QUERY = {"parameters": _PARAMS}

BODY = {
    "parameters": _PARAMS,
    "requestBody": {
        "required": True,
        "content": {
            "application/fhir+json": {
                "schema": {"type": "object", "properties": {"resourceType": {"type": "string"},
                                                            "id": {"type": "string"}},
                           "additionalProperties": True}
            }
        },
    },
}

PATCH_BODY = {
    "parameters": _PARAMS,
    "requestBody": {
        "required": True,
        "content": {
            "application/json-patch+json": {
                "schema": {"type": "array", "items": {
                    "type": "object", "required": ["op", "path"],
                    "properties": {"op": {"type": "string"}, "path": {"type": "string"}, "from": {"type": "string"},
                                   "value": {}}}}
            }
        },
    },
}

FORM_BODY = {
    "parameters": _PARAMS,
    "requestBody": {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
    },
}
