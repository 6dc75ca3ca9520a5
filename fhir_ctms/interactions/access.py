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
- several scopes on one type are OR-ed (SMART v2: scopes are additive): one without a condition
  wins; one implied by another is dropped; different conditions (``?category=a`` and
  ``?category=b``) each let their resources through: a read, a write or an include needs one of
  them to match, a search is the union (one search per condition for the candidates of a page,
  put in order by one more search restricted to their ids, so keyset paging stays exact; its
  ``_total`` by inclusion-exclusion over the AND-ed conditions, at most :data:`MAX_CONDITIONS`);
- the token's own user (``fhirUser``, with ``openid fhirUser`` granted) is readable (read and
  vread of that one resource) without a scope on its type (SMART: the app may read it).

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
over several types needs the same conditions on each (else 403: search type by type); a
compartment search of another compartment than the token's patient is a 403 (unless another
of its conditions covers it: a ``user/`` one). Type and system history keep the versions of
resources the token sees now (a deleted resource has no index rows, so under a filter its
versions are not shown).

Operations (:func:`check_operation`, :func:`check_operation_target`): one that changes state
(``affectsState``; ``$reindex``, ``$schedule``, ``$payments``) needs an unconditional ``system/``
or ``user/`` scope with ``u`` on its type (``*`` at system level). One that does not needs what a
read (instance level: ``r``, and the instance must be one the token may read) or a search (type
level: ``s``) of its type needs, in any context (``patient/`` included), because it reads through
the token's guarded session or reads nothing else: ``$validate`` (the instance, or the resource
sent), ``$enrollment``, ``$milestones``, ``$payment-file`` (guarded searches: what the token
cannot see is not counted), ``$expand`` and ``$validate-code`` (a ValueSet: at the type level,
where a stored ValueSet is found by its url, the token must see every ValueSet). Those reading
data no guard filters keep needing an unconditional ``system/`` or ``user/`` scope with ``r``
(:data:`WHOLE_READS`: ``$registry-export`` reads the study's Organizations and Locations directly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, Forbidden
from ..resources.registry import AUDIT_TYPES, RESOURCE_TYPES
from ..search.parameters import compartment_params
from ..search.parse import parse
from ..search.query import Clause, Has, Include, SearchQuery
from ..search.valuesets import resolve as resolve_value_sets
from ..storage.repository import ChainHead, ChainLink, HistoryQuery, IndexRow, Session, Stored
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
#: different conditions on one type a search can OR (its ``_total`` costs 2**n - 1 counts)
MAX_CONDITIONS = 6
#: operations that change no state but read data a guarded session cannot filter: they need an
#: unconditional system/ or user/ scope (``$registry-export`` reads Organizations and Locations)
WHOLE_READS = frozenset({"registry-export"})
#: operations that change state through ordinary interactions (a transaction's writes), each
#: checked against the token: their gate is read of their target, with a system/ or user/ scope
GUARDED_WRITES = frozenset({"schedule", "payments"})
#: operations that read a stored ValueSet by its url at the type level, outside any guard
_VALUESET_READS = frozenset({"expand", "validate-code"})


def forbidden(text: str) -> Forbidden:
    return Forbidden(text, headers={"WWW-Authenticate": _CHALLENGE})


@dataclass(frozen=True, slots=True)
class Filter:
    """A condition a resource of one type must meet: search parameters (AND-ed) and a compartment."""

    params: tuple[tuple[str, str], ...] = ()
    compartment: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(sorted(set(self.params))))

    def implies(self, other: "Filter") -> bool:
        """Whether every resource this lets through ``other`` lets through too."""
        return (other.compartment in (None, self.compartment)) and set(other.params) <= set(self.params)


@dataclass(frozen=True, slots=True)
class _Part:
    """One condition of a grant as a search adds it: clauses (AND-ed) and a compartment."""

    clauses: tuple[Clause | Has, ...] = ()
    compartment: tuple[str, str] | None = None


def _applied(q: SearchQuery, parts: Iterable[_Part]) -> SearchQuery | None:
    """``q`` restricted by every one of ``parts`` (AND), or None when they exclude each other."""
    compartment, clauses = q.compartment, q.clauses
    for p in parts:
        if p.compartment is not None:
            if compartment not in (None, p.compartment):
                return None
            compartment = p.compartment
        clauses = clauses + p.clauses
    return replace(q, clauses=clauses, compartment=compartment)


class Guard:
    """One interaction's access: the grant and the permission letter it needs."""

    def __init__(self, grant: "AccessGrant", letter: str) -> None:
        self.grant, self.letter = grant, letter
        self._filters: dict[str, tuple[Filter, ...] | None] = {}

    # -- decisions ----------------------------------------------------------------------------

    def filters(self, rtype: str) -> tuple[Filter, ...] | None:
        """The conditions on ``rtype``, OR-ed (None: every resource), or 403 when nothing is granted."""
        if rtype not in self._filters:
            self._filters[rtype] = self._filter(rtype)
        return self._filters[rtype]

    def _filter(self, rtype: str) -> tuple[Filter, ...] | None:
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
        return tuple(sorted(kept, key=repr))

    def unconditional(self, rtype: str) -> bool:
        try:
            return self.filters(rtype) is None
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

    async def parts(self, s: Session, q: SearchQuery) -> tuple[SearchQuery, list[_Part] | None]:
        """``q`` with its types, and the conditions the grant adds to it, each one a :class:`_Part`
        (OR-ed: a resource is let through when one matches; None: nothing is added)."""
        self._check_links(q.clauses)
        types = q.types
        if not types:
            types = self._types()
            if types is None:
                return q, None
        q = replace(q, types=types)
        sets = {self.filters(t) for t in types}
        if sets == {None}:
            return q, None
        if len(sets) > 1:
            raise forbidden("The access token gives different access to the types of this search: "
                            "search them one type at a time")
        fs = sets.pop()
        assert fs is not None
        out: list[_Part] = []
        for f in fs:
            if f.compartment is not None and q.compartment not in (None, f.compartment):
                continue  # this condition lets nothing of another compartment through
            extra = (await self._conditions(s, types, f)).clauses if f.params else ()
            out.append(_Part(extra, f.compartment))
        if not out:
            assert q.compartment is not None
            raise forbidden(f"The access token does not permit searching the compartment "
                            f"{q.compartment[0]}/{q.compartment[1]}")
        if len(out) > MAX_CONDITIONS:
            raise forbidden(f"The access token has {len(out)} different conditions on {_NAMES[self.letter]} of "
                            f"{types[0]}: at most {MAX_CONDITIONS} are supported")
        return q, out

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
            fs = self.filters(rtype)
        except Forbidden:
            return set()
        if fs is None:
            return set(ids)
        out: set[str] = set()
        for f in fs:  # OR: a resource one condition lets through is visible
            unique = [i for i in dict.fromkeys(ids) if i not in out]
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
        check_operation(req, grant)
        return None
    if req.interaction in ("read", "vread") and own_user(grant, ctx.base) == (req.type, req.id):
        return None  # the token's own user: readable without a scope on its type
    g = Guard(grant, LETTER[req.interaction])
    if req.type is not None:
        g.filters(req.type)
    return g


def own_user(grant: "AccessGrant", base: str) -> tuple[str, str] | None:
    """(type, id) of the token's ``fhirUser`` when ``openid fhirUser`` were granted and it is a
    resource of this server (SMART App Launch: the app may read it, scopes-and-launch-context
    "fhirUser"); None otherwise."""
    user = grant.fhir_user
    if not user or not {"openid", "fhirUser"} <= grant.scopes.smart:
        return None
    if "://" in user:
        if not user.startswith(base.rstrip("/") + "/"):
            return None  # another server's resource
        user = user[len(base.rstrip("/")) + 1:]
    parts = user.split("/")
    if len(parts) != 2 or parts[0] not in RESOURCE_TYPES or not parts[1]:
        return None
    return parts[0], parts[1]


def wrap(ctx: Context, req: FhirRequest | None, s: Session) -> Session:
    """``s`` guarded for ``req``'s interaction (None: as a search), or ``s`` when no token applies."""
    if ctx.access is None:
        return s
    if req is None:
        return GuardedSession(s, Guard(ctx.access, "s"))
    g = guard(req, ctx)
    return s if g is None else GuardedSession(s, g)


def check_operation(req: FhirRequest, grant: "AccessGrant") -> None:
    """403 unless the token may invoke ``req``'s operation on its type (module docstring,
    "Operations"); the instance it runs on is checked by :func:`check_operation_target`."""
    from .. import operations  # the registry (operations import the interactions)
    op = operations.find(req.operation)
    if op is None:
        return  # unknown: operations.invoke answers 404
    rtype = req.type or "*"
    where = "every type" if rtype == "*" else rtype
    writes = operations.changes_state(op, req)
    if writes and op.code in GUARDED_WRITES:
        letter = "r" if req.id is not None else "s"
        if not any(sc.context in ("system", "user") and letter in sc.permissions and sc.type in ("*", rtype)
                   for sc in grant.scopes.resources):
            raise forbidden(f"${req.operation} needs a system/ or user/ scope with {_NAMES[letter]} on "
                            f"{where} (and the permissions of what it writes)")
        return
    if writes or op.code in WHOLE_READS:
        letter = "u" if writes else "r"
        if not any(sc.context in ("system", "user") and not sc.query and letter in sc.permissions
                   and sc.type in ("*", rtype) for sc in grant.scopes.resources):
            raise forbidden(f"${req.operation} needs a system/ or user/ scope with {_NAMES[letter]} on {where}")
        return
    letter = "r" if req.id is not None else "s"
    if req.type is None:  # a system-level operation that reads: every type
        if Guard(grant, letter)._types() is not None:
            raise forbidden(f"${req.operation} needs {_NAMES[letter]} on every type")
        return
    g = Guard(grant, letter)
    try:
        g.filters(req.type)
    except Forbidden as exc:
        raise forbidden(f"${req.operation} needs {_NAMES[letter]} on {req.type}: {exc.diagnostics}") from exc
    if req.id is None and op.code in _VALUESET_READS and not g.unconditional(req.type):
        raise forbidden(f"${req.operation} at the type level reads stored ValueSets by url: it needs "
                        f"{_NAMES[letter]} on every {req.type}")


def require_whole(ctx: Context, types: tuple[str, ...], operation: str) -> None:
    """403 unless the token searches every resource of ``types`` unconditionally. Operations that
    aggregate ($enrollment, $milestones, $payments) call it: counted over the part of the data a
    token sees, their figures would be wrong while looking right."""
    grant = ctx.access
    if grant is None:
        return
    g = Guard(grant, "s")
    partial = [t for t in types if not g.unconditional(t)]
    if partial:
        raise forbidden(f"${operation} counts every {', '.join(partial)} of the study: it needs a system/ or "
                        f"user/ scope with search on {', '.join(partial)} without conditions (a partial view "
                        "would give wrong figures)")


async def check_operation_target(req: FhirRequest, ctx: Context) -> None:
    """An operation invoked on an instance that changes no state: 403 unless the token may read
    that resource (one it cannot see is refused as a read of it would be; one that does not
    exist is left to the operation's 404 or 410)."""
    from .. import operations
    grant = ctx.access
    op = operations.find(req.operation)
    if grant is None or op is None or operations.changes_state(op, req) or req.type is None or req.id is None:
        return
    g = Guard(grant, "r")
    if g.unconditional(req.type):
        return
    async with ctx.repo.session(write=False) as s:
        st = await s.current(req.type, req.id)
        if st is not None and not st.deleted and not await g.visible(s, req.type, [req.id]):
            raise forbidden(f"The access token does not permit read of {req.type}/{req.id}, "
                            f"which ${req.operation} reads")


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
        base, parts = await self.guard.parts(self.inner, query)
        if parts is None or len(parts) == 1:
            q = base if parts is None else _applied(base, parts)
            assert q is not None
            return await self.inner.search(q, limit=limit, after=after, backwards=backwards)
        # the union: the page's rows are among the first ``limit`` of each condition (after the
        # same cursor); one more search of ``base`` restricted to their ids puts them in the
        # database's order, with the keys of ``base`` (its collation, its sort), so the page
        # and its cursor are those of a single search of the union
        found: set[tuple[str, str]] = set()
        for part in parts:
            q = _applied(base, [part])
            if q is not None:
                found |= {(st.type, st.id) for st, _ in await self.inner.search(
                    q, limit=limit, after=after, backwards=backwards)}
        if not found:
            return []
        ids = sorted({rid for _, rid in found})
        only = parse(base.types, [("_id", ",".join(ids))], strict=True).clauses
        rows = await self.inner.search(replace(base, clauses=base.clauses + only), after=after,
                                       limit=len(ids) * len(base.types), backwards=backwards)
        return [(st, key) for st, key in rows if (st.type, st.id) in found][:limit]

    def unsupported(self, query: SearchQuery) -> list[tuple[int, tuple[str, str]]]:
        return self.inner.unsupported(query)

    async def count(self, query: SearchQuery) -> int:
        base, parts = await self.guard.parts(self.inner, query)
        if parts is None:
            return await self.inner.count(base)
        # |A or B or ...| by inclusion-exclusion: each intersection is one search, its conditions AND-ed
        total = 0
        for n in range(1, len(parts) + 1):
            for some in combinations(parts, n):
                q = _applied(base, some)
                if q is not None:
                    total += (-1) ** (n + 1) * await self.inner.count(q)
        return total

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

    async def chain_head(self) -> ChainHead:
        return await self.inner.chain_head()

    async def append_link(self, link: ChainLink) -> None:
        await self.inner.append_link(link)

    async def links(self, after_position: int, limit: int) -> list[ChainLink]:
        return await self.inner.links(after_position, limit)
