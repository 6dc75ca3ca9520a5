"""Check the REQUIRED terminology bindings of a FHIR R5 resource.

``fhir.resources`` validates structure only, so a value such as
``ResearchStudy.status = "bogus"`` passes it.  This module walks a resource
(as a plain JSON ``dict``) using the element tree and the enumerated value sets
that ``scripts/extract_fhir_definitions.py`` extracted from the official
``hl7.fhir.r5.core@5.0.0`` package (and, for ``ResearchSubject.progress.subjectState``, the
code system ``research-subject-state`` from the HL7 Terminology package ``hl7.terminology.r5``)
into ``fhir_ctms/definitions/required-bindings.json`` and reports every coded value that is not in its required value set.

Rules:

* a ``code`` (or ``string``/``uri``) element's value must be one of the value
  set's codes (from any of its systems);
* a ``Coding`` whose ``system`` is one of the value set's systems must have a
  ``code`` in it; a plain ``Coding`` element whose system is missing or is not
  one of the value set's systems is also an issue;
* a ``CodeableConcept`` that has codings needs at least one coding from the
  value set (codings claiming one of the value set's systems with an unknown
  code are reported individually); a CodeableConcept with only ``text`` is fine;
* value sets that cannot be enumerated from the package (languages, MIME types,
  UCUM, external terminologies) are skipped.

Anything malformed (unknown elements, wrong JSON types, unknown resource types)
is ignored -- structural validation is someone else's job; this function never
raises.  The walk uses an explicit stack, so deep nesting cannot exhaust the
Python recursion limit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources as _resources

__all__ = ["BindingIssue", "check_required_bindings"]

_log = logging.getLogger(__name__)

_DEFINITIONS_FILE = "required-bindings.json"
#: Maximum nesting depth (in FHIR elements) that is walked; deeper parts are ignored.
MAX_DEPTH = 1000

# Element kinds.
_PRIMITIVE = 0  # code/string/uri: check the value itself
_COMPLEX = 1  # datatype or backbone: walk into it
_CODING = 2  # Coding: check, then walk into it
_CODEABLE_CONCEPT = 3  # CodeableConcept: check, then walk into it
_RESOURCE = 4  # any resource: the instance's resourceType says which


@dataclass(frozen=True, slots=True)
class BindingIssue:
    """One value that violates a required binding."""

    expression: str  #: FHIRPath-like location, e.g. ``Patient.identifier[0].use``
    message: str


@dataclass(frozen=True, slots=True)
class _ValueSet:
    url: str  # canonical|version, as written in the binding
    codes: frozenset[str]  # union over all systems
    systems: dict[str, frozenset[str]]


class _Definitions:
    """Per-type lookup tables: type name -> {wire name: (kind, child type, value set)}."""

    __slots__ = ("resource_types", "types")

    def __init__(self, raw: dict) -> None:
        value_sets: dict[str, _ValueSet | None] = {}
        for url, vs in raw.get("valueSets", {}).items():
            systems = vs.get("systems")
            if systems is None:  # not enumerable: skip the check
                value_sets[url] = None
                continue
            by_system = {s: frozenset(codes) for s, codes in systems.items()}
            union = frozenset().union(*by_system.values()) if by_system else frozenset()
            value_sets[url] = _ValueSet(url, union, by_system)

        self.types: dict[str, dict[str, tuple[int, str, _ValueSet | None]]] = {}
        self.resource_types: frozenset[str] = frozenset(
            name for name, t in raw.get("types", {}).items() if t.get("kind") == "resource"
        )
        for name, tdef in raw.get("types", {}).items():
            table: dict[str, tuple[int, str, _ValueSet | None]] = {}
            for wire, spec in tdef.get("elements", {}).items():
                child = spec[0]
                vs = value_sets.get(spec[1]) if len(spec) > 1 else None
                if child == "Resource":
                    kind = _RESOURCE
                elif child == "Coding":
                    kind = _CODING
                elif child == "CodeableConcept":
                    kind = _CODEABLE_CONCEPT
                elif child[:1].isupper():
                    kind = _COMPLEX
                else:
                    if vs is None:
                        continue  # unbound or not-enumerable primitive: nothing to do
                    kind = _PRIMITIVE
                table[wire] = (kind, child, vs)
            self.types[name] = table


_definitions: _Definitions | None = None


def _load() -> _Definitions:
    global _definitions
    if _definitions is None:
        ref = _resources.files("fhir_ctms").joinpath("definitions", _DEFINITIONS_FILE)
        _definitions = _Definitions(json.loads(ref.read_text(encoding="utf-8")))
    return _definitions


def _not_in(value: str, vs: _ValueSet) -> str:
    return f"Value '{value}' is not in the required value set {vs.url}"


def _check_coding(coding: dict, path: str, vs: _ValueSet, issues: list[BindingIssue]) -> None:
    code = coding.get("code")
    if not isinstance(code, str):
        return  # nothing coded to check
    system = coding.get("system")
    if not isinstance(system, str):
        issues.append(
            BindingIssue(
                path,
                f"Coding '{code}' has no system; the required value set {vs.url} "
                f"needs one of: {', '.join(sorted(vs.systems))}",
            )
        )
        return
    codes = vs.systems.get(system)
    if codes is None:
        issues.append(
            BindingIssue(
                path, f"Coding system '{system}' is not in the required value set {vs.url}"
            )
        )
    elif code not in codes:
        issues.append(BindingIssue(f"{path}.code", _not_in(code, vs)))


def _check_codeable_concept(
    concept: dict, path: str, vs: _ValueSet, issues: list[BindingIssue]
) -> None:
    codings = concept.get("coding")
    if not isinstance(codings, list) or not codings:
        return  # text-only (or malformed): allowed
    found = False
    bad: list[BindingIssue] = []
    for i, coding in enumerate(codings):
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        codes = vs.systems.get(system) if isinstance(system, str) else None
        if codes is None or not isinstance(code, str):
            continue
        if code in codes:
            found = True
        else:
            bad.append(BindingIssue(f"{path}.coding[{i}].code", _not_in(code, vs)))
    issues.extend(bad)
    if not found and not bad:
        issues.append(
            BindingIssue(path, f"None of the codings are from the required value set {vs.url}")
        )


def _expression(base: str, key: str, index: int | None) -> str:
    return f"{base}.{key}" if index is None else f"{base}.{key}[{index}]"


def _walk(defs: _Definitions, resource: dict, issues: list[BindingIssue]) -> None:
    types = defs.types
    resource_types = defs.resource_types
    root = resource.get("resourceType")
    if not isinstance(root, str) or root not in resource_types:
        return
    # (node, type name, expression of node, depth)
    stack: list[tuple[dict, str, str, int]] = [(resource, root, root, 0)]
    while stack:
        node, type_name, base, depth = stack.pop()
        table = types.get(type_name)
        if not table:
            continue
        children: list[tuple[dict, str, str, int]] = []
        for key, value in node.items():
            spec = table.get(key)  # "_x" siblings / resourceType / unknowns: not in table
            if spec is None:
                continue
            kind, child_type, vs = spec
            # an item's expression is formatted only when needed (an issue, or a child's base)
            for i, item in enumerate(value) if isinstance(value, list) else ((None, value),):
                if kind == _PRIMITIVE:
                    if isinstance(item, str) and item not in vs.codes:  # type: ignore[union-attr]
                        issues.append(
                            BindingIssue(_expression(base, key, i), _not_in(item, vs))  # type: ignore[arg-type]
                        )
                    continue
                if not isinstance(item, dict):
                    continue
                path = _expression(base, key, i)
                if kind == _RESOURCE:
                    rt = item.get("resourceType")
                    if isinstance(rt, str) and rt in resource_types:
                        children.append((item, rt, f"{path}.ofType({rt})", depth + 1))
                    continue
                if vs is not None:
                    if kind == _CODING:
                        _check_coding(item, path, vs, issues)
                    elif kind == _CODEABLE_CONCEPT:
                        _check_codeable_concept(item, path, vs, issues)
                children.append((item, child_type, path, depth + 1))
        if children and depth < MAX_DEPTH:
            children.reverse()  # keep document order when popping
            stack.extend(children)


def check_required_bindings(resource: dict) -> list[BindingIssue]:
    """Return the required-binding violations in *resource* (a FHIR JSON dict).

    An empty list means no violation was found.  Never raises on malformed input.
    """
    issues: list[BindingIssue] = []
    if not isinstance(resource, dict):
        return issues
    defs = _load()  # a missing/broken definitions file is a deployment error: let it raise
    try:
        _walk(defs, resource, issues)
    except Exception:  # noqa: BLE001  # pragma: no cover - defensive: never fail the caller
        _log.exception("required-binding check aborted; returning the issues found so far")
    return issues
