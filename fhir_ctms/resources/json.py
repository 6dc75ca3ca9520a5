"""FHIR JSON in and out: orjson, with the checks the spec asks of a JSON body.

Decimals keep their precision (R5 json.html: a decimal's precision is significant, ``1.50`` is
not ``1.5``): a body with anything that looks like a decimal number is parsed again with the
standard library's parser into ``Decimal`` values, which are written back exactly as they were
read. orjson alone would turn them into floats; it still parses (and validates) every body first.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

from ..errors import BadRequest, Issue
from .registry import is_resource_type


def loads(body: bytes | str) -> Any:
    """Parse JSON text; malformed JSON (or nesting deeper than orjson allows) is a 400.

    A NUL character is refused too: FHIR strings may not contain it, and
    PostgreSQL's JSONB cannot store it."""
    if (b"\\u0000" if isinstance(body, bytes) else "\\u0000") in body:
        raise BadRequest("JSON strings may not contain the NUL character (\\u0000)",
                         issues=[Issue("value", "JSON strings may not contain the NUL character")])
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        raise BadRequest("Malformed JSON: " + str(exc).split(":")[0],
                         issues=[Issue("structure", f"Malformed JSON: {exc}")]) from exc
    if _DECIMAL.search(body if isinstance(body, bytes) else body.encode()) is None:
        return value
    return json.loads(body, parse_float=Decimal, parse_int=_integer)  # valid JSON: orjson has just parsed it


def _integer(text: str) -> int | Decimal:
    """An integer of the exact parse: a Decimal beyond 64 bits (orjson reads one as a float, and
    cannot write a Python int that large; a Decimal it writes back digit for digit)."""
    value = int(text)
    return value if -2**63 <= value < 2**64 else Decimal(text)


#: perhaps a decimal number: a digit followed by a decimal point, an exponent or 18 more digits
#: (perhaps beyond 64 bits). Text that only looks like one (an OID such as ``urn:oid:2.16.840``,
#: a UUID's ``3e``) costs the second parse and nothing else: ~6 us for a 700-byte Patient, while
#: a regex that looked only where a JSON value can start cost 9-12 us on every body (Python's
#: ``re`` tries it at every ``"``) against ~3 us for this one.
_DECIMAL = re.compile(rb"[0-9](?:[.eE]|[0-9]{18})")


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_exact)


def dumps_pretty(value: Any) -> bytes:
    return orjson.dumps(value, default=_exact, option=orjson.OPT_INDENT_2)


def canonical(value: Any) -> bytes:
    """Sorted-key serialisation: the same bytes whatever database stored the value."""
    return orjson.dumps(value, default=_exact, option=orjson.OPT_SORT_KEYS)


def parse_resource(body: bytes | str, expected_type: str | None = None) -> dict[str, Any]:
    """Parse a request body that must be one resource (of ``expected_type`` if given)."""
    value = loads(body)
    if not isinstance(value, dict):
        raise BadRequest("The body is not a JSON object", issues=[Issue("structure", "The body is not a JSON object")])
    rtype = value.get("resourceType")
    if not isinstance(rtype, str) or not is_resource_type(rtype):
        raise BadRequest(f"Unknown or missing resourceType {rtype!r}",
                         issues=[Issue("structure", f"Unknown or missing resourceType {rtype!r}",
                                       expression=("resourceType",))])
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"resourceType {rtype} does not match the URL's type {expected_type}",
                         issues=[Issue("invalid", f"resourceType {rtype} does not match the URL's type {expected_type}",
                                       expression=("resourceType",))])
    return value
