"""The values interactions take and return, free of any web framework."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from ..audit.records import Actor
from ..config import Settings
from ..storage.repository import Repository, Stored

if TYPE_CHECKING:
    from ..auth.tokens import AccessGrant


@dataclass(slots=True)
class FhirRequest:
    """One interaction as a value: method, the URL's parts, query parameters, headers, body.

    ``headers`` has lower-case names; ``params`` keeps repeated parameters in order. Treated as
    immutable (``dataclasses.replace`` makes a changed copy) but not declared ``frozen``: a
    frozen dataclass sets each of its 14 fields through ``object.__setattr__``, 2 us of every
    request (it was never hashable anyway: ``headers`` is a dict).
    """

    method: str
    type: str | None = None
    id: str | None = None
    vid: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    #: the raw query string (conditional interactions take their criteria from it)
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: a compartment search's compartment type (``Patient`` in ``Patient/123/ResearchSubject``,
    #: whose ``id`` is the compartment's id)
    compartment: str | None = None
    #: which interaction this is (a key of ``fhir_ctms.interactions.table.INTERACTIONS``)
    interaction: str = ""
    #: the interaction ``operation``: the operation's name, without the ``$``
    operation: str | None = None
    #: a resource already parsed (a Bundle entry's); used instead of ``body``
    resource: dict[str, Any] | None = None
    #: ``resource`` has passed the interaction's checks and validation already (its ``prepare``)
    prepared: bool = False

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def prepared_with(self, resource: dict[str, Any]) -> "FhirRequest":
        """A copy carrying ``resource``, checked and validated (an interaction's ``prepare``):
        ``dataclasses.replace`` does the same at ten times the cost (it inspects the fields)."""
        return FhirRequest(method=self.method, type=self.type, id=self.id, vid=self.vid, params=self.params,
                           query=self.query, headers=self.headers, body=self.body, compartment=self.compartment,
                           interaction=self.interaction, operation=self.operation, resource=resource,
                           prepared=True)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def prefer(self, key: str) -> str | None:
        """A preference of the ``Prefer`` header (RFC 7240), e.g. ``return`` or ``handling``."""
        for item in (self.headers.get("prefer") or "").replace(";", ",").split(","):
            name, _, value = item.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
        return None


@dataclass(slots=True)
class FhirResponse:
    """What an interaction produced. ``body`` is either a JSON value to serialise or stored
    JSON text to send unchanged (``raw``); ``stored`` is the version the response is about."""

    status: int
    body: Any = None
    raw: str | None = None
    stored: Stored | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: an OperationOutcome to send when the client prefers return=OperationOutcome
    outcome: dict[str, Any] | None = None


@dataclass(slots=True)
class Context:
    repo: Repository
    settings: Settings
    base: str
    actor: Actor = field(default_factory=Actor)
    #: why the change is made (``X-Reason``), recorded in Provenance and AuditEvent
    reason: str | None = None
    #: the activity a client gives in ``X-Provenance`` (a CodeableConcept as JSON text), recorded
    #: in the Provenance (``audit.records.x_provenance``)
    activity: str | None = None
    #: what the request's bearer token grants (``api/rest.py`` verifies it when ``auth_enabled``);
    #: None: no token applies (auth off) and nothing is restricted (``interactions/access.py``)
    access: "AccessGrant | None" = None
    #: the requests (each with the 403's text) the token was refused in this HTTP request, noted
    #: by ``access.note_denial`` and audited by ``api/rest.py`` once its sessions have ended
    denials: list[tuple[FhirRequest, str]] = field(default_factory=list)


def now_us() -> int:
    return time.time_ns() // 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@lru_cache(maxsize=64)  # a change stamps the resource and its two audit records with one time
def instant(ts_us: int) -> str:
    """FHIR instant (UTC, microseconds) of a stored timestamp."""
    dt = _EPOCH + timedelta(microseconds=ts_us)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def http_date(ts_us: int) -> str:
    """RFC 9110 IMF-fixdate (``Last-Modified``) of a stored timestamp."""
    return _http_date(ts_us // 1_000_000)


@lru_cache(maxsize=4096)  # format_datetime costs ~10 us; reads see the same seconds again and again
def _http_date(seconds: int) -> str:
    return format_datetime(_EPOCH + timedelta(seconds=seconds), usegmt=True)


def etag(version: int) -> str:
    return f'W/"{version}"'
