"""``fhir-ctms import``: load Bundles (JSON) and NDJSON files through the same interactions as the API.

- A Bundle of type transaction or batch is processed as one (a transaction is atomic).
- Any other Bundle (collection, searchset, ...) becomes a transaction: each resource is
  PUT to its id (or POSTed when it has none), so the whole file loads or nothing does.
- NDJSON: one resource a line, each written on its own; a bad line is reported with
  its number and the rest still load.
Every write is audited like any API write (the agent is the command line).
"""

from __future__ import annotations

import asyncio

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
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
    #: entries left out by ``skip_existing`` (their resource was already there)
    skipped: int = 0


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


async def _without_existing(tx: dict[str, Any], repo: Repository) -> tuple[dict[str, Any], int]:
    """The transaction without its PUT entries whose resource exists (in any version)."""
    keep, skipped = [], 0
    async with repo.session(write=False) as s:
        for entry in tx.get("entry") or []:
            request = entry.get("request") if isinstance(entry, dict) else None
            url = request.get("url") if isinstance(request, dict) else None
            parts = url.split("/") if isinstance(url, str) and request.get("method") == "PUT" else []
            if len(parts) == 2 and "?" not in url and await s.current(parts[0], parts[1]) is not None:
                skipped += 1
                continue
            keep.append(entry)
    return {**tx, "entry": keep}, skipped


async def import_files(paths: list[Path], repo: Repository, settings: Settings, progress: bool = True,
                       skip_existing: bool = False) -> Report:
    """Load the files; with ``skip_existing``, a Bundle entry that PUTs a resource already
    stored is left out (``make run`` loads the example study once, whatever it is run again)."""
    report = Report()
    ctx = Context(repo=repo, settings=settings, base=settings.public_base_url or "http://localhost/fhir",
                  actor=Actor(display="fhir-ctms import"), reason="Imported with fhir-ctms import")
    for path in tqdm(paths, desc="files", unit="file", disable=not progress or len(paths) < 2):
        if path.suffix == ".ndjson":
            lines = list(_ndjson_lines(path))
            with tqdm(total=len(lines), desc=path.name, unit="res", disable=not progress) as bar:
                for window in _windows(lines):
                    outcomes = await asyncio.gather(*(_load_line(ctx, number, line) for number, line in window))
                    for number, why in outcomes:
                        if why is None:
                            report.loaded += 1
                        else:
                            report.rejected.append(f"{path}:{number}: {why}")
                    bar.update(len(window))
            continue
        try:
            value = loads(path.read_bytes())
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            tx = _as_transaction(value)
            if skip_existing:
                tx, skipped = await _without_existing(tx, repo)
                report.skipped += skipped
                if not tx["entry"]:
                    continue
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


#: NDJSON lines written at once: their write sessions share commits (group commit), which made
#: importing 11,624 NDJSON resources take 14.1 s instead of 22.6 s (bench scale 0.01, SQLite)
WINDOW = 64


def _windows(lines: list[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    """Consecutive lines, at most WINDOW at a time, never two versions of one resource in one
    window (so a later line still lands after an earlier one with the same id)."""
    window: list[tuple[int, bytes]] = []
    ids: set[bytes] = set()
    for number, line in lines:
        key = _identity(line)
        if len(window) >= WINDOW or (key is not None and key in ids):
            yield window
            window, ids = [], set()
        window.append((number, line))
        if key is not None:
            ids.add(key)
    if window:
        yield window


def _identity(line: bytes) -> bytes | None:
    """The resource's type and id, cheaply and conservatively (None: it has no id)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    return f"{value.get('resourceType')}/{value['id']}".encode()


async def _load_line(ctx: Context, number: int, line: bytes) -> tuple[int, str | None]:
    """Write one NDJSON line (its own transaction); the reason it was rejected, or None."""
    try:
        resource = loads(line)
        if not isinstance(resource, dict):
            raise ValueError("not a JSON object")
        rtype, rid = resource.get("resourceType"), resource.get("id")
        req = FhirRequest(method="PUT" if rid else "POST", type=rtype if isinstance(rtype, str) else None,
                          id=rid if isinstance(rid, str) else None,
                          interaction="update" if rid else "create", resource=resource)
        await perform(req, ctx)
        return number, None
    except (FhirError, ValueError) as exc:
        return number, _why(exc)


def _why(exc: Exception) -> str:
    if isinstance(exc, FhirError):
        return f"{exc.status} " + "; ".join(
            i.diagnostics + (f" at {', '.join(i.expression)}" if i.expression else "") for i in exc.issues)
    return str(exc)


def _outcome_text(outcome: Any) -> str:
    if not isinstance(outcome, dict):
        return ""
    return "; ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue", []))


@dataclass
class RegistryReport(Report):
    """A ClinicalTrials.gov import: per record what was imported (``studies``) and what the record
    lacks or the CTMS does not keep (``notes``)."""

    studies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def import_clinicaltrials_gov(paths: list[Path], repo: Repository, settings: Settings) -> RegistryReport:
    """``fhir-ctms import --clinicaltrials-gov``: each ClinicalTrials.gov API v2 record (a file
    holds one record, or an API search answer ``{"studies": [...]}``) becomes one transaction
    Bundle (``fhir_ctms.ctgov.to_fhir``) processed like any transaction: atomic and audited, its
    resources PUT to ids derived from the NCT number, so a re-import updates (and an unchanged
    record writes nothing)."""
    from .ctgov import NotARecord, convert

    report = RegistryReport()
    ctx = Context(repo=repo, settings=settings, base=settings.public_base_url or "http://localhost/fhir",
                  actor=Actor(display="fhir-ctms import"), reason="Imported from ClinicalTrials.gov with fhir-ctms import")
    for path in paths:
        try:
            value = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            report.rejected.append(f"{path}: not JSON ({exc})")
            continue
        except OSError as exc:
            report.rejected.append(f"{path}: {exc.strerror or exc}")
            continue
        records = value.get("studies") if isinstance(value, dict) and isinstance(value.get("studies"), list) else [value]
        for n, record in enumerate(records):
            where = f"{path}" + (f" (study {n + 1})" if len(records) > 1 else "")
            try:
                conversion = convert(record)
            except NotARecord as exc:
                report.rejected.append(f"{where}: {exc}")
                continue
            try:
                tx = loads(orjson.dumps(conversion.bundle()))  # read as a request body is (decimals exact)
                result = await bundle.process(FhirRequest(method="POST", interaction="bundle", resource=tx), ctx)
            except FhirError as exc:
                report.rejected.append(f"{where}: {conversion.nct_id}: {_why(exc)} (nothing from this record was imported)")
                continue
            report.loaded += len(result.body["entry"])
            sites = sum(1 for r in conversion.resources if r["resourceType"] == "ResearchStudy" and "-site-" in r["id"])
            countries = sum(1 for r in conversion.resources if r["resourceType"] == "ResearchStudy") - sites - 1
            report.studies.append(f"{conversion.nct_id}: ResearchStudy/{conversion.resources[0]['id']} with {sites} "
                                  f"site(s) in {countries} country(ies), {len(conversion.resources)} resources")
            report.notes += [f"{conversion.nct_id}: {line}" for line in conversion.missing]
    return report
