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

Speed (it runs on every write): per resource type, :func:`extract` uses a *plan* compiled
once: each top-level JSON key maps to the closures of the parameters that start there (a
simple path, ``fhirpath.walk``'s semantics, is compiled into nested closures whose element
types are resolved at compile time, ending in a converter specialised for the parameter type
and element type), so an absent element costs nothing and nothing is interpreted per call.
Rows are collected as ``(maker, fields)`` tuples, deduplicated, and only then built. The few
parameters that are not simple paths (``Patient.deceased.exists() and ...``) run as before
(``extract_param``, fhirpathpy), except that their rows are kept by the scalar values of the
keys they can read (none present: rows computed once per type), and that
``(a | b).first()`` on plain values is evaluated directly. Dates (the usual forms by integer
arithmetic), numbers and reference strings go through small caches. ``extract_param`` and
``extract(fast=False)`` keep the interpreted paths (walk, fhirpathpy) that
``tests/test_search_extract.py`` checks the compiled one against, and
``bench/extract_speed.py`` times.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from ..errors import BadRequest
from ..resources.dates import date_range
from .fhirpath import (
    _IDENT,
    SimplePath,
    Step,
    compile_expression,
    model,
    parse_simple_path,
    split_union,
    strip_parens,
    top_level_keys,
)
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
    return _normalise_unicode(text)


@lru_cache(maxsize=4096)
def _normalise_unicode(text: str) -> str:
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
    half = _half_unit(d.as_tuple().exponent)
    return d - half, d + half


@lru_cache(maxsize=256)
def _half_unit(exponent: int) -> Decimal:
    return Decimal(5).scaleb(exponent - 1)


def _number_range(value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    """(value, low, high) of a JSON number or numeric string: ``_decimal``, ``precision_range``."""
    cls = value.__class__
    if cls is int or cls is str or (cls is float and value):  # -0.0 == 0.0: not cached
        return _number_range_cached(cls, value)
    d = _decimal(value)
    if d is None:
        return None
    low, high = precision_range(d)
    return d, low, high


@lru_cache(maxsize=4096)
def _number_range_cached(cls: type, value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    d = _decimal(value)
    if d is None:
        return None
    low, high = precision_range(d)
    return d, low, high


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000
#: 10000-01-01 in microseconds: a range whose (local) end reaches it overflows ``datetime``
_LIMIT_US = (date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * _DAY_US
_UNRECOGNISED = object()


#: ``resources/dates._DATE`` for ASCII digits, the parts that take a branch split out
_ASCII_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(?:Z|([+-])(\d{2}):(\d{2}))?)?)?)?", re.ASCII)


def _fast_date_range(value: str) -> Any:
    """``date_range`` of a value with a day (and optionally a time, seconds, fraction, zone)
    and ASCII digits, by integer arithmetic (no datetime): the same range, None where
    ``date_range`` raises, ``_UNRECOGNISED`` for any other form (then ``date_range`` decides)."""
    m = _ASCII_DATE.fullmatch(value)
    if m is None:
        return _UNRECOGNISED
    y, mo, d, hh, mm, ss, frac, sign, oh, om = m.groups()
    if d is None:  # a year or a month: rarer, and ranges of a calendar length
        return _UNRECOGNISED
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    if hh is None:
        start = days * _DAY_US
        end = start + _DAY_US
        return (start, end) if end < _LIMIT_US else None
    hour, minute = int(hh), int(mm)
    if hour > 23 or minute > 59:
        return None
    local = days * _DAY_US + (hour * 60 + minute) * 60_000_000
    if ss is None:
        step = 60_000_000
    else:
        seconds = int(ss)
        if seconds > 59:
            return None
        local += seconds * 1_000_000
        if frac is None:
            step = 1_000_000
        else:
            local += int((frac + "000000")[:6])
            step = 10 ** (6 - min(len(frac), 6))
    end = local + step
    if end >= _LIMIT_US:  # datetime overflows past 9999-12-31T23:59:59.999999 (local time)
        return None
    if sign is None:  # Z, or no zone: UTC
        return local, end
    offset = (int(oh) * 60 + int(om)) * 60_000_000
    if offset >= _DAY_US:  # timezone() takes less than a day
        return None
    if sign == "-":
        offset = -offset
    return local - offset, end - offset


@lru_cache(maxsize=8192)
def _dates(value: str) -> tuple[int, int] | None:
    rng = _fast_date_range(value)
    if rng is not _UNRECOGNISED:
        return rng
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
    return _reference_text(text, explicit_type)


@lru_cache(maxsize=8192)
def _reference_text(text: str, explicit_type: str | None) -> tuple:
    """``_reference_string`` of a string that is not ``#contained`` (its resource plays no part)."""
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


# --------------------------------------------------------------------------- compiled plans
#
# The same rows as ``extract_param`` (walk + ``_convert``), from closures built once per
# resource type. A row in the making is ``(maker of its class, fields)``: cheap to make, hash
# and compare (equal exactly when the rows are); ``_build`` deduplicates them and only then
# builds the (frozen) row objects.

Handler = Callable[[Any, dict, list], None]  #: (value, the resource, rows out)
_NO_DICT: dict = {}


def _maker(cls: type) -> Callable[..., Any]:
    """``cls(*fields)`` (every field given) for a frozen slots dataclass without
    ``__post_init__``: sets the slots as its ``__init__`` does, without the per-field
    ``object.__setattr__`` (about half the cost). In a row in the making it stands for the
    class: one maker per class."""
    names = [f.name for f in dataclasses.fields(cls)]
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    body = []
    for i, name in enumerate(names):
        namespace[f"set{i}"] = getattr(cls, name).__set__
        body.append(f"    set{i}(o, {name})\n")
    source = (f"def make_{cls.__name__}({', '.join(names)}):\n    o = new(cls)\n"
              f"{''.join(body)}    return o\n")
    exec(source, namespace)  # noqa: S102 - the text is made here from field names
    return namespace[f"make_{cls.__name__}"]


_MAKE = {cls: _maker(cls) for cls in (StringValue, TokenValue, OfTypeValue, ReferenceValue,
                                      DateValue, NumberValue, QuantityValue, UriValue,
                                      CompositeValue)}
_STRING, _TOKEN, _OF_TYPE, _REFERENCE, _DATE, _NUMBER, _QUANTITY, _URI, _COMPOSITE = (
    _MAKE[c] for c in (StringValue, TokenValue, OfTypeValue, ReferenceValue, DateValue, NumberValue,
                       QuantityValue, UriValue, CompositeValue))


def _row_list(value: Any) -> Any:
    """``_list`` without a copy: the list, () for None, else a 1-tuple."""
    return value if isinstance(value, list) else () if value is None else (value,)


def _str_parts(code: str, parts: Iterable[Any], out: list) -> None:
    for part in parts:
        if isinstance(part, str) and part:
            norm = part.lower() if part.isascii() else _normalise_unicode(part)
            out.append((_STRING, (code, norm, part)))


_NAME_PARTS = ("given", "prefix", "suffix")
_ADDRESS_PARTS = ("city", "district", "state", "postalCode", "country")
_OTHER_PARTS = ("value", "text", "display", "name")


def _string_leaf(code: str, t: str) -> Handler:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, str) and v:
                out.append((_STRING, (code, v.lower() if v.isascii() else _normalise_unicode(v),
                                      v)))
        return primitive
    if t == "HumanName":
        def human_name(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                parts = [v.get("text"), v.get("family")]
                for key in _NAME_PARTS:
                    x = v.get(key)
                    if isinstance(x, list):
                        parts.extend(x)
                    elif x is not None:
                        parts.append(x)
                _str_parts(code, parts, out)
        return human_name
    if t == "Address":
        def address(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                _str_parts(code, (v.get("text"),), out)
                _str_parts(code, _row_list(v.get("line")), out)
                _str_parts(code, [v.get(key) for key in _ADDRESS_PARTS], out)
        return address

    def other(v: Any, resource: dict, out: list) -> None:
        if isinstance(v, dict):
            _str_parts(code, [v.get(key) for key in _OTHER_PARTS], out)
    return other


def _coding_row(code: str, c: dict, out: list) -> None:
    ccode, display = c.get("code"), c.get("display")
    if not (isinstance(ccode, str) and ccode):
        ccode = None
    if not (isinstance(display, str) and display):
        display = None
    if ccode is not None or display is not None:
        system = c.get("system")
        out.append((_TOKEN, (code, system if isinstance(system, str) and system else None, ccode,
                                 normalise(display) if display is not None else None)))


def _concept_rows(code: str, cc: dict, out: list) -> None:
    for c in _row_list(cc.get("coding")):
        if isinstance(c, dict):
            _coding_row(code, c, out)
    text = cc.get("text")
    if isinstance(text, str) and text:
        out.append((_TOKEN, (code, None, None, normalise(text))))


def _token_leaf(code: str, t: str) -> Handler | None:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, str):
                if v:
                    out.append((_TOKEN, (code, None, v, None)))
            elif isinstance(v, bool):
                out.append((_TOKEN, (code, None, "true" if v else "false", None)))
            elif isinstance(v, (int, float, Decimal)):
                text = repr(v) if isinstance(v, float) else str(v)
                if text:
                    out.append((_TOKEN, (code, None, text, None)))
        return primitive
    if t == "Coding":
        def coding(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                _coding_row(code, v, out)
        return coding
    if t == "CodeableConcept":
        def concept(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                _concept_rows(code, v, out)
        return concept
    if t == "CodeableReference":
        def codeable_reference(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                cc = v.get("concept")
                if isinstance(cc, dict):
                    _concept_rows(code, cc, out)
        return codeable_reference
    if t == "Identifier":
        def identifier(v: Any, resource: dict, out: list) -> None:
            if not isinstance(v, dict):
                return
            ident = v.get("value")
            if not (isinstance(ident, str) and ident):
                return
            itype = v.get("type")
            if not isinstance(itype, dict):
                itype = _NO_DICT
            text = itype.get("text")
            out.append((_TOKEN, (code, _s(v.get("system")), ident,
                                     normalise(text) if isinstance(text, str) and text else None)))
            for c in _row_list(itype.get("coding")):
                if isinstance(c, dict):
                    ccode = c.get("code")
                    if isinstance(ccode, str) and ccode:
                        out.append((_OF_TYPE, (code, _s(c.get("system")), ccode, ident)))
        return identifier
    if t == "ContactPoint":
        def contact_point(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                value = v.get("value")
                if isinstance(value, str) and value:
                    out.append((_TOKEN, (code, None, value, None)))
        return contact_point
    if t in _QUANTITIES:
        def quantity_code(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                qcode = v.get("code")
                if isinstance(qcode, str) and qcode:
                    out.append((_TOKEN, (code, _s(v.get("system")), qcode, None)))
        return quantity_code
    return None


def _reference_leaf(code: str, t: str, p: SearchParam,
                    ref_types: frozenset[str] | None) -> Handler:
    upper = t[:1].isupper()
    codeable = t == "CodeableReference"
    plain_id = t in ("string", "id", "code")
    single = p.targets[0] if len(p.targets) == 1 else None
    known = resource_types()

    def reference(v: Any, resource: dict, out: list) -> None:
        if upper:
            if not isinstance(v, dict):
                return
            if codeable:
                v = v.get("reference")
        elif isinstance(v, dict):
            return
        ident_system = ident_value = None
        if isinstance(v, str):
            if plain_id and "/" not in v and ":" not in v:
                return  # a plain id (``_in`` = Resource.id): nothing to point at
            target = (_reference_string(v, resource, None) if v.startswith("#")
                      else _reference_text(v, None))
        elif isinstance(v, dict):
            explicit = v.get("type")
            if not (isinstance(explicit, str) and explicit and explicit in known):
                explicit = None
            ident = v.get("identifier")
            if isinstance(ident, dict):
                ident_system, ident_value = _s(ident.get("system")), _s(ident.get("value"))
            text = v.get("reference")
            if isinstance(text, str) and text:
                target = (_reference_string(text, resource, explicit) if text.startswith("#")
                          else _reference_text(text, explicit))
            elif ident_value:
                target = explicit, None, None, None
            else:
                return
        else:
            return
        target_type, target_id, version, url = target
        if target_type is None and single is not None:
            target_type = single
        if ref_types is not None and target_type not in ref_types:
            return
        if target_id is None and url is None and ident_value is None:
            return
        out.append((_REFERENCE, (code, target_type, target_id, version, url, ident_system,
                                 ident_value)))
    return reference


def _date_leaf(code: str, t: str) -> Handler | None:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, str):
                rng = _dates(v)
                if rng is not None:
                    out.append((_DATE, (code, rng[0], rng[1])))
        return primitive
    if t == "Period":
        def period(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                rng = _period_range(v)
                if rng is not None:
                    out.append((_DATE, (code, rng[0], rng[1])))
        return period
    if t == "Timing":
        def timing(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, dict):
                for row in _date_values(code, v, t):
                    out.append((_DATE, (code, row.low, row.high)))
        return timing
    return None


def _number_leaf(code: str, t: str) -> Handler:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if not isinstance(v, dict):
                rng = _number_range(v)
                if rng is not None:
                    out.append((_NUMBER, (code, *rng)))
        return primitive

    def complex_(v: Any, resource: dict, out: list) -> None:
        if isinstance(v, dict):
            rng = _number_range(v.get("value"))
            if rng is not None:
                out.append((_NUMBER, (code, *rng)))
    return complex_


def _quantity_fields(code: str, q: dict) -> tuple | None:
    rng = _number_range(q.get("value"))
    if rng is None:
        return None
    d, low, high = rng
    comparator = q.get("comparator")
    if comparator in ("<", "<="):
        low = None
    elif comparator in (">", ">="):
        high = None
    return code, _s(q.get("system")), _s(q.get("code")), _s(q.get("unit")), d, low, high


def _quantity_leaf(code: str, t: str) -> Handler:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
                fields = _quantity_fields(code, {"value": v})
                if fields is not None:
                    out.append((_QUANTITY, fields))
        return primitive
    money = t == "Money"
    range_ = t == "Range"

    def complex_(v: Any, resource: dict, out: list) -> None:
        if not isinstance(v, dict):
            return
        if money or "currency" in v:
            fields = _quantity_fields(code, {"value": v.get("value"), "system": ISO4217,
                                             "code": v.get("currency"), "unit": v.get("currency")})
        elif range_ or "low" in v or "high" in v:
            lo, hi = v.get("low"), v.get("high")
            lo = lo if isinstance(lo, dict) else _NO_DICT
            hi = hi if isinstance(hi, dict) else _NO_DICT
            dl, dh = _number_range(lo.get("value")), _number_range(hi.get("value"))
            if dl is None and dh is None:
                return
            unit_of = lo if dl is not None else hi
            fields = (code, _s(unit_of.get("system")), _s(unit_of.get("code")),
                      _s(unit_of.get("unit")), None, dl[1] if dl is not None else None,
                      dh[2] if dh is not None else None)
        else:
            fields = _quantity_fields(code, v)
        if fields is not None:
            out.append((_QUANTITY, fields))
    return complex_


def _uri_leaf(code: str, t: str) -> Handler:
    if not t[:1].isupper():
        def primitive(v: Any, resource: dict, out: list) -> None:
            if isinstance(v, str) and v:
                out.append((_URI, (code, v)))
        return primitive

    def reference(v: Any, resource: dict, out: list) -> None:
        if isinstance(v, dict):
            ref = v.get("reference")
            if isinstance(ref, str) and ref:  # a Reference used as uri
                out.append((_URI, (code, ref)))
    return reference


def _leaf(ptype: str | None, t: str, code: str, p: SearchParam,
          ref_types: frozenset[str] | None) -> Handler | None:
    """The converter of one element of (static) type *t* into rows of a *ptype* parameter,
    ``_convert``'s rules; None when such an element never gives a row."""
    if ptype == "token":
        return _token_leaf(code, t)
    if ptype == "string":
        return _string_leaf(code, t)
    if ptype == "reference":
        return _reference_leaf(code, t, p, ref_types)
    if ptype == "date":
        return _date_leaf(code, t)
    if ptype == "number":
        return _number_leaf(code, t)
    if ptype == "quantity":
        return _quantity_leaf(code, t)
    if ptype == "uri":
        return _uri_leaf(code, t)
    return None


class _Dynamic(Exception):
    """A path reaches an element typed ``Resource`` (its type is the value's): not compiled."""


def _step_targets(ctx: str, step: Step) -> list[tuple[str, str]]:
    """The (JSON key, element type) pairs one step of ``walk`` reads on a *ctx* object."""
    m = model()
    choices = m.choices.get(f"{ctx}.{step.name}")
    if choices is not None:
        out = []
        for c in choices:
            key = step.name + c[:1].upper() + c[1:]
            t, _ = m.element(ctx, key)
            if t == "Resource":
                raise _Dynamic
            if step.of_type is None or m.is_a(t, step.of_type):
                out.append((key, t))
        return out
    t, _ = m.element(ctx, step.name)
    if t == "Resource":
        raise _Dynamic
    if step.of_type is not None and not m.is_a(t, step.of_type):
        return []
    return [(step.name, t)]


def _each(child: Handler, where: tuple[str, str] | None) -> Handler:
    """The handler of the raw JSON value of a key: each non-null item (a list is spread),
    kept by the step's ``where(field = 'literal')``, goes to *child*."""
    if where is None:
        def spread(x: Any, resource: dict, out: list) -> None:
            if isinstance(x, list):
                for y in x:
                    if y is not None:
                        child(y, resource, out)
            else:
                child(x, resource, out)
        return spread
    field, literal = where

    def spread_where(x: Any, resource: dict, out: list) -> None:
        for y in x if isinstance(x, list) else (x,):
            if isinstance(y, dict) and y.get(field) == literal:
                child(y, resource, out)
    return spread_where


def _node(pairs: list[tuple[str, Handler]]) -> Handler:
    """The handler of an object: each key's value goes to its handler."""
    if len(pairs) == 1:
        ((key, h),) = pairs

        def one(n: Any, resource: dict, out: list) -> None:
            if isinstance(n, dict):
                x = n.get(key)
                if x is not None:
                    h(x, resource, out)
        return one

    def many(n: Any, resource: dict, out: list) -> None:
        if isinstance(n, dict):
            for key, h in pairs:
                x = n.get(key)
                if x is not None:
                    h(x, resource, out)
    return many


def _each_node(pairs: list[tuple[str, Handler]]) -> Handler:
    """``_each(_node(pairs), None)`` in one function (one call less per object)."""
    if len(pairs) != 1:
        return _each(_node(pairs), None)
    ((key, h),) = pairs

    def spread_one(x: Any, resource: dict, out: list) -> None:
        if isinstance(x, list):
            for y in x:
                if isinstance(y, dict):
                    z = y.get(key)
                    if z is not None:
                        h(z, resource, out)
        elif isinstance(x, dict):
            z = x.get(key)
            if z is not None:
                h(z, resource, out)
    return spread_one


def _compile_steps(steps: tuple[Step, ...], ctx: str,
                   leaf_for: Callable[[str], Handler | None]) -> list[tuple[str, Handler]]:
    """(key, handler of that key's value) on a *ctx* object for the path *steps* (at least one),
    whose elements end in ``leaf_for(their type)``. Raises _Dynamic."""
    step, rest = steps[0], steps[1:]
    pairs = []
    for key, t in _step_targets(ctx, step):
        if not rest:
            child = leaf_for(t)
            if child is not None:
                pairs.append((key, _each(child, step.where)))
            continue
        sub = _compile_steps(rest, t, leaf_for)
        if sub:
            pairs.append((key, _each(_node(sub), step.where) if step.where is not None
                          else _each_node(sub)))
    return pairs


def _compile_relative(simple: SimplePath, ctx: str,
                      leaf_for: Callable[[str], Handler | None]) -> Handler | None:
    """A handler of one value of type *ctx* for a simple path evaluated on it (``walk``)."""
    m = model()
    if simple.root is not None and ctx != simple.root and not m.is_a(ctx, simple.root):
        return None
    if simple.steps:
        pairs = _compile_steps(simple.steps, ctx, leaf_for)
        return _node(pairs) if pairs else None
    leaf = leaf_for(ctx)
    if leaf is None or simple.root is None:
        return leaf

    def rooted(v: Any, resource: dict, out: list) -> None:  # a type name: only an object
        if isinstance(v, dict):
            leaf(v, resource, out)
    return rooted


def _composite_row(code: str, combo: tuple) -> CompositeValue:
    """The maker of a composite row whose components are rows in the making: equal exactly
    when the built rows would be (and cheaper to hash)."""
    return _COMPOSITE(code, tuple([make(*fields) for make, fields in combo]))


def _composite_leaf(p: SearchParam, comps: list, ctx: str) -> Handler | None:
    """The handler of one element a composite's expression matched (type *ctx*): its rows."""
    code = p.code
    comp_handlers = []
    #: per component, the keys of the element it reads (None: the element itself)
    needs: list[frozenset[str]] | None = []
    for comp, compiled in comps:
        handlers = []
        keys: set[str] | None = set()
        for alt in compiled.alternatives:
            def leaf_for(t: str, comp: Any = comp,
                         ref_types: Any = alt.ref_types) -> Handler | None:
                # a few R5 components name a SearchParameter the package lacks: type by value
                return _leaf(comp.type or _PARAM_TYPE_OF.get(t), t, code, p, ref_types)
            h = _compile_relative(alt.simple, ctx, leaf_for)
            if h is not None:
                handlers.append(h)
                if alt.simple.steps and keys is not None:
                    keys.update(k for k, _ in _step_targets(ctx, alt.simple.steps[0]))
                else:
                    keys = None
        if not handlers:
            return None  # this component never has a value: no combination ever
        comp_handlers.append(tuple(handlers))
        if needs is not None:
            needs = None if keys is None else [*needs, frozenset(keys)]
    comp_handlers = tuple(comp_handlers)

    def composite(v: Any, resource: dict, out: list) -> None:
        per_component = []
        complete = True
        for handlers in comp_handlers:  # every one, even after an empty one (may raise)
            rows: list = []
            for h in handlers:
                h(v, resource, rows)
            per_component.append(dict.fromkeys(rows))
            complete = complete and bool(rows)
        if complete:
            for combo in itertools.islice(itertools.product(*per_component), MAX_COMBINATIONS):
                out.append((_composite_row, (code, combo)))
    # an element without any key a component reads gives no row (and then whether another
    # component would have raised does not matter): skipped by the caller
    composite.needs = tuple(needs) if needs else None  # type: ignore[attr-defined]
    return composite


def _compile_param(p: SearchParam, rtype: str) -> tuple[list[tuple[str, Handler]], list[Handler]]:
    """(top-level key, handler) pairs and whole-resource handlers of one parameter on *rtype*.

    Raises _Dynamic (or any compile error) when it cannot be compiled: then it is interpreted.
    """
    compiled = compile_expression(p.expression)
    if not compiled.fast:
        raise _Dynamic
    if p.type == "composite":
        comps = []
        for comp in p.components:
            cc = compile_expression(comp.expression)
            if not cc.fast:
                raise _Dynamic
            comps.append((comp, cc))
        leaves: dict[str, Handler | None] = {}

        def composite_for(t: str) -> Handler | None:
            if t not in leaves:
                leaves[t] = _composite_leaf(p, comps, t)
            return leaves[t]
        leaf_of: Callable[[str, frozenset[str] | None], Handler | None] = (
            lambda t, ref_types: composite_for(t))
    else:
        leaf_of = lambda t, ref_types: _leaf(p.type, t, p.code, p, ref_types)  # noqa: E731
    m = model()
    keyed: list[tuple[str, Handler]] = []
    whole: list[Handler] = []
    for alt in compiled.alternatives:
        simple = alt.simple
        if simple.root is not None and rtype != simple.root and not m.is_a(rtype, simple.root):
            continue
        leaf_for = lambda t, r=alt.ref_types: leaf_of(t, r)  # noqa: E731
        if simple.steps:
            keyed.extend(_compile_steps(simple.steps, rtype, leaf_for))
        else:  # the resource itself (``Observation`` in a composite)
            leaf = leaf_for(rtype)
            if leaf is not None:
                whole.append(leaf)
    return keyed, whole


#: parameter types that give rows (``_convert`` gives none for the others: ``special``)
_ROW_TYPES = frozenset({"token", "string", "reference", "date", "number", "quantity", "uri",
                        "composite"})
#: an expression with these may read more than the keys it names
_REFLECTIVE = ("children", "descendants", "resolve", "%", "$")


class _NotPlain(Exception):
    """A value ``_plain_first`` does not know fhirpathpy's answer for."""


def _first_of(p: SearchParam, rtype: str) -> tuple[SimplePath, ...] | None:
    """The paths of an expression ``(a.b | c).first()`` (``Appointment.date``) whose steps are
    plain elements (no choice, ``ofType``, ``where``, ``Resource``), else None."""
    if p.type == "composite" or not p.expression:
        return None
    alts = split_union(p.expression)
    if len(alts) != 1 or not alts[0].endswith(").first()"):
        return None
    inner = alts[0][: -len(".first()")]
    if strip_parens(inner) == inner:  # not one pair of parentheses around the union
        return None
    m = model()
    paths = []
    for text in split_union(strip_parens(inner)):
        path = parse_simple_path(text)
        if path is None or path.root not in (None, rtype) or not path.steps:
            return None
        ctx = rtype
        for step in path.steps:
            if (step.of_type is not None or step.where is not None
                    or m.choices.get(f"{ctx}.{step.name}") is not None):
                return None
            ctx, _ = m.element(ctx, step.name)
            if ctx == "Resource":
                return None
        paths.append(path)
    return tuple(paths)


def _plain_first(paths: tuple[SimplePath, ...], resource: dict) -> tuple[bool, str | None]:
    """(found, value) of ``(paths).first()`` when every value on the way is plain JSON: objects
    (not resources) or lists of them, strings at the end, no ``_element`` siblings; there the
    union is the values in order and fhirpathpy gives the first untyped. Raises _NotPlain."""
    found, first = False, None
    for path in paths:
        nodes: list = [resource]
        last = len(path.steps) - 1
        for i, step in enumerate(path.steps):
            name, extension = step.name, "_" + step.name
            below = []
            for node in nodes:
                if extension in node or (node is not resource and "resourceType" in node):
                    raise _NotPlain
                x = node.get(name)
                if x is None:
                    continue
                if i == last:
                    if not isinstance(x, str):
                        raise _NotPlain
                    if not found:
                        found, first = True, x
                elif isinstance(x, dict):
                    below.append(x)
                elif isinstance(x, list) and all(isinstance(y, dict) for y in x):
                    below.extend(x)
                else:
                    raise _NotPlain
            nodes = below
    return found, first


class _Generic:
    """A parameter run by ``extract_param`` (not a simple path, or dynamically typed)."""

    __slots__ = ("param", "prefixes", "constant", "memo", "first")

    def __init__(self, p: SearchParam, rtype: str) -> None:
        self.param = p
        #: ``(a | b).first()``: the paths, evaluated here when the values are plain
        self.first = _first_of(p, rtype)
        texts = [p.expression or "", *(c.expression for c in p.components)]
        #: the JSON keys it can read start with one of these (a choice: ``deceased`` ->
        #: ``deceasedBoolean``; ``contained``: ``#id`` references); None: it may read anything
        self.prefixes: tuple[str, ...] | None = None
        if not any(r in text for text in texts for r in _REFLECTIVE):
            self.prefixes = tuple({"contained", *(name for text in texts
                                                  for name in _IDENT.findall(text))})
        self.constant: list[IndexValue] | None = None  #: its rows when it reads no key
        #: its rows by the scalar values of the keys it reads (``deceasedBoolean: false``)
        self.memo: dict[tuple, list[IndexValue]] = {}

    def rows(self, resource: dict, keys: list[str] | None) -> list[IndexValue]:
        """Its rows (raises as ``extract_param``); *keys*: the keys it reads that are there."""
        if keys is None:
            if self.constant is None:
                self.constant = extract_param(resource, self.param)
            return self.constant
        if self.first is not None:
            try:
                found, value = _plain_first(self.first, resource)
            except _NotPlain:
                pass
            else:
                if not found:
                    return []
                p = self.param
                return list(dict.fromkeys(_convert(p.type, p.code, value, None, resource, p, None)))
        if self.prefixes is None:
            return extract_param(resource, self.param)
        memo_key = []
        for k in keys:
            v = resource[k]
            cls = v.__class__
            if cls is str or cls is bool or cls is int or v is None:
                memo_key.append((k, cls, v))
            elif cls is float:
                memo_key.append((k, cls, repr(v)))
            else:  # an object or a list: not kept
                return extract_param(resource, self.param)
        memo_key = tuple(memo_key)
        rows = self.memo.get(memo_key)
        if rows is None:
            rows = extract_param(resource, self.param)
            if len(self.memo) >= 256:
                self.memo.clear()
            self.memo[memo_key] = rows
        return rows


class _Plan:
    """The compiled extraction of one resource type."""

    __slots__ = ("params", "by_key", "whole", "generic", "codes")

    def __init__(self, rtype: str, params: Mapping[str, SearchParam]) -> None:
        self.params = params
        by_key: dict[str, list] = {}
        #: (code, handler, the key sets each of which must meet the resource, or None)
        self.whole: list[tuple[str, Handler, tuple[frozenset[str], ...] | None]] = []
        self.generic: list[_Generic] = []
        self.codes: dict[str, SearchParam] = {}
        for p in params.values():
            if not p.expression or p.code in NOT_INDEXED:
                continue
            self.codes[p.code] = p
            if p.type not in _ROW_TYPES:
                continue  # special: implemented by the search interaction, no rows
            try:
                keyed, whole = _compile_param(p, rtype)
            except Exception:  # noqa: BLE001 - not compiled: interpreted (errors logged then)
                self.generic.append(_Generic(p, rtype))
                continue
            for key, h in keyed:
                by_key.setdefault(key, []).append((p.code, h))
            self.whole.extend((p.code, h, getattr(h, "needs", None)) for h in whole)
        for g in self.generic:  # a generic parameter: marked when a key it may read is there
            for key in by_key:
                if self._reads(g, key):
                    by_key[key].append((g.param.code, None))
        self.by_key: dict[str, tuple] = {k: tuple(v) for k, v in by_key.items()}

    @staticmethod
    def _reads(g: _Generic, key: str) -> bool:
        return g.prefixes is None or key.lstrip("_").startswith(g.prefixes)

    def other_key(self, key: str) -> tuple:
        """The handlers of a key no compiled parameter reads (only generic ones may)."""
        handlers = tuple((g.param.code, None) for g in self.generic if self._reads(g, key))
        if len(self.by_key) < 1000:  # bounded: clients may send any key
            self.by_key[key] = handlers
        return handlers


_compiled: dict[str, _Plan] = {}
#: parameters searched on the resources table itself (``_id``: its id, ``_lastUpdated``: its
#: timestamp) or not as an index (``_in``: list membership), so never extracted
NOT_INDEXED = frozenset({"_id", "_lastUpdated", "_in"})


def _compiled_plan(rtype: str) -> _Plan:
    params = params_for(rtype)
    plan = _compiled.get(rtype)
    if plan is None or plan.params is not params:  # first use, or parameters registered since
        plan = _compiled[rtype] = _Plan(rtype, params)
    return plan


def _failed(p: SearchParam, rtype: str, resource: dict) -> None:
    _log.debug("search parameter %s (%s) failed on %s/%s", p.code, p.url, rtype,
               resource.get("id"), exc_info=True)


def _build(out: list, failed: set[str] | None, plan: _Plan, rtype: str,
           resource: dict) -> list[IndexValue]:
    """The row objects of the ``(maker, fields)`` rows, without duplicates or failed parameters."""
    if failed:
        out = [r for r in out if r[1][0] not in failed]
    try:
        return [make(*fields) for make, fields in dict.fromkeys(out)]
    except TypeError:  # an unhashable field (odd input): that parameter fails, as in extract_param
        by_code: dict[str, list] = {}
        for r in out:
            by_code.setdefault(r[1][0], []).append(r)
        rows: list[IndexValue] = []
        for code, group in by_code.items():
            try:
                rows.extend(make(*fields) for make, fields in dict.fromkeys(group))
            except TypeError:
                _failed(plan.codes[code], rtype, resource)
        return rows


def _extract_compiled(resource: dict, rtype: str) -> list[IndexValue]:
    plan = _compiled_plan(rtype)
    by_key = plan.by_key
    out: list = []
    failed: set[str] | None = None
    marked: dict[str, list[str]] | None = None
    for key, x in resource.items():
        handlers = by_key.get(key)
        if handlers is None:
            handlers = plan.other_key(key)
        for code, h in handlers:
            if h is None:  # a generic parameter may read this key
                if marked is None:
                    marked = {}
                marked.setdefault(code, []).append(key)
            elif x is not None:
                try:
                    h(x, resource, out)
                except Exception:  # noqa: BLE001 - an odd but valid input: the parameter is skipped
                    if failed is None:
                        failed = set()
                    if code not in failed:
                        failed.add(code)
                        _failed(plan.codes[code], rtype, resource)
    for code, h, needs in plan.whole:
        if needs is not None:
            for keys in needs:
                if keys.isdisjoint(resource):
                    break
            else:
                needs = None
            if needs is not None:
                continue  # a component reads none of the keys there: no combination
        try:
            h(resource, resource, out)
        except Exception:  # noqa: BLE001
            if failed is None:
                failed = set()
            if code not in failed:
                failed.add(code)
                _failed(plan.codes[code], rtype, resource)
    rows = _build(out, failed, plan, rtype, resource) if out else []
    for g in plan.generic:
        # no key it reads is there (every key marks the generic parameters that may read it):
        # its rows are then those of any resource of the type without them
        try:
            rows.extend(g.rows(resource, marked.get(g.param.code) if marked else None))
        except Exception:  # noqa: BLE001 - not kept: logged on every call, as before
            _failed(g.param, rtype, resource)
    return rows


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
        plan = tuple((p, top_level_keys(p.expression, rtype)) for p in params.values()
                     if p.expression and p.code not in NOT_INDEXED)
        cached = _plans[rtype] = (params, plan)
    return cached[1]


def extract(resource: dict, *, fast: bool = True) -> list[IndexValue]:
    """Every index row of a resource, for every parameter of its type (never raises).

    *fast* = False evaluates every expression with fhirpathpy (the reference, to compare).
    """
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rtype, str):
        return []
    if fast:
        return _extract_compiled(resource, rtype)
    return _extract_interpreted(resource, rtype, fast=False)


def _extract_interpreted(resource: dict, rtype: str, *, fast: bool) -> list[IndexValue]:
    """``extract`` parameter by parameter with ``extract_param`` (the paths interpreted)."""
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
