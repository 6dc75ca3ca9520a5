"""The conformance resources the server serves (``fhir_ctms.conformance``), on every database.

- at startup every JSON resource of ``profiles/`` and ``terminology/`` is stored, so it is read
  by id and found by url like any resource, with its Provenance and AuditEvent (the server as
  agent); the app's startup does it (the lifespan), on an empty and on a populated database;
- a second start writes nothing (no version, no audit record); a changed file becomes a new
  version, and one stored by a client under the same id is replaced by the server's;
- the CapabilityStatement lists the profiles of ``profiles/`` as each type's ``supportedProfile``
  (constraints on resources only, not extensions), and stays valid R5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.capabilitystatement import CapabilityStatement

from fhir_ctms import conformance, terminology
from fhir_ctms.api.app import create_app
from fhir_ctms.config import Settings
from fhir_ctms.interactions.capabilities import capability_statement


ROOT = Path(__file__).resolve().parent.parent
PROFILES, TERMINOLOGY = ROOT / "profiles", ROOT / "terminology"


def _files() -> list[dict[str, Any]]:
    out = []
    for where in (PROFILES, TERMINOLOGY):
        out += [json.loads(p.read_text(encoding="utf-8")) for p in sorted(where.glob("*.json"))]
    return out


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out


async def _count(client, path: str, **params: str) -> int:
    r = await client.get(path, params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


async def _audit_counts(client) -> tuple[int, int]:
    return await _count(client, "/Provenance"), await _count(client, "/AuditEvent")


async def test_installed_resources_are_served_by_id_and_url(client, repo):
    files = _files()
    assert {f["resourceType"] for f in files} >= {"CodeSystem", "ValueSet", "OperationDefinition",
                                                  "SearchParameter"}
    report = await conformance.install(repo, Settings())
    assert report.failed == []
    assert sorted(report.written) == sorted((f["resourceType"], f["id"]) for f in files)
    for f in files:
        r = await client.get(f"/{f['resourceType']}/{f['id']}")
        assert r.status_code == 200, (f["id"], r.text)
        assert r.json()["meta"]["versionId"] == "1"
        assert _strip(r.json()) == _strip(f)
        r = await client.get(f"/{f['resourceType']}", params={"url": f["url"]})
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [f["id"]], f["url"]
    # the paths the contract names
    r = await client.get("/ValueSet", params={"url": "http://fhir-ctms.org/fhir/ValueSet/study-milestone",
                                              "version": "0.1.0"})
    assert r.json()["total"] == 1
    r = await client.get("/OperationDefinition/ValueSet-expand")
    assert r.status_code == 200 and r.json()["url"] == "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"
    # each write is audited, by the server
    r = await client.get("/Provenance", params={"target": "CodeSystem/staff-role/_history/1"})
    prov = r.json()["entry"][0]["resource"]
    assert prov["agent"][0]["who"]["display"] == conformance.AGENT.display
    assert await _audit_counts(client) == (len(files), len(files))


async def test_a_second_start_writes_nothing_and_a_changed_file_is_a_new_version(client, repo, tmp_path, monkeypatch):
    first = await conformance.install(repo, Settings())
    assert first.failed == [] and first.written
    before = await _audit_counts(client)
    second = await conformance.install(repo, Settings())
    assert second.written == [] and second.failed == []
    assert sorted(second.unchanged) == sorted(first.written)
    assert await _audit_counts(client) == before
    r = await client.get("/ValueSet/study-milestone/_history")
    assert [e["resource"]["meta"]["versionId"] for e in r.json()["entry"]] == ["1"]

    # a changed file (another terminology directory) becomes version 2, and only it
    copy = tmp_path / "terminology"
    shutil.copytree(TERMINOLOGY, copy)
    cs = json.loads((copy / "CodeSystem-staff-role.json").read_text())
    cs["concept"][0]["display"] = "Principal investigator (PI)"
    (copy / "CodeSystem-staff-role.json").write_text(json.dumps(cs))
    monkeypatch.setenv(terminology.ENV, str(copy))
    third = await conformance.install(repo, Settings())
    assert third.written == [("CodeSystem", "staff-role")] and third.failed == []
    r = await client.get("/CodeSystem/staff-role")
    assert r.json()["meta"]["versionId"] == "2"
    assert r.json()["concept"][0]["display"] == "Principal investigator (PI)"
    assert await _audit_counts(client) == (before[0] + 1, before[1] + 1)


async def test_bad_files_are_reported_and_skipped(client, repo, tmp_path, monkeypatch):
    where = tmp_path / "terminology"
    where.mkdir()
    (where / "CodeSystem-ok.json").write_text(json.dumps({
        "resourceType": "CodeSystem", "id": "ok", "url": "http://example.org/cs/ok", "status": "active",
        "content": "complete", "concept": [{"code": "a"}]}))
    (where / "CodeSystem-no-id.json").write_text(json.dumps({
        "resourceType": "CodeSystem", "url": "http://example.org/cs/x", "status": "active", "content": "complete"}))
    (where / "ValueSet-invalid.json").write_text(json.dumps({
        "resourceType": "ValueSet", "id": "invalid", "status": "not-a-status"}))
    (where / "broken.json").write_text("{")
    monkeypatch.setenv(terminology.ENV, str(where))
    report = await conformance.install(repo, Settings())
    assert sorted(name for name, _ in report.failed) == ["CodeSystem-no-id.json", "ValueSet-invalid.json",
                                                         "broken.json"]
    assert ("CodeSystem", "ok") in report.written
    assert (await client.get("/ValueSet/invalid")).status_code == 404
    assert (await client.get("/CodeSystem/ok")).status_code == 200


async def test_stored_value_sets_serve_the_in_modifier(client, repo):
    await conformance.install(repo, Settings())

    def site(rid: str, system: str, code: str) -> dict[str, Any]:
        return {"resourceType": "ResearchStudy", "id": rid, "status": "active",
                "progressStatus": [{"state": {"coding": [{"system": system, "code": code}]}, "actual": True}]}

    ctms = "http://fhir-ctms.org/fhir/CodeSystem/site-milestone"
    for r in (site("a", ctms, "siv-done"), site("b", "http://hl7.org/fhir/research-study-status", "active"),
              site("c", "http://example.org/other", "siv-done")):
        assert (await client.put(f"/ResearchStudy/{r['id']}", json=r)).status_code == 201
    r = await client.get("/ResearchStudy", params={
        "milestone:in": "http://fhir-ctms.org/fhir/ValueSet/site-milestone", "_sort": "_id"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["a", "b"]


async def test_startup_installs_on_a_populated_database(client, repo):
    # a populated database: data, and a client's resource where the server's will go
    assert (await client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"})).status_code == 201
    mine = {"resourceType": "CodeSystem", "id": "study-level", "url": "http://example.org/mine",
            "status": "draft", "content": "not-present"}
    assert (await client.put("/CodeSystem/study-level", json=mine)).status_code == 201
    app = create_app(Settings(), repo)
    async with app.web.router.lifespan_context(app.web):
        r = await client.get("/CodeSystem/study-level")
        assert r.json()["url"] == "http://fhir-ctms.org/fhir/CodeSystem/study-level"
        assert r.json()["meta"]["versionId"] == "2"
        assert (await client.get("/Patient/p1")).status_code == 200
        n = await _count(client, "/StructureDefinition")
        assert n == len([f for f in _files() if f["resourceType"] == "StructureDefinition"])
        counts = await _audit_counts(client)
    async with app.web.router.lifespan_context(app.web):  # a restart: nothing new
        assert await _audit_counts(client) == counts
        assert (await client.get("/CodeSystem/study-level")).json()["meta"]["versionId"] == "2"


def test_a_live_server_serves_its_conformance_resources(live_server):
    import httpx

    server = live_server()
    r = httpx.get(server.url + "/ValueSet", params={"url": "http://fhir-ctms.org/fhir/ValueSet/site-milestone"})
    assert r.status_code == 200 and r.json()["total"] == 1, r.text
    r = httpx.get(server.url + "/ValueSet/$expand",
                  params={"url": "http://fhir-ctms.org/fhir/ValueSet/site-milestone", "filter": "siv"})
    assert [c["code"] for c in r.json()["expansion"]["contains"]] == ["siv-done"]
    r = httpx.get(server.url + "/AuditEvent", params={"_summary": "count"})
    audits = r.json()["total"]
    server.stop()
    restarted = live_server(database_url=server.database_url)
    assert httpx.get(restarted.url + "/AuditEvent", params={"_summary": "count"}).json()["total"] == audits


# -- the CapabilityStatement ---------------------------------------------------------------------

async def test_capability_statement_lists_the_profiles(client):
    capability_statement.cache_clear()
    r = await client.get("/metadata")
    assert r.status_code == 200
    CapabilityStatement.model_validate(r.json())
    listed = {res["type"]: res.get("supportedProfile", []) for res in r.json()["rest"][0]["resource"]}
    expected: dict[str, set[str]] = {}
    extensions = []
    for p in sorted(PROFILES.glob("StructureDefinition-*.json")):
        sd = json.loads(p.read_text())
        if sd.get("derivation") == "constraint" and sd.get("kind") == "resource":
            expected.setdefault(sd["type"], set()).add(sd["url"])
        else:
            extensions.append(sd["url"])
    assert {t: set(v) for t, v in listed.items() if v} == expected
    everything = {u for v in listed.values() for u in v}
    assert not everything & set(extensions)
    if (PROFILES / "StructureDefinition-ctms-study.json").exists():
        assert "http://fhir-ctms.org/fhir/StructureDefinition/ctms-study" in listed["ResearchStudy"]
    assert listed["Patient"] == [] or "http://fhir-ctms.org" not in "".join(listed["Patient"])


@pytest.fixture(autouse=True)
def _fresh_terminology():
    terminology.reload()
    yield
    terminology.reload()

