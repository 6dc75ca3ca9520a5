"""The server's own conformance resources: the JSON files of the ``profiles/`` directory.

``profiles/`` holds the SearchParameters the server loads at startup (custom CTMS parameters,
searchable from the first request and listed in the CapabilityStatement) and the
OperationDefinitions of the operations it implements (``fhir_ctms.operations``).

Where: ``FHIR_CTMS_PROFILES_DIR`` if set, else ``profiles/`` at the repository root (the server
is installed with ``pip install -e .``, so the source tree is there; a wheel would need the
directory packaged as package data, which it is not yet).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import orjson

ENV = "FHIR_CTMS_PROFILES_DIR"
#: the repository's ``profiles/`` (this file is fhir_ctms/resources/profiles.py)
DEFAULT = Path(__file__).resolve().parents[2] / "profiles"


def profiles_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT)


@cache
def _read(path: str) -> dict[str, Any]:
    data = orjson.loads(Path(path).read_bytes())
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise ValueError(f"{path}: not a FHIR resource")
    return data


def resources(resource_type: str, directory: Path | None = None) -> list[dict[str, Any]]:
    """Every ``*.json`` resource of ``resource_type`` in the directory (sorted by file name;
    none if the directory does not exist). A file that is not a FHIR resource raises."""
    where = directory or profiles_dir()
    if not where.is_dir():
        return []
    out = []
    for path in sorted(where.glob("*.json")):
        data = _read(str(path))
        if data["resourceType"] == resource_type:
            out.append(data)
    return out


def resource(name: str, directory: Path | None = None) -> dict[str, Any]:
    """One file of the directory by name (``OperationDefinition-reindex.json``)."""
    return _read(str((directory or profiles_dir()) / name))
