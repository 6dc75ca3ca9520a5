"""Index values (``extract``) as the rows the storage keeps, one kind per parameter type.

Text is clipped to :data:`MAX_TEXT` characters (a B-tree key has to stay small; longer
values compare on their prefix), absent parts are stored as "" and open range ends as
+-MAX_FLOAT, so every column is NOT NULL and takes part in its table's key. Rows are
de-duplicated (a resource listing a code twice is indexed once).

Encodings beyond the plain columns:
- ``[param]:of-type`` token rows: an identifier's type system and code, and its value in ``text``;
- ``[param]:identifier`` token rows: a reference's ``identifier`` (for ``:identifier``);
- reference rows to an absolute or canonical URL: ``target_type`` "", the URL in ``target_id``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..storage.repository import IndexRow
from .extract import (CompositeValue, DateValue, IndexValue, NumberValue, OfTypeValue, QuantityValue,
                      ReferenceValue, StringValue, TokenValue, UriValue, extract)

MAX_TEXT = 255
MAX_FLOAT = 1e308


def _clip(value: str | None) -> str:
    return value[:MAX_TEXT] if value else ""


def _row(v: IndexValue) -> IndexRow | None:
    match v:
        case StringValue():
            return IndexRow("string", v.param, (_clip(v.normalised), _clip(v.exact)))
        case TokenValue():
            return IndexRow("token", v.param, (_clip(v.system), _clip(v.code), _clip(v.text)))
        case OfTypeValue():
            return IndexRow("token", f"{v.param}:of-type", (_clip(v.type_system), _clip(v.type_code), _clip(v.value)))
        case ReferenceValue() if v.target_type and v.target_id:
            return IndexRow("reference", v.param, (v.target_type, _clip(v.target_id), _clip(v.version)))
        case ReferenceValue() if v.url:
            return IndexRow("reference", v.param, ("", _clip(v.url), _clip(v.version)))
        case DateValue():
            return IndexRow("date", v.param, (v.low, v.high))
        case NumberValue():
            return IndexRow("number", v.param, (float(v.low), float(v.high)))
        case QuantityValue():
            low = float(v.low) if v.low is not None else -MAX_FLOAT
            high = float(v.high) if v.high is not None else MAX_FLOAT
            return IndexRow("quantity", v.param, (_clip(v.system), _clip(v.code), low, high))
        case UriValue():
            return IndexRow("uri", v.param, (_clip(v.uri),))
        case CompositeValue():
            return None  # composite parameters are searched through their components (not yet)
    return None


#: searched on the resources table itself (its id and its timestamp), never indexed twice
_OWN_COLUMNS = frozenset({"_id", "_lastUpdated"})


def rows(values: Iterable[IndexValue]) -> list[IndexRow]:
    out: dict[IndexRow, None] = {}
    for v in values:
        if v.param in _OWN_COLUMNS:
            continue
        if isinstance(v, ReferenceValue) and v.identifier_value:
            out[IndexRow("token", f"{v.param}:identifier",
                         (_clip(v.identifier_system), _clip(v.identifier_value), ""))] = None
        row = _row(v)
        if row is not None:
            out[row] = None
        if isinstance(v, QuantityValue) and v.unit and v.unit != v.code and row is not None:
            # [number]||[unit] matches the code or the human unit (search.html#quantity)
            out[IndexRow("quantity", v.param, ("", _clip(v.unit), *row.values[2:]))] = None
    return list(out)


def index_rows(resource: dict) -> list[IndexRow]:
    """Every search index row of a resource (wire JSON)."""
    return rows(extract(resource))
