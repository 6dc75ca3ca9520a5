"""``$reindex`` (profiles/OperationDefinition-reindex.json): reload the custom search
parameters and rebuild the search index of the resources in scope.

R5 defines no reindex operation; this one follows what the large servers do, synchronously:
HAPI's ``$reindex`` takes ``url`` search URLs (or everything) and a batch size and runs as a
background job; Blaze and Firely rebuild an index after a SearchParameter changes, in batches.
Here:

1. the stored SearchParameter resources with status ``active`` (read by a search, page by page)
   become the custom parameters, with those of ``profiles/`` (``search.parameters.reload``): one
   created, changed or retired through the API takes effect now; one that cannot be used
   (no expression, unknown base...) is reported in ``outcome`` and skipped;
2. the index rows of each current resource in scope are re-extracted and replace the old ones
   (``Session.set_index``), ``batchSize`` resources per write transaction, walked by the search
   keyset (type, id) so that a batch costs the same at any depth. No version is written and no
   Provenance: index rows are not versioned data, and the resource does not change;
3. one AuditEvent records the call (restful-interaction ``operation``, action E).

Scope: instance level, the resource; type level, every current resource of the type; system
level, the matches of the ``url`` parameters, else every resource type that is the base of a
custom parameter after the reload or was before it (so retiring a parameter clears its rows).
The parameter registry is per process: with several worker processes, each needs the call.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..audit import chain, records
from ..errors import BadRequest, Gone, NotFound
from ..interactions.context import Context, FhirRequest, FhirResponse, instant, now_us
from ..interactions.persist import new_id
from ..resources.json import dumps, loads
from ..resources.registry import RESOURCE_TYPES
from ..search import parameters
from ..search.index import index_rows
from ..search.parse import parse
from ..search.query import SearchQuery
from ..storage.repository import Repository, Session, Stored

DEFAULT_BATCH, MAX_BATCH = 500, 5000
_INPUTS = {"url", "batchSize"}
_COMMON = {"Resource", "DomainResource"}


async def reindex(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    unknown = sorted({name for name, _ in params} - _INPUTS)
    if unknown:
        raise BadRequest(f"$reindex: unknown parameter(s) {', '.join(unknown)}")
    batch = _batch_size([v for n, v in params if n == "batchSize"])
    urls = [v for n, v in params if n == "url"]
    if urls and req.type is not None:
        raise BadRequest("$reindex: url is a parameter of the system level only")
    queries = [_query(u) for u in urls]  # checked before anything changes

    before = parameters.custom_bases()
    stored = await _stored_search_parameters(ctx)
    loaded, failed = parameters.reload(stored)
    from ..interactions.capabilities import capability_statement
    capability_statement.cache_clear()  # it lists the search parameters

    if req.id is not None:
        count, batches = await _one(ctx, req.type or "", req.id), 1
    else:
        if req.type is not None:
            queries = [SearchQuery(types=(req.type,))]
        elif not urls:
            types = _types(before | parameters.custom_bases())
            queries = [SearchQuery(types=types)] if types else []
        count = batches = 0
        for q in queries:
            n, b = await _walk(ctx, q, batch)
            count, batches = count + n, batches + b

    path = "/".join(x for x in (req.type, req.id) if x) + ("/" if req.type else "") + "$reindex"
    await _audit(ctx, path, req.type, req.id, len(loaded), count)
    out: list[dict[str, Any]] = [
        {"name": "searchParameters", "valueInteger": _custom_count()},
        {"name": "resources", "valueInteger": count},
        {"name": "batches", "valueInteger": batches},
    ]
    if failed:
        out.append({"name": "outcome", "resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported",
             "diagnostics": f"SearchParameter {url!r} was not loaded: {why}"} for url, why in failed]}})
    return FhirResponse(200, body={"resourceType": "Parameters", "parameter": out})


def _batch_size(values: list[Any]) -> int:
    if not values:
        return DEFAULT_BATCH
    try:
        n = int(values[-1])
    except (TypeError, ValueError):
        n = 0
    if isinstance(values[-1], bool) or not 1 <= n <= MAX_BATCH:
        raise BadRequest(f"$reindex: batchSize must be an integer from 1 to {MAX_BATCH}")
    return n


def _query(url: Any) -> SearchQuery:
    """``Type?criteria`` (a relative search URL) as the query whose matches are reindexed."""
    if not isinstance(url, str):
        raise BadRequest("$reindex: url must be a string")
    parts = urlsplit(url)
    rtype = parts.path.strip("/")
    if parts.scheme or parts.netloc or rtype not in RESOURCE_TYPES:
        raise BadRequest(f"$reindex: url {url!r} is not a relative search URL ([type]?[criteria])")
    criteria = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    q = parse((rtype,), criteria, strict=True)
    if q.includes or q.revincludes or q.sort:
        raise BadRequest(f"$reindex: url {url!r}: only search criteria are allowed")
    return SearchQuery(types=(rtype,), clauses=q.clauses)


def _types(bases: set[str]) -> tuple[str, ...]:
    if bases & _COMMON:
        return tuple(sorted(RESOURCE_TYPES))
    return tuple(sorted(bases & RESOURCE_TYPES))


def _custom_count() -> int:
    return sum(1 for p in parameters.all_params() if p.custom)


async def load_stored(repo: Repository) -> tuple[int, list[tuple[str, str]]]:
    """At startup: the stored active SearchParameters become the custom parameters again (as
    ``$reindex`` left them), so that writes keep their index rows current and searches find
    them after a restart, in every worker process. Returns (parameters loaded, failures)."""
    loaded, failed = parameters.reload(await _stored_search_parameters_of(repo))
    if loaded or failed:
        from ..interactions.capabilities import capability_statement
        capability_statement.cache_clear()
    return len(loaded), failed


async def _stored_search_parameters(ctx: Context) -> list[dict[str, Any]]:
    return await _stored_search_parameters_of(ctx.repo)


async def _stored_search_parameters_of(repo: Repository) -> list[dict[str, Any]]:
    q = parse(("SearchParameter",), [("status", "active")], strict=True)
    out: list[dict[str, Any]] = []
    after = None
    async with repo.session(write=False) as s:
        while True:
            rows = await s.search(q, limit=DEFAULT_BATCH, after=after)
            out += [loads(st.content) for st, _ in rows if st.content is not None]
            if len(rows) < DEFAULT_BATCH:
                return out
            after = rows[-1][1]


async def _reindex_rows(s: Session, st: Stored) -> None:
    await s.set_index(st.type, st.id, index_rows(loads(st.content)) if st.content is not None else [])


async def _one(ctx: Context, rtype: str, rid: str) -> int:
    async with ctx.repo.session(write=True) as s:
        st = await s.current(rtype, rid)
        if st is None:
            raise NotFound(f"{rtype}/{rid} does not exist")
        if st.deleted:
            raise Gone(f"{rtype}/{rid} is deleted")
        await _reindex_rows(s, st)
    return 1


async def _walk(ctx: Context, q: SearchQuery, batch: int) -> tuple[int, int]:
    """Every current match of ``q``, ``batch`` per write transaction; (resources, batches)."""
    count = batches = 0
    after = None
    while True:
        async with ctx.repo.session(write=True) as s:
            unsupported = s.unsupported(q)
            if unsupported:
                name, why = unsupported[0][1]
                raise BadRequest(f"$reindex: search parameter {name!r}: {why} is not supported")
            rows = await s.search(q, limit=batch, after=after)
            for st, _ in rows:
                await _reindex_rows(s, st)
        count += len(rows)
        batches += 1 if rows else 0
        if len(rows) < batch:
            return count, batches
        after = rows[-1][1]


async def _audit(ctx: Context, path: str, rtype: str | None, rid: str | None, loaded: int,
                 count: int) -> None:
    """One AuditEvent for the call (BALP-shaped as the REST ones, ``audit/records.py``): code
    the restful-interaction ``operation``, action E (execute), the resource or the operation as
    entity, the counts as entity details."""
    ts = now_us()
    why = ctx.reason or ctx.settings.default_reason
    record = records.audit_event(f"{rtype}/{rid}" if rid else path, "update", instant(ts), ctx.actor,
                                 why, ctx.settings.source_name)
    record["code"] = {"coding": [{"system": records.RESTFUL_INTERACTION, "code": "operation"}],
                      "text": "$reindex"}
    record["action"] = "E"
    entity = record["entity"][0]
    if not rid:
        entity["what"] = {"display": path}
    entity["detail"] = [{"type": {"text": "searchParameters"}, "valueInteger": loaded},
                        {"type": {"text": "resources"}, "valueInteger": count}]
    rid_ = new_id()
    record = {"resourceType": "AuditEvent", "id": rid_,
              "meta": {"versionId": "1", "lastUpdated": instant(ts)},
              **{k: v for k, v in record.items() if k != "resourceType"}}
    async with ctx.repo.session(write=True) as s:
        await s.put(Stored("AuditEvent", rid_, 1, ts, False, dumps(record).decode(), "POST"), previous=None)
        await chain.append(s, "AuditEvent", rid_, record)
