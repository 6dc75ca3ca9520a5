"""A request line inside a Bundle entry (``request.method`` + ``request.url``) as a FhirRequest.

The HTTP routes in ``fhir_ctms.api`` name their interaction directly; a batch
or transaction entry only has a method and a relative URL, parsed here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..errors import BadRequest
from .context import FhirRequest

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}


def entry_request(method: str, target: str, base: str, headers: dict[str, str]) -> FhirRequest:
    if method not in _METHODS:
        raise BadRequest(f"Unsupported request.method {method!r}")
    if target.startswith(base + "/"):
        target = target[len(base) + 1:]
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        raise BadRequest(f"request.url {target!r} is not on this server")
    segments = [p for p in parts.path.split("/") if p]
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    verb = "GET" if method == "HEAD" else method
    common = dict(method=verb, params=params, query=parts.query, headers=headers)

    def bad() -> BadRequest:
        return BadRequest(f"{method} {target}: not an interaction this server supports in a Bundle")

    match segments:
        case ["metadata"] if verb == "GET":
            return FhirRequest(interaction="capabilities", **common)
        case ["_history"] if verb == "GET":
            return FhirRequest(interaction="history-system", **common)
        case [rtype] if verb == "GET":
            return FhirRequest(interaction="search-type", type=rtype, **common)
        case [rtype] if verb == "POST":
            return FhirRequest(interaction="create", type=rtype, **common)
        case [rtype] if verb in ("PUT", "PATCH", "DELETE") and parts.query:
            name = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[verb]
            return FhirRequest(interaction=name, type=rtype, **common)
        case [rtype, "_history"] if verb == "GET":
            return FhirRequest(interaction="history-type", type=rtype, **common)
        case [rtype, rid] if not rid.startswith("_"):
            name = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(verb)
            if name is None:
                raise bad()
            return FhirRequest(interaction=name, type=rtype, id=rid, **common)
        case [rtype, rid, "_history"] if verb == "GET":
            return FhirRequest(interaction="history-instance", type=rtype, id=rid, **common)
        case [rtype, rid, "_history", vid] if verb == "GET":
            return FhirRequest(interaction="vread", type=rtype, id=rid, vid=vid, **common)
    raise bad()
