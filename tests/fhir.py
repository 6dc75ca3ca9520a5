"""Small helpers shared by the REST tests."""

from __future__ import annotations

from typing import Any

FHIR_JSON = {"content-type": "application/fhir+json"}


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **fields}


def study(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "status": "active", **fields}


def ident(system: str, value: str) -> list[dict[str, str]]:
    return [{"system": system, "value": value}]


def path_of(location: str) -> str:
    """'http://testserver/fhir/Patient/x/_history/1' -> 'Patient/x'"""
    tail = location.split("/fhir/", 1)[1]
    return tail.split("/_history", 1)[0]


def version_of(response: Any) -> str:
    return response.headers["etag"].removeprefix('W/"').rstrip('"')


def outcome_codes(response: Any) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]
