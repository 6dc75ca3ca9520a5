"""Index values extracted at write time from a resource, for every search parameter of its type.

Implements the "what is indexed" half of R5 search.html: each parameter's FHIRPath
expression (``fhirpath.py``) selects elements, and each element becomes typed rows by the
rules of its parameter type (search.html#number, #date, #string, #uri, #token, #reference,
#quantity, #composite):

* string: one row per string (HumanName and Address: per part), normalised for the
  case- and accent-insensitive match (NFKD, combining marks removed, case-folded);
* token: code/string/id/uri/boolean (no system), Coding, CodeableConcept (each coding, and
  its text for ``:text``), Identifier (system|value, plus its type codings for ``:of-type``),
  ContactPoint (value);
* reference: relative (type, id, version), absolute and canonical (url, version),
  logical (identifier); ``.where(resolve() is X)`` keeps only references to X;
* date: date, dateTime, instant, Period, Timing (its outer limits) as half-open UTC ranges
  [low, high) in microseconds (``resources/dates.py``);
* number and quantity: the value with the range its precision implies (``1.5`` = [1.45, 1.55]);
* uri: the value;
* composite: per element the composite's expression matched, one row per combination of its
  components' values.

The input is the wire JSON (a dict). Extraction never raises: a parameter whose expression
fails on an odd input is skipped and logged at debug level.
"""

from __future__ import annotations

import itertools
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import BadRequest
from ..resources.dates import date_range
from .fhirpath import compile_expression, top_level_keys
from .parameters import SearchParam, params_for, resource_types

_log = logging.getLogger(__name__)

#: the open ends of a date range: 0001-01-01 and 10000-01-01, in microseconds since 1970 UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
MAX_US = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1) + 86_400_000_000
#: a composite parameter yields at most this many combinations per matched element
MAX_COMBINATIONS = 64
ISO4217 = "urn:iso:std:iso:4217"


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class StringValue:
    param: str
    normalised: str  #: for the default (starts-with) and :contains match
    exact: str  #: for :exact


@dataclass(frozen=True, slots=True)
class TokenValue:
    param: str
    system: str | None
    code: str | None  #: None for a CodeableConcept's text only
    text: str | None = None  #: normalised display/text, for :text


@dataclass(frozen=True, slots=True)
class OfTypeValue:
    """An Identifier with a type, for ``identifier:of-type=[system]|[code]|[value]``."""

    param: str
    type_system: str | None
    type_code: str
    value: str


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    param: str
    target_type: str | None
    target_id: str | None
    version: str | None = None
    url: str | None = None  #: absolute, canonical (without ``|version``), urn: or ``#contained``
    identifier_system: str | None = None  #: Reference.identifier, for :identifier
    identifier_value: str | None = None


@dataclass(frozen=True, slots=True)
class DateValue:
    param: str
    low: int  #: microseconds since 1970 UTC, inclusive (MIN_US: open)
    high: int  #: exclusive (MAX_US: open)


@dataclass(frozen=True, slots=True)
class NumberValue:
    param: str
    value: Decimal
    low: Decimal  #: value - half a unit of its last digit
    high: Decimal  #: value + half a unit of its last digit


@dataclass(frozen=True, slots=True)
class QuantityValue:
    param: str
    system: str | None
    code: str | None
    unit: str | None
    value: Decimal | None  #: None for a Range
    low: Decimal | None  #: None: unbounded (a ``<`` comparator, a Range without low)
    high: Decimal | None


@dataclass(frozen=True, slots=True)
class UriValue:
    param: str
    uri: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    param: str
    components: tuple  #: one row per component, in the parameter's component order


IndexValue = (StringValue | TokenValue | OfTypeValue | ReferenceValue | DateValue | NumberValue
              | QuantityValue | UriValue | CompositeValue)


# --------------------------------------------------------------------------- helpers


def normalise(text: str) -> str:
    """Case- and accent-insensitive form (search.html#string): NFKD, no combining marks, casefold."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        return None
    try:
        d = value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def precision_range(d: Decimal) -> tuple[Decimal, Decimal]:
    """[low, high] of the values a decimal stands for: ``1.5`` -> [1.45, 1.55], ``100`` -> [99.5, 100.5]."""
    half = Decimal(5).scaleb(d.as_tuple().exponent - 1)
    return d - half, d + half


def _dates(value: str) -> tuple[int, int] | None:
    try:
        return date_range(value)
    except BadRequest:  # a malformed or out-of-range value
        return None


def _guess(value: Any) -> str | None:
    """The FHIR type of a value whose type the evaluation did not say (a union, a function)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if not isinstance(value, dict):
        return None
    if "resourceType" in value:
        return value["resourceType"]
    keys = value.keys()
    if "reference" in keys or ("identifier" in keys and "value" not in keys):
        return "Reference"
    if "coding" in keys:
        return "CodeableConcept"
    if "concept" in keys:
        return "CodeableReference"
    if "start" in keys or "end" in keys:
        return "Period"
    if "event" in keys or "repeat" in keys:
        return "Timing"
    if keys & {"family", "given", "prefix", "suffix"}:
        return "HumanName"
    if keys & {"line", "city", "district", "state", "postalCode", "country"}:
        return "Address"
    if "low" in keys or "high" in keys:
        return "Range"
    if "currency" in keys:
        return "Money"
    if isinstance(value.get("value"), (int, float, Decimal)) and not isinstance(value.get("value"), bool):
        return "Quantity"
    if isinstance(value.get("value"), str):
        if value.get("system") in {"phone", "fax", "email", "pager", "url", "sms", "other"}:
            return "ContactPoint"
        return "Identifier"
    if "code" in keys or "system" in keys:
        return "Coding"
    if "text" in keys:
        return "CodeableConcept"
    return None


# --------------------------------------------------------------------------- per parameter type


def _strings(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    if isinstance(value, str):
        parts: Iterable[Any] = (value,)
    elif t == "HumanName":
        parts = [value.get("text"), value.get("family"), *_list(value.get("given")),
                 *_list(value.get("prefix")), *_list(value.get("suffix"))]
    elif t == "Address":
        parts = [value.get("text"), *_list(value.get("line")), value.get("city"),
                 value.get("district"), value.get("state"), value.get("postalCode"),
                 value.get("country")]
    elif isinstance(value, dict):
        parts = [value.get(k) for k in ("value", "text", "display", "name")]
    else:
        return
    for part in parts:
        if _s(part):
            yield StringValue(code, normalise(part), part)


def _coding(code: str, c: Any) -> Iterator[IndexValue]:
    if isinstance(c, dict) and (_s(c.get("code")) or _s(c.get("display"))):
        display = _s(c.get("display"))
        yield TokenValue(code, _s(c.get("system")), _s(c.get("code")),
                         normalise(display) if display else None)


def _concept(code: str, cc: Any) -> Iterator[IndexValue]:
    if not isinstance(cc, dict):
        return
    for c in _list(cc.get("coding")):
        yield from _coding(code, c)
    if _s(cc.get("text")):
        yield TokenValue(code, None, None, normalise(cc["text"]))


_QUANTITIES = frozenset({"Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity"})


def _tokens(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    if isinstance(value, bool):
        yield TokenValue(code, None, "true" if value else "false")
    elif isinstance(value, (str, int, float, Decimal)):
        text = repr(value) if isinstance(value, float) else str(value)
        if text:
            yield TokenValue(code, None, text)
    elif not isinstance(value, dict):
        return
    elif t == "Coding":
        yield from _coding(code, value)
    elif t == "CodeableConcept":
        yield from _concept(code, value)
    elif t == "CodeableReference":
        yield from _concept(code, value.get("concept"))
    elif t == "Identifier":
        ident = _s(value.get("value"))
        itype = value.get("type") if isinstance(value.get("type"), dict) else {}
        if ident:
            text = _s(itype.get("text"))
            yield TokenValue(code, _s(value.get("system")), ident, normalise(text) if text else None)
            for c in _list(itype.get("coding")):
                if isinstance(c, dict) and _s(c.get("code")):
                    yield OfTypeValue(code, _s(c.get("system")), c["code"], ident)
    elif t == "ContactPoint" and _s(value.get("value")):
        yield TokenValue(code, None, value["value"])
    elif t in _QUANTITIES and _s(value.get("code")):
        yield TokenValue(code, _s(value.get("system")), value["code"])


_REF = re.compile(
    r"(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<ver>[A-Za-z0-9\-.]{1,64}))?"
)


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _reference_string(text: str, resource: dict, explicit_type: str | None) -> tuple:
    """(target_type, target_id, version, url) of a Reference.reference or canonical string."""
    if text.startswith("#"):
        contained = {c.get("id"): c.get("resourceType") for c in _list(resource.get("contained"))
                     if isinstance(c, dict)}
        return contained.get(text[1:], explicit_type), None, None, text
    plain, _, canonical_version = text.partition("|")
    m = _REF.fullmatch(plain)
    if m and m["type"] in resource_types() and (m["base"] is None or "://" in m["base"]):
        url = plain.split("/_history/", 1)[0] if m["base"] is not None else None
        return m["type"], m["id"], m["ver"] or canonical_version or None, url
    if "://" in plain or plain.startswith("urn:"):
        return explicit_type, None, canonical_version or None, plain
    if _ID.fullmatch(text):  # a bare id (seen in the wild): its type from Reference.type or the target
        return explicit_type, text, None, None
    return explicit_type, None, None, None


def _references(code: str, value: Any, t: str | None, resource: dict, p: SearchParam,
                ref_types: frozenset[str] | None) -> Iterator[IndexValue]:
    if t == "CodeableReference" and isinstance(value, dict):
        value, t = value.get("reference"), "Reference"
    ident_system = ident_value = None
    if isinstance(value, str):
        if t in ("string", "id", "code") and "/" not in value and ":" not in value:
            return  # a plain id (``_in`` = Resource.id): nothing to point at
        target_type, target_id, version, url = _reference_string(value, resource, None)
    elif isinstance(value, dict):
        explicit = _s(value.get("type"))
        explicit = explicit if explicit in resource_types() else None
        ident = value.get("identifier") if isinstance(value.get("identifier"), dict) else {}
        ident_system, ident_value = _s(ident.get("system")), _s(ident.get("value"))
        text = _s(value.get("reference"))
        if text:
            target_type, target_id, version, url = _reference_string(text, resource, explicit)
        elif ident_value:
            target_type, target_id, version, url = explicit, None, None, None
        else:
            return
    else:
        return
    if target_type is None and len(p.targets) == 1:
        target_type = p.targets[0]
    if ref_types is not None and target_type not in ref_types:
        return
    if target_id is None and url is None and ident_value is None:
        return
    yield ReferenceValue(code, target_type, target_id, version, url, ident_system, ident_value)


def _period_range(value: dict) -> tuple[int, int] | None:
    start, end = _s(value.get("start")), _s(value.get("end"))
    low = _dates(start) if start else None
    high = _dates(end) if end else None
    if (start and low is None) or (end and high is None) or (low is None and high is None):
        return None
    return (low[0] if low else MIN_US), (high[1] if high else MAX_US)


def _date_values(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    rng = None
    if isinstance(value, str):
        rng = _dates(value)
    elif isinstance(value, dict) and t == "Period":
        rng = _period_range(value)
    elif isinstance(value, dict) and t == "Timing":
        events = [r for r in (_dates(e) for e in _list(value.get("event")) if isinstance(e, str)) if r]
        repeat = value.get("repeat") if isinstance(value.get("repeat"), dict) else {}
        bounds = repeat.get("boundsPeriod")
        if events:
            rng = min(r[0] for r in events), max(r[1] for r in events)
        elif isinstance(bounds, dict):
            rng = _period_range(bounds)
    if rng is not None:
        yield DateValue(code, rng[0], rng[1])


def _numbers(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    if isinstance(value, dict):
        value = value.get("value")
    d = _decimal(value)
    if d is not None:
        low, high = precision_range(d)
        yield NumberValue(code, d, low, high)


def _quantity(code: str, q: dict) -> QuantityValue | None:
    d = _decimal(q.get("value"))
    if d is None:
        return None
    low, high = precision_range(d)
    comparator = q.get("comparator")
    if comparator in ("<", "<="):
        low = None
    elif comparator in (">", ">="):
        high = None
    return QuantityValue(code, _s(q.get("system")), _s(q.get("code")), _s(q.get("unit")), d, low, high)


def _quantities(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        q = _quantity(code, {"value": value})
    elif not isinstance(value, dict):
        return
    elif t == "Money" or "currency" in value:
        q = _quantity(code, {"value": value.get("value"), "system": ISO4217,
                             "code": value.get("currency"), "unit": value.get("currency")})
    elif t == "Range" or "low" in value or "high" in value:
        lo = value.get("low") if isinstance(value.get("low"), dict) else {}
        hi = value.get("high") if isinstance(value.get("high"), dict) else {}
        dl, dh = _decimal(lo.get("value")), _decimal(hi.get("value"))
        if dl is None and dh is None:
            return
        unit_of = lo if dl is not None else hi
        q = QuantityValue(code, _s(unit_of.get("system")), _s(unit_of.get("code")),
                          _s(unit_of.get("unit")), None,
                          precision_range(dl)[0] if dl is not None else None,
                          precision_range(dh)[1] if dh is not None else None)
    else:
        q = _quantity(code, value)
    if q is not None:
        yield q


def _uris(code: str, value: Any, t: str | None) -> Iterator[IndexValue]:
    if isinstance(value, str) and value:
        yield UriValue(code, value)
    elif isinstance(value, dict) and _s(value.get("reference")):  # a Reference used as uri
        yield UriValue(code, value["reference"])


def _convert(ptype: str | None, code: str, value: Any, t: str | None, resource: dict,
             p: SearchParam, ref_types: frozenset[str] | None) -> Iterator[IndexValue]:
    if t is None:
        t = _guess(value)
    elif t[:1].isupper() != isinstance(value, dict):
        return iter(())  # a complex type that is not an object, or a primitive that is one
    if ptype == "token":
        return _tokens(code, value, t)
    if ptype == "string":
        return _strings(code, value, t)
    if ptype == "reference":
        return _references(code, value, t, resource, p, ref_types)
    if ptype == "date":
        return _date_values(code, value, t)
    if ptype == "number":
        return _numbers(code, value, t)
    if ptype == "quantity":
        return _quantities(code, value, t)
    if ptype == "uri":
        return _uris(code, value, t)
    return iter(())




# --------------------------------------------------------------------------- composites

_PARAM_TYPE_OF = {
    **dict.fromkeys(("code", "Coding", "CodeableConcept", "CodeableReference", "Identifier",
                     "ContactPoint", "boolean", "id"), "token"),
    **dict.fromkeys(("date", "dateTime", "instant", "Period", "Timing"), "date"),
    **dict.fromkeys(("string", "markdown", "HumanName", "Address"), "string"),
    **dict.fromkeys(("Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity",
                     "Money", "Range"), "quantity"),
    **dict.fromkeys(("integer", "integer64", "decimal", "positiveInt", "unsignedInt"), "number"),
    **dict.fromkeys(("Reference", "canonical"), "reference"),
    **dict.fromkeys(("uri", "url", "oid", "uuid"), "uri"),
}


def _composite(resource: dict, rtype: str, p: SearchParam, fast: bool) -> Iterator[IndexValue]:
    compiled = compile_expression(p.expression, fast)
    comps = [(c, compile_expression(c.expression, fast)) for c in p.components]
    for value, t, _ in compiled.evaluate(resource, rtype):
        ctx = t or _guess(value)
        per_component = []
        for comp, cexpr in comps:
            rows = []
            for v, vt, refs in cexpr.evaluate(value, ctx):
                vt = vt or _guess(v)
                # a few R5 components name a SearchParameter the package lacks: type by value
                ptype = comp.type or _PARAM_TYPE_OF.get(vt or "")
                rows.extend(_convert(ptype, p.code, v, vt, resource, p, refs))
            per_component.append(list(dict.fromkeys(rows)))
        if not all(per_component):
            continue
        for combo in itertools.islice(itertools.product(*per_component), MAX_COMBINATIONS):
            yield CompositeValue(p.code, tuple(combo))


# --------------------------------------------------------------------------- entry points


def extract_param(resource: dict, p: SearchParam, *, fast: bool = True) -> list[IndexValue]:
    """The index rows of one parameter (raises if the expression fails; see :func:`extract`)."""
    rtype = resource.get("resourceType")
    if not p.expression or not isinstance(rtype, str):
        return []
    if p.type == "composite":
        rows: Iterable[IndexValue] = _composite(resource, rtype, p, fast)
    else:
        compiled = compile_expression(p.expression, fast)
        rows = (row for value, t, refs in compiled.evaluate(resource, rtype)
                for row in _convert(p.type, p.code, value, t, resource, p, refs))
    return list(dict.fromkeys(rows))


_plans: dict[str, tuple[Mapping[str, SearchParam], tuple]] = {}


def _plan(rtype: str) -> tuple:
    """(parameter, the top-level keys it needs or None) for the parameters of a type."""
    params = params_for(rtype)
    cached = _plans.get(rtype)
    if cached is None or cached[0] is not params:  # first use, or parameters registered since
        plan = tuple((p, top_level_keys(p.expression, rtype)) for p in params.values() if p.expression)
        cached = _plans[rtype] = (params, plan)
    return cached[1]


def extract(resource: dict, *, fast: bool = True) -> list[IndexValue]:
    """Every index row of a resource, for every parameter of its type (never raises)."""
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rtype, str):
        return []
    out: list[IndexValue] = []
    for p, keys in _plan(rtype):
        if fast and keys is not None and not any(k in resource for k in keys):
            continue  # none of the elements it reads is there
        try:
            out.extend(extract_param(resource, p, fast=fast))
        except Exception:  # noqa: BLE001 - an odd but valid input the expression did not expect
            _log.debug("search parameter %s (%s) failed on %s/%s", p.code, p.url, rtype,
                       resource.get("id"), exc_info=True)
    return out
