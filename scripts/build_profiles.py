#!/usr/bin/env python3
"""Build the CTMS StructureDefinitions of ``profiles/`` from their differentials.

The differentials are written by hand in ``profiles/src/<id>.json`` (the contract is
profiles/README.md): the profile's id, base type, title and description, for an extension its
``context``, and ``element``, a list of ElementDefinitions in the FHIR shape with two
conveniences: ``path`` is derived from ``id``, and a constraint's ``severity`` defaults to
``error`` (its ``source`` is the profile).

For each one this script writes ``profiles/StructureDefinition-<id>.json``: the differential and a
snapshot, the base type's snapshot from ``hl7.fhir.r5.core`` 5.0.0 with the differential applied
(``min``/``max``, ``type``, ``fixed[x]``/``pattern[x]``, ``binding``, ``mustSupport``, texts
replaced; constraints added). A differential element must exist in the base snapshot (the
profiles constrain datatype internals by FHIRPath invariants, not by new elements), except
slices of extensions (R5 profiling.html#slicing; nothing else is sliced), each placed in the
snapshot after the element it slices and that element's earlier slices, with the id
``<element id>:<sliceName>`` and the element's path:

- the url slices of ``Extension.extension`` in a complex extension: the slice and, below it, the
  elements of the Extension type (its ``url`` fixed by the differential);
- the slices of a resource's (or an element's) ``extension`` by the extension they hold: the
  slice element alone, its ``type`` ``[{code: Extension, profile: [<the extension's
  canonical>]}]`` (the extension's own elements are in its StructureDefinition, as the R5
  snapshots of extension slices have them).

Every sliced element must carry ``slicing`` (discriminator ``value`` on ``url``), from the
base or the differential. A narrowed cardinality must lie inside the base's. The build is
deterministic, so ``--check`` (and tests/test_profiles.py) can tell when a committed file drifts.

It also copies the official OperationDefinition ``Resource-validate`` (``$validate``) from the
package into ``profiles/``.

The package is needed at build time only: ``npm pack hl7.fhir.r5.core@5.0.0`` into a cache
directory (``--cache``, default ``$FHIR_CTMS_PACKAGE_CACHE`` or ``/tmp/fhir-packages``), or
``--package-tgz PATH``. Standard library only.

    python scripts/build_profiles.py            # write the files
    python scripts/build_profiles.py --check    # exit 1 if a committed file differs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

PACKAGE = "hl7.fhir.r5.core"
PACKAGE_VERSION = "5.0.0"
REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
SOURCES = PROFILES / "src"
CANONICAL = "http://fhir-ctms.org/fhir/StructureDefinition/"
VERSION = "0.1.0"
DATE = "2026-11-23"
#: official definitions copied unchanged from the package
COPIED = ("OperationDefinition-Resource-validate.json",)

#: key order of a written ElementDefinition (the rest follow in their own order)
_ORDER = ("id", "path", "sliceName", "short", "definition", "comment", "min", "max", "base", "type")


# --------------------------------------------------------------------------- package


def package_tgz(cache: Path | None = None) -> Path:
    """The core package's tarball: from the cache directory, else ``npm pack`` into it."""
    where = cache or Path(os.environ.get("FHIR_CTMS_PACKAGE_CACHE") or "/tmp/fhir-packages")
    tgz = where / f"{PACKAGE}-{PACKAGE_VERSION}.tgz"
    if not tgz.exists():
        where.mkdir(parents=True, exist_ok=True)
        print(f"npm pack {PACKAGE}@{PACKAGE_VERSION} into {where} ...", file=sys.stderr)
        subprocess.run(["npm", "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--silent"], cwd=where,
                       check=True, stdout=subprocess.DEVNULL)
    return tgz


def read_package(tgz: Path, names: set[str]) -> dict[str, dict[str, Any]]:
    """The package files named (``StructureDefinition-ResearchStudy.json``...)."""
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for name in names:
            member = tar.extractfile(f"package/{name}")
            if member is None:
                raise SystemExit(f"{tgz}: no package/{name}")
            out[name] = json.load(member)
    return out


# --------------------------------------------------------------------------- sources


def sources(directory: Path = SOURCES) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def path_of(element_id: str) -> str:
    """``Extension.extension:protocol.url`` -> ``Extension.extension.url``."""
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


def _ordered(element: dict[str, Any]) -> dict[str, Any]:
    out = {k: element[k] for k in _ORDER if k in element}
    out.update((k, v) for k, v in element.items() if k not in out)
    return out


def differential(src: dict[str, Any]) -> list[dict[str, Any]]:
    """The differential elements of a source, as written in the StructureDefinition."""
    url = CANONICAL + src["id"]
    out = []
    for given in src["element"]:
        element = {"id": given["id"], "path": path_of(given["id"]),
                   **{k: copy.deepcopy(v) for k, v in given.items() if k != "id"}}
        if "constraint" in element:
            element["constraint"] = [
                {"key": c["key"], "severity": c.get("severity", "error"), "human": c["human"],
                 "expression": c["expression"], "source": url}
                for c in element["constraint"]]
        out.append(_ordered(element))
    return out


# --------------------------------------------------------------------------- snapshot


def _max(value: str) -> float:
    return float("inf") if value == "*" else int(value)


def _merge(target: dict[str, Any], diff: dict[str, Any], where: str) -> None:
    for key, value in diff.items():
        if key in ("id", "path"):
            continue
        if key == "constraint":
            target["constraint"] = [*target.get("constraint", []), *copy.deepcopy(value)]
        elif key == "min" and value < target.get("min", 0):
            raise SystemExit(f"{where}: min {value} is below the base's {target.get('min')}")
        elif key == "max" and _max(value) > _max(target.get("max", "*")):
            raise SystemExit(f"{where}: max {value} is above the base's {target.get('max')}")
        else:
            target[key] = copy.deepcopy(value)
    if "min" in diff or "max" in diff:
        if target["min"] > _max(target["max"]):
            raise SystemExit(f"{where}: min {target['min']} > max {target['max']}")


def _slice_elements(slice_id: str, sliced: dict[str, Any],
                    extension_sd: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The elements of a slice of an extension element: the sliced element as its root and,
    for a url slice of a complex extension (``extension_sd`` given), the Extension type's
    elements as its children."""
    root = copy.deepcopy(sliced)
    root.pop("slicing", None)
    root["id"] = slice_id
    out = [root]
    if extension_sd is None:
        return out
    for e in extension_sd["snapshot"]["element"][1:]:
        child = copy.deepcopy(e)
        child["id"] = slice_id + e["id"][len("Extension"):]
        child["path"] = sliced["path"] + e["path"][len("Extension"):]
        out.append(child)
    return out


def snapshot(src: dict[str, Any], diff: list[dict[str, Any]], base_sd: dict[str, Any],
             extension_sd: dict[str, Any]) -> list[dict[str, Any]]:
    elements = copy.deepcopy(base_sd["snapshot"]["element"])
    for d in diff:
        ids = [e["id"] for e in elements]
        if d["id"] not in ids:
            head, _, name = d["id"].rpartition(":")
            if not name or "." in name or head not in ids:
                raise SystemExit(f"{src['id']}: {d['id']} is not an element of the base "
                                 f"{base_sd['type']} (constrain datatype internals with an invariant)")
            if elements[ids.index(head)]["type"][0]["code"] != "Extension":
                raise SystemExit(f"{src['id']}: {d['id']}: only extensions are sliced (by url)")
            if d.get("sliceName") != name:
                raise SystemExit(f"{src['id']}: {d['id']}: sliceName must be {name!r}")
            complex_part = src["type"] == "Extension" and head == "Extension.extension"
            if not complex_part and _slice_profile(d) is None:
                raise SystemExit(f"{src['id']}: {d['id']}: an extension slice has the type "
                                 "[{code: Extension, profile: [<the extension's canonical>]}]")
            last = max(i for i, x in enumerate(ids)
                       if x == head or x.startswith(head + ".") or x.startswith(head + ":"))
            original = next(e for e in base_sd["snapshot"]["element"] if e["id"] == head)
            elements[last + 1:last + 1] = _slice_elements(
                d["id"], original, extension_sd if complex_part else None)
            ids = [e["id"] for e in elements]
        _merge(elements[ids.index(d["id"])], d, f"{src['id']}: {d['id']}")
    by_id = {e["id"]: e for e in elements}
    for e in elements:
        if "sliceName" in e:
            slicing = by_id[e["id"].rpartition(":")[0]].get("slicing") or {}
            if {"type": "value", "path": "url"} not in slicing.get("discriminator", []):
                raise SystemExit(f"{src['id']}: {e['id']}: the sliced element has no slicing "
                                 "(discriminator value on url)")
    return [_ordered(e) for e in elements]


def _slice_profile(element: dict[str, Any]) -> str | None:
    """The one extension a slice of an extension element holds (its type's profile)."""
    types = element.get("type") or []
    if len(types) == 1 and types[0].get("code") == "Extension" and \
            len(types[0].get("profile") or []) == 1:
        return types[0]["profile"][0]
    return None


def name_of(profile_id: str) -> str:
    return "".join(part.capitalize() for part in profile_id.split("-"))


def structure_definition(src: dict[str, Any], base_sd: dict[str, Any],
                         extension_sd: dict[str, Any]) -> dict[str, Any]:
    diff = differential(src)
    snap = snapshot(src, diff, base_sd, extension_sd)
    by_id = {e["id"]: i for i, e in enumerate(snap)}
    diff.sort(key=lambda e: by_id[e["id"]])
    is_extension = src["type"] == "Extension"
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition",
        "id": src["id"],
        "url": CANONICAL + src["id"],
        "version": VERSION,
        "name": name_of(src["id"]),
        "title": src["title"],
        "status": "active",
        "experimental": False,
        "date": DATE,
        "publisher": "fhir-ctms",
        "description": src["description"],
        "fhirVersion": PACKAGE_VERSION,
        "kind": "complex-type" if is_extension else "resource",
        "abstract": False,
    }
    if is_extension:
        sd["context"] = src["context"]
    sd.update({
        "type": src["type"],
        "baseDefinition": base_sd["url"],
        "derivation": "constraint",
        "snapshot": {"element": snap},
        "differential": {"element": diff},
    })
    return sd


# --------------------------------------------------------------------------- build


def build(tgz: Path, source_dir: Path = SOURCES) -> dict[str, str]:
    """Every output file of ``profiles/``: name -> text."""
    srcs = sources(source_dir)
    wanted = {f"StructureDefinition-{s['type']}.json" for s in srcs}
    wanted |= {"StructureDefinition-Extension.json", *COPIED}
    package = read_package(tgz, wanted)
    extension_sd = package["StructureDefinition-Extension.json"]
    out: dict[str, str] = {}
    for src in srcs:
        sd = structure_definition(src, package[f"StructureDefinition-{src['type']}.json"],
                                  extension_sd)
        out[f"StructureDefinition-{src['id']}.json"] = dump(sd)
    for name in COPIED:
        out[name] = dump(package[name])
    return out


def dump(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package-tgz", type=Path, help="hl7.fhir.r5.core 5.0.0 tarball")
    parser.add_argument("--cache", type=Path, help="where npm pack puts the package")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    files = build(args.package_tgz or package_tgz(args.cache))
    stale = []
    for name, text in files.items():
        path = PROFILES / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)
    if stale:
        print("out of date (run scripts/build_profiles.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
