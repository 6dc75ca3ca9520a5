"""A search request parsed into a plain value before any SQL (and formatted back for links)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from ..errors import BadRequest
from ..storage.repository import Token
from .tokens import clip

#: result parameters handled by the search interaction itself
RESULT_PARAMS = {"_count", "_format", "_pretty", "_cursor", "_total", "_summary", "_elements"}
#: the search parameters this version supports, for every type (``identifier`` where it exists)
SUPPORTED = ("_id", "identifier")


@dataclass(frozen=True, slots=True)
class Criteria:
    ids: tuple[str, ...] | None = None
    tokens: tuple[tuple[Token, ...], ...] = ()
    #: parameters (name, value) that were used, in order, for the self link
    used: tuple[tuple[str, str], ...] = ()
    #: parameters that are not supported (ignored unless handling=strict)
    unknown: tuple[str, ...] = ()

    def to_query(self) -> str:
        return urlencode(self.used)

    def key(self) -> str:
        """The same string for the same criteria in any order (a lock key)."""
        return urlencode(sorted(self.used))

    @property
    def empty(self) -> bool:
        return self.ids is None and not self.tokens


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
    for name, value in params:
        if name in RESULT_PARAMS:
            continue
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
