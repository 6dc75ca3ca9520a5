"""The terminology the server holds in files: the CTMS code systems and value sets of
``terminology/`` (profiles/README.md, "Terminology") and the R5 core value sets extracted from
``hl7.fhir.r5.core`` 5.0.0 into ``fhir_ctms/definitions/core-terminology.json`` (those of the
required bindings, plus ``research-study-status`` and ``research-subject-milestone``; the code
systems ``research-subject-state`` and ``research-subject-milestone`` come from the HL7
Terminology package ``hl7.terminology.r5``; ``scripts/extract_fhir_definitions.py``).

- :func:`codes` -- the (system, code) pairs of a value set held here (``url`` or
  ``url|version``), None when the server holds no such value set (the profile validator checks
  required bindings with it);
- :func:`display` -- the display of a code of a code system held here;
- :func:`value_set`, :func:`code_system` -- what is held, with the concepts in order (``$expand``,
  ``$validate-code``);
- :func:`concepts` -- the members of any ValueSet resource (one stored through the API too) whose
  compose lists concepts or includes whole code systems held here; membership follows
  ``search.valuesets.expand`` (the ``:in`` modifier's reading of a ValueSet), so an expansion and a
  search agree.

Where: ``FHIR_CTMS_TERMINOLOGY_DIR`` if set, else ``terminology/`` at the repository root (the
same arrangement as ``profiles/``, see ``resources/profiles.py``). Everything is read once per
process (:func:`reload` forgets it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources as _resources
from pathlib import Path
from typing import Any

__all__ = [
    "CannotExpand", "CodeSystemDef", "Concept", "ValueSetDef", "code_system", "codes",
    "all_value_sets", "concepts", "display", "file_resources", "reload", "terminology_dir",
    "value_set",
]

_log = logging.getLogger(__name__)

ENV = "FHIR_CTMS_TERMINOLOGY_DIR"
#: the repository's ``terminology/`` (this file is fhir_ctms/terminology/__init__.py)
DEFAULT = Path(__file__).resolve().parents[2] / "terminology"
_CORE_FILE = "core-terminology.json"
#: at most this many codes in one expansion
MAX_CODES = 10_000


def terminology_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT)


@dataclass(frozen=True, slots=True)
class Concept:
    system: str
    code: str
    display: str | None = None
    version: str | None = None  #: the code system's version, when known


@dataclass(frozen=True, slots=True)
class CodeSystemDef:
    url: str
    version: str | None
    #: code -> (display, definition), in definition order (nested concepts flattened)
    concepts: dict[str, tuple[str | None, str | None]]
    #: all its codes are here (``content`` complete)
    complete: bool
    case_sensitive: bool = True

    def lookup(self, code: str) -> str | None:
        """The code as held (case-insensitively when the system is not case sensitive)."""
        if code in self.concepts:
            return code
        if not self.case_sensitive:
            low = code.lower()
            return next((c for c in self.concepts if c.lower() == low), None)
        return None


@dataclass(frozen=True, slots=True)
class ValueSetDef:
    url: str
    version: str | None
    name: str | None
    title: str | None
    #: its members, in order
    concepts: tuple[Concept, ...]
    #: the file's ValueSet resource (None for a core value set, held as its codes only)
    resource: dict[str, Any] | None = None

    def codes(self) -> frozenset[tuple[str, str]]:
        return frozenset((c.system, c.code) for c in self.concepts)


class CannotExpand(Exception):
    """A value set this server cannot expand. ``code`` is the OperationOutcome issue code:
    ``not-supported`` (filters, imports, a code system not held), ``too-costly`` (too many codes)."""

    def __init__(self, why: str, code: str = "not-supported") -> None:
        super().__init__(why)
        self.code = code


# -- loading ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Held:
    systems: dict[str, CodeSystemDef]
    value_sets: dict[str, ValueSetDef]
    files: tuple[dict[str, Any], ...]


def _flatten(items: list[Any], out: dict[str, tuple[str | None, str | None]]) -> None:
    for c in items:
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            out.setdefault(c["code"], (c.get("display"), c.get("definition")))
            _flatten(c.get("concept") or [], out)


def _read_files(where: Path) -> list[dict[str, Any]]:
    if not where.is_dir():
        return []
    out = []
    for path in sorted(where.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("resourceType") not in ("CodeSystem", "ValueSet"):
            raise ValueError(f"{path}: not a CodeSystem or ValueSet")
        out.append(data)
    return out


@cache
def _held() -> _Held:
    files = tuple(_read_files(terminology_dir()))
    systems: dict[str, CodeSystemDef] = {}
    for cs in files:
        if cs["resourceType"] == "CodeSystem":
            table: dict[str, tuple[str | None, str | None]] = {}
            _flatten(cs.get("concept") or [], table)
            systems[cs["url"]] = CodeSystemDef(cs["url"], cs.get("version"), table,
                                               cs.get("content") == "complete",
                                               bool(cs.get("caseSensitive", True)))
    raw = json.loads(_resources.files("fhir_ctms").joinpath("definitions", _CORE_FILE)
                     .read_text(encoding="utf-8"))
    for url, cs in raw["codeSystems"].items():
        if url not in systems:
            systems[url] = CodeSystemDef(url, cs.get("version"),
                                         {code: (disp, None) for code, disp in cs["concepts"]},
                                         bool(cs.get("complete")))
    value_sets: dict[str, ValueSetDef] = {}
    for url, vs in raw["valueSets"].items():
        members: list[Concept] = []
        for system, codes_ in vs["systems"].items():
            held = systems.get(system)
            order = {c: i for i, c in enumerate(held.concepts)} if held else {}
            for code in sorted(codes_, key=lambda c: (order.get(c, len(order)), c)):
                members.append(Concept(system, code, held.concepts.get(code, (None, None))[0]
                                       if held else None, held.version if held else None))
        value_sets[url] = ValueSetDef(url, vs.get("version"), vs.get("name"), vs.get("title"),
                                      tuple(members))
    held = _Held(systems, value_sets, files)
    for vs in files:  # the files' value sets, expanded over what is held (files win over core)
        if vs["resourceType"] == "ValueSet":
            try:
                members_ = _expand(vs, systems)
            except CannotExpand as exc:
                raise ValueError(f"terminology/ValueSet-{vs.get('id')}.json: {exc}") from exc
            value_sets[vs["url"]] = ValueSetDef(vs["url"], vs.get("version"), vs.get("name"),
                                                vs.get("title"), members_, vs)
    return held


def reload() -> None:
    """Forget what was read (tests point ``FHIR_CTMS_TERMINOLOGY_DIR`` elsewhere)."""
    _held.cache_clear()


# -- expansion -------------------------------------------------------------------------------------

def _expand(vs: dict[str, Any], systems: dict[str, CodeSystemDef]) -> tuple[Concept, ...]:
    from ..search.valuesets import NotExpandable, expand

    try:
        pairs, whole = expand(vs)
    except NotExpandable as exc:
        raise CannotExpand(f"it cannot be expanded here: {exc}") from exc
    for s in sorted(whole):
        held = systems.get(s)
        if held is None:
            raise CannotExpand(f"it includes the code system {s}, which this server does not hold")
        if not held.complete:
            raise CannotExpand(f"it includes the whole code system {s}, of which this server "
                               f"holds only part")
    size = len(pairs) + sum(len(systems[s].concepts) for s in whole)
    if size > MAX_CODES:
        raise CannotExpand(f"it has more than {MAX_CODES} codes", "too-costly")
    # order: systems as the compose (or expansion) first names them; a whole system in its
    # definition order, listed codes as listed
    order: dict[tuple[str, str], int] = {}
    rank: dict[str, int] = {}

    def note(items: list[Any]) -> None:
        for item in items:
            if not isinstance(item, dict):
                continue
            s = item.get("system")
            if isinstance(s, str):
                rank.setdefault(s, len(rank))
                for c in item.get("concept") or []:
                    if isinstance(c, dict) and isinstance(c.get("code"), str):
                        order.setdefault((s, c["code"]), len(order))
                if isinstance(item.get("code"), str):
                    order.setdefault((s, item["code"]), len(order))
            note(item.get("contains") or [])

    expansion = vs.get("expansion")
    if isinstance(expansion, dict) and "contains" in expansion:
        note(expansion.get("contains") or [])
    else:
        note((vs.get("compose") or {}).get("include") or [])
    listed_display = _listed_displays(vs)
    out: list[Concept] = []
    for s, code in sorted(pairs, key=lambda p: (rank.get(p[0], len(rank)),
                                                order.get(p, len(order)), p)):
        held = systems.get(s)
        disp = held.concepts.get(code, (None, None))[0] if held else None
        out.append(Concept(s, code, disp or listed_display.get((s, code)),
                           held.version if held else None))
    for s in sorted(whole, key=lambda x: (rank.get(x, len(rank)), x)):
        held = systems[s]
        out.extend(Concept(s, code, d, held.version) for code, (d, _) in held.concepts.items())
    # a whole system and listed codes of it: each code once
    seen: set[tuple[str, str]] = set()
    unique = []
    for c in out:
        if (c.system, c.code) not in seen:
            seen.add((c.system, c.code))
            unique.append(c)
    return tuple(unique)


def _listed_displays(vs: dict[str, Any]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}

    def walk(items: list[Any], system_key: bool) -> None:
        for item in items:
            if not isinstance(item, dict):
                continue
            s = item.get("system")
            if system_key and isinstance(s, str):
                for c in item.get("concept") or []:
                    if isinstance(c, dict) and c.get("code") and c.get("display"):
                        out[(s, c["code"])] = c["display"]
            if isinstance(s, str) and item.get("code") and item.get("display"):
                out[(s, item["code"])] = item["display"]
            walk(item.get("contains") or [], False)

    walk((vs.get("compose") or {}).get("include") or [], True)
    expansion = vs.get("expansion")
    if isinstance(expansion, dict):
        walk(expansion.get("contains") or [], False)
    return out


def concepts(vs: dict[str, Any]) -> tuple[Concept, ...]:
    """The members of a ValueSet resource, in order, with displays (the held code system's,
    else the one the value set lists); :class:`CannotExpand` when that cannot be done here."""
    return _expand(vs, _held().systems)


# -- look-ups --------------------------------------------------------------------------------------

def value_set(url: str, version: str | None = None) -> ValueSetDef | None:
    """The value set held under a canonical URL (``url|version`` accepted), if any."""
    if version is None and "|" in url:
        url, _, version = url.partition("|")
    vs = _held().value_sets.get(url)
    if vs is None or (version and vs.version != version):
        return None
    return vs


def code_system(url: str, version: str | None = None) -> CodeSystemDef | None:
    if version is None and "|" in url:
        url, _, version = url.partition("|")
    cs = _held().systems.get(url)
    if cs is None or (version and cs.version and cs.version != version):
        return None
    return cs


def codes(url: str) -> frozenset[tuple[str, str]] | None:
    """The (system, code) pairs of the value set ``url`` (``url|version`` accepted) that the
    server holds in files; None when it holds no such value set."""
    vs = value_set(url)
    return None if vs is None else vs.codes()


def display(system: str, code: str) -> str | None:
    """The display of ``code`` in the code system ``system``, if the server holds it."""
    cs = _held().systems.get(system)
    if cs is None:
        return None
    entry = cs.concepts.get(code)
    return entry[0] if entry else None


def file_resources() -> tuple[dict[str, Any], ...]:
    """The CodeSystem and ValueSet resources of ``terminology/`` (sorted by file name)."""
    return _held().files


def all_value_sets() -> dict[str, ValueSetDef]:
    return dict(_held().value_sets)
