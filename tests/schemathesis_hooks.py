"""Schemathesis hooks for tests/test_schemathesis.py (loaded through ``SCHEMATHESIS_HOOKS``).

The served OpenAPI document is deliberately loose: ``{type}`` and ``{id}`` are any
string and every body is "an object with resourceType". Fuzzed as it is, almost every
request ends in "404 unknown resource type" and never reaches the interactions. These
hooks narrow the document *before* schemathesis reads it, so that positive cases reach
the core (create, update, patch, search, history, batch/transaction) while negative
cases still cover everything outside (unknown types, malformed ids, non-object bodies):

- ``{type}``: a handful of real R5 types, including the special ones (audit types that
  refuse writes, Binary, Bundle, Parameters);
- ``{id}``: the FHIR id syntax, ``{vid}``: a version number;
- ``_format``: the JSON spellings (anything else is a 406, left to negative cases);
- every operation also takes ``_cursor`` and the headers the server reads (If-Match,
  If-None-Match, If-None-Exist, If-Modified-Since, Prefer, X-Reason), all optional,
  so their parsing is fuzzed too;
- PATCH bodies: ``application/json-patch+json`` arrays of operations (what the routes
  accept; the served document says ``application/fhir+json``, which they answer 415);
- ``POST {type}/_search``: a form body (the served document declares none);
- ``POST /fhir``: a Bundle with entries and requests;
- create/update cases get ``resourceType`` (and ``id``) equal to the path's, when their
  body was generated in positive mode, so they can succeed.

Every change only narrows or adds; nothing here can hide a server error.
"""

from __future__ import annotations

import copy
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

TYPES = ["Patient", "ResearchStudy", "ResearchSubject", "Observation", "Group",
         "Binary", "Bundle", "Parameters", "Provenance", "AuditEvent"]
ID = {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

_PARAMS = {
    "type": {"type": "string", "enum": TYPES},
    "id": ID,
    "vid": {"type": "string", "pattern": "^[1-9][0-9]{0,2}$"},
}

_FORMATS = ["json", "application/json", "application/fhir+json", "fhir+json",
            "application/fhir+json; fhirVersion=5.0"]
_EXTRA_QUERY = ["_cursor"]
_HEADERS = ["If-Match", "If-None-Match", "If-None-Exist", "If-Modified-Since", "Prefer", "X-Reason"]

_JSON_PATCH = {
    "type": "array",
    "maxItems": 4,
    "items": {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
            "path": {"type": "string"},
            "from": {"type": "string"},
            "value": {},
        },
    },
}

_RESOURCE = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string", "enum": TYPES}, "id": ID},
    "additionalProperties": True,
}

_BUNDLE = {
    "type": "object",
    "required": ["resourceType", "type"],
    "properties": {
        "resourceType": {"const": "Bundle"},
        "type": {"enum": ["batch", "transaction", "document", "collection", "history"]},
        "entry": {
            "type": "array",
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "fullUrl": {"type": "string"},
                    "resource": _RESOURCE,
                    "request": {
                        "type": "object",
                        "required": ["method", "url"],
                        "properties": {
                            "method": {"enum": METHODS},
                            "url": {"type": "string"},
                            "ifMatch": {"type": "string"},
                            "ifNoneExist": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
    "additionalProperties": True,
}

_SEARCH_FORM = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in ("_id", "identifier", "_count", "_since")},
    "additionalProperties": {"type": "string"},
}


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    for path, item in raw_schema.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            params = op.setdefault("parameters", [])
            for param in params:
                if param.get("in") == "path" and param.get("name") in _PARAMS:
                    param["schema"] = copy.deepcopy(_PARAMS[param["name"]])
                elif param.get("in") == "query" and param.get("name") == "_format":
                    param["schema"] = {"type": "string", "enum": list(_FORMATS)}
            declared = {(p.get("in"), p.get("name")) for p in params}
            params.extend({"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                          for name in _EXTRA_QUERY if ("query", name) not in declared)
            params.extend({"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                          for name in _HEADERS if ("header", name) not in declared)
            body = op.get("requestBody")
            if method == "patch":
                op["requestBody"] = {"required": True, "content": {
                    "application/json-patch+json": {"schema": copy.deepcopy(_JSON_PATCH)}}}
            elif method == "post" and path == "/fhir":
                op["requestBody"] = {"required": True, "content": {
                    "application/fhir+json": {"schema": copy.deepcopy(_BUNDLE)}}}
            elif method == "post" and path.endswith("/_search") and body is None:
                op["requestBody"] = {"required": False, "content": {
                    "application/x-www-form-urlencoded": {"schema": copy.deepcopy(_SEARCH_FORM)}}}
            elif body is not None and method in ("post", "put"):
                for media in body.get("content", {}).values():
                    media["schema"] = copy.deepcopy(_RESOURCE)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Create and update bodies name the path's type (and id), unless the body is negative."""
    if case.operation.method.upper() not in ("POST", "PUT") or not isinstance(case.body, dict):
        return case
    params = case.path_parameters or {}
    if "type" not in params or case.operation.path.endswith("/_search"):
        return case
    meta = case.meta
    if meta is not None:
        component = meta.components.get(ParameterLocation.BODY)
        if component is not None and component.mode.is_negative:
            return case
    if isinstance(params["type"], str):
        case.body["resourceType"] = params["type"]
    if "id" in params and isinstance(params["id"], str):
        case.body["id"] = params["id"]
    return case
