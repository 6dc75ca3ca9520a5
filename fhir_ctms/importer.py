"""``fhir-ctms import``: load Bundles (JSON) and NDJSON files through the same interactions as the API.

- A Bundle of type transaction or batch is processed as one (a transaction is atomic).
- Any other Bundle (collection, searchset, ...) becomes a transaction: each resource is
  PUT to its id (or POSTed when it has none), so the whole file loads or nothing does.
- NDJSON: one resource a line, each written on its own; a bad line is reported with
  its number and the rest still load.
Every write is audited like any API write (the agent is the command line).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .audit.records import Actor
from .config import Settings
from .errors import FhirError
from .interactions import bundle
from .interactions.context import Context, FhirRequest
from .interactions.table import perform
from .resources.json import loads
from .storage.repository import Repository


@dataclass
class Report:
    loaded: int = 0
    rejected: list[str] = field(default_factory=list)


def _as_transaction(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("resourceType") == "Bundle" and value.get("type") in ("transaction", "batch"):
        return value
    resources = ([e.get("resource") for e in value.get("entry", []) if isinstance(e, dict)]
                 if value.get("resourceType") == "Bundle" else [value])
    entries = []
    for r in resources:
        if not isinstance(r, dict):
            continue
        rtype, rid = r.get("resourceType"), r.get("id")
        request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else {"method": "POST", "url": str(rtype)}
        entries.append({"resource": r, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _ndjson_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


async def import_files(paths: list[Path], repo: Repository, settings: Settings, progress: bool = True) -> Report:
    report = Report()
    ctx = Context(repo=repo, settings=settings, base=settings.public_base_url or "http://localhost/fhir",
                  actor=Actor(display="fhir-ctms import"), reason="Imported with fhir-ctms import")
    for path in tqdm(paths, desc="files", unit="file", disable=not progress or len(paths) < 2):
        if path.suffix == ".ndjson":
            lines = list(_ndjson_lines(path))
            for number, line in tqdm(lines, desc=path.name, unit="res", disable=not progress):
                try:
                    resource = loads(line)
                    if not isinstance(resource, dict):
                        raise ValueError("not a JSON object")
                    rtype, rid = resource.get("resourceType"), resource.get("id")
                    req = FhirRequest(method="PUT" if rid else "POST", type=rtype if isinstance(rtype, str) else None,
                                      id=rid if isinstance(rid, str) else None,
                                      interaction="update" if rid else "create", resource=resource)
                    await perform(req, ctx)
                    report.loaded += 1
                except (FhirError, ValueError) as exc:
                    report.rejected.append(f"{path}:{number}: {_why(exc)}")
            continue
        try:
            value = loads(path.read_bytes())
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            tx = _as_transaction(value)
            result = await bundle.process(FhirRequest(method="POST", interaction="bundle", resource=tx), ctx)
            for i, entry in enumerate(result.body["entry"]):
                status = entry["response"]["status"]
                if status[:1] in ("2",):
                    report.loaded += 1
                else:
                    report.rejected.append(f"{path}: entry {i}: {status} "
                                           f"{_outcome_text(entry['response'].get('outcome'))}")
        except (FhirError, ValueError, OSError) as exc:
            report.rejected.append(f"{path}: {_why(exc)} (nothing from this file was loaded)")
    return report


def _why(exc: Exception) -> str:
    if isinstance(exc, FhirError):
        return f"{exc.status} " + "; ".join(
            i.diagnostics + (f" at {', '.join(i.expression)}" if i.expression else "") for i in exc.issues)
    return str(exc)


def _outcome_text(outcome: Any) -> str:
    if not isinstance(outcome, dict):
        return ""
    return "; ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue", []))
