"""The one repository interface in front of the database.

A :class:`Repository` hands out :class:`Session` objects; a session is one
database transaction (a unit of work): everything written through it, the
resource versions, their index rows and their audit records, commits or rolls
back together. FHIR semantics (``fhir_ctms.interactions``) are written against
these two classes only; ``fhir_ctms.storage.sql`` implements them for SQLite
and PostgreSQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..search.query import Include, SearchQuery

#: the predecessor hash of the first audit chain link
GENESIS = "0" * 64


@dataclass(slots=True)
class Stored:
    """One stored version. ``content`` is the JSON text exactly as stored (None when deleted).
    Treated as immutable, but not declared ``frozen``: one is built for every row read, and a
    frozen dataclass sets each field through ``object.__setattr__`` (see ``FhirRequest``)."""

    type: str
    id: str
    version: int
    ts_us: int
    deleted: bool
    content: str | None
    method: str = "PUT"
    seq: int = 0


#: the kinds of search index rows, one table each (``search_<kind>``) and their value columns
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "string": ("normalised", "exact"),
    "token": ("system", "code", "text"),
    "reference": ("target_type", "target_id", "version"),
    "date": ("low", "high"),
    "number": ("low", "high"),
    "quantity": ("system", "code", "low", "high"),
    "uri": ("uri",),
    "composite": ("c1_system", "c1_code", "c2_system", "c2_code", "low", "high"),
}


#: index text is clipped to this many characters: a B-tree key has to stay small, and longer
#: values compare on their prefix (the search values too)
MAX_TEXT = 255


class IndexRow(NamedTuple):
    """One search index value of a resource: its kind (a key of INDEX_COLUMNS), the
    parameter and the values of that kind's columns, in order. (A tuple: a resource's rows are
    de-duplicated by hash, which a dataclass computes in Python.)"""

    kind: str
    param: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which versions a history interaction lists, newest first.

    ``type``/``id`` narrow to type or instance level; ``since_us`` keeps versions
    written at or after it; ``at`` = (start, end) keeps versions current at some
    time in [start, end); ``before_seq`` is the keyset cursor of the next page.
    """

    type: str | None = None
    id: str | None = None
    since_us: int | None = None
    at: tuple[int, int] | None = None
    before_seq: int | None = None
    count: int = 50


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One link of the audit hash chain. ``position``: its place in its partition's chain (1 for
    the first link, then one more than its predecessor's); ``seq``: the row's insertion number."""
    seq: int
    type: str
    id: str
    content_hash: str
    prev_hash: str
    chain_hash: str
    position: int


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest link's chain hash and position (``GENESIS`` and 0 for an empty chain)."""
    hash: str
    position: int


class VersionConflict(Exception):
    """The current version was not the one the write expected (raised by :meth:`Session.put`)."""


class Session(ABC):
    """One database transaction."""

    @abstractmethod
    async def current(self, rtype: str, rid: str) -> Stored | None:
        """The current version (possibly a deletion tombstone)."""

    @abstractmethod
    async def version(self, rtype: str, rid: str, version: int) -> Stored | None: ...

    @abstractmethod
    async def put(self, new: Stored, *, previous: int | None) -> None:
        """Append ``new`` to the history and make it current.

        ``previous`` is the version that must be current (None: the id must be
        new); otherwise :class:`VersionConflict` is raised and nothing is written.
        """

    @abstractmethod
    async def set_index(self, rtype: str, rid: str, rows: Sequence[IndexRow], *, new: bool = False) -> None:
        """Replace the search index rows of a resource (``new``: it has none yet)."""

    @abstractmethod
    async def search(self, query: SearchQuery, *, limit: int, after: Sequence[Any] | None = None,
                     backwards: bool = False) -> list[tuple[Stored, tuple[Any, ...]]]:
        """One page of matches in the query's sort order, each with its sort keys (the last
        row's keys are the ``after`` of the next page); ``backwards``: the matches before
        ``after``, nearest first."""

    @abstractmethod
    def unsupported(self, query: SearchQuery) -> list[tuple[int, tuple[str, str]]]:
        """The clauses (by index) this storage cannot search on, each with (name, why)."""

    @abstractmethod
    async def count(self, query: SearchQuery) -> int:
        """How many resources match (``_total=accurate``)."""

    @abstractmethod
    async def include(self, inc: Include, keys: Sequence[tuple[str, str]]) -> list[Stored]:
        """What ``inc`` adds for the resources ``keys`` (type, id): the resources they reference,
        or (``_revinclude``) the resources that reference them."""

    @abstractmethod
    async def history(self, query: HistoryQuery) -> list[Stored]: ...

    @abstractmethod
    async def chain_head(self) -> ChainHead:
        """The newest audit link's hash and position (write sessions hold the chain to themselves)."""

    @abstractmethod
    async def append_link(self, link: ChainLink) -> None: ...

    @abstractmethod
    async def links(self, after_position: int, limit: int) -> list[ChainLink]:
        """The links after ``after_position``, in chain order."""


class Repository(ABC):
    partition: str

    @abstractmethod
    def session(self, *, write: bool) -> AbstractAsyncContextManager[Session]:
        """A unit of work; commits on normal exit, rolls back on an exception.

        Write sessions of one partition are serialised (one at a time, in commit
        order): read-check-write sequences such as conditional create, If-Match and
        the audit chain append need no further locking. Read sessions never wait."""

    @abstractmethod
    async def close(self) -> None: ...
