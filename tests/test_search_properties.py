"""FHIR R5 search, property-based: the server against a brute-force reference written from the spec.

Hypothesis generates small random data sets (5-20 resources) and random queries; each example
empties the tables, loads the data in one transaction and compares the ids the server returns with
a filter over the same data written here, directly from hl7.org/fhir/R5/search.html:

- dates (#date, #prefix): every value is a half-open UTC range from its precision (a year, a month,
  a day, a minute, a second; a Period from the start of its start to the end of its end, a missing
  bound being unbounded); a date without a time zone is read in the server's zone, UTC. With S the
  search range and T the target's: eq S contains T; ne not eq; gt T reaches past the end of S; lt T
  starts before S; ge gt or eq; le lt or eq; sa T starts at or after the end of S; eb T ends at or
  before the start of S; ap at least every T that overlaps S ('the exact value is at the discretion
  of the system'). A resource without a value matches no prefix.
- strings (#string, #modifierexact, #modifiercontains): both sides normalised (NFD, combining marks
  removed, case folded); default starts-with, :contains anywhere, :exact the whole string as is.
- tokens (#token, #modifiernot, #escaping): [code], [system]|[code], |[code], [system]|;
  :not = resources with no matching value (including those with none); values escaped with '\\'.
- #combining: a comma is OR, a repeated parameter is AND; #modifiermissing: true/false.

The settings keep each property at 40 examples with no deadline (both databases together run in
well under a minute). A failure prints the minimal data set and query.

Where the server and the reference disagree and the specification sides with the reference, the
property is marked ``xfail(strict=True)`` with the reason: values longer than 255 characters
(``test_long_*``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from .conftest import empty_tables, make_client
from .plans import PLANS, forced

SETTINGS = settings(max_examples=40, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
FHIR_JSON = {"content-type": "application/fhir+json"}


def share(expected: set[str], candidates: int) -> str:
    """For --hypothesis-show-statistics: how much of the data a query's reference answer selects."""
    return "none" if not expected else "all" if len(expected) == candidates else "some"


# -- the server side: load, query, read every page ------------------------------------------------

async def run(repo, resources: list[dict[str, Any]], queries: list[tuple[str, list[tuple[str, str]]]]
              ) -> list[set[str]]:
    """Empty the database, load ``resources`` in one transaction, and return the set of matching
    ids of each (type, [(name, value)]) query."""
    await empty_tables(repo)
    async with make_client(repo) as client:
        body = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}, "resource": r}
            for r in resources]}
        r = await client.post("", json=body)
        assert r.status_code == 200, r.text
        results = []
        for rtype, params in queries:
            answers = {}
            for plan in PLANS:  # every way the search can run gives the same answer
                with forced(plan):
                    url: str | None = f"/{rtype}?{encode(params)}&_count=3"
                    found: list[str] = []
                    while url is not None:
                        r = await client.get(url)
                        assert r.status_code == 200, f"{rtype}?{encode(params)}: {r.status_code} {r.text}"
                        page = r.json()
                        found += [e["resource"]["id"] for e in page.get("entry", [])
                                  if e.get("search", {}).get("mode") == "match"]
                        url = next((ln["url"] for ln in page.get("link", []) if ln["relation"] == "next"), None)
                    assert len(found) == len(set(found)), (plan, found)
                    answers[plan] = set(found)
            assert len({frozenset(a) for a in answers.values()}) == 1, (rtype, params, answers)
            results.append(answers["chosen"])
        return results


async def agree(repo, patients: list[dict[str, Any]],
                queries: list[tuple[list[tuple[str, str]], Callable[[dict[str, Any]], bool]]]) -> None:
    """Each Patient query finds on the server exactly the patients its reference predicate keeps."""
    got = await run(repo, patients, [("Patient", p) for p, _ in queries])
    for (params, predicate), found in zip(queries, got):
        expected = {p["id"] for p in patients if predicate(p)}
        note(f"Patient?{encode(params)} -> server {sorted(found)}, reference {sorted(expected)}")
        event(f"matches: {share(expected, len(patients))}")
        assert found == expected, f"Patient?{encode(params)}: server {sorted(found)}, reference {sorted(expected)}"


def encode(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe=':._-')}={quote(v, safe='')}" for k, v in params)


def escape(text: str) -> str:
    """search.html#escaping: '\\', ',', '|' and '$' in a value are prefixed with '\\'."""
    return re.sub(r"([\\,|$])", r"\\\1", text)


# -- dates: the reference ---------------------------------------------------------------------------

UTC = timezone.utc
NEG_INF = datetime.min.replace(tzinfo=UTC)
POS_INF = datetime.max.replace(tzinfo=UTC)
ZONES = ["Z", "+01:00", "-05:00", "+05:30", "+14:00", "-12:00"]
_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?"
                      r"(Z|[+-]\d{2}:\d{2}))?)?)?")


def date_range(value: str) -> tuple[datetime, datetime]:
    """[low, high) in UTC of a FHIR date/dateTime, from its precision (search.html#date)."""
    m = _DATE_RE.fullmatch(value)
    assert m, value
    y, mo, d, hh, mi, ss, fraction, zone = m.groups()
    if mo is None:
        return datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1, tzinfo=UTC)
    if d is None:
        low = datetime(int(y), int(mo), 1, tzinfo=UTC)
        nxt = datetime(int(y) + (int(mo) == 12), int(mo) % 12 + 1, 1, tzinfo=UTC)
        return low, nxt
    if hh is None:
        low = datetime(int(y), int(mo), int(d), tzinfo=UTC)
        return low, low + timedelta(days=1)
    tz = UTC
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    low = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), tzinfo=tz).astimezone(UTC)
    if fraction:  # 2001-03-05T10:00:00.12Z is [.12, .13): the precision of its digits
        digits = fraction[1:]
        low += timedelta(microseconds=int(digits.ljust(6, "0")))
        return low, low + timedelta(microseconds=10 ** (6 - len(digits)))
    return low, low + (timedelta(minutes=1) if ss is None else timedelta(seconds=1))


def date_matches(prefix: str, search: tuple[datetime, datetime], target: tuple[datetime, datetime]) -> bool:
    """search.html#prefix, the range column."""
    sl, sh = search
    tl, th = target
    eq = sl <= tl and th <= sh
    gt = th > sh           # the range above the search value [sh, inf) intersects [tl, th)
    lt = tl < sl           # the range below the search value (-inf, sl) intersects [tl, th)
    return {"eq": eq, "ne": not eq, "gt": gt, "lt": lt, "ge": gt or eq, "le": lt or eq,
            "sa": tl >= sh, "eb": th <= sl, "ap": tl < sh and sl < th}[prefix]


@st.composite
def fhir_dates(draw, search: bool = False) -> str:
    """A date of random precision in 2000-2002; a time always has a zone (resources: with seconds,
    as the dateTime type requires, perhaps fractional; search values: also hours and minutes only)."""
    precisions = ["Y", "M", "D", "s"] + (["m"] if search else ["f"])
    p = draw(st.sampled_from(precisions))
    d = draw(st.dates(date(2000, 1, 1), date(2002, 12, 31)))
    if p == "Y":
        return f"{d.year:04d}"
    if p == "M":
        return f"{d.year:04d}-{d.month:02d}"
    if p == "D":
        return d.isoformat()
    hh, mm = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    zone = draw(st.sampled_from(ZONES))
    if p == "m":
        return f"{d.isoformat()}T{hh:02d}:{mm:02d}{zone}"
    fraction = "." + draw(st.text("0123456789", min_size=1, max_size=3)) if p == "f" else ""
    return f"{d.isoformat()}T{hh:02d}:{mm:02d}:{draw(st.integers(0, 59)):02d}{fraction}{zone}"


@st.composite
def day_dates(draw) -> str:
    """A Patient.birthDate (the date type: year, month or day)."""
    v = draw(fhir_dates())
    return v if "T" not in v else v[:10]


@st.composite
def periods(draw) -> dict[str, str]:
    a = draw(st.one_of(st.none(), fhir_dates()))
    b = draw(st.one_of(st.none(), fhir_dates()))
    if a is None and b is None:
        a = draw(fhir_dates())
    if a is not None and b is not None and date_range(a)[0] > date_range(b)[0]:
        a, b = b, a  # per-1: start <= end
    return {k: v for k, v in (("start", a), ("end", b)) if v is not None}


def period_range(p: dict[str, str]) -> tuple[datetime, datetime]:
    """search.html#date: 'a missing lower boundary is "less than" any actual date. A missing upper
    boundary is "greater than" any actual date'."""
    return (date_range(p["start"])[0] if "start" in p else NEG_INF,
            date_range(p["end"])[1] if "end" in p else POS_INF)


@st.composite
def dated_resources(draw) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(draw(st.integers(5, 20))):
        if draw(st.booleans()):
            p: dict[str, Any] = {"resourceType": "Patient", "id": f"p{n}"}
            if draw(st.integers(0, 4)):
                p["birthDate"] = draw(day_dates())
            out.append(p)
        else:
            o: dict[str, Any] = {"resourceType": "Observation", "id": f"o{n}", "status": "final",
                                 "code": {"text": "t"}}
            kind = draw(st.sampled_from(["none", "dateTime", "dateTime", "Period"]))
            if kind == "dateTime":
                o["effectiveDateTime"] = draw(fhir_dates())
            elif kind == "Period":
                o["effectivePeriod"] = draw(periods())
            out.append(o)
    return out


def target_range(r: dict[str, Any]) -> tuple[datetime, datetime] | None:
    if "birthDate" in r:
        return date_range(r["birthDate"])
    if "effectiveDateTime" in r:
        return date_range(r["effectiveDateTime"])
    if "effectivePeriod" in r:
        return period_range(r["effectivePeriod"])
    return None


PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]


def stored_dates(resources: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in resources:
        out += [v for v in (r.get("birthDate"), r.get("effectiveDateTime")) if v]
        out += list(r.get("effectivePeriod", {}).values())
    return out


@st.composite
def search_dates(draw, resources) -> str:
    """Half the time a stored value, at its precision or a coarser one, shifted by -1, 0 or +1 of
    its last unit: so that ranges often share a boundary (where lt/le, gt/ge, sa/eb differ)."""
    stored = stored_dates(resources)
    if not stored or draw(st.booleans()):
        return draw(fhir_dates(search=True))
    v = draw(st.sampled_from(stored))
    lengths = [n for n in (4, 7, 10) if n < len(v)] + [len(v)]
    v = v[:draw(st.sampled_from(lengths))]
    shift = draw(st.sampled_from([-1, 0, 0, 1]))
    if len(v) == 4:
        return f"{int(v) + shift:04d}"
    if len(v) == 7:
        months = int(v[:4]) * 12 + int(v[5:7]) - 1 + shift
        return f"{months // 12:04d}-{months % 12 + 1:02d}"
    if len(v) == 10:
        return (date.fromisoformat(v) + timedelta(days=shift)).isoformat()
    return re.sub(r"\.\d+", "", v)  # a dateTime with seconds and a zone (search values have no fraction)


@st.composite
def date_queries(draw, resources) -> tuple[str, list[tuple[str, str]], Callable[[dict], bool], bool]:
    """(type, params, reference predicate, whether the predicate is only a lower bound (ap))."""
    rtype, param = draw(st.sampled_from([("Patient", "birthdate"), ("Observation", "date")]))
    if draw(st.integers(0, 9)) == 0:
        missing = draw(st.booleans())
        return (rtype, [(f"{param}:missing", str(missing).lower())],
                lambda r: (target_range(r) is None) == missing, False)
    if draw(st.integers(0, 9)) == 0:
        v = draw(search_dates(resources))
        s = date_range(v)
        return (rtype, [(param, "ap" + v)],
                lambda r: (t := target_range(r)) is not None and date_matches("ap", s, t), True)
    clauses = []
    for _ in range(draw(st.integers(1, 2))):  # AND
        ors = [(draw(st.sampled_from(PREFIXES)), draw(search_dates(resources)))
               for _ in range(draw(st.integers(1, 2)))]  # OR
        clauses.append(ors)
    params = [(param, ",".join(p + v for p, v in ors)) for ors in clauses]

    def predicate(r: dict[str, Any]) -> bool:
        t = target_range(r)
        return t is not None and all(
            any(date_matches(p or "eq", date_range(v), t) for p, v in ors) for ors in clauses)
    return rtype, params, predicate, False


@SETTINGS
@given(data=st.data())
async def test_date_search_agrees_with_the_reference(repo, data) -> None:
    """search.html#date and #prefix on date (Patient.birthDate), dateTime with zones and Period
    (Observation.effective[x]), with AND/OR and :missing."""
    resources = data.draw(dated_resources(), label="resources")
    queries = [data.draw(date_queries(resources), label="query") for _ in range(4)]
    got = await run(repo, resources, [(t, p) for t, p, _, _ in queries])
    for (rtype, params, predicate, lower_bound_only), found in zip(queries, got):
        expected = {r["id"] for r in resources if r["resourceType"] == rtype and predicate(r)}
        note(f"{rtype}?{encode(params)} -> server {sorted(found)}, reference {sorted(expected)}")
        event(f"matches: {share(expected, sum(r['resourceType'] == rtype for r in resources))}")
        if lower_bound_only:
            assert expected <= found, f"{rtype}?{encode(params)}: missing {sorted(expected - found)}"
        else:
            assert found == expected, (f"{rtype}?{encode(params)}: server {sorted(found)}, "
                                       f"reference {sorted(expected)}")


# -- strings: the reference -------------------------------------------------------------------------

LETTERS = "aAáÁeEéÉèêoOöÖnNñcçÇiIï"


def fold(text: str) -> str:
    """search.html#string: 'normalized by case and combining characters'."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c)).casefold()


def string_matches(modifier: str | None, query: str, value: str) -> bool:
    if modifier == "exact":
        return value == query
    if modifier == "contains":
        return fold(query) in fold(value)
    return fold(value).startswith(fold(query))


words = st.text(alphabet=LETTERS, min_size=1, max_size=5)


@st.composite
def named_patients(draw) -> list[dict[str, Any]]:
    out = []
    for n in range(draw(st.integers(5, 20))):
        names = []
        for _ in range(draw(st.integers(0, 2))):
            family = draw(st.one_of(st.none(), words))
            given = draw(st.lists(words, max_size=2))
            if family is None and not given:
                given = [draw(words)]
            names.append({k: v for k, v in (("family", family), ("given", given)) if v})
        p: dict[str, Any] = {"resourceType": "Patient", "id": f"p{n}"}
        if names:
            p["name"] = names
        out.append(p)
    return out


def name_values(p: dict[str, Any], param: str) -> list[str]:
    """The strings a parameter searches: family, given, or (name) both."""
    out = []
    for n in p.get("name", []):
        if param in ("family", "name") and "family" in n:
            out.append(n["family"])
        if param in ("given", "name"):
            out += n.get("given", [])
    return out


def respell(draw, text: str) -> str:
    """The same letters, perhaps in another case or without accents."""
    how = draw(st.sampled_from(["as is", "upper", "lower", "no accents"]))
    return {"as is": text, "upper": text.upper(), "lower": text.lower(),
            "no accents": "".join(c for c in unicodedata.normalize("NFD", text)
                                  if not unicodedata.combining(c))}[how]


@st.composite
def string_queries(draw, patients) -> tuple[list[tuple[str, str]], Callable[[dict], bool]]:
    existing = [v for p in patients for v in name_values(p, "name")]
    param = draw(st.sampled_from(["family", "given", "name"]))
    if draw(st.integers(0, 9)) == 0:
        missing = draw(st.booleans())
        return ([(f"{param}:missing", str(missing).lower())],
                lambda p: (not name_values(p, param)) == missing)

    def value() -> str:
        if existing and draw(st.integers(0, 3)):
            v = draw(st.sampled_from(existing))
            i = draw(st.integers(0, len(v) - 1))
            j = draw(st.integers(i + 1, len(v)))
            return respell(draw, v[i:j] if draw(st.booleans()) else v[:j])
        return draw(words)

    clauses = []
    for _ in range(draw(st.integers(1, 2))):  # AND
        modifier = draw(st.sampled_from([None, None, "exact", "contains"]))
        clauses.append((modifier, [value() for _ in range(draw(st.integers(1, 2)))]))  # OR
    params = [(param + (f":{m}" if m else ""), ",".join(vs)) for m, vs in clauses]

    def predicate(p: dict[str, Any]) -> bool:
        return all(any(string_matches(m, q, v) for q in vs for v in name_values(p, param))
                   for m, vs in clauses)
    return params, predicate


@SETTINGS
@given(data=st.data())
async def test_string_search_agrees_with_the_reference(repo, data) -> None:
    """search.html#string (starts-with, case and accent insensitive), #modifierexact,
    #modifiercontains, on family, given and name, with AND/OR and :missing."""
    patients = data.draw(named_patients(), label="patients")
    queries = [data.draw(string_queries(patients), label="query") for _ in range(4)]
    await agree(repo, patients, queries)


# -- tokens: the reference --------------------------------------------------------------------------

SYSTEMS = [None, "http://a.example/ids", "http://b.example/ids"]
CODES = ["x", "y", "z1", "a,b", "p|q", "r\\s", "t$u"]
GENDERS = ["male", "female", "other", "unknown"]


@dataclass(frozen=True)
class Token:
    form: str           # "code", "system|code", "|code", "system|"
    system: str | None
    code: str | None

    def text(self) -> str:
        return {"code": escape(self.code or ""),
                "system|code": f"{escape(self.system or '')}|{escape(self.code or '')}",
                "|code": f"|{escape(self.code or '')}",
                "system|": f"{escape(self.system or '')}|"}[self.form]

    def matches(self, ident: dict[str, Any]) -> bool:
        """search.html#token, the four forms against an Identifier."""
        if self.form == "code":
            return ident.get("value") == self.code
        if self.form == "system|code":
            return ident.get("system") == self.system and ident.get("value") == self.code
        if self.form == "|code":
            return "system" not in ident and ident.get("value") == self.code
        return ident.get("system") == self.system


@st.composite
def identified_patients(draw) -> list[dict[str, Any]]:
    out = []
    for n in range(draw(st.integers(5, 20))):
        p: dict[str, Any] = {"resourceType": "Patient", "id": f"p{n}"}
        idents = []
        for _ in range(draw(st.integers(0, 3))):
            system = draw(st.sampled_from(SYSTEMS))
            ident = {"value": draw(st.sampled_from(CODES))}
            if system:
                ident["system"] = system
            idents.append(ident)
        if idents:
            p["identifier"] = idents
        if draw(st.integers(0, 3)):
            p["gender"] = draw(st.sampled_from(GENDERS))
        out.append(p)
    return out


@st.composite
def tokens(draw) -> Token:
    form = draw(st.sampled_from(["code", "system|code", "|code", "system|"]))
    system = draw(st.sampled_from(SYSTEMS[1:])) if form in ("system|code", "system|") else None
    code = draw(st.sampled_from(CODES)) if form != "system|" else None
    return Token(form, system, code)


@st.composite
def token_queries(draw, patients) -> tuple[list[tuple[str, str]], Callable[[dict], bool]]:
    param = draw(st.sampled_from(["identifier", "identifier", "gender"]))

    def has_match(p: dict[str, Any], t: Token | str) -> bool:
        if isinstance(t, str):
            return p.get("gender") == t
        return any(t.matches(i) for i in p.get("identifier", []))

    def present(p: dict[str, Any]) -> bool:
        return bool(p.get("identifier")) if param == "identifier" else "gender" in p

    kind = draw(st.sampled_from(["match", "match", "not", "missing"]))
    if kind == "missing":
        missing = draw(st.booleans())
        return [(f"{param}:missing", str(missing).lower())], lambda p: (not present(p)) == missing
    if kind == "not":  # one value: ':not' of an OR list is not defined unambiguously
        t = draw(tokens()) if param == "identifier" else draw(st.sampled_from(GENDERS))
        text = t.text() if isinstance(t, Token) else t
        return [(f"{param}:not", text)], lambda p: not has_match(p, t)
    clauses = []
    for _ in range(draw(st.integers(1, 2))):  # AND
        clauses.append([draw(tokens()) if param == "identifier" else draw(st.sampled_from(GENDERS))
                        for _ in range(draw(st.integers(1, 3)))])  # OR
    params = [(param, ",".join(t.text() if isinstance(t, Token) else t for t in ors)) for ors in clauses]
    return params, lambda p: all(any(has_match(p, t) for t in ors) for ors in clauses)


@SETTINGS
@given(data=st.data())
async def test_token_search_agrees_with_the_reference(repo, data) -> None:
    """search.html#token (the four forms on Identifier; a code on Patient.gender), #modifiernot,
    #modifiermissing, #escaping of ',' '|' '\\' '$' in codes, with AND/OR."""
    patients = data.draw(identified_patients(), label="patients")
    queries = [data.draw(token_queries(patients), label="query") for _ in range(4)]
    await agree(repo, patients, queries)


# -- long values (no length limit in search.html) ----------------------------------------------------

LONG = ("search.html#string: 'a field matches a string query if the value of the field equals or "
        "starts with the supplied parameter value' (and #modifierexact, #modifiercontains, #token), with "
        "no limit on length; the server clips indexed text to 255 characters (ARCHITECTURE.md, Storage) "
        "but not the search value, so a value longer than 255 characters is found neither by :exact, "
        "nor by starts-with on the whole value, nor by :contains on its end, nor by a token search on "
        "the whole identifier")


#: the long-value properties fail on every example with a whole-value query, so they only generate
#: (shrinking ~45 s per database: the minimal example, reported, is one Patient whose family is 256
#: times 'A', searched by Patient?family=<the same 256 A's>: the server finds nothing)
LONG_SETTINGS = settings(SETTINGS, max_examples=10, phases=[Phase.generate])


@st.composite
def long_words(draw) -> str:
    """256-300 characters: past the 255th."""
    return draw(st.text(alphabet=LETTERS, min_size=256, max_size=300))


@pytest.mark.xfail(strict=True, reason=LONG)
@LONG_SETTINGS
@given(data=st.data())
async def test_long_strings_agree_with_the_reference(repo, data) -> None:
    """The string property with family names of 256-300 characters, searched by the whole value
    (default and :exact) or its last characters (:contains)."""
    families = data.draw(st.lists(long_words(), min_size=5, max_size=8), label="families")
    patients = [{"resourceType": "Patient", "id": f"p{n}", "name": [{"family": f}]}
                for n, f in enumerate(families)]
    queries = []
    for _ in range(4):
        f = data.draw(st.sampled_from(families), label="family")
        modifier = data.draw(st.sampled_from([None, "exact", "contains"]), label="modifier")
        value = f[-data.draw(st.integers(1, 20), label="tail"):] if modifier == "contains" else f
        queries.append(([("family" + (f":{modifier}" if modifier else ""), value)],
                        lambda p, m=modifier, q=value: string_matches(m, q, p["name"][0]["family"])))
    await agree(repo, patients, queries)


@pytest.mark.xfail(strict=True, reason=LONG)
@LONG_SETTINGS
@given(data=st.data())
async def test_long_identifiers_agree_with_the_reference(repo, data) -> None:
    """The token property with identifier values of 256-300 characters, searched by system|value."""
    values = data.draw(st.lists(st.text(alphabet="xyz", min_size=256, max_size=300), min_size=5,
                                max_size=8, unique=True), label="values")
    patients = [{"resourceType": "Patient", "id": f"p{n}",
                 "identifier": [{"system": SYSTEMS[1], "value": v}]} for n, v in enumerate(values)]
    queries = []
    for _ in range(4):
        t = Token("system|code", SYSTEMS[1], data.draw(st.sampled_from(values), label="value"))
        queries.append(([("identifier", t.text())], lambda p, t=t: any(t.matches(i) for i in p["identifier"])))
    await agree(repo, patients, queries)


# -- the reference itself, on the spec's own examples -----------------------------------------------

def test_reference_date_rules_follow_the_spec_examples() -> None:
    """The #date table's examples, so the reference is checked against the spec, not the server."""
    day = date_range("2013-01-14")
    assert date_matches("eq", day, date_range("2013-01-14T10:00:00Z"))
    assert not date_matches("eq", day, date_range("2013-01-15T00:00:00Z"))
    assert date_matches("ne", day, date_range("2013-01-15T00:00:00Z"))
    assert date_matches("lt", date_range("2013-01-14T10:00Z"), day)
    assert date_matches("gt", date_range("2013-01-14T10:00Z"), day)
    from_jan21 = period_range({"start": "2013-01-21"})
    from_mar15 = period_range({"start": "2013-03-15"})
    until_jan21 = period_range({"end": "2013-01-21"})
    mar14 = date_range("2013-03-14")
    assert date_matches("ge", mar14, from_jan21) and date_matches("le", mar14, from_jan21)
    assert date_matches("sa", mar14, from_mar15) and not date_matches("sa", mar14, from_jan21)
    assert not date_matches("sa", mar14, until_jan21)
    assert date_matches("eb", mar14, until_jan21) and not date_matches("eb", mar14, from_jan21)
    assert not date_matches("eb", mar14, from_mar15)
    assert date_range("2000-04") == (datetime(2000, 4, 1, tzinfo=UTC), datetime(2000, 5, 1, tzinfo=UTC))
    assert date_range("2013-01-14T23:30:00-05:00")[0] == datetime(2013, 1, 15, 4, 30, tzinfo=UTC)
    low, high = date_range("2013-01-14T10:00:00.25Z")
    assert (high - low) == timedelta(milliseconds=10) and low.microsecond == 250000


def test_reference_string_rules_follow_the_spec_examples() -> None:
    """#string: given=eve finds Eve and Evelyn; :contains also Severine; :exact=Eve not eve/EVE."""
    assert string_matches(None, "eve", "Eve") and string_matches(None, "eve", "Evelyn")
    assert not string_matches(None, "eve", "Severine")
    assert string_matches("contains", "eve", "Séverine")
    assert string_matches("exact", "Eve", "Eve") and not string_matches("exact", "Eve", "eve")
    assert string_matches(None, "ÉVE", "evelyne") and not string_matches("exact", "Eve", "Éve")
