#!/usr/bin/env python3
"""Extract the FHIR R5 search parameters and compartment definitions the server indexes.

Why: search (R5 search.html) is defined by ~1,240 SearchParameter resources, each with a
FHIRPath ``expression`` saying which elements it indexes, and by the CompartmentDefinitions
(Patient, Encounter, RelatedPerson, Practitioner, Device) saying which parameters put a
resource in a compartment.  They ship in ``hl7.fhir.r5.examples@5.0.0`` (``Bundle-searchParams.json``
and ``CompartmentDefinition-*.json``; ``hl7.fhir.r5.core`` has the same as single files).
This script turns them into two small, deterministic JSON files that
``fhir_ctms.search.parameters`` loads at run time.

What it does:

1. Runs ``npm pack hl7.fhir.r5.examples@5.0.0`` in a temporary directory (this only downloads
   the tarball), or uses ``--package-tgz PATH`` (the examples or the core package).
2. Reads the SearchParameters (from ``Bundle-searchParams.json``, else every
   ``SearchParameter-*.json``) and keeps, per base type, the code, canonical URL, type,
   ``target``, ``multipleOr``, ``multipleAnd``, ``comparator``, ``modifier``, ``chain``,
   ``processingMode`` and ``component`` (definition URL + expression).  A parameter with
   several bases (``clinical-patient`` has 67) has one expression whose ``|`` alternatives
   each start with a type name: every base keeps only its own alternatives
   (``fhir_ctms/search/fhirpath.py``, ``split_per_base``).
3. Reads the five CompartmentDefinitions (the ``example`` one is skipped) as
   compartment -> resource type -> parameter codes.
4. Writes both files (sorted keys, one parameter / one compartment type per line, so diffs
   stay readable) and prints a summary.

Output layout::

    search-parameters.json
    {"format":1, "source":{...}, "resourceTypes":[...all R5 resource types...],
     "parameters":{
      "<Type or Resource/DomainResource>":{
       "<code>":{"url":..., "type":"token", "expression":"...",
                 "target":[...], "multipleOr":true, "comparator":[...], "modifier":[...],
                 "component":[{"definition":url, "expression":"..."}], ...},
       ...}}}

    compartments.json
    {"format":1, "source":{...},
     "compartments":{"Patient":{"url":..., "resources":{"<Type>":["<param>", ...]}}, ...}}

A parameter without an expression (``_text``, ``_content``, ``_list``, ``_has``, ``_type``,
``_query``, ``_filter``, ...) is kept without one: the search interaction implements it.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

PACKAGE_NAME = "hl7.fhir.r5.examples"
PACKAGE_VERSION = "5.0.0"
FORMAT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = REPO_ROOT / "fhir_ctms" / "definitions"
DEFAULT_OUTPUT = DEFINITIONS / "search-parameters.json"
DEFAULT_COMPARTMENTS = DEFINITIONS / "compartments.json"
COMPARTMENTS = ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device")
#: SearchParameter elements copied as they are (when present)
COPIED = ("target", "multipleOr", "multipleAnd", "comparator", "modifier", "chain",
          "processingMode")


def _load_fhirpath():
    """``fhir_ctms/search/fhirpath.py`` (standard library only at import), without the package."""
    path = REPO_ROOT / "fhir_ctms" / "search" / "fhirpath.py"
    spec = importlib.util.spec_from_file_location("_search_fhirpath", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- package I/O


def download_package(workdir: Path) -> Path:
    """``npm pack`` the examples package into *workdir* and return the tarball path."""
    spec = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
    print(f"npm pack {spec} ...", file=sys.stderr)
    subprocess.run(["npm", "pack", spec, "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    tarballs = sorted(workdir.glob("*.tgz"))
    if not tarballs:
        raise SystemExit(f"npm pack {spec} produced no tarball")
    return tarballs[0]


def read_package(tgz: Path) -> tuple[str, list[dict], list[dict]]:
    """(package id, SearchParameters, CompartmentDefinitions) of the tarball."""
    params: list[dict] = []
    singles: list[dict] = []
    compartments: list[dict] = []
    package_id = tgz.name
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            name = member.name
            if not member.isfile() or name.count("/") != 1 or not name.endswith(".json"):
                continue
            base = name.split("/", 1)[1]
            if base == "package.json":
                meta = json.load(tar.extractfile(member))
                package_id = f"{meta.get('name')}@{meta.get('version')}"
            elif base == "Bundle-searchParams.json":
                bundle = json.load(tar.extractfile(member))
                params = [e["resource"] for e in bundle.get("entry", [])
                          if e.get("resource", {}).get("resourceType") == "SearchParameter"]
            elif base.startswith("SearchParameter-"):
                singles.append(json.load(tar.extractfile(member)))
            elif base.startswith("CompartmentDefinition-"):
                compartments.append(json.load(tar.extractfile(member)))
    if not params:  # the core package: one file per parameter (and a few examples)
        params = [p for p in singles if not p.get("id", "").startswith("example")]
    if not params:
        raise SystemExit(f"{tgz}: no SearchParameter found")
    return package_id, params, compartments


def resource_types(params: list[dict], compartments: list[dict]) -> list[str]:
    """Every R5 resource type: from the extracted definitions when present, else the package."""
    bindings = DEFINITIONS / "required-bindings.json"
    if bindings.exists():
        types = json.loads(bindings.read_text(encoding="utf-8"))["types"]
        return sorted(n for n, t in types.items() if t.get("kind") == "resource")
    found = {b for p in params for b in p.get("base", [])}
    found |= {r["code"] for c in compartments for r in c.get("resource", [])}
    return sorted(found - {"Resource", "DomainResource"})


# --------------------------------------------------------------------------- extraction


def extract_parameters(params: list[dict], fhirpath) -> tuple[dict, list[str]]:
    """{base type: {code: entry}} and the problems met (unplaced alternatives, duplicates)."""
    by_type: dict[str, dict[str, dict]] = {}
    problems: list[str] = []
    for sp in sorted(params, key=lambda p: p["url"]):
        bases = list(sp.get("base", []))
        expression = sp.get("expression")
        if expression:
            per_base, unplaced = fhirpath.split_per_base(expression, bases)
            for alt in unplaced:
                problems.append(f"{sp['url']}: alternative {alt!r} matches no base")
        else:
            per_base = {}
        for base in bases:
            entry: dict = {"url": sp["url"], "type": sp["type"]}
            if expression:
                if base not in per_base:
                    problems.append(f"{sp['url']}: base {base} has no alternative in the expression; skipped")
                    continue
                entry["expression"] = per_base[base]
            for key in COPIED:
                if key in sp:
                    entry[key] = sp[key]
            if sp.get("component"):
                entry["component"] = [
                    {"definition": c["definition"], "expression": c["expression"]}
                    for c in sp["component"]
                ]
            table = by_type.setdefault(base, {})
            if sp["code"] in table:
                problems.append(f"{base}.{sp['code']}: defined twice ({table[sp['code']]['url']}, "
                                f"{sp['url']}); first kept")
                continue
            table[sp["code"]] = entry
    return by_type, problems


def extract_compartments(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for doc in docs:
        code = doc.get("code")
        url = doc.get("url", "")
        if code not in COMPARTMENTS or not url.endswith("/" + code[:1].lower() + code[1:]):
            continue  # CompartmentDefinition/example also has code Device
        resources = {r["code"]: list(r["param"]) for r in doc.get("resource", []) if r.get("param")}
        out[code] = {"url": url, "resources": resources}
    return out


# --------------------------------------------------------------------------- output


def _dump(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def render_parameters(package_id: str, types: list[str], by_type: dict) -> str:
    blocks = []
    for t in sorted(by_type):
        lines = ",\n".join(f"{_dump(c)}:{_dump(by_type[t][c])}" for c in sorted(by_type[t]))
        blocks.append(f"{_dump(t)}:{{\n{lines}\n}}")
    return (
        "{\n"
        f'"format":{FORMAT_VERSION},\n'
        f'"source":{_dump({"package": package_id})},\n'
        f'"resourceTypes":{_dump(types)},\n'
        '"parameters":{\n' + ",\n".join(blocks) + "\n}\n}\n"
    )


def render_compartments(package_id: str, compartments: dict) -> str:
    blocks = []
    for code in sorted(compartments):
        comp = compartments[code]
        res = ",\n".join(f"{_dump(t)}:{_dump(comp['resources'][t])}" for t in sorted(comp["resources"]))
        blocks.append(f'{_dump(code)}:{{"url":{_dump(comp["url"])},"resources":{{\n{res}\n}}}}')
    return (
        "{\n"
        f'"format":{FORMAT_VERSION},\n'
        f'"source":{_dump({"package": package_id})},\n'
        '"compartments":{\n' + ",\n".join(blocks) + "\n}\n}\n"
    )


def _write(path: Path, text: str) -> None:
    json.loads(text)  # sanity check
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build(tgz: Path, output: Path, compartments_output: Path) -> None:
    fhirpath = _load_fhirpath()
    package_id, params, comp_docs = read_package(tgz)
    types = resource_types(params, comp_docs)
    by_type, problems = extract_parameters(params, fhirpath)
    compartments = extract_compartments(comp_docs)
    _write(output, render_parameters(package_id, types, by_type))
    _write(compartments_output, render_compartments(package_id, compartments))

    # ---- summary
    entries = [e for t in by_type.values() for e in t.values()]
    multi = sum(1 for p in params if len(p.get("base", [])) > 1)
    kinds = Counter(p["type"] for p in params)
    no_expr = sorted(f"{b}.{p['code']}" for p in params if not p.get("expression")
                     for b in p.get("base", []))
    missing = [t for t in types if t not in by_type]
    print(f"source: {package_id} ({tgz.name})")
    print(f"search parameters: {len(params)} ({multi} with several bases), "
          f"{len(entries)} (type, code) entries over {len(by_type)} base types "
          f"({len(types)} resource types; without parameters of their own: {', '.join(missing) or 'none'})")
    print("by type: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"expressions: {sum(1 for e in entries if 'expression' in e)} per-base, "
          f"{len({e['expression'] for e in entries if 'expression' in e})} distinct; "
          f"without expression: {', '.join(no_expr)}")
    print(f"common: Resource {', '.join(sorted(by_type.get('Resource', {})))}; "
          f"DomainResource {', '.join(sorted(by_type.get('DomainResource', {})))}")
    print("compartments: " + ", ".join(
        f"{c} {len(v['resources'])} types" for c, v in sorted(compartments.items())))
    for p in problems:
        print(f"  problem: {p}")
    print(f"wrote {output} ({output.stat().st_size:,} bytes), "
          f"{compartments_output} ({compartments_output.stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--package-tgz", type=Path,
                        help=f"use a downloaded {PACKAGE_NAME}-{PACKAGE_VERSION}.tgz "
                             "(or hl7.fhir.r5.core-5.0.0.tgz) instead of npm pack")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--compartments-output", type=Path, default=DEFAULT_COMPARTMENTS)
    args = parser.parse_args(argv)
    if args.package_tgz is not None:
        build(args.package_tgz, args.output, args.compartments_output)
    else:
        with tempfile.TemporaryDirectory(prefix="fhir-examples-") as tmp:
            build(download_package(Path(tmp)), args.output, args.compartments_output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
