"""Search request parameters parsed into a :class:`~fhir_ctms.search.query.SearchQuery`.

Implements the request side of R5 search.html, without HTTP or SQL:

* parameter names ``name[:modifier]`` (#modifiers), chains ``subject:Patient.name``
  (#chaining), reverse chains ``_has:Observation:patient:code`` (#has), each step checked
  against the registry (``parameters.py``);
* values: OR by comma, AND by repetition (#multivalue), typed by ``parse_values.py``;
* ``_type`` (#_type), the common parameters (#all), compartments (#searchcontexts);
* the result parameters ``_count`` ``_sort`` ``_include`` ``_revinclude`` ``_total``
  ``_summary`` ``_elements`` (#modifyingresults); ``_format``, ``_pretty`` and ``_cursor``
  are left to the caller;
* :func:`format_query`: the parameters used, as the query string of the self and paging
  links (#selflink), so that parsing it again gives the same query.

Errors (#errors): a malformed value of a known parameter is always a 400; an unknown or
unsupported parameter is a 400 under ``strict`` (``Prefer: handling=strict``) and otherwise
ignored and listed in ``SearchQuery.ignored``. An unknown modifier, or one not allowed on the
parameter's type, is a 400 in both modes: "a server SHALL reject any search request that
contains a search parameter with an unsupported modifier" (#modifiers).

Choices where the specification leaves room:

* a chain through a reference parameter with several targets and no ``:[type]``
  (``subject.name``) is accepted when at least one target type has the chained parameter;
  the clause's ``target_type`` is then None and the chained parameter must have the same
  type on every target that defines it (else 400: name the type);
* ``_type`` at type level intersects with the searched type; repeated ``_type`` intersect;
* an empty parameter (``name=`` or ``name=,``) is ignored silently (#errors: "Empty
  parameters are not an error"), as are empty OR values (``a,,b`` = ``a,b``);
* ``_contained=false`` and ``_containedType=container`` (the defaults) are accepted as
  no-ops; other values are unsupported parameters;
* at most :data:`MAX_VALUES` values (OR-ed and AND-ed, includes counted) and
  :data:`MAX_DEPTH` chain or ``_has`` steps per parameter;
* ``multipleOr``/``multipleAnd`` of the definitions are not enforced (the generated R5
  composites say ``multipleOr=false``, yet search.html#composite ORs them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import urlencode

from ..errors import BadRequest
from ..resources.registry import is_valid_id
from .extract import _PARAM_TYPE_OF
from .fhirpath import model, parse_simple_path, split_union, strip_resolve
from .parameters import SearchParam, compartment_params, compartments, param, resource_types
from .parse_values import KNOWN_MODIFIERS, MODIFIERS, Invalid, parse_value, split_escaped
from .query import Clause, Has, Include, SearchQuery, Sort, Value

#: at most this many values in one search (OR-ed, AND-ed, and includes): a bound on its SQL
MAX_VALUES = 100
#: at most this many chain (``a.b``) and ``_has`` steps in one parameter
MAX_DEPTH = 4
#: left to the caller (``api/negotiation.py``, ``api/http.py``, the search interaction)
CALLER_PARAMS = frozenset({"_format", "_pretty", "_cursor"})
#: common parameters recognised but not supported (search.html#all, #filter, #text)
NOT_SUPPORTED = frozenset({"_list", "_text", "_content", "_filter", "_query"})
#: result parameters whose default value is accepted as a no-op (search.html#contained)
NO_OP_DEFAULTS = {"_contained": "false", "_containedType": "container"}
TOTALS = ("none", "estimate", "accurate")
SUMMARIES = ("true", "text", "data", "count", "false")
#: a set of modifiers rejected in both modes (search.html#modifiers: SHALL reject);
#: False puts them in ``ignored`` when not strict instead
REJECT_UNSUPPORTED_MODIFIERS = True

_ELEMENT = re.compile(r"(?:[A-Z][A-Za-z]+\.)?[a-z][A-Za-z0-9]*")


class _Unsupported(Exception):
    """An unknown or unsupported parameter: ignored, or a 400 under strict."""


@dataclass(frozen=True, slots=True)
class _Step:
    """A step before the final parameter: a chain through ``param`` or a ``_has``."""

    param: str
    target_type: str | None = None  #: chain: the type the reference is followed to
    source_type: str | None = None  #: _has: the referring type


@dataclass(frozen=True, slots=True)
class _Final:
    """The parameter the values belong to, resolved."""

    p: SearchParam
    modifier: str | None
    target_type: str | None
    components: tuple[str, ...] = ()


# --------------------------------------------------------------------------- entry points


def parse(types: tuple[str, ...], params: Sequence[tuple[str, str]], *, strict: bool = False,
          compartment: tuple[str, str] | None = None, max_count: int = 1000) -> SearchQuery:
    """The :class:`SearchQuery` of ``params`` (decoded ``(name, value)`` pairs, in order).

    ``types``: the searched type(s); ``()`` is a system-level search (every type, narrowed by
    ``_type``). ``compartment``: (compartment type, id) of a compartment search.
    """
    params = [(str(n), str(v)) for n, v in params]
    if any("\x00" in n or "\x00" in v for n, v in params):
        raise BadRequest("Search parameters may not contain the NUL character")
    return _Parser(_search_types(tuple(types), params), strict, max_count).run(params, compartment)


def format_query(q: SearchQuery, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The query string of the parameters ``q`` used (search.html#selflink), then ``extra``
    (``_cursor``, ``_format``...): ``parse`` of it gives ``q`` again (less ``ignored``)."""
    pairs = list(q.used)
    if q.sort:
        pairs.append(("_sort", ",".join(("-" if s.descending else "") + s.param for s in q.sort)))
    if q.count is not None:
        pairs.append(("_count", str(q.count)))
    for inc in (*q.includes, *q.revincludes):
        name = ("_revinclude" if inc.reverse else "_include") + (":iterate" if inc.iterate else "")
        pairs.append((name, _include_text(inc)))
    if q.total != "none":
        pairs.append(("_total", q.total))
    if q.summary is not None:
        pairs.append(("_summary", q.summary))
    if q.elements:
        pairs.append(("_elements", ",".join(q.elements)))
    pairs.extend(extra)
    return urlencode(pairs, safe=":/,$*")


def _include_text(inc: Include) -> str:
    if inc.source_type == "*":
        return "*"
    return ":".join(x for x in (inc.source_type, inc.param, inc.target_type) if x)


# --------------------------------------------------------------------------- types


@lru_cache(maxsize=1)
def _all_types() -> tuple[str, ...]:
    return tuple(sorted(resource_types()))


def _search_types(types: tuple[str, ...], params: list[tuple[str, str]]) -> tuple[str, ...]:
    """The searched types: ``types`` narrowed by every ``_type`` (search.html#_type)."""
    unknown = [t for t in types if t not in resource_types()]
    if unknown:
        raise BadRequest(f"Unknown resource type(s): {', '.join(unknown)}")
    out = types
    for name, value in params:
        if name != "_type" or not value.strip(","):
            continue
        wanted = tuple(dict.fromkeys(v for v in value.split(",") if v))
        bad = [t for t in wanted if t not in resource_types()]
        if bad:
            raise BadRequest(f"_type={value!r}: not a resource type: {', '.join(bad)}")
        out = wanted if not out else tuple(t for t in out if t in wanted)
        if not out:
            raise BadRequest(f"_type={value!r}: none of these types is searched here")
    return out


def _lookup(types: tuple[str, ...], code: str, *, every: bool) -> SearchParam:
    """The parameter ``code`` on ``types`` (``()``: every type): defined on every type
    (``every``: the searched types, search.html#_type) or on at least one (a chain's
    candidate targets), with one parameter type; targets are merged."""
    candidates = types or _all_types()
    found = [p for t in candidates if (p := param(t, code)) is not None]
    where = "/".join(types) if 0 < len(types) <= 3 else "the types searched"
    if not found:
        raise _Unsupported(f"unknown search parameter {code!r} for {where}")
    if every and len(found) < len(candidates):
        raise _Unsupported(f"search parameter {code!r} is not defined for every one of {where}")
    if len({(p.type, _component_types(p)) for p in found}) > 1:
        raise Invalid(f"{code!r} means different things on {where}: name the type "
                      "with a :[type] modifier (search.html#chaining)")
    if len(found) == 1:
        return found[0]
    targets = tuple(dict.fromkeys(t for p in found for t in p.targets))
    return replace(found[0], targets=targets)


def _expression_types(expression: str | None, ctx: str) -> set[str] | None:
    """The FHIR types (or backbone paths) a simple expression selects; None if not simple."""
    if not expression:
        return None
    out: set[str] = set()
    for alternative in split_union(expression):
        path = parse_simple_path(strip_resolve(alternative)[0])
        if path is None:
            return None
        t = path.root or ctx
        for step in path.steps:
            t = step.of_type or model().element(t, step.name)[0]
        out.add(t)
    return out


@lru_cache(maxsize=512)
def _component_types(p: SearchParam) -> tuple[str, ...] | None:
    """A composite's component types; a component whose definition the package lacks is
    typed by the element its expression selects (as ``extract.py`` does by value)."""
    if p.type != "composite":
        return ()
    out = []
    contexts = _expression_types(p.expression, p.base) or set()
    for comp in p.components:
        ctype = comp.type
        if ctype is None and len(contexts) == 1:
            kinds = _expression_types(comp.expression, next(iter(contexts))) or set()
            guesses = {_PARAM_TYPE_OF.get(k) for k in kinds}
            ctype = guesses.pop() if len(guesses) == 1 else None
        if ctype not in MODIFIERS or ctype == "composite":
            return None
        out.append(ctype)
    return tuple(out)


# --------------------------------------------------------------------------- the parser


class _Parser:
    def __init__(self, types: tuple[str, ...], strict: bool, max_count: int) -> None:
        self.types, self.strict, self.max_count = types, strict, max_count
        self.clauses: list[Clause | Has] = []
        self.includes: list[Include] = []
        self.revincludes: list[Include] = []
        self.used: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.values = 0
        self.sort: tuple[Sort, ...] = ()
        self.count: int | None = None
        self.total = "none"
        self.summary: str | None = None
        self.elements: tuple[str, ...] = ()

    def run(self, params: list[tuple[str, str]], compartment: tuple[str, str] | None) -> SearchQuery:
        for name, value in params:
            if not value.strip(","):
                continue  # "Empty parameters are not an error - they are just ignored" (#errors)
            base, _, modifier = name.partition(":")
            if base in CALLER_PARAMS and not modifier:
                continue
            if name == "_type":
                if "_type" not in self.seen:
                    self.used.append(("_type", ",".join(self.types)))
                self.seen.add("_type")
            elif base in ("_include", "_revinclude"):
                self._include(name, base == "_revinclude", modifier, value)
            elif base in _RESULT and not modifier:
                self._once(name)
                _RESULT[base](self, value)
            elif base in _RESULT or base in CALLER_PARAMS:
                raise BadRequest(f"{name!r}: {base} takes no modifier")
            elif name in NO_OP_DEFAULTS and value == NO_OP_DEFAULTS[name]:
                continue
            elif base in NOT_SUPPORTED or base in NO_OP_DEFAULTS:
                self._skip(name, f"{base} is not supported")
            else:
                self._filter(name, value)
        if self.summary == "text" and (self.includes or self.revincludes):
            raise BadRequest("_include and _revinclude cannot be mixed with _summary=text "
                             "(search.html#summary)")
        return SearchQuery(
            types=self.types, clauses=tuple(self.clauses), includes=tuple(self.includes),
            revincludes=tuple(self.revincludes), sort=self.sort, count=self.count,
            total=self.total, summary=self.summary, elements=self.elements,
            used=tuple(self.used), ignored=tuple(self.ignored),
            compartment=self._compartment(compartment))

    # ----------------------------------------------------------------------- bookkeeping

    def _skip(self, name: str, why: str) -> None:
        """An unknown or unsupported parameter: 400 under strict, else reported (#errors)."""
        if self.strict:
            raise BadRequest(f"Search parameter {name!r}: {why}")
        self.ignored.append((name, why))

    def _once(self, name: str) -> None:
        """Result parameters "SHOULD only appear once" (search.html#modifyingresults)."""
        if name in self.seen:
            raise BadRequest(f"{name} may appear only once in a search")
        self.seen.add(name)

    def _count_values(self, n: int) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise BadRequest(f"At most {MAX_VALUES} search values are allowed in one request")

    def _compartment(self, compartment: tuple[str, str] | None) -> tuple[str, str] | None:
        """A compartment search's types must be in the compartment (search.html#searchcontexts)."""
        if compartment is None:
            return None
        ctype, cid = compartment
        if ctype not in compartments():
            raise BadRequest(f"{ctype} is not a compartment")
        if not is_valid_id(cid):
            raise BadRequest(f"{cid!r} is not a valid id")
        outside = [t for t in self.types if not compartment_params(ctype, t)]
        if outside:
            raise BadRequest(f"{', '.join(outside)} is not in the {ctype} compartment")
        return (ctype, cid)

    # ----------------------------------------------------------------------- filters

    def _filter(self, name: str, value: str) -> None:
        """One search parameter: its name resolved, then its OR-ed values parsed."""
        try:
            steps, final = self._resolve(self.types, name, every=True, depth=0)
            raws = [v for v in split_escaped(value, ",") if v]
            self._count_values(len(raws))
            values = tuple(self._value(final, raw) for raw in raws)
        except _Unsupported as exc:
            self._skip(name, str(exc))
            return
        except Invalid as exc:
            raise BadRequest(f"Search parameter {name!r}: {exc}") from exc
        clause: Clause | Has = Clause(final.p.code, final.p.type, values, final.modifier,
                                      final.target_type)
        for step in reversed(steps):
            if step.source_type is not None:
                clause = Has(step.source_type, step.param, clause)
            else:
                clause = Clause(step.param, "reference", target_type=step.target_type,
                                chain=clause)  # type: ignore[arg-type]
        self.clauses.append(clause)
        self.used.append((name, ",".join(raws)))

    @staticmethod
    def _value(final: _Final, raw: str) -> Value:
        p = final.p
        return parse_value(raw, p.type, final.modifier, targets=p.targets,
                           target_type=final.target_type, components=final.components,
                           comparators=p.comparators)

    def _resolve(self, types: tuple[str, ...], name: str, *, every: bool,
                 depth: int) -> tuple[list[_Step], _Final]:
        """The steps (chains, ``_has``) and final parameter of a name (search.html#chaining)."""
        if name == "_has" or name.startswith("_has:"):
            return self._resolve_has(name, depth)
        links = name.split(".")
        if depth + len(links) - 1 > MAX_DEPTH:
            raise Invalid(f"at most {MAX_DEPTH} levels of chaining are supported")
        steps: list[_Step] = []
        for link in links[:-1]:
            code, _, modifier = link.partition(":")
            p = _lookup(types, code, every=every)
            if p.type != "reference":
                raise Invalid(f"{code!r} is a {p.type} parameter: only reference parameters "
                              "can be chained (search.html#chaining)")
            if modifier and not modifier[:1].isupper():
                raise Invalid(f"{code}:{modifier} cannot be chained: only a :[type] modifier "
                              "can precede a chain (search.html#chaining)")
            target = self._type_modifier(p, modifier) if modifier else (
                p.targets[0] if len(p.targets) == 1 else None)
            steps.append(_Step(code, target_type=target))
            types = (target,) if target else (p.targets or _all_types())
            every = False
        code, _, modifier = links[-1].partition(":")
        return steps, self._final(_lookup(types, code, every=every), modifier or None)

    def _resolve_has(self, name: str, depth: int) -> tuple[list[_Step], _Final]:
        """``_has:Type:param:rest``: Type references the result through ``param`` and
        matches ``rest``, itself a parameter of Type or another ``_has`` (search.html#has)."""
        parts = name.split(":", 3)
        if len(parts) < 4 or not all(parts):
            raise Invalid("_has takes the form _has:[type]:[reference parameter]:[parameter] "
                          "(search.html#has)")
        _, source, code, rest = parts
        if depth + 1 > MAX_DEPTH:
            raise Invalid(f"at most {MAX_DEPTH} levels of _has and chaining are supported")
        if source not in resource_types():
            raise Invalid(f"{source!r} is not a resource type")
        p = param(source, code)
        if p is None:
            raise _Unsupported(f"unknown search parameter {code!r} for {source}")
        if p.type != "reference":
            raise Invalid(f"{source}:{code} is a {p.type} parameter, _has needs a reference")
        steps, final = self._resolve((source,), rest, every=True, depth=depth + 1)
        return [_Step(code, source_type=source), *steps], final

    @staticmethod
    def _type_modifier(p: SearchParam, modifier: str) -> str:
        """A reference's ``:[type]`` modifier (search.html#modifiertype)."""
        if modifier not in resource_types():
            raise Invalid(f"unknown modifier :{modifier}")
        if p.targets and modifier not in p.targets:
            raise Invalid(f"{p.code!r} cannot refer to a {modifier} "
                          f"(its targets: {', '.join(p.targets)})")
        return modifier

    def _final(self, p: SearchParam, modifier: str | None) -> _Final:
        """The parameter the values are for, its modifier checked (search.html#modifiers)."""
        if p.type == "special":
            raise _Unsupported(f"the special parameter {p.code!r} is not supported")
        components = _component_types(p)
        if components is None:
            raise _Unsupported(f"the composite {p.code!r} has a component of unknown type")
        target = p.targets[0] if p.type == "reference" and len(p.targets) == 1 else None
        if modifier is None:
            return _Final(p, None, target, components)
        if modifier[:1].isupper() and p.type == "reference":
            return _Final(p, None, self._type_modifier(p, modifier), components)
        if modifier not in MODIFIERS.get(p.type, ()):
            why = (f"unknown modifier :{modifier}" if modifier not in KNOWN_MODIFIERS
                   else f"the modifier :{modifier} is not supported on {p.type} parameters")
            if REJECT_UNSUPPORTED_MODIFIERS:
                raise Invalid(why)
            raise _Unsupported(why)
        if modifier == "of-type":
            kinds = _expression_types(p.expression, p.base)
            if kinds is not None and "Identifier" not in kinds:
                raise Invalid(":of-type applies to Identifier parameters only "
                              "(search.html#modifieroftype)")
        return _Final(p, modifier, target, components)

    # ----------------------------------------------------------------------- results

    def _include(self, name: str, reverse: bool, modifier: str, value: str) -> None:
        """``_include``/``_revinclude`` = ``*``, ``Source:*``, ``Source:param[:Target]``,
        ``:iterate`` on the name (search.html#include)."""
        if modifier not in ("", "iterate"):
            raise BadRequest(f"{name!r}: the only modifier of {name.split(':')[0]} is :iterate")
        problem = _include_problem(value)
        if problem:
            raise BadRequest(f"{name}={value!r}: {problem} (search.html#include)")
        self._count_values(1)
        if value == "*":
            inc = Include("*", "*", None, modifier == "iterate", reverse)
        else:
            parts = value.split(":")
            inc = Include(parts[0], parts[1], parts[2] if len(parts) == 3 else None,
                          modifier == "iterate", reverse)
        (self.revincludes if reverse else self.includes).append(inc)

    def _count(self, value: str) -> None:
        """``_count``: a whole number >= 0, capped at the server's maximum (search.html#count)."""
        if not re.fullmatch(r"\d{1,9}", value):
            raise BadRequest(f"_count={value!r}: must be a whole number >= 0")
        self.count = min(int(value), self.max_count)

    def _sort(self, value: str) -> None:
        """``_sort=a,-b``: known parameters of the searched types, ``-`` descending (#sort)."""
        out = []
        for item in (i for i in value.split(",") if i):
            code = item[1:] if item.startswith("-") else item
            try:
                p = _lookup(self.types, code, every=True)
            except (_Unsupported, Invalid) as exc:
                raise BadRequest(f"_sort={value!r}: {exc}") from exc
            if p.type in ("composite", "special"):
                raise BadRequest(f"_sort={value!r}: cannot sort on the {p.type} parameter {code!r}")
            out.append(Sort(code, p.type, item.startswith("-")))
        self.sort = tuple(out)

    def _total(self, value: str) -> None:
        if value not in TOTALS:
            raise BadRequest(f"_total={value!r}: must be one of {', '.join(TOTALS)} (#total)")
        self.total = value

    def _summary(self, value: str) -> None:
        if value not in SUMMARIES:
            raise BadRequest(f"_summary={value!r}: must be one of {', '.join(SUMMARIES)} (#summary)")
        self.summary = value

    def _elements(self, value: str) -> None:
        """``_elements``: base element names, optionally ``Type.element`` (#elements)."""
        items = tuple(dict.fromkeys(e for e in value.split(",") if e))
        bad = [e for e in items if not _ELEMENT.fullmatch(e)]
        if bad:
            raise BadRequest(f"_elements={value!r}: not element names: {', '.join(bad)}")
        self.elements = items


_RESULT = {"_count": _Parser._count, "_sort": _Parser._sort, "_total": _Parser._total,
           "_summary": _Parser._summary, "_elements": _Parser._elements}


def _include_problem(value: str) -> str | None:
    """What is wrong with an include value, or None."""
    if value == "*":
        return None
    if "," in value:
        return "one include per parameter: repeat the parameter instead of using ','"
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return "expected *, [type]:*, [type]:[parameter] or [type]:[parameter]:[target type]"
    source, code = parts[0], parts[1]
    if source not in resource_types():
        return f"{source!r} is not a resource type"
    if code == "*":
        return "a target type cannot follow *" if len(parts) == 3 else None
    p = param(source, code)
    if p is None:
        return f"{source} has no search parameter {code!r}"
    if p.type != "reference":
        return f"{source}:{code} is a {p.type} parameter, not a reference"
    if len(parts) == 3:
        target = parts[2]
        if target not in resource_types():
            return f"{target!r} is not a resource type"
        if p.targets and target not in p.targets:
            return f"{source}:{code} cannot refer to a {target}"
    return None


__all__ = ["MAX_VALUES", "format_query", "parse"]
