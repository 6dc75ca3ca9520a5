"""The FHIR REST URL space as one table: a request line (method and path) names an interaction.

The HTTP layer (``fhir_ctms.api.rest``), Bundle entries (``request.method`` +
``request.url``) and the OpenAPI document all read :data:`ROUTES`, so what is
routed, what a Bundle may contain and what is documented cannot drift apart.
A path that matches no shape is a 404; a shape served for other methods only is
a 405 carrying every method it is served for (R5 http.html: ``Allow``).

Operations (R5 operations.html: ``[base]/$name``, ``[base]/[type]/$name``,
``[base]/[type]/[id]/$name``) are routed generically, GET and POST at each level, to the
interaction ``operation``; which operations exist, at which levels and for which methods is
decided by the registry (``fhir_ctms.operations.OPERATIONS``, one OperationDefinition each),
so a new operation needs no route of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from ..errors import BadRequest, MethodNotAllowed, NotFound
from .context import FhirRequest

TYPE, ID, VID = "{type}", "{id}", "{vid}"
#: the compartment's type in a compartment search (``Patient/123/ResearchSubject``)
COMPARTMENT = "{compartment}"
#: an operation's name with its ``$`` (``$reindex``)
OP = "${operation}"  # in a path: /$reindex (distinct from /{type} in the OpenAPI document)


@dataclass(frozen=True, slots=True)
class Route:
    #: literal segments, or the placeholders TYPE, ID and VID
    shape: tuple[str, ...]
    #: method -> interaction (a key of ``fhir_ctms.interactions.table.INTERACTIONS``, or "bundle")
    methods: dict[str, str]
    #: the media types the body may have, by method (no entry: the method takes no body)
    bodies: dict[str, str]

    @property
    def path(self) -> str:
        return "/" + "/".join(self.shape) if self.shape else ""

    def allow(self) -> str:
        methods = set(self.methods) | ({"HEAD"} if "GET" in self.methods else set())
        return ", ".join(sorted(methods))


RESOURCE, PATCH, FORM = "resource", "json-patch", "form"
#: an operation: GET (operations that change nothing) or POST with a Parameters body (or none)
_OPERATION = ({"GET": "operation", "POST": "operation"}, {"POST": RESOURCE})

#: most specific first: a literal segment wins over a placeholder at the same position
ROUTES: tuple[Route, ...] = (
    Route((), {"GET": "search-system", "POST": "bundle"}, {"POST": RESOURCE}),
    Route(("metadata",), {"GET": "capabilities"}, {}),
    Route(("_search",), {"POST": "search-system"}, {"POST": FORM}),
    Route(("_history",), {"GET": "history-system"}, {}),
    Route((TYPE, "_history"), {"GET": "history-type"}, {}),
    Route((TYPE, "_search"), {"POST": "search-type"}, {"POST": FORM}),
    Route((OP,), *_OPERATION),
    Route((TYPE,), {"GET": "search-type", "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete"}, {"POST": RESOURCE, "PUT": RESOURCE, "PATCH": PATCH}),
    Route((TYPE, OP), *_OPERATION),
    Route((TYPE, ID, "_history"), {"GET": "history-instance"}, {}),
    Route((TYPE, ID, OP), *_OPERATION),
    Route((COMPARTMENT, ID, TYPE), {"GET": "search-compartment"}, {}),
    Route((TYPE, ID, "_history", VID), {"GET": "vread"}, {}),
    Route((TYPE, ID), {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"},
          {"PUT": RESOURCE, "PATCH": PATCH}),
)

_BY_LENGTH: dict[int, tuple[Route, ...]] = {}
for _route in ROUTES:
    _BY_LENGTH[len(_route.shape)] = _BY_LENGTH.get(len(_route.shape), ()) + (_route,)

_PLACEHOLDERS = (TYPE, ID, VID, COMPARTMENT, OP)
#: every literal segment of a shape (``metadata``, ``_history``, ``_search``)
_LITERALS = frozenset(seg for r in ROUTES for seg in r.shape if seg not in _PLACEHOLDERS)


@dataclass(slots=True)  # not frozen: built for every request (see FhirRequest)
class Match:
    route: Route
    interaction: str
    type: str | None = None
    id: str | None = None
    vid: str | None = None
    compartment: str | None = None
    operation: str | None = None  #: the operation's name without the ``$``


def _fits(shape: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    for want, got in zip(shape, segments):
        if want == OP:
            if len(got) < 2 or got[0] != "$":
                return False
        elif want in (TYPE, ID, VID, COMPARTMENT):
            if not got:
                return False
        elif want != got:
            return False
    return True


@lru_cache(maxsize=512)
def _shape_of(kinds: tuple[str, ...]) -> tuple[Route, tuple[int, ...]] | None:
    """The first route (most specific first) whose shape a path of these kinds fits, with the
    positions of its TYPE, ID, VID, COMPARTMENT and OP placeholders (-1: absent). A path's
    kinds decide its route, so each combination is matched once and then looked up."""
    example = tuple("$x" if k == "$" else "x" if k == "*" else k for k in kinds)
    for candidate in _BY_LENGTH.get(len(kinds), ()):
        if _fits(candidate.shape, example):
            shape = candidate.shape
            return candidate, tuple(shape.index(p) if p in shape else -1 for p in _PLACEHOLDERS)
    return None


def route(method: str, segments: list[str]) -> Match:
    """The interaction a method and path (split on ``/``, below the base) name; 404 or 405."""
    # each segment's kind, which is all that decides the shapes it fits: the literal it is (or
    # empty), "$" (an operation's name) or "*" (anything else: fits a placeholder)
    found = _shape_of(tuple([s if s in _LITERALS or not s else "$" if s[0] == "$" and len(s) > 1 else "*"
                             for s in segments]))
    if found is None:
        raise NotFound("No such endpoint")
    candidate, (t, i, v, c, o) = found
    interaction = candidate.methods.get("GET" if method == "HEAD" else method)
    if interaction is None:
        raise MethodNotAllowed(f"{method} is not allowed here; allowed: {candidate.allow()}",
                               headers={"Allow": candidate.allow()})
    return Match(candidate, interaction, segments[t] if t >= 0 else None, segments[i] if i >= 0 else None,
                 segments[v] if v >= 0 else None, segments[c] if c >= 0 else None,
                 segments[o][1:] if o >= 0 else None)


_ENTRY_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}


def entry_request(method: str, target: str, base: str, headers: dict[str, str]) -> FhirRequest:
    """A Bundle entry's request line as a FhirRequest (the resource comes from the entry)."""
    if method not in _ENTRY_METHODS:
        raise BadRequest(f"Unsupported request.method {method!r}")
    if target.startswith(base + "/"):
        target = target[len(base) + 1:]
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        raise BadRequest(f"request.url {target!r} is not on this server")
    try:
        found = route(method, [p for p in parts.path.split("/") if p])
    except (NotFound, MethodNotAllowed) as exc:
        raise BadRequest(f"{method} {target}: not an interaction this server supports") from exc
    conditional = found.id is None and found.interaction in ("update", "patch", "delete")
    if found.interaction in ("bundle", "search-system", "operation") or found.route.shape[-1:] == ("_search",) or (
            conditional and not parts.query):
        raise BadRequest(f"{method} {target}: not an interaction this server supports in a Bundle")
    return FhirRequest(method="GET" if method == "HEAD" else method, type=found.type, id=found.id,
                       vid=found.vid, compartment=found.compartment, params=tuple(parse_qsl(parts.query, keep_blank_values=True)),
                       query=parts.query, headers=headers, interaction=found.interaction)
