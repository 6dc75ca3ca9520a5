"""FHIR R5 search conformance vectors (hl7.org/fhir/R5/search.html), data-driven.

``tests/data/search-vectors/dataset.json`` is a fixed transaction Bundle of hand-written resources
(Patients, Observations, RiskAssessments, ResearchStudies, ResearchSubjects, ValueSets, a
CodeSystem); ``vectors.yaml`` has one case a line: the section of the specification it checks, a
query, and the ids that must match, worked out by hand from the data set (not from the server).

Each vector is its own test: the ``client`` fixture empties the tables, the data set is POSTed as
it is on disk (one request; the raw bytes, so that ``5.40`` and ``100.00`` keep their precision),
the query is sent as written, and every page of the result is read. A vector has either

- ``expect``: the exact set of matching ids (a list, in order, when ``ordered: true``), or
- ``includes`` / ``excludes``: for ``ap``, whose approximation is left to the server ('the exact
  value here is at the discretion of the system'), what must and must not match.

``xfail: "<reason>"`` marks a vector where the server disagrees with the specification (strict,
so a fix is noticed).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from .plans import PLANS, forced

HERE = Path(__file__).resolve().parent / "data" / "search-vectors"
DATASET_BYTES = (HERE / "dataset.json").read_bytes()
DATASET = json.loads(DATASET_BYTES)
VECTORS: list[dict[str, Any]] = yaml.safe_load((HERE / "vectors.yaml").read_text(encoding="utf-8"))
FHIR_JSON = {"content-type": "application/fhir+json"}
SEARCH_PARAMETERS = json.loads((Path(__file__).resolve().parent.parent / "fhir_ctms" / "definitions"
                                / "search-parameters.json").read_text())["parameters"]

_KEYS = {"spec", "query", "expect", "ordered", "includes", "excludes", "xfail"}


def _vector_id(n: int, vector: dict[str, Any]) -> str:
    return f"{n:03d}:{vector['query']}"


def _params() -> list[Any]:
    out = []
    for n, v in enumerate(VECTORS, 1):
        marks = [pytest.mark.xfail(strict=True, reason=v["xfail"])] if v.get("xfail") else []
        out.append(pytest.param(v, id=_vector_id(n, v), marks=marks))
    return out


async def _load(client) -> None:
    r = await client.post("", content=DATASET_BYTES, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert all(s.startswith(("200", "201")) for s in statuses), statuses


async def _matches(client, query: str) -> list[str]:
    """The ids of the match entries of every page, in order (checking their type)."""
    rtype = query.split("?", 1)[0]
    found: list[str] = []
    url: str | None = "/" + query
    pages = 0
    while url is not None:
        pages += 1
        assert pages <= 60, "paging does not end"
        r = await client.get(url)
        assert r.status_code == 200, f"{query}: {r.status_code} {r.text}"
        body = r.json()
        for e in body.get("entry", []):
            if e.get("search", {}).get("mode") == "match":
                assert e["resource"]["resourceType"] == rtype, e["resource"]["resourceType"]
                found.append(e["resource"]["id"])
        url = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), None)
    return found


@pytest.mark.parametrize("vector", _params())
async def test_vector(client, vector: dict[str, Any]) -> None:
    """The vector under each search plan (tests/plans.py), read in pages of 50 and of 2 (the
    keyset paging, across the phases of a walk on a sort key)."""
    await _load(client)
    query = vector["query"]
    small_pages = query if "_count=" in query else f"{query}{'&' if '?' in query else '?'}_count=2"
    for plan in PLANS:
        with forced(plan):
            for q in dict.fromkeys((query, small_pages)):
                found = await _matches(client, q)
                where = (vector["spec"], plan, q)
                assert len(found) == len(set(found)), f"a match is listed twice: {found} {where}"
                if "expect" in vector:
                    if vector.get("ordered"):
                        assert found == vector["expect"], where
                    else:
                        assert sorted(found) == sorted(vector["expect"]), where
                else:
                    assert set(vector["includes"]) <= set(found), (where, found)
                    assert not set(vector["excludes"]) & set(found), (where, found)


# -- the vectors themselves (no database) -------------------------------------------------------

def _ids_in_dataset() -> dict[str, str]:
    return {e["resource"]["id"]: e["resource"]["resourceType"] for e in DATASET["entry"]}


def test_vectors_are_well_formed() -> None:
    """Every vector names a section, has one kind of expectation, and names only ids of the data
    set of the query's type; no query is repeated."""
    ids = _ids_in_dataset()
    assert len(ids) == len(DATASET["entry"]) and 40 <= len(ids) <= 60
    for v in VECTORS:
        assert set(v) <= _KEYS, v
        assert v["spec"].startswith("search.html#"), v
        assert ("expect" in v) != ("includes" in v or "excludes" in v), v
        rtype = v["query"].split("?", 1)[0]
        for key in ("expect", "includes", "excludes"):
            for i in v.get(key, []):
                assert ids.get(i) == rtype, (v["query"], i)
        if v.get("ordered"):
            assert "_sort=" in v["query"], v
    repeated = [q for q, n in Counter(v["query"] for v in VECTORS).items() if n > 1]
    assert not repeated, repeated


def _param_type(rtype: str, name: str) -> str | None:
    for scope in (rtype, "Resource", "DomainResource"):
        p = SEARCH_PARAMETERS.get(scope, {}).get(name)
        if p:
            return p["type"]
    return None


def test_vectors_cover_every_type_prefix_and_modifier() -> None:
    """The coverage the vectors promise: every parameter type; every prefix on date, number and
    quantity; the modifiers; chains, _has, _id, _lastUpdated, OR, AND, escaping and _sort."""
    types: set[str] = set()
    prefixes: set[tuple[str, str]] = set()
    modifiers: set[str] = set()
    features: set[str] = set()
    for v in VECTORS:
        rtype, _, query = v["query"].partition("?")
        names = [k for k, _ in parse_qsl(query, keep_blank_values=True)]
        if len(names) != len(set(names)) or len({n for n in names if not n.startswith("_sort")}) > 1:
            features.add("and")
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key.startswith("_has:"):
                features.add("_has")
                continue
            if key == "_sort":
                features.add("_sort")
                continue
            first = key.split(".", 1)[0]
            if "." in key:
                features.add("chain")
            name, _, modifier = first.partition(":")
            if key in ("_id", "_lastUpdated") or name in ("_id", "_lastUpdated"):
                features.add(name)
            ptype = _param_type(rtype, name)
            assert ptype, (rtype, name)
            if "." in key:
                continue
            types.add(ptype)
            if modifier:
                modifiers.add("[type]" if modifier[:1].isupper() else modifier)
            if "," in value.replace("\\,", ""):
                features.add("or")
            if "\\" in value:
                features.add("escaping")
            if ptype in ("date", "number", "quantity"):
                for item in value.split(","):
                    prefixes.add((ptype, item[:2] if item[:2].isalpha() and item[:2] != "e" else "eq"))
    assert types >= {"string", "token", "reference", "date", "number", "quantity", "uri"}
    every = {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}
    for ptype in ("date", "number", "quantity"):
        assert every <= {p for t, p in prefixes if t == ptype}, ptype
    assert modifiers >= {"missing", "in", "not-in", "exact", "contains", "text", "not", "of-type", "identifier",
                         "[type]", "above", "below"}
    assert features >= {"chain", "_has", "_id", "_lastUpdated", "or", "and", "escaping", "_sort"}


def test_the_dataset_keeps_its_decimal_precision_on_disk() -> None:
    """The vectors on 5.40, 100.00 and 0.80 depend on the bytes sent, not a re-serialisation."""
    text = DATASET_BYTES.decode()
    for literal in ('"value": 5.40', '"value": 100.00', '"probabilityDecimal": 0.80'):
        assert literal in text, literal
    assert all(urlsplit("/" + v["query"]).path for v in VECTORS)
