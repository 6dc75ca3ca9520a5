"""A search request as a plain value (R5 search.html), built before any SQL.

``parse`` (``fhir_ctms.search.parse``) turns query parameters into a
:class:`SearchQuery`; ``storage`` turns that into SQL; the self and next links are
formatted back from it. Nothing here knows HTTP or SQL.

Conventions:
- A :class:`Clause` is one occurrence of a parameter: its values are OR-ed (comma);
  the clauses of a query are AND-ed (repetition).
- Values are already typed for their parameter's type: dates and numbers as ranges,
  strings normalised, tokens split into system and code (``system=None``: any
  system; ``system=""``: no system, from ``|code``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

#: prefixes of ordered types (search.html#prefix)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True, slots=True)
class Value:
    """One value of a parameter, typed by the parameter's type."""

    raw: str  #: as the client wrote it (for the self link)
    prefix: str = "eq"  #: number, date, quantity
    #: string: the normalised text (``:exact``: the text as given); uri: the uri; token: the
    #: code (``:text``: the normalised text); reference: an absolute or canonical url
    text: str | None = None
    system: str | None = None  #: token, quantity (None: any; "": explicitly none)
    code: str | None = None  #: token code, quantity unit code
    #: date: [low, high) in microseconds since 1970 UTC; number, quantity: the range the
    #: value's precision implies (search.html#number: 100 means [99.5, 100.5))
    low: int | Decimal | None = None
    high: int | Decimal | None = None
    number: Decimal | None = None  #: number, quantity: the value itself
    ref_type: str | None = None  #: reference: the target type (None: any)
    ref_id: str | None = None
    ref_version: str | None = None
    #: token ``:of-type``: the identifier type's system and code (the value goes in ``text``)
    type_system: str | None = None
    type_code: str | None = None
    #: composite: one Value per component, in the parameter's component order
    components: tuple["Value", ...] = ()


@dataclass(frozen=True, slots=True)
class Clause:
    """One occurrence of a parameter: ``name[:modifier][.chain]=v1,v2`` (values OR-ed)."""

    param: str  #: the parameter's code (``_id``, ``_lastUpdated`` included)
    type: str  #: its type: string, token, reference, date, number, quantity, uri, composite, special
    values: tuple[Value, ...] = ()
    #: missing, exact, contains, text, not, above, below, in, not-in, of-type, identifier,
    #: code-text, text-advanced, or None; a reference's ``:[type]`` is in ``target_type``
    modifier: str | None = None
    #: a reference parameter: the target type (``subject:Patient``, a chain's type, or the
    #: parameter's only target); None: any target
    target_type: str | None = None
    #: a reference parameter with a chain: the condition on the referenced resources
    chain: "Clause | None" = None


@dataclass(frozen=True, slots=True)
class Has:
    """``_has:Source:param:...`` (reverse chaining, nested): resources that some ``source_type``
    resource references through its reference parameter ``param`` and that matches ``then``."""

    source_type: str
    param: str
    then: "Clause | Has"


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude=...``, optionally ``:iterate``."""

    source_type: str  #: ``*`` for ``_include=*``
    param: str  #: ``*`` for all reference parameters
    target_type: str | None = None
    iterate: bool = False
    reverse: bool = False  #: _revinclude


@dataclass(frozen=True, slots=True)
class Sort:
    param: str
    type: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class SearchQuery:
    types: tuple[str, ...]  #: one type (type-level search), or several (``_type``, system level)
    clauses: tuple[Clause | Has, ...] = ()  #: AND-ed
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    sort: tuple[Sort, ...] = ()
    count: int | None = None  #: None: the server's default page size
    total: str = "none"  #: none | estimate | accurate
    summary: str | None = None  #: true | text | data | count | false
    elements: tuple[str, ...] = ()
    #: the parameters used, in order, as (name, value) for the self link
    used: tuple[tuple[str, str], ...] = ()
    #: the parameters ignored, as (name, why), reported in an OperationOutcome entry
    ignored: tuple[tuple[str, str], ...] = field(default=())
    #: compartment search (``Patient/123/ResearchSubject``): (compartment type, id)
    compartment: tuple[str, str] | None = None
