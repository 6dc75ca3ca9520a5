"""HTTP <-> interaction values on plain ASGI: the request line and headers in, the response out.

Nothing here knows FHIR semantics: it reads what an interaction needs from the
ASGI scope (method, path segments, query parameters, the headers interactions
read, the client address, the base URL), enforces the body size limit, and
turns a :class:`FhirResponse` into status, headers and bytes (ETag,
Last-Modified, Location, ``Prefer: return``, ``_pretty``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl


from ..audit.records import Actor, x_provenance
from ..auth.tokens import AccessGrant
from ..config import Settings
from ..errors import BadRequest, PayloadTooLarge
from ..interactions.context import Context, FhirRequest, FhirResponse, etag, http_date
from ..interactions.router import Match
from ..interactions.table import INTERACTIONS
from ..resources.json import dumps, dumps_pretty, loads
from ..storage.repository import Repository
from .negotiation import CSV, FHIR_JSON

Receive = Callable[[], Awaitable[dict[str, Any]]]

_WRITES = {name for name, spec in INTERACTIONS.items() if spec.writes}


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


@dataclass(slots=True)
class Incoming:
    method: str
    #: the path below the FHIR base, split on "/" (empty segments dropped)
    segments: list[str]
    query: str
    params: tuple[tuple[str, str], ...]
    #: lower-case names; a repeated header's values joined with ", " (RFC 9110 5.3)
    headers: dict[str, str]
    client: str | None
    base: str

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def incoming(scope: dict[str, Any], prefix: str, settings: Settings) -> Incoming:
    raw = scope["headers"]
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
    if len(headers) < len(raw):  # a repeated header: its values joined, in order
        headers = {}
        for raw_name, raw_value in raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    return Incoming(
        method=scope["method"],
        segments=[p for p in scope["path"][len(prefix):].split("/") if p],
        query=query,
        params=tuple(parse_qsl(query, keep_blank_values=True)) if query else (),
        headers=headers,
        client=client[0] if client else None,
        base=_base_url(scope, headers, prefix, settings),
    )


def _base_url(scope: dict[str, Any], headers: dict[str, str], prefix: str, settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = headers.get("host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    return _joined(scope.get("scheme", "http"), host, scope.get("root_path", ""), prefix)


@lru_cache(maxsize=256)  # a server sees few hosts: one string for all the requests to each
def _joined(scheme: str, host: str, root_path: str, prefix: str) -> str:
    return f"{scheme}://{host}{root_path}{prefix}"


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    length = headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def form_params(body: bytes) -> tuple[tuple[str, str], ...]:
    """An ``application/x-www-form-urlencoded`` body as parameters (POST [type]/_search)."""
    try:
        return tuple(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise BadRequest("The form body is not UTF-8") from exc


def context(inc: Incoming, repo: Repository, settings: Settings, grant: AccessGrant | None = None) -> Context:
    reason = inc.headers.get("x-reason")
    if reason is not None and len(reason) > 1024:
        raise BadRequest("X-Reason is limited to 1024 characters")
    activity = None
    if inc.headers.get("x-provenance") is not None:
        # R5 provenance.html: the client's Provenance of a write; its reason (authorization) and
        # activity go into the Provenance the server writes (X-Reason, when given, wins)
        given, activity = x_provenance(inc.headers["x-provenance"])
        reason = reason or given
    return Context(repo=repo, settings=settings, base=inc.base, actor=actor(inc, grant),
                   reason=reason or None, activity=activity, access=grant)


def actor(inc: Incoming, grant: AccessGrant | None) -> Actor:
    """Who acts: the token's user (``fhirUser`` as a reference relative to this server when it is
    on it, the token's subject as display) and client, from the network address; anonymous
    without a token. A backend service (no user) is its client."""
    if grant is None:
        return _anonymous(inc.client)
    reference = grant.fhir_user
    if reference and reference.startswith(inc.base + "/"):
        reference = reference[len(inc.base) + 1:]
    return Actor(display=grant.subject or grant.client_id, reference=reference or None, address=inc.client,
                 client=grant.client_id or None, roles=tuple(grant.roles))


@lru_cache(maxsize=1024)  # an Actor is immutable: one per client address, not one per request
def _anonymous(address: str | None) -> Actor:
    return Actor(address=address)


def fhir_request(inc: Incoming, match: Match, body: bytes = b"",
                 params: tuple[tuple[str, str], ...] | None = None) -> FhirRequest:
    return FhirRequest(method="GET" if inc.method == "HEAD" else inc.method, type=match.type, id=match.id,
                       vid=match.vid, compartment=match.compartment, params=inc.params if params is None else params, query=inc.query,
                       headers=inc.headers, body=body, interaction=match.interaction, operation=match.operation)


@dataclass(slots=True)
class Outgoing:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def outgoing(status: int, headers: dict[str, str], body: bytes | None, media: str | None,
             raw: list[tuple[bytes, bytes]] | None = None) -> Outgoing:
    """The response: ``headers`` encoded after ``raw`` (headers given encoded already)."""
    raw = raw or []
    for k, v in headers.items():
        raw.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    if body is not None and media is not None:
        raw.append((b"content-type", _content_type(media)))
    if status not in (204, 304):  # RFC 9110 8.6: neither carries a body, nor its length
        raw.append((b"content-length", b"%d" % len(body or b"")))
    return Outgoing(status, raw, body or b"")


@lru_cache(maxsize=16)
def _content_type(media: str) -> bytes:
    return f"{media}; charset=utf-8".encode("latin-1")


@lru_cache(maxsize=4096)  # reads see the same seconds again and again
def _last_modified(ts_s: int) -> bytes:
    return http_date(ts_s * 1_000_000).encode("latin-1")


def _serialise(value: object, pretty: bool) -> bytes:
    if pretty:
        return dumps_pretty(loads(dumps(value)))
    return dumps(value)


def render(inc: Incoming, req: FhirRequest, res: FhirResponse, media: str) -> Outgoing:
    """An interaction's result as an HTTP response: headers, Prefer, _format and _pretty."""
    headers = res.headers
    if headers:
        given = headers.get("Content-Type", "")
        if given.startswith(CSV):  # an operation's CSV form, as it is
            return outgoing(res.status, {k: v for k, v in headers.items() if k != "Content-Type"},
                            (res.raw or "").encode(), CSV)
        if given == "application/json":  # an operation's non-FHIR JSON ($registry-export)
            media, headers = "application/json", {k: v for k, v in headers.items() if k != "Content-Type"}
    if media == CSV:  # _format=csv of an operation without a CSV form: FHIR JSON
        media = FHIR_JSON
    pretty = inc.params != () and inc.param("_pretty") == "true"
    raw: list[tuple[bytes, bytes]] = []
    st = res.stored
    if st is not None:
        raw.append((b"etag", etag(st.version).encode("latin-1")))
        raw.append((b"last-modified", _last_modified(st.ts_us // 1_000_000)))
        if req.method in ("POST", "PUT", "PATCH") and not st.deleted and res.status in (200, 201):
            raw.append((b"location", f"{inc.base}/{st.type}/{st.id}/_history/{st.version}".encode("latin-1")))
    status = res.status
    body: bytes | None = None
    if status == 304:
        body = None
    elif req.interaction in _WRITES:  # Prefer: return applies to the result of a write
        prefer = req.prefer("return")
        if prefer == "OperationOutcome":
            outcome = res.outcome or {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "diagnostics": f"{req.interaction}: {status} at {datetime.now(timezone.utc).isoformat()}"}]}
            body = _serialise(outcome, pretty)
            if status == 204:
                status = 200
        elif prefer != "minimal" and status != 204:
            body = _body(res, pretty)
    else:
        body = _body(res, pretty)
    return outgoing(status, headers, body, media, raw)


def _body(res: FhirResponse, pretty: bool) -> bytes | None:
    if res.raw is not None:
        return dumps_pretty(loads(res.raw)) if pretty else res.raw.encode()
    if res.body is not None:
        return _serialise(res.body, pretty)
    return None
