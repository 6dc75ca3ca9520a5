"""Identifier tokens of a resource not yet stored (a transaction's own entries, matched by
conditional references in ``interactions/bundle.py``); stored resources are searched through
the index (``extract``, ``index``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Token:
    """An identifier token; in a query, ``system=None`` matches any system and ``""`` no system."""

    param: str
    system: str | None
    code: str

#: index values longer than this are compared on their prefix (a B-tree key has to stay small)
MAX_TOKEN = 255


def clip(value: str) -> str:
    return value[:MAX_TOKEN]


def identifier_tokens(resource: dict[str, Any]) -> list[Token]:
    value = resource.get("identifier")
    items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    out = []
    for ident in items:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            system = ident.get("system") if isinstance(ident.get("system"), str) else ""
            out.append(Token("identifier", clip(system), clip(ident["value"])))
    return out


def extract(resource: dict[str, Any]) -> list[Token]:
    return identifier_tokens(resource)
