"""A :class:`SearchQuery` as SQL over ``resources`` and the ``search_*`` index tables (R5 search.html).

Every condition is a membership test: ``(r.res_type, r.res_id) IN (SELECT ... FROM
search_<kind> i WHERE i.param = ? AND <value predicate>)``, which the planners of both
databases answer from the index tables' lookup indexes. Values were typed by the
parser: dates and numbers arrive as ranges, strings normalised, tokens split.

- prefixes on ranges (search.html#prefix): the resource's value is the range [lo, hi)
  of the index row, the search value [vl, vh); eq: the search range contains the
  value's; gt: the value reaches above the search range; lt: below it; ge/le: gt/lt or
  eq; sa: starts after it; eb: ends before it; ap: they overlap. Numbers and quantities
  compare the value itself (the middle of its precision range) for gt, lt, ge, le.
- paging is a keyset on the sort keys followed by (type, id): a cursor holds the last
  row's keys, so page 1,000 costs what page 1 does.

SQL is built as fragments (text, parameters) joined in textual order, with ``?``
placeholders (the driver layer numbers them for asyncpg).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..search.query import Clause, Has, Include, SearchQuery, Sort, Value
from .repository import MAX_TEXT

#: parameter type -> index table kind
KIND = {"string": "string", "token": "token", "reference": "reference", "date": "date", "number": "number",
        "quantity": "quantity", "uri": "uri", "composite": "composite"}
TOP = "\U0010ffff"  # above every character: prefix p matches [p, p + TOP)
#: the sort key of a resource without a value: it sorts last, ascending or descending
_LAST = {("text", False): TOP, ("text", True): "", ("num", False): 1e308, ("num", True): -1e308,
         ("int", False): 2 ** 62, ("int", True): -(2 ** 62)}


#: modifiers that match the resources without a matching value (search.html#modifiernot, #modifiernotin)
_NEGATED = ("not", "not-in")

#: the forms of an index membership (``Builder.condition``)
IN, PROBE, ROWS = "in", "probe", "rows"


class Unsupported(Exception):
    """A clause this version cannot search on. The caller reports it as ignored, unless it is
    a modifier: search.html#modifiers says a server SHALL reject an unsupported modifier."""

    def __init__(self, what: str, *, modifier: bool = False) -> None:
        super().__init__(what)
        self.modifier = modifier


class F:
    """A fragment of SQL with its parameters, in order."""

    __slots__ = ("sql", "params")

    def __init__(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.sql, self.params = sql, list(params)

    def __add__(self, other: F | str) -> F:
        other = other if isinstance(other, F) else F(other)
        return F(self.sql + other.sql, self.params + other.params)

    def __radd__(self, other: str) -> F:
        return F(other) + self


def join(sep: str, frags: Iterable[F]) -> F:
    out = F("")
    for n, frag in enumerate(frags):
        out = out + (sep if n else "") + frag
    return out


def v(value: Any) -> F:
    return F("?", [value])


class Builder:
    def __init__(self, partition: str, sqlite: bool = True) -> None:
        self.partition = partition
        self.sqlite = sqlite
        self.n = 0

    def alias(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    # -- clauses ------------------------------------------------------------------------
    def condition(self, c: Clause | Has, r: str, types: Sequence[str], form: str = IN) -> F:
        """True for the rows of alias ``r`` (a resources row, or any row with partition,
        res_type and res_id) that match ``c``. ``form`` of an index membership: :data:`IN`,
        an IN list of every match; :data:`PROBE`, a correlated EXISTS on the index table's
        primary key (a few rows read per row of ``r``); :data:`ROWS`, the subquery alone
        (partition, res_type, res_id of the matching index rows, a resource once per matching
        value: positive memberships only)."""
        if isinstance(c, Has):
            return self._has(c, r, types)
        if c.param == "_id":
            ids = join(", ", (v(x.code if x.code is not None else x.text) for x in c.values))
            return F(f"{'NOT ' if c.modifier == 'not' else ''}{r}.res_id IN (") + ids + ")"
        if c.param == "_lastUpdated":
            return "(" + join(" OR ", (_range(x, f"{r}.ts_us", f"({r}.ts_us + 1)", "date")
                                       for x in c.values)) + ")"
        kind = KIND.get(c.type)
        if kind is None:
            raise Unsupported(f"{c.type} parameters")
        if c.modifier == "missing":
            missing = any((x.text or x.code or "").lower() == "true" for x in c.values)
            return (F("NOT ") if missing else F("")) + self._member(r, types, kind, c.param, lambda i: F("1 = 1"),
                                                                    form)
        param = c.param
        if c.modifier == "of-type":
            param = f"{c.param}:of-type"
        elif c.modifier == "identifier":
            kind, param = "token", f"{c.param}:identifier"
        elif c.modifier in ("code-text", "text-advanced") or (
                c.modifier in ("above", "below") and kind == "token"):
            raise Unsupported(f"the :{c.modifier} modifier", modifier=True)
        elif c.modifier in ("in", "not-in") and any(x.text is not None for x in c.values):
            # search/valuesets.py replaces the value set by its members before any SQL
            raise Unsupported(f"the :{c.modifier} modifier on a value set not expanded", modifier=True)

        def predicate(i: str) -> F:
            if c.chain is not None:
                return self._chain(c, i)
            return join(" OR ", (self._value(c, x, i, kind) for x in c.values)) if c.values else F("1 = 0")
        member = self._member(r, types, kind, param, predicate, form)
        return ("NOT " + member) if c.modifier in _NEGATED else member

    def _member(self, r: str, types: Sequence[str], kind: str, param: str, predicate: Any,
                form: str = IN) -> F:
        i = self.alias("i")
        if form == PROBE:
            # SQLite: INDEXED BY, or the planner takes the lookup index (as many equality
            # columns, without statistics) and scans every row of the parameter's value
            # PostgreSQL: OFFSET 0 keeps the EXISTS a probe per row; pulled up into a semi-join,
            # it was planned as a hash of every match then a sort (its row estimate for the
            # value was 30 times too low: the columns are correlated), 266 ms instead of 0.7 ms
            pk = f" INDEXED BY sqlite_autoindex_search_{kind}_1" if self.sqlite else ""
            fence = "" if self.sqlite else " OFFSET 0"
            return (F(f"EXISTS (SELECT 1 FROM search_{kind} {i}{pk} WHERE {i}.partition = {r}.partition "
                      f"AND {i}.res_type = {r}.res_type AND {i}.res_id = {r}.res_id AND {i}.param = ?",
                      [param]) + " AND (" + predicate(i) + f"){fence})")
        where = [F(f"{i}.partition = ?", [self.partition])]
        if len(types) == 1:
            where.append(F(f"{i}.res_type = ?", [types[0]]))
        elif types:
            where.append(F(f"{i}.res_type IN (") + join(", ", map(v, types)) + ")")
        where.append(F(f"{i}.param = ?", [param]))
        where.append("(" + predicate(i) + ")")
        body = F(f" FROM search_{kind} {i} WHERE ") + join(" AND ", where)
        if form == ROWS:
            return F(f"SELECT {i}.partition, {i}.res_type, {i}.res_id") + body
        if len(types) == 1:  # one column: a row-value IN list was built twice by SQLite (EXPLAIN)
            return F(f"{r}.res_id IN (SELECT {i}.res_id") + body + ")"
        return F(f"({r}.res_type, {r}.res_id) IN (SELECT {i}.res_type, {i}.res_id") + body + ")"

    def _value(self, c: Clause, x: Value, i: str, kind: str) -> F:
        # stored text is clipped to MAX_TEXT characters, so a longer search value is compared on
        # its clipped form (a value that long matches on its first MAX_TEXT characters)
        if kind == "string":
            text = _clip(x.text)
            if c.modifier == "exact":
                return F(f"{i}.exact = ?", [text])
            if c.modifier == "contains":
                return F(f"{i}.normalised LIKE ? ESCAPE '\\'", [f"%{_like(text)}%"])
            if c.modifier == "text":  # a word of the text starts with the value (#modifiertextstring)
                return F(f"({i}.normalised LIKE ? ESCAPE '\\' OR {i}.normalised LIKE ? ESCAPE '\\')",
                         [f"{_like(text)}%", f"% {_like(text)}%"])
            return _prefix(f"{i}.normalised", text)
        if kind == "token":
            if c.modifier == "text":
                return _prefix(f"{i}.text", _clip(x.text))
            if c.modifier == "of-type":
                return F(f"({i}.system = ? AND {i}.code = ? AND {i}.text = ?)",
                         [_clip(x.type_system), _clip(x.type_code), _clip(x.text)])
            parts = []
            if x.code is not None:
                parts.append(F(f"{i}.code = ?", [_clip(x.code)]))
            if x.system is not None:
                parts.append(F(f"{i}.system = ?", [_clip(x.system)]))
            return "(" + join(" AND ", parts or [F("1 = 1")]) + ")"
        if kind == "reference":
            parts = []
            if x.ref_id is not None:
                parts.append(F(f"{i}.target_id = ?", [_clip(x.ref_id)]))
                target = x.ref_type or c.target_type
                if target:
                    parts.append(F(f"{i}.target_type = ?", [target]))
                if x.ref_version:
                    parts.append(F(f"{i}.version = ?", [_clip(x.ref_version)]))
            elif x.text is not None:  # an absolute or canonical URL
                parts.append(F(f"{i}.target_type = ''"))
                parts.append(_prefix(f"{i}.target_id", _clip(x.text)) if c.modifier == "below"
                             else F(f"{i}.target_id = ?", [_clip(x.text)]))
            return "(" + join(" AND ", parts or [F("1 = 0")]) + ")"
        if kind == "uri":
            text = _clip(x.text)
            if c.modifier == "below":  # by path segment (search.html#modifierbelow): .../123 not .../1234
                base = text.rstrip("/")
                return F(f"({i}.uri = ? OR ", [base]) + _prefix(f"{i}.uri", base + "/") + ")"
            if c.modifier == "above":  # the stored uri is the value or a whole-segment prefix of it
                return F(f"({i}.uri = ? OR ({i}.uri = substr(?, 1, length({i}.uri)) "
                         f"AND substr(?, length({i}.uri) + 1, 1) = '/'))", [text, text, text])
            if c.modifier == "contains":  # anywhere, case-insensitively (search.html#modifiercontains)
                return F(f"lower({i}.uri) LIKE ? ESCAPE '\\'", [f"%{_like(text.lower())}%"])
            return F(f"{i}.uri = ?", [text])
        if kind == "composite":
            if len(x.components) != 2:
                raise Unsupported("composites of other than two components")
            return ("(" + _component(x.components[0], i, "c1") + " AND "
                    + _component(x.components[1], i, "c2") + ")")
        if kind == "quantity":
            parts = [_range(x, f"{i}.low", f"{i}.high", "number")]
            if x.code is not None:
                parts.append(F(f"{i}.code = ?", [x.code]))
            if x.system is not None:
                parts.append(F(f"{i}.system = ?", [x.system]))
            return "(" + join(" AND ", parts) + ")"
        return _range(x, f"{i}.low", f"{i}.high", kind)

    def _chain(self, c: Clause, i: str) -> F:
        assert c.chain is not None
        t = self.alias("t")
        types = (c.target_type,) if c.target_type else ()
        where = [F(f"{t}.partition = ?", [self.partition]), F(f"{t}.deleted = ?", [False])]
        if types:
            where.append(F(f"{t}.res_type = ?", [types[0]]))
        where.append(self.condition(c.chain, t, types))
        # the target id in its own collation: PostgreSQL then reads the matching reference rows
        # from their lookup index (in the resources' collation it joined 20,000 rows: 217 ms)
        return (F(f"({i}.target_type, {i}.target_id) IN (SELECT {t}.res_type, {t}.res_id FROM resources {t} WHERE ")
                + join(" AND ", where) + ")")

    def _has(self, h: Has, r: str, types: Sequence[str]) -> F:
        i, s = self.alias("i"), self.alias("s")
        where = [F(f"{i}.partition = ?", [self.partition]), F(f"{i}.res_type = ?", [h.source_type]),
                 F(f"{i}.param = ?", [h.param])]
        if len(types) == 1:
            where.append(F(f"{i}.target_type = ?", [types[0]]))
        where += [F(f"{s}.deleted = ?", [False]), self.condition(h.then, s, (h.source_type,))]
        return (F(f"({r}.res_type, {r}.res_id) IN (SELECT {i}.target_type, {_as_id(i, self.sqlite)} "
                  f"FROM search_reference {i} "
                  f"JOIN resources {s} ON {s}.partition = {i}.partition AND {s}.res_type = {i}.res_type "
                  f"AND {s}.res_id = {i}.res_id WHERE ") + join(" AND ", where) + ")")

    # -- sorting ------------------------------------------------------------------------
    def sort_key(self, srt: Sort, r: str) -> F:
        """One sort key, never NULL (a resource without a value sorts last)."""
        if srt.param == "_id":
            return F(f"{r}.res_id")
        if srt.param == "_lastUpdated":
            return F(f"{r}.ts_us")
        kind = KIND.get(srt.type)
        if kind is None:
            raise Unsupported(f"sorting on {srt.type} parameters")
        column = {"string": "normalised", "token": "code", "reference": "target_id", "uri": "uri"}.get(
            kind, "high" if srt.descending else "low")
        family = "int" if kind == "date" else "num" if kind in ("number", "quantity") else "text"
        agg = "MAX" if srt.descending else "MIN"
        k = self.alias("k")
        pk = f" INDEXED BY sqlite_autoindex_search_{kind}_1" if self.sqlite else ""  # as in _member
        return F(f"COALESCE((SELECT {agg}({k}.{column}) FROM search_{kind} {k}{pk} WHERE {k}.partition = {r}.partition "
                 f"AND {k}.res_type = {r}.res_type AND {k}.res_id = {r}.res_id AND {k}.param = ?), ?)",
                 [srt.param, _LAST[(family, srt.descending)]])


def _component(y: Value, i: str, c: str) -> F:
    """One component of a composite value against its columns (migration 0004)."""
    parts = []
    if y.low is not None and y.high is not None:
        if c != "c2":
            raise Unsupported("a range in a composite's first component")
        parts.append(_range(y, f"{i}.low", f"{i}.high", "number" if y.number is not None else "date"))
    elif y.ref_id is not None:
        if not y.ref_type:
            raise Unsupported("a composite reference without a type")
        parts.append(F(f"{i}.{c}_code = ?", [f"{y.ref_type}/{y.ref_id}"]))
    elif y.text is not None and y.code is None:
        parts.append(_prefix(f"{i}.{c}_code", y.text))
    if y.code is not None:
        parts.append(F(f"{i}.{c}_code = ?", [y.code]))
    if y.system is not None:
        parts.append(F(f"{i}.{c}_system = ?", [y.system]))
    return "(" + join(" AND ", parts or [F("1 = 1")]) + ")"


def _clip(text: str | None) -> str:
    return text[:MAX_TEXT] if text else ""


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix(column: str, text: str) -> F:
    return F(f"({column} >= ? AND {column} < ?)", [text, text + TOP])


def _range(x: Value, lo: str, hi: str, kind: str) -> F:
    """The prefix semantics of search.html#prefix on [lo, hi) against [vl, vh)."""
    conv: Any = float if kind in ("number", "quantity") else int
    if x.low is None or x.high is None:
        raise Unsupported("a value without a range")
    vl, vh = conv(x.low), conv(x.high)
    within = F(f"({lo} >= ? AND {hi} <= ?)", [vl, vh])
    if conv is float and x.number is not None and x.prefix in ("gt", "lt", "ge", "le", "sa", "eb"):
        op = {"gt": ">", "sa": ">", "lt": "<", "eb": "<", "ge": ">=", "le": "<="}[x.prefix]
        return F(f"(({lo} + {hi}) / 2) {op} ?", [float(x.number)])
    match x.prefix:
        case "eq":
            return within
        case "ne":
            return "NOT " + within
        case "gt":
            return F(f"{hi} > ?", [vh])
        case "lt":
            return F(f"{lo} < ?", [vl])
        case "ge":  # the first conjunct is implied (hi >= lo >= vl): an index range on hi
            return F(f"({hi} >= ? AND ({hi} > ? OR ", [vl, vh]) + within + "))"
        case "le":  # likewise lo <= hi <= vh: an index range on lo
            return F(f"({lo} <= ? AND ({lo} < ? OR ", [vh, vl]) + within + "))"
        case "sa":
            return F(f"{lo} >= ?", [vh])
        case "eb":
            return F(f"{hi} <= ?", [vl])
        case "ap":
            return F(f"({lo} < ? AND {hi} > ?)", [vh, vl])
    raise Unsupported(f"the prefix {x.prefix}")


# -- plans ------------------------------------------------------------------------------
#: a clause with fewer matches than this drives the search (its matches are listed, then
#: sorted); when every clause has more, the search walks an order (the resources' primary
#: key, or the sort parameter's index) and probes each row, stopping at the page's end
SMALL = 2000
#: sort keys that can be read in order from an index: (kind, descending) -> column
#: (ascending: the lookup index, on (res_type, param, <column>, ...); descending dates:
#: ix_search_date_high, migration 0005)
_WALKS = {("date", False): "low", ("date", True): "high", ("string", False): "normalised",
          ("string", True): "normalised", ("number", False): "low"}
#: what makes one row of a resource its sort key (the lowest, or highest, value; ties on
#: the key broken by the other value column, unique by the primary key)
_TIEBREAK = {"low": "high", "high": "low", "normalised": "exact"}


@dataclass(frozen=True, slots=True)
class Plan:
    """How a search runs. ``driver``: the index (in ``q.clauses``) of the clause whose
    matches are listed first (an IN list); None: the search walks an order (``walk``: the
    first sort key's index, else the resources' primary key) and probes every clause."""

    driver: int | None = None
    walk: bool = False


def probes(q: SearchQuery, partition: str, sqlite: bool = True) -> list[tuple[int, F]]:
    """The clauses worth counting before choosing a :class:`Plan`: each with a query counting
    its matches up to :data:`SMALL` (an index range, read no further than that)."""
    out = []
    for n, c in enumerate(q.clauses):
        if not isinstance(c, Clause) or c.chain is not None or c.modifier in (*_NEGATED, "missing") \
                or c.param in ("_id", "_lastUpdated") or KIND.get(c.type) is None:
            continue
        try:
            rows = Builder(partition, sqlite).condition(c, "r", q.types, ROWS)
        except Unsupported:
            continue
        out.append((n, "SELECT COUNT(*) FROM (" + rows + F(" LIMIT ?) x", [max(SMALL, 1)])))
    return out


def plan(q: SearchQuery, counts: dict[int, int]) -> Plan:
    """The plan for ``q`` given the capped ``counts`` of :func:`probes`.

    - a clause with fewer than :data:`SMALL` matches drives (the smallest one);
    - else a chain, ``_has`` or ``_id`` clause drives (their matches are usually few and
      cannot be counted cheaply) — as does a compartment (found by ``_compartment``);
    - else the search walks: in the first sort key's order when an index holds it, else in
      the resources' primary key order (the default order, type then id).
    """
    small = [(m, n) for n, m in counts.items() if m < SMALL]
    if small:
        return Plan(driver=min(small)[1])
    for n, c in enumerate(q.clauses):
        if n not in counts and not (isinstance(c, Clause) and c.modifier in (*_NEGATED, "missing")) \
                and not (isinstance(c, Clause) and c.param == "_lastUpdated"):
            return Plan(driver=n)
    if q.compartment is not None:
        return Plan()
    return Plan(walk=bool(q.sort) and len(q.types) == 1 and _walk_column(q.sort[0]) is not None)


def _walk_column(srt: Sort) -> str | None:
    if srt.param in ("_id", "_lastUpdated"):  # columns of resources, not index rows
        return None
    kind = KIND.get(srt.type)
    return _WALKS.get((kind, srt.descending)) if kind else None


def _where(b: Builder, q: SearchQuery, p: Plan, r: str = "r", live: bool = False) -> list[F]:
    """``live``: the rows of ``r`` are known to be current (found through index rows)."""
    where = [F(f"{r}.partition = ?", [b.partition])]
    # index rows are kept for current resources only: a match of an index membership is
    # never deleted (and the walk need not read each row's deleted flag from the table)
    if not live and not any(_positive_member(c) for c in q.clauses):
        where.append(F(f"{r}.deleted = ?", [False]))
    if len(q.types) == 1:
        where.append(F(f"{r}.res_type = ?", [q.types[0]]))
    elif q.types:
        where.append(f"{r}.res_type IN (" + join(", ", map(v, q.types)) + ")")
    if q.compartment is not None:
        where.append(_compartment(b, q, r))
    where += [b.condition(c, r, q.types, IN if n == p.driver else PROBE) for n, c in enumerate(q.clauses)]
    return where


def _positive_member(c: Clause | Has) -> bool:
    """Is ``c`` true only for resources that have index rows (so: current, not deleted)?"""
    if isinstance(c, Has):
        return True
    return c.param not in ("_id", "_lastUpdated") and c.modifier not in (*_NEGATED, "missing") \
        and KIND.get(c.type) is not None


def count_sql(q: SearchQuery, partition: str, p: Plan = Plan(), sqlite: bool = True) -> F:
    """The number of matches (``_total``). When a clause drives, its distinct matches are
    counted from its index alone, each probed for the other clauses: the resources table is
    not read (its rows carry the content: reading 200,000 of them is most of the cost)."""
    b = Builder(partition, sqlite)
    base = p.driver if p.driver is not None else next(
        (n for n, c in enumerate(q.clauses) if isinstance(c, Clause) and _positive_member(c)), None)
    if base is not None and len(q.types) == 1 and q.compartment is None \
            and isinstance(q.clauses[base], Clause) and _positive_member(q.clauses[base]):
        rows = b.condition(q.clauses[base], "r", q.types, ROWS)
        rest = [b.condition(c, "r", q.types, PROBE) for n, c in enumerate(q.clauses) if n != base]
        where = (" WHERE " + join(" AND ", rest)) if rest else F("")
        if sqlite:
            return "SELECT COUNT(DISTINCT r.res_id) FROM (" + rows + ") r" + where
        # PostgreSQL: a hash of the ids (COUNT(DISTINCT) sorted them in the locale's order: 66 ms
        # for 19,601 ids, 4 ms to read them)
        return "SELECT COUNT(*) FROM (SELECT DISTINCT r.res_id FROM (" + rows + ") r" + where + ") x"
    return "SELECT COUNT(*) FROM resources r WHERE " + join(" AND ", _where(b, q, p))


def search_sql(q: SearchQuery, partition: str, *, limit: int, after: Sequence[Any] | None,
               backwards: bool = False, p: Plan = Plan(), phase: int = 0, sqlite: bool = True) -> F:
    """One page: the rows (res_type, res_id, version, ts_us, deleted, content) followed by
    their sort keys (the cursor of the next page is the last row's keys, then type and id).

    ``backwards``: the rows before ``after`` instead, nearest first (a previous page, which
    the caller puts back in order). ``after=None``: from the start (or, backwards, the end).

    A walking plan on a sort key (``p.walk``) runs in two phases, the caller going from one
    to the next: 1, the resources with a value, read from the key's index in order (each
    resource at its lowest, or highest, value only); 2, those without one (their key is the
    sort-last constant), in type and id order."""
    b = Builder(partition, sqlite)
    first = q.sort[0] if q.sort else None
    walk = _walk_column(first) if p.walk and first is not None else None
    source = F("resources r")
    where = _where(b, q, p, live=(phase == 1))
    lead: F | None = None  # the first sort key, when the walk reads it from its index
    if walk is not None and first is not None:
        kind = KIND[first.type]
        if phase == 1:
            tie = _TIEBREAK[walk]
            cmp, tcmp = (">", ">") if first.descending else ("<", "<")
            source = F(f"search_{kind} d JOIN resources r ON r.partition = d.partition "
                       f"AND r.res_type = d.res_type AND r.res_id = d.res_id")
            where = [F("d.partition = ?", [partition]), F("d.res_type = ?", [q.types[0]]),
                     F("d.param = ?", [first.param]),
                     F(f"NOT EXISTS (SELECT 1 FROM search_{kind} d2 WHERE d2.partition = d.partition "
                       f"AND d2.res_type = d.res_type AND d2.res_id = d.res_id AND d2.param = d.param "
                       f"AND (d2.{walk} {cmp} d.{walk} OR (d2.{walk} = d.{walk} AND d2.{tie} {tcmp} d.{tie})))")
                     ] + where
            lead = F(f"d.{walk}")
        else:
            where.append("NOT " + b._member("r", q.types, kind, first.param, lambda i: F("1 = 1"), PROBE))
            last = _last(first)  # typed: PostgreSQL cannot infer a bare parameter's type
            sql_type = "BIGINT" if isinstance(last, int) else "DOUBLE PRECISION" if isinstance(last, float) else "TEXT"
            lead = F(f"CAST(? AS {sql_type})", [last])

    def keys() -> list[tuple[F, bool]]:  # built afresh at each use: each use binds its own parameters
        sort = [(b.sort_key(s, "r"), s.descending) for s in q.sort]
        if lead is not None:
            sort[0] = (F(lead.sql, lead.params), sort[0][1])
        return sort + [(F("r.res_type"), False), (F("r.res_id"), False)]
    # the page's keys first, then its rows: the walk reads only index entries of the rows it
    # passes over, not their content (PostgreSQL read 1,991 Encounters for a page of 51: 31 ms)
    select = F("SELECT r.partition, r.res_type, r.res_id")
    for n, (key, _) in enumerate(keys()[:-2]):
        select = select + ", " + key + f" AS k{n}"
    # one type: its name is the same in every row, so it is left out of the keyset and the
    # ORDER BY (PostgreSQL planned "type > ? OR (type = ? AND id > ?)" as a bitmap OR of two
    # index scans and a sort of every later row: 1.2 s for page 101 of 196,000 subjects)
    single = len(q.types) == 1

    def used(pairs: list[tuple[F, bool]]) -> list[int]:
        return [m for m in range(len(pairs)) if not (single and m == len(pairs) - 2)]
    if after is not None:
        pairs = keys()
        ms = used(pairs)
        if len({pairs[m][1] for m in ms}) == 1:
            # every key in one direction: one row-value comparison, an index range on both databases
            op = "<" if pairs[ms[0]][1] != backwards else ">"
            where.append("(" + join(", ", (pairs[m][0] for m in ms)) + f") {op} ("
                         + join(", ", (v(after[m]) for m in ms)) + ")")
        else:
            ors = []
            for n in ms:
                pairs = keys()
                ands = []
                for m in [m for m in ms if m <= n]:
                    op = "=" if m < n else ("<" if pairs[m][1] != backwards else ">")
                    ands.append(pairs[m][0] + f" {op} " + v(after[m]))
                ors.append("(" + join(" AND ", ands) + ")")
            where.append("(" + join(" OR ", ors) + ")")
    pairs = keys()
    order = join(", ", (pairs[m][0] + (" DESC" if pairs[m][1] != backwards else " ASC") for m in used(pairs)))
    page = (select + " FROM " + source + " WHERE " + join(" AND ", where) + " ORDER BY " + order
            + " LIMIT " + v(limit))
    ks = [f"p.k{n}" for n in range(len(q.sort))]
    again = ", ".join([f"{k}{' DESC' if s.descending != backwards else ' ASC'}" for k, s in zip(ks, q.sort)]
                      + [f"p.res_type{' DESC' if backwards else ' ASC'}", f"p.res_id{' DESC' if backwards else ' ASC'}"])
    return ("SELECT r.res_type, r.res_id, r.version, r.ts_us, r.deleted, r.content" + "".join(f", {k}" for k in ks)
            + " FROM (" + page + ") p JOIN resources r ON r.partition = p.partition AND r.res_type = p.res_type "
            "AND r.res_id = p.res_id ORDER BY " + again)


def phases(q: SearchQuery, p: Plan, after: Sequence[Any] | None, backwards: bool) -> list[tuple[int, bool]]:
    """The phases of :func:`search_sql` a page reads, in order, each with whether the cursor
    applies to it (it does in the phase the cursor's row is in; the next phase starts at its
    beginning, or its end going backwards)."""
    if not (p.walk and q.sort):
        return [(0, True)]
    at = 1 if after is None or after[0] != _last(q.sort[0]) else 2
    if backwards:
        return [(2, True), (1, False)] if after is None or at == 2 else [(1, True)]
    return [(1, True), (2, False)] if at == 1 else [(2, True)]


def _last(srt: Sort) -> Any:
    kind = KIND.get(srt.type, "")
    family = "int" if kind == "date" else "num" if kind in ("number", "quantity") else "text"
    return _LAST[(family, srt.descending)]


def _compartment(b: Builder, q: SearchQuery, r: str = "r") -> F:
    from ..search.parameters import compartment_params  # data: the R5 CompartmentDefinitions
    assert q.compartment is not None
    ctype, cid = q.compartment
    ors = []
    for rtype in q.types:
        params = compartment_params(ctype, rtype)
        if not params:
            continue
        i = b.alias("i")
        ors.append(F(f"({r}.res_type, {r}.res_id) IN (SELECT {i}.res_type, {i}.res_id FROM search_reference {i} "
                     f"WHERE {i}.partition = ? AND {i}.res_type = ? AND {i}.param IN (", [b.partition, rtype])
                   + join(", ", map(v, params))
                   + F(f") AND {i}.target_type = ? AND {i}.target_id = ?)", [ctype, cid]))
    return "(" + (join(" OR ", ors) if ors else F("1 = 0")) + ")"


def _as_id(i: str, sqlite: bool) -> str:
    """A reference row's target id compared with a resource id: on PostgreSQL the index
    columns are COLLATE "C" (prefix ranges) and ``resources.res_id`` is not, and a comparison
    in the "C" collation cannot use the resources' primary key (an _include read every
    Patient: 40 ms)."""
    return f"{i}.target_id" if sqlite else f'({i}.target_id COLLATE "default")'


def include_sql(inc: Include, partition: str, keys: Sequence[tuple[str, str]], sqlite: bool = True) -> F:
    """What an ``_include`` adds (the targets of the page's references) or a ``_revinclude``
    (the resources that reference the page), for the page's (type, id) ``keys``."""
    # per type, an IN list of ids: both planners look each one up in an index (an OR of
    # (type, id) pairs, or a row-value IN, was planned as a scan of every reference row of the
    # type: 11 ms at 20,000 subjects)
    by_type: dict[str, list[str]] = {}
    for t, i in keys:
        by_type.setdefault(t, []).append(i)
    if not inc.reverse:
        cols = ("res_type", "res_id")
        where = [F("x.partition = ?", [partition]), F("x.target_type <> ''")]
        if inc.source_type != "*":
            where.append(F("x.res_type = ?", [inc.source_type]))
        if inc.target_type:
            where.append(F("x.target_type = ?", [inc.target_type]))
        on = f"t.res_type = x.target_type AND t.res_id = {_as_id('x', sqlite)}"
    else:
        cols = ("target_type", "target_id")
        where = [F("x.partition = ?", [partition]), F("x.res_type = ?", [inc.source_type])]
        on = "t.res_type = x.res_type AND t.res_id = x.res_id"
    if inc.param != "*":
        where.append(F("x.param = ?", [inc.param]))
    where.append("(" + join(" OR ", (F(f"(x.{cols[0]} = ? AND x.{cols[1]} IN (", [t]) + join(", ", map(v, ids)) + "))"
                                     for t, ids in by_type.items())) + ")")
    return (F("SELECT DISTINCT t.res_type, t.res_id, t.version, t.ts_us, t.deleted, t.content "
              f"FROM search_reference x JOIN resources t ON t.partition = x.partition AND {on} WHERE ")
            + join(" AND ", where) + F(" AND t.deleted = ?", [False]))
