"""The resource server's access decisions: what a bearer token's SMART scopes permit.

``api/rest.py`` verifies the token (``auth.tokens.verify_access``: the server's own, or an external
OpenID Connect provider's, ``auth/external.py``) into an
:class:`~fhir_ctms.auth.tokens.AccessGrant` carried on ``Context.access``; :func:`guard` decides,
for one interaction, whether its permission is granted at all (403 otherwise), and
:class:`GuardedSession` (which ``table.perform`` gives the handler instead of the session) applies
the grant to every read, search, include, history and write the interaction makes, so the
interactions themselves need no access code, and Bundle entries (which run through ``perform``)
are covered the same way.

Permissions (SMART App Launch 2.2, scopes-and-launch-context): ``c`` create; ``r`` read, vread,
instance history; ``u`` update, patch; ``d`` delete; ``s`` searches (type, system, compartment),
type and system history, and what ``_include``/``_revinclude`` add. v1 ``read`` is ``rs``,
``write`` ``cud`` (``auth/scopes.py``).

What a scope grants on a type, as a :class:`Filter` (a condition the resource must meet, tested
with the search machinery on its current version's index rows):

- ``system/`` and ``user/``: every resource of the type (``user/``: what a user's roles allow
  is decided when the token is issued, ``auth/roles.py``: the authorization server narrows a
  user's ``user/`` scopes to its roles, and an external provider's token is narrowed by its roles
  claim when verified, so the token's scopes are all there is to enforce here); a granular scope
  (``user/Observation.rs?category=laboratory``) its query;
- ``patient/``: the patient compartment of the token's ``patient`` (R5 CompartmentDefinition
  Patient): ``Patient`` itself by id, a type of the compartment through its compartment
  parameters (a ResearchSubject through ``subject``); types outside the compartment (no patient
  data: ResearchStudy, Practitioner, Medication...) are readable and searchable but never
  written; a ``patient/`` scope in a token without ``patient`` grants nothing;
- several scopes on one type are OR-ed: one without a condition wins; one implied by another is
  dropped; two genuinely different conditions (``?category=a`` and ``?category=b``) are not
  supported and refused with a 403 that says so.

A conditional create that finds its match (and returns it) also needs ``r`` on that resource.

Refusals: a type without permission is a 403 (read, search, write alike, and a Bundle entry:
a transaction with one fails whole). A read (or vread, instance history, update, patch, delete)
of a resource outside the filter is a 403. A write is checked after it is made, in its own
transaction: a created or updated resource outside the filter (a ``patient/`` write landing in
another patient's compartment) rolls back with 403. Searches get the filter's conditions added
(so nothing else is ever returned or counted); ``_include``d and ``_revinclude``d resources the
token cannot see are dropped silently (SMART: a server should not disclose them). A chain or
``_has`` through a type is allowed only where the token sees every resource of that type
(an unconditional ``s``), else 403: the condition cannot be applied inside the chain. A search
over several types needs the same filter on each (else 403: search type by type); a
compartment search of another compartment than the token's patient is a 403. Type and system
history keep the versions of resources the token sees now (a deleted resource has no index rows,
so under a filter its versions are not shown). Operations need an unconditional ``system/`` or
``user/`` scope on their type (``*`` at system level): ``u`` when they change state, ``r`` else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Forbidden
from ..resources.registry import AUDIT_TYPES, RESOURCE_TYPES
from ..search.parameters import compartment_params
from ..search.parse import parse
from ..search.query import Clause, Has, Include, SearchQuery
from ..search.valuesets import resolve as resolve_value_sets
from ..storage.repository import ChainLink, HistoryQuery, IndexRow, Session, Stored
from .context import Context, FhirRequest, FhirResponse

if TYPE_CHECKING:
    from ..auth.tokens import AccessGrant

#: the SMART v2 permission each interaction needs
LETTER = {"create": "c", "read": "r", "vread": "r", "history-instance": "r", "update": "u", "patch": "u",
          "delete": "d", "search-type": "s", "search-system": "s", "search-compartment": "s",
          "history-type": "s", "history-system": "s"}
_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
#: ids per look-up when testing which resources a filter lets through
_CHUNK = 50
_CHALLENGE = 'Bearer realm="fhir-ctms", error="insufficient_scope"'


def forbidden(text: str) -> Forbidden:
    return Forbidden(text, headers={"WWW-Authenticate": _CHALLENGE})


@dataclass(frozen=True, slots=True)
class Filter:
    """A condition a resource of one type must meet: search parameters (AND-ed) and a compartment."""

    params: tuple[tuple[str, str], ...] = ()
    compartment: tuple[str, str] | None = None

    def implies(self, other: "Filter") -> bool:
        """Whether every resource this lets through ``other`` lets through too."""
        return (other.compartment in (None, self.compartment)) and set(other.params) <= set(self.params)


class Guard:
    """One interaction's access: the grant and the permission letter it needs."""

    def __init__(self, grant: "AccessGrant", letter: str) -> None:
        self.grant, self.letter = grant, letter
        self._filters: dict[str, Filter | None] = {}

    # -- decisions ----------------------------------------------------------------------------

    def filter(self, rtype: str) -> Filter | None:
        """The condition on ``rtype`` (None: every resource), or 403 when nothing is granted."""
        if rtype not in self._filters:
            self._filters[rtype] = self._filter(rtype)
        return self._filters[rtype]

    def _filter(self, rtype: str) -> Filter | None:
        found: list[Filter] = []
        for sc in self.grant.scopes.resources:
            if not sc.allows(self.letter, rtype):
                continue
            if sc.context in ("system", "user"):
                f = Filter(sc.query)
            elif not self.grant.patient:
                continue  # a patient/ scope needs the launch patient
            elif rtype == "Patient":
                f = Filter((("_id", self.grant.patient), *sc.query))
            elif compartment_params("Patient", rtype):
                f = Filter(sc.query, ("Patient", self.grant.patient))
            elif self.letter in "rs":
                f = Filter(sc.query)  # outside the compartment: no patient data, read-only
            else:
                continue
            if f == Filter():
                return None
            found.append(f)
        if not found:
            raise forbidden(f"The access token does not permit {_NAMES[self.letter]} on {rtype}")
        # OR of the conditions: one implied by another adds nothing
        kept = [f for f in dict.fromkeys(found) if not any(g != f and f.implies(g) for g in found)]
        if len(kept) > 1:
            raise forbidden(f"The access token has {len(kept)} different conditions on {_NAMES[self.letter]} of "
                            f"{rtype}; a combination of granular scopes on one type is not supported")
        return kept[0]

    def unconditional(self, rtype: str) -> bool:
        try:
            return self.filter(rtype) is None
        except Forbidden:
            return False

    def _types(self) -> tuple[str, ...] | None:
        """The types a search over every type covers (None: all, unconditionally)."""
        if any(sc.type == "*" and self.letter in sc.permissions and sc.context != "patient" and not sc.query
               for sc in self.grant.scopes.resources):
            return None
        wildcard = any(sc.type == "*" and self.letter in sc.permissions for sc in self.grant.scopes.resources)
        if wildcard:
            return tuple(sorted(RESOURCE_TYPES))
        types = sorted({sc.type for sc in self.grant.scopes.resources if self.letter in sc.permissions})
        if not types:
            raise forbidden(f"The access token does not permit {_NAMES[self.letter]} on any type")
        return tuple(types)

    # -- applied to searches and resources ----------------------------------------------------------

    async def restrict(self, s: Session, q: SearchQuery) -> SearchQuery:
        """``q`` with the conditions that keep its matches within the grant added."""
        self._check_links(q.clauses)
        types = q.types
        if not types:
            types = self._types()
            if types is None:
                return q
        filters = {self.filter(t) for t in types}
        if filters == {None}:
            return replace(q, types=types)
        if len(filters) > 1:
            raise forbidden("The access token gives different access to the types of this search: "
                            "search them one type at a time")
        f = filters.pop()
        assert f is not None
        compartment = q.compartment
        if f.compartment is not None:
            if compartment not in (None, f.compartment):
                raise forbidden(f"The access token does not permit searching the compartment "
                                f"{compartment[0]}/{compartment[1]}")
            compartment = f.compartment
        clauses = q.clauses
        if f.params:
            clauses = clauses + (await self._conditions(s, types, f)).clauses
        return replace(q, types=types, clauses=clauses, compartment=compartment)

    async def _conditions(self, s: Session, types: tuple[str, ...], f: Filter,
                          more: Sequence[tuple[str, str]] = ()) -> SearchQuery:
        try:
            q = parse(types, [*more, *f.params], strict=True,
                      compartment=f.compartment if f.compartment and len(types) == 1 else None)
            q = await resolve_value_sets(q, s)
        except BadRequest as exc:  # a scope's query this server cannot evaluate: fail closed
            raise forbidden(f"The access token's scope condition cannot be evaluated: {exc.diagnostics}") from exc
        if s.unsupported(q):
            raise forbidden("The access token's scope condition uses a search this server does not support")
        return q

    def _check_links(self, clauses: Iterable[Clause | Has]) -> None:
        """Chains and ``_has`` read other types: only those the token sees wholly."""
        for c in clauses:
            if isinstance(c, Has):
                self._link(c.source_type)
                self._check_links((c.then,))
            elif c.chain is not None:
                self._link(c.target_type)
                self._check_links((c.chain,))

    def _link(self, rtype: str | None) -> None:
        if rtype is None:
            if self._types() is not None:
                raise forbidden("A chain without a target type ([param]:[type]) needs access to every type")
        elif not self.unconditional(rtype):
            raise forbidden(f"The access token does not permit searching every {rtype}: chains and _has "
                            f"through {rtype} are refused")

    async def visible(self, s: Session, rtype: str, ids: Sequence[str]) -> set[str]:
        """Which of the resources ``rtype/id`` (current versions) the grant lets through."""
        try:
            f = self.filter(rtype)
        except Forbidden:
            return set()
        if f is None:
            return set(ids)
        out: set[str] = set()
        unique = list(dict.fromkeys(ids))
        for n in range(0, len(unique), _CHUNK):
            chunk = unique[n:n + _CHUNK]
            q = await self._conditions(s, (rtype,), f, [("_id", ",".join(chunk))])
            out |= {st.id for st, _ in await s.search(q, limit=len(chunk))}
        return out

    async def keep(self, s: Session, rows: Sequence[Stored]) -> list[Stored]:
        """``rows`` less those the grant does not let through (in order)."""
        by_type: dict[str, list[str]] = {}
        for st in rows:
            by_type.setdefault(st.type, []).append(st.id)
        seen = {t: await self.visible(s, t, ids) for t, ids in by_type.items()}
        return [st for st in rows if st.id in seen[st.type]]

    async def run(self, handler: Callable[[FhirRequest, Context, Session], Awaitable[FhirResponse]],
                  req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
        """The handler on a guarded session; its writes checked before the transaction ends."""
        guarded = GuardedSession(s, self)
        res = await handler(req, ctx, guarded)
        await guarded.check_writes()
        if self.letter == "c" and res.status == 200 and res.stored is not None:
            await require_read(ctx, s, res.stored)  # a conditional create answered with its match
        return res


async def require_read(ctx: Context, s: Session, st: Stored) -> None:
    """403 unless the token may read ``st``: a conditional create that finds its match returns
    it, which a token allowed to create but not to read that resource must not see."""
    if ctx.access is None:
        return
    if st.id not in await Guard(ctx.access, "r").visible(s, st.type, [st.id]):
        raise forbidden(f"The access token does not permit read of {st.type}/{st.id}, which the "
                        "conditional create matched")


def note_denial(ctx: Context, req: FhirRequest, exc: Forbidden) -> None:
    """Remember a 403 of ``req`` on ``ctx`` for the audit trail (``ctx.denials``; once per
    refusal, however many layers it passes through). Nothing when no token applies."""
    if ctx.access is None or getattr(exc, "noted", False):
        return
    exc.noted = True  # type: ignore[attr-defined]
    ctx.denials.append((req, exc.diagnostics))


def guard(req: FhirRequest, ctx: Context) -> Guard | None:
    """The guard of one interaction (None when no token applies: auth off, or the
    CapabilityStatement); 403 when the token grants the interaction nothing on its type."""
    grant = ctx.access
    if grant is None or req.interaction == "capabilities":
        return None
    if req.interaction == "operation":
        _check_operation(req, grant)
        return None
    g = Guard(grant, LETTER[req.interaction])
    if req.type is not None:
        g.filter(req.type)
    return g


def wrap(ctx: Context, req: FhirRequest | None, s: Session) -> Session:
    """``s`` guarded for ``req``'s interaction (None: as a search), or ``s`` when no token applies."""
    if ctx.access is None:
        return s
    if req is None:
        return GuardedSession(s, Guard(ctx.access, "s"))
    g = guard(req, ctx)
    return s if g is None else GuardedSession(s, g)


def _check_operation(req: FhirRequest, grant: "AccessGrant") -> None:
    from .. import operations  # the registry (operations import the interactions)
    op = operations.find(req.operation)
    letter = "u" if op is None or op.affects_state else "r"
    rtype = req.type or "*"
    if not any(sc.context in ("system", "user") and not sc.query and letter in sc.permissions
               and sc.type in ("*", rtype) for sc in grant.scopes.resources):
        raise forbidden(f"${req.operation} needs a system/ or user/ scope with {_NAMES[letter]} on "
                        f"{'every type' if rtype == '*' else rtype}")


@dataclass
class GuardedSession(Session):
    """A session that lets through only what the guard permits (see the module's docstring)."""

    inner: Session
    guard: Guard
    written: list[tuple[str, str]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:  # storage extras (flush, writer_lock...)
        return getattr(self.inner, name)

    async def current(self, rtype: str, rid: str) -> Stored | None:
        st = await self.inner.current(rtype, rid)
        if st is not None and not st.deleted and not await self.guard.visible(self.inner, rtype, [rid]):
            raise forbidden(f"The access token does not permit {_NAMES[self.guard.letter]} of {rtype}/{rid}")
        return st

    async def version(self, rtype: str, rid: str, version: int) -> Stored | None:
        found = await self.inner.version(rtype, rid, version)
        if found is not None and not self.guard.unconditional(rtype):
            cur = await self.inner.current(rtype, rid)
            if cur is None or cur.deleted or not await self.guard.visible(self.inner, rtype, [rid]):
                raise forbidden(f"The access token does not permit {_NAMES[self.guard.letter]} of {rtype}/{rid}")
        return found

    async def put(self, new: Stored, *, previous: int | None) -> None:
        if new.type not in AUDIT_TYPES and not new.deleted:
            self.written.append((new.type, new.id))
        await self.inner.put(new, previous=previous)

    async def check_writes(self) -> None:
        """Every resource written must be one the grant covers (else 403, and the caller's
        transaction rolls back)."""
        for rtype, rid in self.written:
            if not await self.guard.visible(self.inner, rtype, [rid]):
                raise forbidden(f"The access token does not permit this {_NAMES[self.guard.letter]}: "
                                f"{rtype}/{rid} would be outside what it covers")
        self.written.clear()

    async def set_index(self, rtype: str, rid: str, rows: Sequence[IndexRow], *, new: bool = False) -> None:
        await self.inner.set_index(rtype, rid, rows, new=new)

    async def search(self, query: SearchQuery, *, limit: int, after: Sequence[Any] | None = None,
                     backwards: bool = False) -> list[tuple[Stored, tuple[Any, ...]]]:
        q = await self.guard.restrict(self.inner, query)
        return await self.inner.search(q, limit=limit, after=after, backwards=backwards)

    def unsupported(self, query: SearchQuery) -> list[tuple[int, tuple[str, str]]]:
        return self.inner.unsupported(query)

    async def count(self, query: SearchQuery) -> int:
        return await self.inner.count(await self.guard.restrict(self.inner, query))

    async def include(self, inc: Include, keys: Sequence[tuple[str, str]]) -> list[Stored]:
        return await self.guard.keep(self.inner, await self.inner.include(inc, keys))

    async def history(self, query: HistoryQuery) -> list[Stored]:
        if query.id is not None:
            if query.type is not None and not self.guard.unconditional(query.type):
                # a deleted resource has no index rows to test: its versions stay hidden
                cur = await self.inner.current(query.type, query.id)
                if cur is not None and (cur.deleted or not await self.guard.visible(self.inner, query.type,
                                                                                  [query.id])):
                    raise forbidden(f"The access token does not permit {_NAMES[self.guard.letter]} of "
                                    f"{query.type}/{query.id}")
            return await self.inner.history(query)
        if query.type is not None and self.guard.unconditional(query.type):
            return await self.inner.history(query)
        if query.type is None and self.guard._types() is None:
            return await self.inner.history(query)
        out: list[Stored] = []
        before = query.before_seq
        while len(out) < query.count:  # fill the page with versions the grant lets through
            rows = await self.inner.history(replace(query, before_seq=before))
            out += await self.guard.keep(self.inner, rows)
            if len(rows) < query.count:
                break
            before = rows[-1].seq
        return out[:query.count]

    async def chain_head(self) -> str:
        return await self.inner.chain_head()

    async def append_link(self, link: ChainLink) -> None:
        await self.inner.append_link(link)

    async def links(self, after_seq: int, limit: int) -> list[ChainLink]:
        return await self.inner.links(after_seq, limit)
