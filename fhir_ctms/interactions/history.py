"""history at instance, type and system level (R5 http.html#history).

A Bundle of type ``history``, newest first, paged by a keyset cursor on the
version sequence (``_cursor``) so deep pages cost the same as the first;
``_count``, ``_since`` (versions written at or after an instant) and ``_at``
(versions current at some time in the given date's range) are supported.
"""

from __future__ import annotations

from ..errors import BadRequest, NotFound
from ..resources.dates import date_range
from ..storage.repository import HistoryQuery, Session
from .bundles import bundle, history_entry, url
from .common import require_id, require_type
from .context import Context, FhirRequest, FhirResponse, instant, now_us


_MAX_SEQ = 2**63 - 1


def _once(req: FhirRequest, name: str) -> str | None:
    """A history parameter, which the spec says SHALL NOT appear more than once."""
    values = [v for k, v in req.params if k == name]
    if len(values) > 1:
        raise BadRequest(f"{name} may appear only once")
    return values[0] if values else None


def page_size(req: FhirRequest, ctx: Context) -> int:
    raw = req.param("_count")
    if raw is None:
        return ctx.settings.default_page_size
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"_count={raw!r} is not a non-negative integer")
    return min(int(raw), ctx.settings.max_page_size)


async def history(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype = require_type(req.type) if req.type is not None else None
    rid = require_id(req.id) if req.id is not None else None
    if rtype is not None and rid is not None and await s.current(rtype, rid) is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    count = page_size(req, ctx)
    since, at, cursor = _once(req, "_since"), _once(req, "_at"), _once(req, "_cursor")
    _once(req, "_count")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and int(cursor) <= _MAX_SEQ):
        raise BadRequest(f"_cursor={cursor!r} is not a cursor this server issued")
    query = HistoryQuery(type=rtype, id=rid, since_us=date_range(since)[0] if since else None,
                         at=date_range(at) if at else None,
                         before_seq=int(cursor) if cursor else None, count=count + 1)
    rows = await s.history(query) if count else []
    page, more = rows[:count], len(rows) > count
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    kept = [(k, v) for k, v in req.params if k in ("_count", "_since", "_at")]
    links = [("self", url(ctx.base, path, kept + ([("_cursor", cursor)] if cursor else [])))]
    if more:
        links.append(("next", url(ctx.base, path, kept + [("_cursor", str(page[-1].seq))])))
    if cursor:
        links.append(("first", url(ctx.base, path, kept)))
    entries = [history_entry(ctx.base, st) for st in page]
    return FhirResponse(200, body=bundle("history", entries, links, instant(now_us())))
