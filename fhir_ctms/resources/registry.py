"""Which resource types exist (R5, from the HL7 package) and which are special."""

from __future__ import annotations

import re
from importlib import resources as _files

import orjson

RESOURCE_TYPES: frozenset[str] = frozenset(
    orjson.loads(_files.files("fhir_ctms.definitions").joinpath("resource-types.json").read_bytes())
)

#: Audit records: created by the server with every write, never updated or deleted.
AUDIT_TYPES = frozenset({"Provenance", "AuditEvent"})

#: FHIR id: 1 to 64 of [A-Za-z0-9.-] (R5 datatypes.html#id).
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_resource_type(name: str) -> bool:
    return name in RESOURCE_TYPES


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
