"""The CPU cost of search-index extraction (``fhir_ctms.search.extract.extract``) per resource.

For a few example resources, prints the median over repeated runs of the microseconds one
extraction takes (each run extracts N copies that differ in ``id`` and ``meta.lastUpdated``,
as the server's writes do, so nothing is timed on a repeated date), for three paths:

* ``compiled``: ``extract(resource)``, the plan compiled per resource type (what writes use);
* ``walk``: the parameters one by one through ``extract_param`` (the interpreted path
  ``extract`` took before the compiled plans; fhirpathpy for the few non-simple paths);
* ``fhirpathpy``: ``extract(resource, fast=False)``, every expression through fhirpathpy
  (the reference the others are tested against).

Run it pinned to one core, like the server::

    taskset -c 0 .venv/bin/python bench/extract_speed.py [--runs 7] [--number 300] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_ctms.search import extract as _extract  # noqa: E402

DATA = ROOT / "tests" / "data" / "r5-examples"

#: the server's benchmark create body
TYPICAL_PATIENT = {
    "resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}], "active": True,
    "name": [{"family": "Doe", "given": ["Jane", "Q"]}], "gender": "female",
    "birthDate": "1970-01-01",
    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345",
                 "country": "US"}],
    "telecom": [{"system": "phone", "value": "555-1234", "use": "home"}],
    "meta": {"versionId": "1", "lastUpdated": "2026-11-23T03:20:00.123456Z"},
    "id": "0f8e6c2a-4b1d-4e8f-9a7c-3d2b1e0f9a8c",
}


def examples() -> dict[str, dict]:
    acme = json.loads((ROOT / "examples" / "acme-101-1-study.json").read_text(encoding="utf-8"))
    by_id = {e["resource"]["id"]: e["resource"] for e in acme["entry"]}

    def r5(name: str) -> dict:
        return json.loads((DATA / name).read_text(encoding="utf-8"))

    return {
        "typical Patient": TYPICAL_PATIENT,
        "ResearchStudy acme-101": by_id["acme-101"],
        "ResearchSubject subj-gb-01-001": by_id["subj-gb-01-001"],
        "Patient-example": r5("Patient-example.json"),
        "Observation-f001": r5("Observation-f001.json"),
        "ResearchSubject-example": r5("ResearchSubject-example-crossover-placebo-to-drug.json"),
        "Appointment-example": r5("Appointment-example.json"),
    }


def variants(resource: dict, n: int) -> list[dict]:
    """*n* copies with their own id and meta.lastUpdated (a create's)."""
    out = []
    for i in range(n):
        r = copy.deepcopy(resource)
        r["id"] = f"{r.get('id', 'x')}-{i}"
        stamp = f"2026-11-23T03:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z"
        r.setdefault("meta", {})["lastUpdated"] = stamp
        out.append(r)
    return out


def time_us(fn: Callable[[dict], list], resources: list[dict], runs: int) -> float:
    """Median over *runs* of the mean microseconds of ``fn`` over *resources*."""
    fn(resources[0])  # warm the caches (compiled expressions, plans)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for r in resources:
            fn(r)
        samples.append((time.perf_counter() - t0) / len(resources) * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="repeated runs (the median is reported)")
    ap.add_argument("--number", type=int, default=300, help="resources per run (compiled path)")
    ap.add_argument("--quick", action="store_true", help="the compiled path only")
    args = ap.parse_args(argv)

    def compiled(r: dict) -> list:
        return _extract.extract(r)

    def walk(r: dict) -> list:
        return _extract._extract_interpreted(r, r["resourceType"], fast=True)

    def fhirpathpy(r: dict) -> list:
        return _extract.extract(r, fast=False)

    header = f"{'resource':26} {'rows':>5} {'compiled us':>12}"
    if not args.quick:
        header += f" {'walk us':>9} {'fhirpathpy us':>14} {'walk/compiled':>14}"
    print(header)
    for name, resource in examples().items():
        many = variants(resource, args.number)
        fast = time_us(compiled, many, args.runs)
        line = f"{name:26} {len(compiled(resource)):5} {fast:12.1f}"
        if not args.quick:
            slow = time_us(walk, many[: max(1, args.number // 5)], args.runs)
            ref = time_us(fhirpathpy, many[: max(1, args.number // 20)], args.runs)
            line += f" {slow:9.1f} {ref:14.1f} {slow / fast:13.1f}x"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
