"""Index extraction at write time: the tokens stored with each current version."""

from __future__ import annotations

from typing import Any

from ..storage.repository import Token

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
