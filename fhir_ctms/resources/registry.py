"""Which resource types exist (R5, from the HL7 package) and which are special."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources as _files
from typing import Any

import orjson


@lru_cache(maxsize=1)
def definitions() -> dict[str, Any]:
    """The element tree and required bindings extracted from hl7.fhir.r5.core 5.0.0
    by ``scripts/extract_fhir_definitions.py``."""
    path = _files.files("fhir_ctms.definitions").joinpath("required-bindings.json")
    return orjson.loads(path.read_bytes())


RESOURCE_TYPES: frozenset[str] = frozenset(
    name for name, t in definitions()["types"].items() if t.get("kind") == "resource")

#: Audit records: created by the server with every write, never updated or deleted.
AUDIT_TYPES = frozenset({"Provenance", "AuditEvent"})

#: FHIR id: 1 to 64 of [A-Za-z0-9.-] (R5 datatypes.html#id).
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_resource_type(name: str) -> bool:
    return name in RESOURCE_TYPES


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def element_types(rtype: str, element: str) -> list[str]:
    """The types of a top-level element of a resource type ([] if it has no such element)."""
    return list(definitions()["types"].get(rtype, {}).get("elements", {}).get(element, [])[:1])
