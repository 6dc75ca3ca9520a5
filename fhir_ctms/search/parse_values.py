"""One search value as a typed :class:`~fhir_ctms.search.query.Value` (R5 search.html).

The value side of the search parser (``parse.py`` handles names, chains and result
parameters): the escaping rules (search.html#escaping), the prefixes of the ordered types
(#prefix), the syntax of each parameter type (#date, #number, #quantity, #reference,
#string, #token, #uri, #composite) and which modifiers each type takes (#modifiers).

Values are typed the way ``extract.py`` indexes resources, with the same helpers, so the
two compare: strings through :func:`~fhir_ctms.search.extract.normalise`, numbers and
quantities with :func:`~fhir_ctms.search.extract.precision_range`, dates as [low, high) in
microseconds with :func:`~fhir_ctms.resources.dates.date_range` (a dateTime without a zone
is read as UTC on both sides), references split as ``extract`` splits stored references.

Modifier conventions (values of :class:`Value` the docstrings of ``query.py`` leave open):

* ``:missing``: ``text`` is ``"true"`` or ``"false"``;
* token ``:in`` / ``:not-in``: ``text`` is the value set's URL (as given);
* token ``:text``, ``:code-text``, ``:text-advanced`` and string ``:text``: ``text`` is the
  normalised text;
* reference ``:identifier``: ``system`` and ``code`` as for a token.

Every problem raises :class:`Invalid`; ``parse.py`` names the parameter in the 400.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from ..errors import BadRequest
from ..resources.dates import date_range
from .extract import _reference_string, normalise, precision_range
from .query import PREFIXES, Value


class Invalid(ValueError):
    """A malformed search value (or name); ``parse.py`` turns it into a BadRequest."""


#: the modifiers R5 defines (search.html#modifiers), ``iterate`` only on _include/_revinclude
KNOWN_MODIFIERS = frozenset({
    "missing", "exact", "contains", "not", "text", "in", "not-in", "below", "above",
    "identifier", "of-type", "code-text", "text-advanced", "iterate"})

#: the modifiers this server takes, per parameter type (a subset of search.html#modifiers:
#: reference ``:text``, ``:code-text`` and ``:text-advanced`` need ``Reference.display``,
#: which is not indexed). A reference's ``:[type]`` modifier is handled by the caller.
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"missing", "exact", "contains", "text"}),
    "token": frozenset({"missing", "not", "text", "in", "not-in", "above", "below", "of-type",
                        "code-text", "text-advanced"}),
    "reference": frozenset({"missing", "identifier", "above", "below"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"missing", "above", "below", "contains"}),
    "composite": frozenset(),  # "Modifiers are not used on composite parameters" (#composite)
}

_ESCAPABLE = ",$|\\"
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
#: a FHIR decimal, with the exponent search.html#number allows (``1e2``, ``5.40e-3``)
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d{1,4})?")
#: a dateTime whose ``+hh:mm`` zone lost its ``+`` to form decoding (``+`` means space)
_LOST_PLUS = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")


# --------------------------------------------------------------------------- escaping


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped; the parts keep their escapes.

    search.html#escaping: ``\\,`` ``\\$`` ``\\|`` and ``\\\\`` stand for the character itself;
    any other backslash (``xx\\xx``) is illegal.
    """
    parts: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n or text[i + 1] not in _ESCAPABLE:
                raise Invalid("a '\\' must be followed by one of , $ | \\ "
                              "(search.html#escaping; write '\\\\' for a backslash)")
            i += 2
            continue
        if ch == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def unescape(text: str) -> str:
    """The literal text of an escaped value (``a\\,b`` -> ``a,b``)."""
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


# --------------------------------------------------------------------------- entry point


def parse_value(raw: str, ptype: str, modifier: str | None = None, *,
                targets: tuple[str, ...] = (), target_type: str | None = None,
                components: tuple[str, ...] = (), comparators: tuple[str, ...] = ()) -> Value:
    """One OR-ed value (``raw``: escaped, as written) of a parameter of type ``ptype``.

    ``targets``/``target_type``: a reference parameter's target types and the type a
    ``:[type]`` modifier or a single target fixes; ``components``: a composite's component
    types, in order; ``comparators``: the prefixes the parameter allows (empty: all).
    """
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise Invalid(f":missing takes true or false, not {raw!r} (search.html#modifiermissing)")
        return Value(raw, text=raw)
    parser = _PARSERS.get(ptype)
    if parser is None:
        raise Invalid(f"parameters of type {ptype} are not supported")
    return parser(raw, modifier, targets, target_type, components, comparators)


# --------------------------------------------------------------------------- per type


def _string(raw: str, modifier, *_) -> Value:
    """search.html#string: starts-with on the normalised text; ``:exact`` keeps the text."""
    text = unescape(raw)
    return Value(raw, text=text if modifier == "exact" else normalise(text))


def _uri(raw: str, *_) -> Value:
    """search.html#uri: the whole URI, case-sensitive (``:above``/``:below``: a URL prefix)."""
    return Value(raw, text=unescape(raw))


def _token_parts(raw: str) -> tuple[str | None, str | None]:
    """(system, code) of ``[system]|[code]``: ``code`` (any system), ``|code`` (no system:
    ``""``), ``system|`` (any code: None) or ``system|code`` (search.html#token)."""
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return None, unescape(parts[0])
    if len(parts) > 2:
        raise Invalid(f"{raw!r} has more than one unescaped '|' (a token is [system]|[code])")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise Invalid("'|' alone is not a token (search.html#token)")
    return system, code or None


def _token(raw: str, modifier, *_) -> Value:
    """search.html#token, with #modifiertexttoken, #modifierin, #modifiernotin, #modifieroftype."""
    if modifier in ("text", "code-text", "text-advanced"):
        return Value(raw, text=normalise(unescape(raw)))
    if modifier in ("in", "not-in"):
        return Value(raw, text=unescape(raw))
    if modifier == "of-type":
        parts = split_escaped(raw, "|")
        if len(parts) != 3 or not all(parts):
            raise Invalid(":of-type takes [system]|[code]|[value], all three present "
                          "(search.html#modifieroftype)")
        return Value(raw, type_system=unescape(parts[0]), type_code=unescape(parts[1]),
                     text=unescape(parts[2]))
    system, code = _token_parts(raw)
    return Value(raw, system=system, code=code)


def _reference(raw: str, modifier, targets, target_type, *_) -> Value:
    """search.html#reference: ``[id]``, ``[type]/[id]``, ``[type]/[id]/_history/[version]``,
    an absolute URL, or a canonical ``[url]|[version]``; ``:identifier`` takes a token."""
    if modifier == "identifier":
        system, code = _token_parts(raw)
        return Value(raw, system=system, code=code)
    parts = split_escaped(raw, "|")
    if len(parts) > 2:
        raise Invalid(f"{raw!r} has more than one unescaped '|' (a canonical is [url]|[version])")
    text = unescape(parts[0])
    rtype, rid, version, url = _reference_string(text, {}, None)
    if rtype is None and rid is None and url is None:
        raise Invalid(f"{text!r} is not a reference: [id], [type]/[id], "
                      "[type]/[id]/_history/[version] or an absolute URL")
    if len(parts) == 2:
        if url is None:
            raise Invalid(f"{raw!r}: only an absolute (canonical) URL takes a |version")
        version = unescape(parts[1]) or None
    if url is None and target_type is not None:
        if rtype is not None and rtype != target_type:
            raise Invalid(f"{text!r} is not a {target_type} reference (modifier :{target_type})")
        rtype = target_type
    elif rtype is None and url is None and len(targets) == 1:
        rtype = targets[0]
    return Value(raw, text=url, ref_type=rtype, ref_id=rid, ref_version=version)


def _prefix(raw: str, comparators: tuple[str, ...]) -> tuple[str, str]:
    """(prefix, rest) of an ordered value; ``eq`` when there is none (search.html#prefix)."""
    head = raw[:2]
    if head not in PREFIXES:
        if head.isalpha() and raw[2:3].isdigit():
            raise Invalid(f"{head!r} is not a prefix (search.html#prefix: {', '.join(PREFIXES)})")
        return "eq", raw  # no prefix: the value itself says what is wrong, if anything
    if comparators and head not in comparators:
        raise Invalid(f"the prefix {head!r} is not allowed on this parameter")
    return head, raw[2:]


def _decimal(text: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise Invalid(f"{text!r} is not a number (search.html#number)")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise Invalid(f"{text!r} is not a number") from exc


def _number(raw: str, modifier, targets, target_type, components, comparators) -> Value:
    """search.html#number: ``[prefix]number``, ranged by its precision (``100`` = [99.5, 100.5])."""
    prefix, rest = _prefix(raw, comparators)
    d = _decimal(unescape(rest))
    low, high = precision_range(d)
    return Value(raw, prefix=prefix, number=d, low=low, high=high)


def _quantity(raw: str, modifier, targets, target_type, components, comparators) -> Value:
    """search.html#quantity: ``[prefix]number|system|code``, ``number||code`` (code or unit,
    any system) or ``number`` (any unit)."""
    prefix, rest = _prefix(raw, comparators)
    parts = split_escaped(rest, "|")
    if len(parts) not in (1, 3):
        raise Invalid(f"{raw!r} is not [prefix]number, [prefix]number|system|code "
                      "or [prefix]number||code (search.html#quantity)")
    d = _decimal(unescape(parts[0]))
    system = code = None
    if len(parts) == 3:
        system, code = unescape(parts[1]) or None, unescape(parts[2]) or None
    low, high = precision_range(d)
    return Value(raw, prefix=prefix, number=d, low=low, high=high, system=system, code=code)


def _date(raw: str, modifier, targets, target_type, components, comparators) -> Value:
    """search.html#date: ``[prefix]`` then a date, dateTime or instant, as [low, high) in
    microseconds; a partial date is its whole range (``2024`` = the year)."""
    prefix, rest = _prefix(raw, comparators)
    text = _LOST_PLUS.sub(r"\1+\2", unescape(rest))
    try:
        low, high = date_range(text)
    except BadRequest as exc:
        raise Invalid(f"{exc.diagnostics} (search.html#date: yyyy[-mm[-dd[Thh:mm[:ss[.fff]]"
                      "[Z|(+|-)hh:mm]]]])") from exc
    return Value(raw, prefix=prefix, low=low, high=high)


def _composite(raw: str, modifier, targets, target_type, components, comparators) -> Value:
    """search.html#composite: one value per component joined by ``$``, each of its own type."""
    parts = split_escaped(raw, "$")
    if len(parts) != len(components):
        raise Invalid(f"{raw!r} has {len(parts)} part(s); this composite takes {len(components)}"
                      " joined by '$' (search.html#composite)")
    values = []
    for part, ctype in zip(parts, components):
        if not part:
            raise Invalid(f"{raw!r} has an empty component")
        values.append(parse_value(part, ctype))
    return Value(raw, components=tuple(values))


_PARSERS = {
    "string": _string, "token": _token, "reference": _reference, "uri": _uri,
    "number": _number, "quantity": _quantity, "date": _date, "composite": _composite,
}
