#!/usr/bin/env python3
"""Extract the FHIR R5 required code bindings the server enforces.

Why: ``fhir.resources`` validates the *structure* of a resource but not its
REQUIRED terminology bindings, so e.g. ``ResearchStudy.status = "bogus"`` is
accepted.  The authoritative list of those bindings (and of the codes they
allow) lives in the official HL7 package ``hl7.fhir.r5.core@5.0.0``.  This
script turns that ~86 MB package into one small, deterministic JSON file,
``fhir_ctms/definitions/required-bindings.json``, which
``fhir_ctms.resources.bindings`` loads at run time.

What it does:

1. Runs ``npm pack hl7.fhir.r5.core@5.0.0`` and ``npm pack hl7.terminology.r5@7.0.1`` in a
   temporary directory (this only downloads the tarballs; nothing is installed), or uses
   ``--package-tgz PATH`` and ``--tho-package-tgz PATH``.
2. Reads every non-abstract resource and complex datatype StructureDefinition
   (snapshot view) and records, per type, the elements needed to walk an
   instance: each element's JSON (wire) name and type, with choice elements
   expanded (``value[x]`` -> ``valueQuantity`` ...), backbone elements turned
   into pseudo-types named by their path (``Patient.contact``) and
   ``contentReference`` elements pointing at the referenced backbone.
   Primitive elements are kept only when they carry a required binding.
3. For every element with ``binding.strength == "required"`` and a
   code/Coding/CodeableConcept/string/uri type, expands the bound ValueSet from
   the package's ValueSets and CodeSystems (whole code systems incl. nested
   concepts, explicit concept lists, simple filters, included value sets,
   excludes).  Value sets that cannot be enumerated from the package (BCP-47
   languages, MIME types, UCUM, code systems that live outside the core
   package, ...) are recorded as not enumerable so the checker skips them.
4. Writes the JSON file (value sets shared by canonical URL, sorted keys, one
   entry per line so diffs stay readable) and prints a summary.
5. Writes ``fhir_ctms/definitions/core-terminology.json`` (beside the output): the
   enumerable core value sets (those of the required bindings, plus
   ``research-study-status``, which the CTMS milestone value sets include, and
   ``research-subject-milestone``, which ``ctms-subject`` binds) with
   their codes by system and the displays of those codes, for
   ``fhir_ctms.terminology`` (``$expand``, ``$validate-code``, the profile
   validator's required bindings).
6. Takes a few code systems that R5 binds but that live in HL7 Terminology (THO), not in the
   core package, from the THO package ``hl7.terminology.r5`` (``THO_CODE_SYSTEMS``:
   ``research-subject-state``, the REQUIRED binding of ``ResearchSubject.progress.subjectState``,
   and ``research-subject-milestone``, which the CTMS profile ``ctms-subject`` binds
   ``progress.milestone`` to). The core package declares no dependency on THO (its narrative
   links THO 5.1.0, which is not in the npm registry); ``THO_PACKAGE_VERSION`` pins the version
   used, and the script checks that each code system taken is ``complete`` and has exactly the
   codes the R5 specification lists for it (``THO_EXPECTED_CODES``), so a later THO release that
   changed them would stop the script rather than silently change the server. Only the listed
   code systems are taken: other THO systems of required bindings (``condition-clinical`` ...)
   stay not enumerable.
7. Copies the official OperationDefinitions ``ValueSet-expand`` and
   ``ValueSet-validate-code`` unchanged into ``profiles/``: the operation
   registry declares ``$expand`` and ``$validate-code`` from them.

Output layout::

    {
     "format": 1,
     "source": {"package": "hl7.fhir.r5.core", "version": "5.0.0"},
 "codeSystemsFrom": {"package": "hl7.terminology.r5", "version": "7.0.1",
                     "codeSystems": ["http://terminology.hl7.org/CodeSystem/...", ...]},
     "types": {
      "<TypeName or Backbone.path>": {
        "kind": "resource|datatype|backbone",
        "elements": {"<wireName>": ["<type>"] | ["<type>", "<valueSetUrl|version>"]}},
      ...},
     "valueSets": {
      "<valueSetUrl|version>": {"systems": {"<system>": ["code", ...]}} |
                               {"notEnumerable": "<reason>"},
      ...}
    }

``<type>`` is a datatype name (``Identifier``), a primitive (``code``), a
backbone pseudo-type (``Patient.contact``) or ``Resource`` (any resource; the
instance's ``resourceType`` says which).

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

PACKAGE_NAME = "hl7.fhir.r5.core"
PACKAGE_VERSION = "5.0.0"
FORMAT_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "fhir_ctms" / "definitions" / "required-bindings.json"
#: the core value sets the server holds (``fhir_ctms.terminology``): codes with their displays
CORE_TERMINOLOGY_OUTPUT = REPO_ROOT / "fhir_ctms" / "definitions" / "core-terminology.json"
#: core value sets held besides those of the required bindings (the CTMS value sets include them)
EXTRA_CORE_VALUE_SETS = ("http://hl7.org/fhir/ValueSet/research-study-status",
                         "http://hl7.org/fhir/ValueSet/research-subject-milestone")
#: HL7 Terminology (THO): the package and the code systems taken from it (step 6 above)
THO_PACKAGE_NAME = "hl7.terminology.r5"
THO_PACKAGE_VERSION = "7.0.1"
#: code system URL -> its codes as the R5 specification lists them (researchsubject.html,
#: valueset-research-subject-state.html, valueset-research-subject-milestone.html)
THO_EXPECTED_CODES = {
    "http://terminology.hl7.org/CodeSystem/research-subject-state": (
        "candidate", "eligible", "follow-up", "ineligible", "not-registered", "off-study",
        "on-study", "on-study-intervention", "on-study-observation", "pending-on-study",
        "potential-candidate", "screening", "withdrawn"),
    "http://terminology.hl7.org/CodeSystem/research-subject-milestone": (
        "SignedUp", "Screened", "Randomized"),
}
THO_CODE_SYSTEMS = tuple(THO_EXPECTED_CODES)
#: the official OperationDefinitions of the terminology operations the server implements,
#: copied unchanged into ``profiles/`` (the operation registry declares them from there)
OPERATION_DEFINITIONS = ("OperationDefinition-ValueSet-expand.json",
                         "OperationDefinition-ValueSet-validate-code.json")
PROFILES_DIR = REPO_ROOT / "profiles"

# Element types whose values can be checked against a required binding.
BINDABLE_TYPES = {"code", "Coding", "CodeableConcept", "string", "uri"}
# Types that are the "container" of inline backbone elements.
BACKBONE_BASES = {"BackboneElement", "Element"}
WANTED_RESOURCE_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem")


# --------------------------------------------------------------------------- package I/O


def download_package(workdir: Path, name: str = PACKAGE_NAME,
                     version: str = PACKAGE_VERSION) -> Path:
    """``npm pack`` a package into *workdir* and return the tarball path."""
    spec = f"{name}@{version}"
    print(f"npm pack {spec} ...", file=sys.stderr)
    subprocess.run(
        ["npm", "pack", spec, "--silent"],
        cwd=workdir,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarballs = sorted(workdir.glob(f"{name}-{version}.tgz"))
    if not tarballs:
        raise SystemExit(f"npm pack {spec} produced no tarball")
    return tarballs[0]


def read_members(tgz: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The raw bytes of some files of the package (``package/<name>``)."""
    out: dict[str, bytes] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for name in names:
            member = tar.getmember("package/" + name)
            out[name] = tar.extractfile(member).read()
    return out


def read_package(tgz: Path) -> dict[str, list[dict]]:
    """Return the package's StructureDefinitions, ValueSets and CodeSystems."""
    found: dict[str, list[dict]] = {rt: [] for rt in WANTED_RESOURCE_TYPES}
    with tarfile.open(tgz, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        index_member = members.get("package/.index.json")
        if index_member is not None:
            index = json.load(tar.extractfile(index_member))
            names = [
                "package/" + f["filename"]
                for f in index.get("files", [])
                if f.get("resourceType") in WANTED_RESOURCE_TYPES
            ]
        else:  # fall back to the package's file naming convention
            names = [
                n
                for n in members
                if n.count("/") == 1
                and n.endswith(".json")
                and n.split("/")[1].split("-", 1)[0] in WANTED_RESOURCE_TYPES
            ]
        for name in sorted(names):
            member = members.get(name)
            if member is None:
                continue
            doc = json.load(tar.extractfile(member))
            rt = doc.get("resourceType")
            if rt in found:
                found[rt].append(doc)
    return found


def read_tho_code_systems(tgz: Path) -> list[dict]:
    """The code systems ``THO_CODE_SYSTEMS`` of the THO package, each checked to be ``complete``
    with exactly the codes the R5 specification lists (``THO_EXPECTED_CODES``)."""
    wanted = set(THO_CODE_SYSTEMS)
    found: dict[str, dict] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (member.isfile() and name.count("/") == 1
                    and name.startswith("package/CodeSystem-") and name.endswith(".json")):
                continue
            doc = json.load(tar.extractfile(member))
            if doc.get("resourceType") == "CodeSystem" and doc.get("url") in wanted:
                found[doc["url"]] = doc
    for url in THO_CODE_SYSTEMS:
        cs = found.get(url)
        if cs is None:
            raise SystemExit(f"{tgz.name}: code system {url} not found")
        if cs.get("content") != "complete":
            raise SystemExit(f"{tgz.name}: code system {url} is not complete")
        codes = sorted(c["code"] for c, _ in Terminology._walk_concepts(cs) if "code" in c)
        if codes != sorted(THO_EXPECTED_CODES[url]):
            raise SystemExit(f"{tgz.name}: code system {url} has codes {codes}, not the "
                             f"R5 specification's {sorted(THO_EXPECTED_CODES[url])}")
    return [found[u] for u in THO_CODE_SYSTEMS]


def tho_source(tho_systems: list[dict]) -> dict:
    return {"package": THO_PACKAGE_NAME, "version": THO_PACKAGE_VERSION,
            "codeSystems": [f"{cs['url']}|{cs.get('version')}" for cs in tho_systems]}


# --------------------------------------------------------------------------- value sets


class NotEnumerable(Exception):
    """A value set (or part of it) cannot be expanded from the package."""


class Terminology:
    def __init__(self, value_sets: list[dict], code_systems: list[dict]):
        self.value_sets = {vs["url"]: vs for vs in value_sets if "url" in vs}
        self.code_systems = {cs["url"]: cs for cs in code_systems if "url" in cs}
        self._cache: dict[str, dict[str, set[str]] | NotEnumerable] = {}

    # -- code systems

    def _cs(self, system: str) -> dict:
        cs = self.code_systems.get(system)
        if cs is None:
            raise NotEnumerable(f"code system {system} is not in the package")
        content = cs.get("content")
        if content != "complete":
            raise NotEnumerable(f"code system {system} has content '{content}' in the package")
        return cs

    @staticmethod
    def _walk_concepts(cs: dict):
        """Yield (concept, parent_code) for every concept, nested ones included."""
        stack = [(c, None) for c in reversed(cs.get("concept", []))]
        while stack:
            concept, parent = stack.pop()
            yield concept, parent
            for child in reversed(concept.get("concept", [])):
                stack.append((child, concept.get("code")))

    def all_codes(self, system: str) -> set[str]:
        return {c["code"] for c, _ in self._walk_concepts(self._cs(system)) if "code" in c}

    def _children_map(self, system: str) -> dict[str, set[str]]:
        children: dict[str, set[str]] = defaultdict(set)
        for concept, parent in self._walk_concepts(self._cs(system)):
            code = concept.get("code")
            if code is None:
                continue
            if parent is not None:
                children[parent].add(code)
            for prop in concept.get("property", []):
                if prop.get("code") in ("parent", "subsumedBy") and "valueCode" in prop:
                    children[prop["valueCode"]].add(code)
        return children

    def _descendants(self, system: str, code: str) -> set[str]:
        children = self._children_map(system)
        out: set[str] = set()
        stack = list(children.get(code, ()))
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(children.get(c, ()))
        return out

    def _apply_filter(self, system: str, flt: dict) -> set[str]:
        prop, op, value = flt.get("property"), flt.get("op"), flt.get("value")
        if value is None:
            raise NotEnumerable(f"filter without value on {system}")
        if prop == "concept" and op == "is-a":
            return {value} | self._descendants(system, value)
        if prop == "concept" and op == "descendent-of":
            return self._descendants(system, value)
        if prop == "concept" and op == "is-not-a":
            return self.all_codes(system) - ({value} | self._descendants(system, value))
        if op in ("=", "in"):
            wanted = {value} if op == "=" else {v.strip() for v in value.split(",")}
            out = set()
            for concept, _ in self._walk_concepts(self._cs(system)):
                for p in concept.get("property", []):
                    if p.get("code") != prop:
                        continue
                    for key, val in p.items():
                        if key.startswith("value") and str(val).lower() in {
                            w.lower() for w in wanted
                        }:
                            out.add(concept["code"])
            return out
        raise NotEnumerable(f"unsupported filter {prop} {op} {value} on {system}")

    # -- value sets

    def _component(self, comp: dict, trail: tuple[str, ...]) -> dict[str, set[str]]:
        """Codes selected by one compose include/exclude entry, by system."""
        system = comp.get("system")
        result: dict[str, set[str]] | None = None
        if system is not None:
            if "concept" in comp:
                codes = {c["code"] for c in comp["concept"] if "code" in c}
            else:
                codes = self.all_codes(system)  # raises if the system is unavailable
                for flt in comp.get("filter", []):
                    codes &= self._apply_filter(system, flt)
            result = {system: codes}
        for vs_url in comp.get("valueSet", []):
            other = self.expand(vs_url, trail)
            if result is None:
                result = {s: set(c) for s, c in other.items()}
            else:  # several value sets / system + value set: intersection
                result = {s: c & other.get(s, set()) for s, c in result.items()}
        if result is None:
            raise NotEnumerable("compose entry with neither system nor valueSet")
        return result

    def expand(self, url: str, trail: tuple[str, ...] = ()) -> dict[str, set[str]]:
        base = url.split("|", 1)[0]
        cached = self._cache.get(base)
        if isinstance(cached, NotEnumerable):
            raise cached
        if cached is not None:
            return cached
        if base in trail:
            raise NotEnumerable(f"value set {base} includes itself")
        try:
            vs = self.value_sets.get(base)
            if vs is None:
                raise NotEnumerable(f"value set {base} is not in the package")
            compose = vs.get("compose")
            if not compose:
                raise NotEnumerable(f"value set {base} has no compose")
            codes: dict[str, set[str]] = defaultdict(set)
            for comp in compose.get("include", []):
                for system, sel in self._component(comp, trail + (base,)).items():
                    codes[system] |= sel
            for comp in compose.get("exclude", []):
                for system, sel in self._component(comp, trail + (base,)).items():
                    if system in codes:
                        codes[system] -= sel
            result = {s: c for s, c in codes.items() if c}
            if not result:
                raise NotEnumerable(f"value set {base} expands to no codes")
        except NotEnumerable as exc:
            self._cache[base] = exc
            raise
        self._cache[base] = result
        return result


# --------------------------------------------------------------------------- types


def _wire_suffix(type_code: str) -> str:
    return type_code[:1].upper() + type_code[1:]


def _is_complex(type_code: str) -> bool:
    return type_code[:1].isupper()


def extract_types(structure_definitions: list[dict]) -> tuple[dict, list[tuple[str, str, str]]]:
    """Return (types table, [(element path, wire name, value set url)] of required bindings)."""
    types: dict[str, dict] = {}
    bindings: list[tuple[str, str, str]] = []
    for sd in structure_definitions:
        if sd.get("derivation") != "specialization" or sd.get("abstract"):
            continue
        kind = sd.get("kind")
        if kind not in ("resource", "complex-type"):
            continue
        root = sd["type"]
        elements = sd.get("snapshot", {}).get("element", [])
        paths = {e["path"] for e in elements}
        parents = {p.rsplit(".", 1)[0] for p in paths if "." in p}
        table: dict[str, dict[str, dict]] = {
            root: {"kind": "resource" if kind == "resource" else "datatype", "elements": {}}
        }
        for el in elements:
            path = el["path"]
            if "." not in path or "sliceName" in el:
                continue
            owner, name = path.rsplit(".", 1)
            if owner not in table:
                table[owner] = {"kind": "backbone", "elements": {}}
            target = table[owner]["elements"]
            binding = el.get("binding") or {}
            required_vs = binding.get("valueSet") if binding.get("strength") == "required" else None

            if "contentReference" in el:
                ref = el["contentReference"].split("#", 1)[-1]
                if ref in parents:
                    target[name] = [ref]
                continue
            if path in parents:  # inline backbone element
                target[name] = [path]
                continue
            type_codes = [t["code"] for t in el.get("type", []) if "code" in t]
            choice = name.endswith("[x]")
            for code in type_codes:
                if code.startswith("http://hl7.org/fhirpath/"):
                    continue  # System.String ids / urls: primitive, never bound
                if code in BACKBONE_BASES:
                    continue  # Element/BackboneElement without children: nothing to walk
                wire = name[:-3] + _wire_suffix(code) if choice else name
                entry = [code]
                if required_vs and code in BINDABLE_TYPES:
                    entry.append(required_vs)
                    bindings.append((path, wire, required_vs))
                elif not _is_complex(code):
                    continue  # unbound primitive: the checker never looks at it
                target[wire] = entry
        for tname, tdef in table.items():
            if tname in types:
                raise SystemExit(f"duplicate type {tname}")
            types[tname] = tdef
    return types, bindings


# --------------------------------------------------------------------------- output


def render(types: dict, value_sets: dict, tho: dict) -> str:
    """Deterministic JSON: sorted keys, one type / value set per line."""

    def dump(obj) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def block(mapping: dict) -> str:
        return ",\n".join(f"{dump(k)}:{dump(mapping[k])}" for k in sorted(mapping))

    return (
        "{\n"
        f'"format":{FORMAT_VERSION},\n'
        f'"source":{dump({"package": PACKAGE_NAME, "version": PACKAGE_VERSION})},\n'
        f'"codeSystemsFrom":{dump(tho)},\n'
        '"types":{\n' + block(types) + "\n},\n"
        '"valueSets":{\n' + block(value_sets) + "\n}\n"
        "}\n"
    )


def core_terminology(terminology: Terminology, urls: list[str]) -> dict:
    """The enumerable core value sets among *urls* (by canonical URL without version), each with
    its codes by system, and the code systems they draw on: every concept (code and display, in
    definition order) when the package holds the whole system (``complete`` true), else only the
    codes the value sets use."""
    value_sets: dict[str, dict] = {}
    used: dict[str, set[str]] = defaultdict(set)
    for url in urls:
        base = url.split("|", 1)[0]
        try:
            expansion = terminology.expand(base)
        except NotEnumerable:
            continue
        vs = terminology.value_sets[base]
        value_sets[base] = {
            "version": vs.get("version", PACKAGE_VERSION),
            "name": vs.get("name"),
            "title": vs.get("title"),
            "systems": {s: sorted(c) for s, c in sorted(expansion.items())},
        }
        for system, codes in expansion.items():
            used[system] |= codes
    systems: dict[str, dict] = {}
    for system in sorted(used):
        cs = terminology.code_systems.get(system)
        if cs is None:
            continue
        complete = cs.get("content") == "complete"
        concepts = [
            [c["code"], c.get("display")]
            for c, _ in terminology._walk_concepts(cs)
            if "code" in c and (complete or c["code"] in used[system])
        ]
        systems[system] = {"version": cs.get("version", PACKAGE_VERSION), "complete": complete,
                           "concepts": concepts}
    return {"valueSets": value_sets, "codeSystems": systems}


def render_core_terminology(core: dict, tho: dict) -> str:
    def dump(obj) -> str:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def block(mapping: dict) -> str:
        return ",\n".join(f"{dump(k)}:{dump(mapping[k])}" for k in sorted(mapping))

    return (
        "{\n"
        f'"format":{FORMAT_VERSION},\n'
        f'"source":{dump({"package": PACKAGE_NAME, "version": PACKAGE_VERSION})},\n'
        f'"codeSystemsFrom":{dump(tho)},\n'
        '"valueSets":{\n' + block(core["valueSets"]) + "\n},\n"
        '"codeSystems":{\n' + block(core["codeSystems"]) + "\n}\n"
        "}\n"
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(tgz: Path, tho_tgz: Path, output: Path) -> None:
    docs = read_package(tgz)
    types, bindings = extract_types(docs["StructureDefinition"])
    tho_systems = read_tho_code_systems(tho_tgz)
    core_urls = {cs.get("url") for cs in docs["CodeSystem"]}
    clash = [cs["url"] for cs in tho_systems if cs["url"] in core_urls]
    if clash:
        raise SystemExit(f"THO code systems also in the core package: {clash}")
    terminology = Terminology(docs["ValueSet"], docs["CodeSystem"] + tho_systems)
    tho = tho_source(tho_systems)

    value_sets: dict[str, dict] = {}
    for vs_url in sorted({b[2] for b in bindings}):
        try:
            expansion = terminology.expand(vs_url)
        except NotEnumerable as exc:
            value_sets[vs_url] = {"notEnumerable": str(exc)}
        else:
            value_sets[vs_url] = {"systems": {s: sorted(c) for s, c in sorted(expansion.items())}}

    output.parent.mkdir(parents=True, exist_ok=True)
    text = render(types, value_sets, tho)
    json.loads(text)  # sanity check
    _write(output, text.encode("utf-8"))

    # the core value sets the server holds, with displays (fhir_ctms.terminology)
    core = core_terminology(terminology, sorted({b[2] for b in bindings}) + list(EXTRA_CORE_VALUE_SETS))
    core_output = output.parent / CORE_TERMINOLOGY_OUTPUT.name
    _write(core_output, render_core_terminology(core, tho).encode("utf-8"))
    # the official OperationDefinitions of $expand and $validate-code, unchanged
    for name, data in read_members(tgz, OPERATION_DEFINITIONS).items():
        json.loads(data)  # sanity check
        _write(PROFILES_DIR / name, data)

    # ---- summary
    skipped_vs = {u: v["notEnumerable"] for u, v in value_sets.items() if "notEnumerable" in v}
    used_by: dict[str, list[str]] = defaultdict(list)
    for path, wire, url in bindings:
        used_by[url].append(path.rsplit(".", 1)[0] + "." + wire)
    n_bind_skipped = sum(len(used_by[u]) for u in skipped_vs)
    n_codes = sum(len(c) for v in value_sets.values() for c in v.get("systems", {}).values())
    kinds = defaultdict(int)
    for t in types.values():
        kinds[t["kind"]] += 1
    print(f"source: {PACKAGE_NAME}@{PACKAGE_VERSION} ({tgz.name}); from "
          f"{THO_PACKAGE_NAME}@{THO_PACKAGE_VERSION} ({tho_tgz.name}): "
          f"{', '.join(tho['codeSystems'])}")
    print(
        f"types: {kinds['resource']} resources, {kinds['datatype']} complex datatypes, "
        f"{kinds['backbone']} backbone elements"
    )
    print(
        f"required value sets: {len(value_sets)} total, "
        f"{len(value_sets) - len(skipped_vs)} enumerated ({n_codes} codes), "
        f"{len(skipped_vs)} skipped (not enumerable)"
    )
    print(
        f"required element bindings: {len(bindings)} total, "
        f"{len(bindings) - n_bind_skipped} enumerated, {n_bind_skipped} skipped"
    )
    for url in sorted(skipped_vs):
        elems = sorted(set(used_by[url]))
        shown = ", ".join(elems[:4]) + (f", ... (+{len(elems) - 4})" if len(elems) > 4 else "")
        print(f"  skipped {url}: {skipped_vs[url]}  [{shown}]")
    print(f"wrote {output} ({output.stat().st_size:,} bytes)")
    print(f"wrote {core_output} ({len(core['valueSets'])} value sets, "
          f"{len(core['codeSystems'])} code systems)")
    for name in OPERATION_DEFINITIONS:
        print(f"wrote {PROFILES_DIR / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--package-tgz",
        type=Path,
        help=f"use an already-downloaded {PACKAGE_NAME}-{PACKAGE_VERSION}.tgz instead of npm pack",
    )
    parser.add_argument(
        "--tho-package-tgz",
        type=Path,
        help=f"use an already-downloaded {THO_PACKAGE_NAME}-{THO_PACKAGE_VERSION}.tgz "
             f"instead of npm pack",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fhir-core-") as tmp:
        core = args.package_tgz or download_package(Path(tmp))
        tho = args.tho_package_tgz or download_package(Path(tmp), THO_PACKAGE_NAME,
                                                       THO_PACKAGE_VERSION)
        build(core, tho, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
