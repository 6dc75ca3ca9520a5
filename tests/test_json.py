"""FHIR JSON parsing (fhir_ctms.resources.json): decimals and integers beyond 64 bits keep the
exact text they were written with, whatever the layout of the body."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_ctms.resources import json as fjson

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)  # both 400
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=25)
_layouts = st.sampled_from([{}, {"indent": 2}, {"separators": (",", ":")}, {"indent": "\t"},
                            {"separators": (" , ", " :  ")}])


def _integer(text: str) -> int | Decimal:  # orjson reads an integer beyond 64 bits as a float
    return int(text) if -2**63 <= int(text) < 2**64 else Decimal(text)


def _has_decimal(value: object) -> bool:
    if isinstance(value, Decimal):
        return True
    if isinstance(value, list):
        return any(_has_decimal(v) for v in value)
    if isinstance(value, dict):
        return any(_has_decimal(v) for v in value.values())
    return False


@settings(max_examples=400, deadline=None)
@given(_json_values, _layouts)
def test_every_decimal_is_parsed_exactly(value: object, layout: dict) -> None:
    body = json.dumps(value, **layout).encode()
    exact = json.loads(body, parse_float=Decimal, parse_int=_integer)
    if _has_decimal(exact):  # never missed: such a body takes the exact parse
        assert fjson._DECIMAL.search(body) is not None
    parsed = fjson.loads(body)
    assert parsed == exact
    assert fjson.dumps(parsed) == fjson.dumps(exact)


def test_an_integer_beyond_64_bits_keeps_its_digits() -> None:
    parsed = fjson.loads(b'{"a": 123456789012345678901234567890, "b": [18446744073709551615]}')
    assert parsed == {"a": Decimal("123456789012345678901234567890"), "b": [18446744073709551615]}
    assert fjson.dumps(parsed) == b'{"a":123456789012345678901234567890,"b":[18446744073709551615]}'


def test_a_decimal_keeps_its_written_precision() -> None:
    body = b'{"resourceType":"Observation","valueQuantity":{"value":1.50},"x":[ -2.0E3, 7 ]}'
    parsed = fjson.loads(body)
    assert parsed["valueQuantity"]["value"] == Decimal("1.50")
    assert fjson.dumps(parsed) == b'{"resourceType":"Observation","valueQuantity":{"value":1.50},"x":[-2.0E+3,7]}'
