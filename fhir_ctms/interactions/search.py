"""search at type level (R5 http.html#search), GET and POST ``_search``.

This version supports ``_id`` and ``identifier`` (see ``fhir_ctms.search``);
other parameters are ignored and reported in an OperationOutcome entry with
``search.mode = outcome``, or refused with 400 under ``Prefer: handling=strict``.
Pages are keyed on the resource id (``_cursor``), never on an offset.
"""

from __future__ import annotations

import uuid

from ..errors import BadRequest
from ..resources.registry import is_valid_id
from ..search import criteria as search_criteria
from ..storage.repository import Session
from .bundles import bundle, resource_entry, url
from .common import require_type
from .context import Context, FhirRequest, FhirResponse, instant, now_us
from .history import page_size


async def search(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype = require_type(req.type)
    strict = req.prefer("handling") == "strict"
    crit = search_criteria.parse(req.params, strict=strict)
    count = page_size(req, ctx)
    cursor = req.param("_cursor")
    if cursor is not None and not is_valid_id(cursor):
        raise BadRequest(f"_cursor={cursor!r} is not a cursor this server issued")
    rows = await s.find(rtype, crit.ids, crit.tokens, limit=count + 1, after_id=cursor) if count else []
    page, more = rows[:count], len(rows) > count
    kept = list(crit.used) + [("_count", str(count))]
    links = [("self", url(ctx.base, rtype, kept + ([("_cursor", cursor)] if cursor else [])))]
    if cursor:
        links.append(("first", url(ctx.base, rtype, kept)))
    if more:
        links.append(("next", url(ctx.base, rtype, kept + [("_cursor", page[-1].id)])))
    entries = []
    for st in page:
        entry = resource_entry(ctx.base, st)
        entry["search"] = {"mode": "match"}
        entries.append(entry)
    if crit.unknown:
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported",
             "diagnostics": f"Search parameter {name!r} is not supported and was ignored"}
            for name in crit.unknown]}, "search": {"mode": "outcome"}})
    return FhirResponse(200, body=bundle("searchset", entries, links, instant(now_us())))
