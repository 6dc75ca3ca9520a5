"""search (R5 http.html#search, search.html): type level, GET and POST ``_search``.

The parameters are parsed into a plain :class:`SearchQuery` (``search.parse``), the
storage answers one page of it, and the Bundle (type ``searchset``) carries:

- the matches (``search.mode = match``), then what ``_include``/``_revinclude`` add
  (``include``; ``:iterate`` repeats them on what they added, up to :data:`MAX_ITERATE`);
- ``total`` when ``_total`` asks for it, or when the first page is the whole result
  (then it costs nothing);
- links ``self`` (the parameters actually used), ``first``, ``previous`` and ``next``; pages are
  a keyset cursor (``_cursor``: the first or last row's sort keys, and a direction), never an
  offset, so page 1,000 costs what page 1 does and concurrent writes shift no page;
- an OperationOutcome entry (``search.mode = outcome``) naming every parameter ignored
  (unknown, or not supported); ``Prefer: handling=strict`` makes those a 400 instead.

``_summary=count`` answers the total only; ``_summary=true|text|data`` and ``_elements`` trim
the matches (``resources/summary.py``) and tag them SUBSETTED (search.html#summary, #elements).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import replace
from typing import Any

import orjson

from ..errors import BadRequest, NotFound
from ..resources.json import loads
from ..resources.registry import is_valid_id
from ..resources.summary import subset, summary_keys, text_keys
from ..search.parse import format_query, parse
from ..search.query import Include, SearchQuery
from ..search.valuesets import resolve as resolve_value_sets
from ..storage.repository import Session, Stored
from .bundles import bundle, resource_entry
from .common import require_type
from .context import Context, FhirRequest, FhirResponse, instant, now_us

#: how many rounds of ``:iterate`` includes at most
MAX_ITERATE = 4
#: parameters the HTTP layer or this module handles, not the query
_TRANSPORT = ("_format", "_pretty", "_cursor")
#: elements every resource keeps under _elements (search.html#elements: besides the mandatory ones)
_KEEP = {"resourceType", "id", "meta", "implicitRules", "modifierExtension"}


def query_of(req: FhirRequest, ctx: Context, types: tuple[str, ...], *, strict: bool,
             compartment: tuple[str, str] | None = None) -> SearchQuery:
    given = [(k, v) for k, v in req.params if k not in _TRANSPORT]
    return parse(types, given, strict=strict, compartment=compartment, max_count=ctx.settings.max_page_size)


async def search(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    """Type level: ``GET [type]?...``, ``POST [type]/_search``."""
    rtype = require_type(req.type)
    return await _search(req, ctx, s, (rtype,), rtype)


async def search_system(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    """System level: ``GET [base]?...`` over every type, or those ``_type`` names."""
    return await _search(req, ctx, s, (), "")


async def search_compartment(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    """Compartment search (compartmentdefinition.html): ``GET [compartment]/[id]/[type]?...``,
    the resources of ``type`` that the compartment's definition links to that resource."""
    rtype, ctype = require_type(req.type), require_type(req.compartment)
    if not is_valid_id(req.id):
        raise NotFound(f"Invalid resource id {req.id!r}")
    return await _search(req, ctx, s, (rtype,), f"{ctype}/{req.id}/{rtype}", compartment=(ctype, req.id or ""))


async def _search(req: FhirRequest, ctx: Context, s: Session, types: tuple[str, ...], path: str,
                  compartment: tuple[str, str] | None = None) -> FhirResponse:
    strict = req.prefer("handling") == "strict"
    q = query_of(req, ctx, types, strict=strict, compartment=compartment)
    q = await resolve_value_sets(q, s, ctx.base)  # :in/:not-in: the value sets' members
    q, dropped = _without_unsupported(q, s, strict)
    count = q.count if q.count is not None else ctx.settings.default_page_size
    direction, at = _cursor(req.param("_cursor"))
    if at is not None and len(at) != len(q.sort) + 2:  # the sort keys, then type and id
        raise BadRequest("_cursor does not belong to this search (its sort changed)")

    total: int | None = None
    entries: list[dict[str, Any]] = []
    rows: list[tuple[Stored, tuple[Any, ...]]] = []
    earlier = later = False
    if q.summary == "count" or count == 0:  # search.html#count: _count=0 is _summary=count
        total = await s.count(q)
    else:
        if direction == "b":  # a previous page: the rows before the cursor, nearest first
            rows = await s.search(q, limit=count + 1, after=at, backwards=True)
            earlier, later = len(rows) > count, True
            rows = rows[:count][::-1]
        else:
            rows = await s.search(q, limit=count + 1, after=at)
            earlier, later = at is not None, len(rows) > count
            rows = rows[:count]
        page = [st for st, _ in rows]
        if q.total in ("accurate", "estimate"):
            total = await s.count(q)
        elif at is None and not later:
            total = len(page)  # the whole result is on this page: exact and free
        entries = [_match(ctx.base, st, q) for st in page]
        entries += [_included(ctx.base, st) for st in await _includes(s, q, page)]

    kept = format_query(q, [] if q.count is not None else [("_count", str(count))])
    links = [("self", _link(ctx.base, path, kept, req.param("_cursor")))]
    if at is not None:
        links.append(("first", _link(ctx.base, path, kept, None)))
    if earlier and rows:
        links.append(("previous", _link(ctx.base, path, kept, _encode("b", rows[0][1]))))
    if later and rows:
        links.append(("next", _link(ctx.base, path, kept, _encode("a", rows[-1][1]))))
    ignored = list(q.ignored) + dropped
    if ignored:
        entries.append(_outcome(ignored))
    body = bundle("searchset", entries, links, instant(now_us()))
    if total is not None:
        body = {**body, "total": total}
    return FhirResponse(200, body=body)


def _without_unsupported(q: SearchQuery, s: Session, strict: bool) -> tuple[SearchQuery, list[tuple[str, str]]]:
    bad = s.unsupported(q)
    if not bad:
        return q, []
    if strict:
        name, why = bad[0][1]
        raise BadRequest(f"Search parameter {name!r}: {why} is not supported")
    skip = {n for n, _ in bad}
    clauses = tuple(c for n, c in enumerate(q.clauses) if n not in skip)
    # q.used lists the clauses in order (and _type): what is not searched leaves the self link
    used, n = [], 0
    for name, value in q.used:
        if name == "_type":
            used.append((name, value))
            continue
        if n not in skip:
            used.append((name, value))
        n += 1
    return replace(q, clauses=clauses, used=tuple(used)), [entry for _, entry in bad]


def _link(base: str, path: str, query: str, cursor: str | None) -> str:
    if cursor:
        query = f"{query}&_cursor={cursor}" if query else f"_cursor={cursor}"
    target = f"{base}/{path}" if path else base
    return f"{target}?{query}" if query else target


def _encode(direction: str, keys: tuple[Any, ...]) -> str:
    """A page cursor: "a" (the rows after these sort keys) or "b" (before them), and the keys."""
    return base64.urlsafe_b64encode(orjson.dumps([direction, *keys])).decode().rstrip("=")


def _cursor(raw: str | None) -> tuple[str | None, list[Any] | None]:
    if raw is None:
        return None, None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise BadRequest(f"_cursor={raw!r} is not a cursor this server issued") from exc
    if (not isinstance(value, list) or len(value) < 3 or value[0] not in ("a", "b")
            or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in value[1:])):
        raise BadRequest(f"_cursor={raw!r} is not a cursor this server issued")
    return value[0], value[1:]


def _match(base: str, st: Stored, q: SearchQuery) -> dict[str, Any]:
    entry = resource_entry(base, st)
    if (q.elements or q.summary in ("true", "text", "data")) and st.content is not None:
        entry["resource"] = _trim(loads(st.content), q)
    entry["search"] = {"mode": "match"}
    return entry


def _trim(resource: dict[str, Any], q: SearchQuery) -> dict[str, Any]:
    """search.html#summary and #elements: a subset of the resource, tagged SUBSETTED."""
    rtype = resource["resourceType"]
    if q.summary == "data":
        keys: frozenset[str] | set[str] = set(resource) - {"text", "_text"}
    elif q.summary == "true":
        keys = summary_keys(rtype)
    elif q.summary == "text":
        keys = text_keys(rtype)
    else:  # _elements: those asked for, and the mandatory and modifier elements (a SHOULD)
        keys = (text_keys(rtype) - {"text", "_text"}) | _KEEP | set(q.elements) | {f"_{e}" for e in q.elements}
    return subset(resource, keys)


def _included(base: str, st: Stored) -> dict[str, Any]:
    entry = resource_entry(base, st)
    entry["search"] = {"mode": "include"}
    return entry


async def _includes(s: Session, q: SearchQuery, page: list[Stored]) -> list[Stored]:
    """What _include and _revinclude add to the page (each resource once, matches excluded)."""
    if not page or not (q.includes or q.revincludes):
        return []
    seen = {(st.type, st.id) for st in page}
    out: list[Stored] = []
    frontier = [(st.type, st.id) for st in page]
    rules: list[Include] = [*q.includes, *q.revincludes]
    for round_ in range(MAX_ITERATE + 1):
        added: list[tuple[str, str]] = []
        for inc in rules:
            if round_ and not inc.iterate:
                continue
            for st in await s.include(inc, frontier):
                if (st.type, st.id) not in seen:
                    seen.add((st.type, st.id))
                    out.append(st)
                    added.append((st.type, st.id))
        if not added or not any(inc.iterate for inc in rules):
            break
        frontier = added
    return out


def _outcome(ignored: list[tuple[str, str]]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "warning", "code": "not-supported",
                 "diagnostics": f"Search parameter {name!r} was ignored: {why}"} for name, why in ignored]},
            "search": {"mode": "outcome"}}
