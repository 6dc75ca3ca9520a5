"""read and vread (R5 http.html#read, #vread), with conditional read (If-None-Match, If-Modified-Since).

The stored JSON text is returned as it is: no model is built on the read path.
"""

from __future__ import annotations

from ..errors import Gone, NotFound
from ..resources.dates import parse_http_date
from ..storage.repository import Session
from .common import etag_versions, names, require_id, require_type
from .context import Context, FhirRequest, FhirResponse, etag


async def read(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype, rid = require_type(req.type), require_id(req.id)
    cur = await s.current(rtype, rid)
    if cur is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if cur.deleted:
        raise Gone(f"{rtype}/{rid} was deleted", headers={"ETag": etag(cur.version)})
    inm = etag_versions(req.header("if-none-match"))
    if inm is not None and names(inm, cur):
        return FhirResponse(304, stored=cur)
    ims = req.header("if-modified-since")
    if ims is not None and inm is None:
        since = parse_http_date(ims)
        # HTTP dates have whole seconds: compare at that precision
        if since is not None and cur.ts_us // 1_000_000 <= since // 1_000_000:
            return FhirResponse(304, stored=cur)
    return FhirResponse(200, raw=cur.content, stored=cur)


async def vread(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    rtype, rid = require_type(req.type), require_id(req.id)
    if req.vid is None or not (req.vid.isascii() and req.vid.isdigit()) or len(req.vid) > 9:
        raise NotFound(f"{rtype}/{rid} has no version {req.vid!r}")
    found = await s.version(rtype, rid, int(req.vid))
    if found is None:
        raise NotFound(f"{rtype}/{rid} has no version {req.vid}")
    if found.deleted:
        raise Gone(f"Version {req.vid} of {rtype}/{rid} is a deletion", headers={"ETag": etag(found.version)})
    return FhirResponse(200, raw=found.content, stored=found)
