"""Token ``:in`` / ``:not-in`` (R5 search.html#modifierin, #modifiernotin): the value sets the
server holds, expanded into the (system, code) pairs a search tests membership in.

The parser leaves the value set's reference in ``Value.text``; :func:`resolve` (called by the
search interaction, and by conditional matching, before any SQL) reads the ValueSet and replaces
the clause's values by one token value per member: ``Value(system, code)``, or ``Value(system)``
(``code`` None) for a whole code system. The SQL (``storage/search_sql.py``) then tests them as
plain token values: ``:in`` matches a resource with a value in the set, ``:not-in`` a resource
with none (the polarity of ``:not``). A clause still holding a reference is refused there.

Which value set: a relative reference ``ValueSet/[id]`` (or this server's absolute URL of one),
else a canonical URL, optionally ``|version``, matched against ``ValueSet.url`` (and
``ValueSet.version``) of the stored, current ValueSets.

Expansion (no terminology server): ``expansion.contains`` when present (nested ``contains``
flattened; a partial expansion, ``total`` above what is listed or an ``offset``, is refused);
else ``compose``: ``include`` with ``concept`` lists, whole-system includes (a ``system`` without
concepts or filters: any code of that system), minus ``exclude`` concept lists or whole systems.
What cannot be expanded exactly here (filters, ``valueSet`` imports, an include without a
system, excluding codes from a whole-system include, no compose and no expansion, more than
:data:`MAX_CODES` codes) is a 400 ``not-supported`` rather than a wrong answer; a value set the
server does not hold is a 400 ``not-found`` (search.html: the server SHALL reject what it cannot
process).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Issue
from .query import Clause, Has, SearchQuery, Value

if TYPE_CHECKING:
    from ..storage.repository import Session

#: at most this many codes in one expansion (each is a condition of the search)
MAX_CODES = 1000


class NotExpandable(Exception):
    """A value set this server cannot expand exactly."""


def _not_supported(why: str) -> BadRequest:
    return BadRequest(why, issues=[Issue("not-supported", why)])


def expand(vs: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """(codes as (system, code), whole systems) of a ValueSet resource; NotExpandable if that
    cannot be done exactly here."""
    expansion = vs.get("expansion")
    if isinstance(expansion, dict) and "contains" in expansion:
        listed: set[tuple[str, str]] = set()
        _flatten(expansion.get("contains") or [], listed)
        total = expansion.get("total")
        if expansion.get("offset") or (isinstance(total, int) and total > len(listed)):
            raise NotExpandable("its expansion is partial (offset, or total above the codes listed)")
        return listed, set()
    compose = vs.get("compose")
    if not isinstance(compose, dict) or not compose.get("include"):
        raise NotExpandable("it has neither an expansion nor a compose")
    codes: set[tuple[str, str]] = set()
    systems: set[str] = set()
    for inc in compose.get("include") or []:
        codes_, system = _part(inc)
        if system is not None:
            systems.add(system)
        codes |= codes_
    for exc in compose.get("exclude") or []:
        codes_, system = _part(exc)
        if system is not None:
            systems.discard(system)
            codes = {c for c in codes if c[0] != system}
        if any(s in systems for s, _ in codes_):
            raise NotExpandable("it excludes codes from a whole code system")
        codes -= codes_
    codes = {c for c in codes if c[0] not in systems}
    return codes, systems


def _flatten(contains: list[Any], out: set[tuple[str, str]]) -> None:
    for item in contains:
        if not isinstance(item, dict):
            continue
        if item.get("system") and item.get("code"):
            out.add((item["system"], item["code"]))
        _flatten(item.get("contains") or [], out)


def _part(part: Any) -> tuple[set[tuple[str, str]], str | None]:
    """A compose include or exclude: (its concepts, or its system if it is the whole system)."""
    if not isinstance(part, dict):
        raise NotExpandable("a compose entry is not an object")
    if part.get("filter"):
        raise NotExpandable("its compose uses filters (a terminology server would be needed)")
    if part.get("valueSet"):
        raise NotExpandable("its compose imports other value sets")
    system = part.get("system")
    if not isinstance(system, str) or not system:
        raise NotExpandable("a compose entry has no system")
    concepts = part.get("concept")
    if not concepts:
        return set(), system
    return {(system, c["code"]) for c in concepts if isinstance(c, dict) and c.get("code")}, None


def values(codes: set[tuple[str, str]], systems: set[str]) -> tuple[Value, ...]:
    """The members as token search values (whole systems first, then codes, sorted)."""
    return tuple([Value("", system=s) for s in sorted(systems)]
                 + [Value("", system=s, code=c) for s, c in sorted(codes)])


# -- resolution against the stored ValueSets ------------------------------------------------------

def _needs(c: Clause | Has) -> bool:
    if isinstance(c, Has):
        return _needs(c.then)
    return c.modifier in ("in", "not-in") or (c.chain is not None and _needs(c.chain))


async def resolve(q: SearchQuery, s: "Session", base: str = "") -> SearchQuery:
    """``q`` with the values of every ``:in``/``:not-in`` clause (chained ones too) replaced by the
    members of its value set (read in ``s``); a 400 when a value set is unknown or cannot be
    expanded exactly."""
    if not any(_needs(c) for c in q.clauses):
        return q
    cache: dict[str, tuple[Value, ...]] = {}
    return replace(q, clauses=tuple([await _clause(c, q.types, s, base, cache) for c in q.clauses]))


async def _clause(c: Clause | Has, types: tuple[str, ...], s: "Session", base: str,
                  cache: dict[str, tuple[Value, ...]]) -> Any:
    if isinstance(c, Has):
        return replace(c, then=await _clause(c.then, (c.source_type,), s, base, cache))
    if c.chain is not None:
        target = (c.target_type,) if c.target_type else ()
        return replace(c, chain=await _clause(c.chain, target, s, base, cache))
    if c.modifier not in ("in", "not-in"):
        return c
    code_only = _on_codes(types, c.param)
    members: dict[Value, None] = {}
    for x in c.values:  # OR-ed value sets: the union of their members
        ref = x.text or ""
        if ref not in cache:
            cache[ref] = await _members(ref, c.param, s, base)
        for m in cache[ref]:
            if code_only and m.code is None:
                raise _not_supported(f"{c.param}:{c.modifier}: {ref!r} includes a whole code system, "
                                     f"which cannot be tested on a code element (indexed without its system)")
            members[Value("", code=m.code) if code_only else m] = None
    if len(members) > MAX_CODES:
        raise _not_supported(f"{c.param}:{c.modifier}: the value sets have more than {MAX_CODES} codes")
    return replace(c, values=tuple(members))


def _on_codes(types: tuple[str, ...], name: str) -> bool:
    """Does the parameter select ``code`` elements only (indexed without a system) on every type?"""
    from .parameters import param
    from .parse import _expression_types

    if not types:
        return False
    for t in types:
        p = param(t, name)
        if p is None or _expression_types(p.expression, p.base) != {"code"}:
            return False
    return True


async def _members(ref: str, name: str, s: "Session", base: str) -> tuple[Value, ...]:
    vs = await _find(ref, s, base)
    if vs is None:
        why = f"{name}: the value set {ref!r} is not known to this server"
        raise BadRequest(why, issues=[Issue("not-found", why)])
    try:
        codes, systems = expand(vs)
    except NotExpandable as exc:
        raise _not_supported(f"{name}: the value set {ref!r} cannot be expanded here: {exc}") from exc
    if len(codes) + len(systems) > MAX_CODES:
        raise _not_supported(f"{name}: the value set {ref!r} has more than {MAX_CODES} codes")
    return values(codes, systems)


async def _find(ref: str, s: "Session", base: str) -> dict[str, Any] | None:
    from ..resources.json import loads
    from .parse import parse

    local = ref[len(base) + 1:] if base and ref.startswith(base + "/") else ref
    if local.startswith("ValueSet/") and local.count("/") == 1:
        st = await s.current("ValueSet", local.split("/", 1)[1])
        return loads(st.content) if st is not None and st.content is not None else None
    url, _, version = ref.partition("|")
    criteria = [("url", url)] + ([("version", version)] if version else [])
    q = parse(("ValueSet",), [(k, v.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|"))
                              for k, v in criteria], strict=True)
    found = [loads(st.content) for st, _ in await s.search(q, limit=3) if st.content is not None]
    if version:
        found = [vs for vs in found if vs.get("version") == version]
    if len(found) > 1:
        why = f"{url!r} names several ValueSets: give the version ({url}|[version])"
        raise BadRequest(why, issues=[Issue("multiple-matches", why)])
    return found[0] if found else None
