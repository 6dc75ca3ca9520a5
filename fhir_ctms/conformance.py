"""The server's conformance resources, stored so that they are served like any resource.

Every JSON resource of ``profiles/`` (StructureDefinitions, SearchParameters,
OperationDefinitions) and of ``terminology/`` (CodeSystems, ValueSets) is written into the
database when the server starts (``api/app.py``), so ``GET /fhir/StructureDefinition?url=...``,
``/fhir/ValueSet?url=...``, ``/fhir/CodeSystem/[id]`` or ``/fhir/OperationDefinition/[id]``
answer, and searches such as ``:in`` find the CTMS value sets.

How: each file is an update by its id through the update interaction (``interactions/update.py``
and so the one write path, ``interactions/persist.py``): a changed file becomes a new version,
validated, indexed, with its Provenance and AuditEvent, whose agent is the server itself
(:data:`AGENT`). A file whose content equals the stored current version writes nothing (the
update's no-op rule), so a restart on a populated database adds no version and no audit record.
A file that cannot be stored (no id, invalid) is reported and skipped: the server still starts.
A resource stored by a client with the same type and id is replaced by the server's file (the
server owns the ids of its conformance resources).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit.records import Actor
from .config import Settings
from .errors import Conflict, FhirError
from .interactions.context import Context, FhirRequest
from .interactions.table import perform
from .interactions.update import _same_content
from .resources import profiles
from .resources.json import loads
from .resources.registry import RESOURCE_TYPES, is_valid_id
from .storage.repository import Repository
from . import terminology

#: who writes the conformance resources (Provenance.agent, AuditEvent.agent)
AGENT = Actor(display="fhir-ctms server (conformance resources)")
REASON = "Conformance resources of fhir-ctms (profiles/ and terminology/), installed at startup"


@dataclass
class Report:
    #: (type, id) of the resources written (created or changed)
    written: list[tuple[str, str]] = field(default_factory=list)
    #: (type, id) of those already stored as they are
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    #: (file or type/id, why) of those that could not be stored
    failed: list[tuple[str, str]] = field(default_factory=list)


def _directory_resources(where: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) of every JSON resource of a directory, sorted by file name."""
    if not where.is_dir():
        return []
    out = []
    for path in sorted(where.glob("*.json")):
        try:
            data = loads(path.read_bytes())
        except (OSError, FhirError, ValueError) as exc:
            out.append((path.name, {"_error": f"cannot be read: {exc}"}))
            continue
        out.append((path.name, data if isinstance(data, dict) else {"_error": "not an object"}))
    return out


def conformance_files() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) of ``profiles/`` then ``terminology/``."""
    return (_directory_resources(profiles.profiles_dir())
            + _directory_resources(terminology.terminology_dir()))


async def install(repo: Repository, settings: Settings) -> Report:
    """Store every conformance resource whose stored current version differs from its file."""
    ctx = Context(repo=repo, settings=settings,
                  base=settings.public_base_url or "http://localhost/fhir", actor=AGENT,
                  reason=REASON)
    report = Report()
    for name, resource in conformance_files():
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if "_error" in resource:
            report.failed.append((name, resource["_error"]))
            continue
        if rtype not in RESOURCE_TYPES or not isinstance(rid, str) or not is_valid_id(rid):
            report.failed.append((name, "not a FHIR resource with a resourceType and a valid id"))
            continue
        for attempt in (1, 2):
            async with repo.session(write=False) as s:  # unchanged: no write session at all
                current = await s.current(rtype, rid)
            if current is not None and _same_content(resource, current):
                report.unchanged.append((rtype, rid))
                break
            req = FhirRequest(method="PUT", type=rtype, id=rid, interaction="update",
                              resource=copy.deepcopy(resource))
            try:
                await perform(req, ctx)
            except Conflict:  # another process wrote it meanwhile: compare again, once
                if attempt == 2:
                    report.failed.append((name, "conflicting concurrent writes"))
                continue
            except FhirError as exc:
                report.failed.append((name, "; ".join(i.diagnostics for i in exc.issues)))
                break
            report.written.append((rtype, rid))
            break
    return report
