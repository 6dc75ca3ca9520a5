"""Index values (``extract``) as the rows the storage keeps, one kind per parameter type.

Text is clipped to :data:`MAX_TEXT` characters (a B-tree key has to stay small; longer
values compare on their prefix), absent parts are stored as "" and open range ends as
+-MAX_FLOAT, so every column is NOT NULL and takes part in its table's key. Rows are
de-duplicated (a resource listing a code twice is indexed once).

Encodings beyond the plain columns:
- ``[param]:of-type`` token rows: an identifier's type system and code, and its value in ``text``;
- ``[param]:identifier`` token rows: a reference's ``identifier`` (for ``:identifier``);
- reference rows to an absolute or canonical URL: ``target_type`` "", the URL in ``target_id``;
- composite rows (two components): each component as (system, code) and/or a range, see
  migration 0004.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..storage.repository import MAX_TEXT, IndexRow
from .extract import (CompositeValue, DateValue, IndexValue, NumberValue, OfTypeValue, QuantityValue,
                      ReferenceValue, StringValue, TokenValue, UriValue, extract)

MAX_FLOAT = 1e308


def _clip(value: str | None) -> str:
    return value[:MAX_TEXT] if value else ""


def _string(v: StringValue) -> IndexRow:
    return IndexRow("string", v.param, (_clip(v.normalised), _clip(v.exact)))


def _token(v: TokenValue) -> IndexRow:
    return IndexRow("token", v.param, (_clip(v.system), _clip(v.code), _clip(v.text)))


def _of_type(v: OfTypeValue) -> IndexRow:
    return IndexRow("token", f"{v.param}:of-type", (_clip(v.type_system), _clip(v.type_code), _clip(v.value)))


def _reference(v: ReferenceValue) -> IndexRow | None:
    if v.target_type and v.target_id:
        return IndexRow("reference", v.param, (v.target_type, _clip(v.target_id), _clip(v.version)))
    if v.url:
        return IndexRow("reference", v.param, ("", _clip(v.url), _clip(v.version)))
    return None


def _date(v: DateValue) -> IndexRow:
    return IndexRow("date", v.param, (v.low, v.high))


def _number(v: NumberValue) -> IndexRow:
    return IndexRow("number", v.param, (float(v.low), float(v.high)))


def _quantity(v: QuantityValue) -> IndexRow:
    low = float(v.low) if v.low is not None else -MAX_FLOAT
    high = float(v.high) if v.high is not None else MAX_FLOAT
    return IndexRow("quantity", v.param, (_clip(v.system), _clip(v.code), low, high))


def _uri(v: UriValue) -> IndexRow:
    return IndexRow("uri", v.param, (_clip(v.uri),))


def _composite(v: CompositeValue) -> IndexRow | None:
    if len(v.components) != 2:
        return None
    first, second = _slot(v.components[0]), _slot(v.components[1])
    if first is None or second is None:
        return None
    return IndexRow("composite", v.param, (first[0], first[1], *second))


#: the row of each kind of index value (a dict lookup: a ``match`` on classes cost twice as much)
_ROW: dict[type, Any] = {StringValue: _string, TokenValue: _token, OfTypeValue: _of_type,
                         ReferenceValue: _reference, DateValue: _date, NumberValue: _number,
                         QuantityValue: _quantity, UriValue: _uri, CompositeValue: _composite}


def _slot(v: IndexValue) -> tuple[Any, ...] | None:
    """A composite's component as (system, code[, low, high]) (migration 0004's columns)."""
    match v:
        case TokenValue() if v.code is not None:
            return (_clip(v.system), _clip(v.code), -MAX_FLOAT, MAX_FLOAT)
        case StringValue():
            return ("", _clip(v.normalised), -MAX_FLOAT, MAX_FLOAT)
        case ReferenceValue() if v.target_type and v.target_id:
            return ("", _clip(f"{v.target_type}/{v.target_id}"), -MAX_FLOAT, MAX_FLOAT)
        case UriValue():
            return ("", _clip(v.uri), -MAX_FLOAT, MAX_FLOAT)
        case QuantityValue():
            return (_clip(v.system), _clip(v.code), float(v.low) if v.low is not None else -MAX_FLOAT,
                    float(v.high) if v.high is not None else MAX_FLOAT)
        case NumberValue():
            return ("", "", float(v.low), float(v.high))
        case DateValue():
            return ("", "", float(v.low), float(v.high))
    return None


def rows(values: Iterable[IndexValue]) -> list[IndexRow]:
    out: dict[IndexRow, None] = {}
    for v in values:
        if isinstance(v, ReferenceValue) and v.identifier_value:
            out[IndexRow("token", f"{v.param}:identifier",
                         (_clip(v.identifier_system), _clip(v.identifier_value), ""))] = None
        row = _ROW[type(v)](v)
        if row is not None:
            out[row] = None
        if isinstance(v, QuantityValue) and v.unit and v.unit != v.code and row is not None:
            # [number]||[unit] matches the code or the human unit (search.html#quantity)
            out[IndexRow("quantity", v.param, ("", _clip(v.unit), *row.values[2:]))] = None
    return list(out)


def index_rows(resource: dict) -> list[IndexRow]:
    """Every search index row of a resource (wire JSON)."""
    return rows(extract(resource))
