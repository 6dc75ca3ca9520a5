"""Conditional references inside a transaction matched against the Bundle's own (not yet stored)
entries: ``_id`` and ``identifier`` only. Everything else searches through ``parse`` and the index."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from ..errors import BadRequest
from .tokens import Token, clip, extract

#: result parameters handled by the search interaction itself
RESULT_PARAMS = {"_count", "_format", "_pretty", "_cursor", "_total", "_summary", "_elements"}
#: the search parameters this version supports, for every type (``identifier`` where it exists)
SUPPORTED = ("_id", "identifier")
#: at most this many values (OR-ed or AND-ed) in one search: a bound on the SQL it becomes
MAX_VALUES = 100


@dataclass(frozen=True, slots=True)
class Criteria:
    ids: tuple[str, ...] | None = None
    tokens: tuple[tuple[Token, ...], ...] = ()
    #: parameters (name, value) that were used, in order, for the self link
    used: tuple[tuple[str, str], ...] = ()
    #: parameters that are not supported (ignored unless handling=strict)
    unknown: tuple[str, ...] = ()

    def key(self) -> str:
        """The same string for the same criteria in any order (a lock key)."""
        return urlencode(sorted(self.used))

    @property
    def empty(self) -> bool:
        return self.ids is None and not self.tokens


def matches(crit: Criteria, rid: str, resource: dict) -> bool:
    """Whether a resource not yet stored matches the criteria (a transaction's own entries)."""
    if crit.ids is not None and rid not in crit.ids:
        return False
    tokens = extract(resource)
    return all(any(t.param == q.param and t.code == q.code and (q.system is None or t.system == q.system)
                   for t in tokens for q in alternatives) for alternatives in crit.tokens)


def _token(value: str) -> Token:
    if "|" in value:
        system, code = value.split("|", 1)
        if not code:
            raise BadRequest(f"identifier={value!r}: a system without a code is not supported")
        return Token("identifier", clip(system), clip(code))
    return Token("identifier", None, clip(value))


def parse(params: list[tuple[str, str]] | tuple[tuple[str, str], ...], *, strict: bool = False) -> Criteria:
    ids: set[str] | None = None
    tokens: list[tuple[Token, ...]] = []
    used: list[tuple[str, str]] = []
    unknown: list[str] = []
    values = 0
    for name, value in params:
        if "\x00" in name or "\x00" in value:
            raise BadRequest("Search parameters may not contain the NUL character")
        if name in RESULT_PARAMS or not value.strip(","):
            continue  # a parameter without a value is ignored (R5 search.html#errors)
        values += value.count(",") + 1
        if values > MAX_VALUES:
            raise BadRequest(f"At most {MAX_VALUES} search values are allowed in one request")
        if name == "_id":
            wanted = {v for v in value.split(",") if v}
            ids = wanted if ids is None else ids & wanted
        elif name == "identifier":
            tokens.append(tuple(_token(v) for v in value.split(",") if v))
        else:
            if strict:
                raise BadRequest(f"Unknown or unsupported search parameter {name!r}")
            unknown.append(name)
            continue
        used.append((name, value))
    return Criteria(tuple(sorted(ids)) if ids is not None else None, tuple(tokens), tuple(used), tuple(unknown))


def parse_query(query: str, *, strict: bool = True) -> Criteria:
    """Criteria of a conditional interaction (``If-None-Exist`` or the URL's query)."""
    return parse(parse_qsl(query, keep_blank_values=True), strict=strict)
