"""A search's criteria against a resource not stored yet: a transaction's own entries.

A conditional reference (``Patient?identifier=...``) in a transaction may name a resource
created by the same Bundle, which has no index rows yet. Conditional references identify
resources, so ``_id`` and ``identifier`` (token) are evaluated here, from the resource itself;
any other criterion gives ``None`` (undecided: the entry is not counted as a match).
"""

from __future__ import annotations

from typing import Any

from .query import Clause, SearchQuery, Value


def matches_unsaved(q: SearchQuery, rid: str, resource: dict[str, Any]) -> bool | None:
    for c in q.clauses:
        if not isinstance(c, Clause) or c.modifier or c.chain is not None:
            return None
        if c.param == "_id":
            if rid not in {v.code if v.code is not None else v.text for v in c.values}:
                return False
        elif c.param == "identifier" and c.type == "token":
            if not any(_identifies(v, ident) for v in c.values for ident in _identifiers(resource)):
                return False
        else:
            return None
    return True


def _identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    value = resource.get("identifier")
    items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return [i for i in items if isinstance(i, dict)]


def _identifies(v: Value, ident: dict[str, Any]) -> bool:
    """search.html#token: [system]|[code], |[code] (no system), [system]|, [code]."""
    system = ident.get("system") if isinstance(ident.get("system"), str) else ""
    if v.code is not None and ident.get("value") != v.code:
        return False
    return v.system is None or v.system == system
