"""Token ``:in`` / ``:not-in`` (R5 search.html#modifierin, #modifiernotin): the expansion of the
ValueSets the server holds (``search/valuesets.py``) and the errors; the matching itself is
checked by the vectors (tests/data/search-vectors, ``:in``/``:not-in`` section)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_ctms.search.valuesets import MAX_CODES, NotExpandable, expand

from .fhir import outcome_codes

LOINC = "http://loinc.org"
GENDER = "http://hl7.org/fhir/administrative-gender"


def vs(rid: str, url: str | None = None, **fields: Any) -> dict[str, Any]:
    out = {"resourceType": "ValueSet", "id": rid, "status": "active", **fields}
    if url:
        out["url"] = url
    return out


def inc(system: str, *codes: str, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, **more}
    if codes:
        out["concept"] = [{"code": c} for c in codes]
    return out


# -- expansion (no database) ----------------------------------------------------------------------

def test_expansion_contains_nested_and_preferred_to_compose():
    v = vs("a", expansion={"timestamp": "2024-01-01", "contains": [
        {"system": LOINC, "code": "1", "contains": [{"system": LOINC, "code": "2"}]},
        {"abstract": True, "display": "a group", "contains": [{"system": "s", "code": "3"}]}]},
        compose={"include": [inc(LOINC, "9")]})
    assert expand(v) == ({(LOINC, "1"), (LOINC, "2"), ("s", "3")}, set())


@pytest.mark.parametrize("expansion", [{"timestamp": "t", "total": 5, "contains": [{"system": "s", "code": "1"}]},
                                       {"timestamp": "t", "offset": 10, "contains": [{"system": "s", "code": "1"}]}])
def test_partial_expansion_is_refused(expansion):
    with pytest.raises(NotExpandable):
        expand(vs("a", expansion=expansion))


def test_compose_include_exclude_and_whole_systems():
    v = vs("a", compose={"include": [inc(LOINC, "1", "2", "3"), inc("whole"), inc("gone")],
                         "exclude": [inc(LOINC, "2"), inc("gone")]})
    assert expand(v) == ({(LOINC, "1"), (LOINC, "3")}, {"whole"})
    # a code of a whole-system include is not listed twice
    assert expand(vs("b", compose={"include": [inc("whole"), inc("whole", "x")]})) == (set(), {"whole"})


@pytest.mark.parametrize("compose", [
    {"include": [inc(LOINC, filter=[{"property": "concept", "op": "is-a", "value": "1"}])]},
    {"include": [{"valueSet": ["http://example.org/other"]}]},
    {"include": [{"concept": [{"code": "x"}]}]},  # no system
    {"include": [inc("whole")], "exclude": [inc("whole", "x")]},  # all codes but x: not a list
    {"include": []},
])
def test_what_cannot_be_expanded_exactly(compose):
    with pytest.raises(NotExpandable):
        expand(vs("a", compose=compose))


def test_neither_compose_nor_expansion():
    with pytest.raises(NotExpandable):
        expand(vs("a", "http://example.org/vs"))


# -- through the API ------------------------------------------------------------------------------

async def _put(client, *resources: dict[str, Any]) -> None:
    for r in resources:
        resp = await client.put(f"/{r['resourceType']}/{r['id']}", json=r)
        assert resp.status_code in (200, 201), resp.text


async def _ids(client, query: str) -> list[str]:
    r = await client.get("/" + query)
    assert r.status_code == 200, r.text
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


async def test_in_and_not_in_errors(client):
    await _put(client,
               {"resourceType": "Patient", "id": "f", "gender": "female"},
               vs("filter", "http://example.org/vs/filter",
                  compose={"include": [inc(LOINC, filter=[{"property": "concept", "op": "is-a", "value": "1"}])]}),
               vs("whole-gender", "http://example.org/vs/whole-gender", compose={"include": [inc(GENDER)]}),
               vs("v1", "http://example.org/vs/versions", version="1", compose={"include": [inc(GENDER, "male")]}),
               vs("v2", "http://example.org/vs/versions", version="2", compose={"include": [inc(GENDER, "female")]}))
    for query, code in [
        ("Patient?gender:in=http://example.org/vs/unknown", "not-found"),
        ("Patient?gender:not-in=ValueSet/nope", "not-found"),
        ("Patient?gender:in=http://example.org/vs/versions%7C3", "not-found"),
        ("Observation?code:in=http://example.org/vs/filter", "not-supported"),
        ("Observation?code:not-in=ValueSet/filter", "not-supported"),
        ("Patient?gender:in=ValueSet/whole-gender", "not-supported"),  # gender is indexed without a system
        ("Patient?gender:in=http://example.org/vs/versions", "multiple-matches"),
        ("Observation?subject:Patient.gender:in=ValueSet/nope", "not-found"),
    ]:
        for headers in ({}, {"prefer": "handling=strict"}):
            r = await client.get("/" + query, headers=headers)
            assert r.status_code == 400, (query, r.text)
            assert outcome_codes(r) == [code], query
    assert await _ids(client, "Patient?gender:in=http://example.org/vs/versions%7C2") == ["f"]
    assert await _ids(client, "Patient?gender:in=http://example.org/vs/versions%7C1") == []
    assert await _ids(client, "Patient?gender:not-in=http://example.org/vs/versions%7C1") == ["f"]


async def test_in_by_this_servers_absolute_url_paging_and_conditional_create(client):
    await _put(client, vs("fem", "http://example.org/vs/fem", compose={"include": [inc(GENDER, "female")]}),
               *({"resourceType": "Patient", "id": f"p{n}", "gender": "female" if n % 2 else "male"}
                 for n in range(7)))
    assert await _ids(client, "Patient?gender:in=http://testserver/fhir/ValueSet/fem") == ["p1", "p3", "p5"]
    # the self and next links keep the modifier and the value set (they round-trip)
    r = await client.get("/Patient", params={"gender:not-in": "ValueSet/fem", "_count": "2"})
    body = r.json()
    links = {link["relation"]: link["url"] for link in body["link"]}
    assert "gender%3Anot-in=ValueSet%2Ffem" in links["self"] or "gender:not-in=ValueSet/fem" in links["self"]
    seen = [e["resource"]["id"] for e in body["entry"]]
    while "next" in links:
        body = (await client.get(links["next"])).json()
        links = {link["relation"]: link["url"] for link in body["link"]}
        seen += [e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"]
    assert sorted(seen) == ["p0", "p2", "p4", "p6"]
    # conditional create: criteria with :in are matched the same way
    r = await client.post("/Patient", json={"resourceType": "Patient", "gender": "female"},
                          headers={"if-none-exist": "gender:in=ValueSet/fem&_id=p1"})
    assert r.status_code == 200  # p1 matches: nothing created
    assert await _ids(client, "Patient?gender=female") == ["p1", "p3", "p5"]


async def test_too_many_codes(client):
    codes = [str(n) for n in range(MAX_CODES + 1)]
    await _put(client, vs("big", "http://example.org/vs/big", compose={"include": [inc(LOINC, *codes)]}))
    r = await client.get("/Observation", params={"code:in": "ValueSet/big"})
    assert r.status_code == 400 and outcome_codes(r) == ["not-supported"]
