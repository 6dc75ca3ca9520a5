"""Provenance and AuditEvent for every change, in the same transaction; the hash chain."""

import orjson
import pytest
from fhir.resources.auditevent import AuditEvent
from fhir.resources.provenance import Provenance
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from fhir_ctms.audit.chain import verify
from fhir_ctms.resources.bindings import check_required_bindings
from fhir_ctms.storage.schema import audit_chain, resource_versions
from fhir_ctms.storage.sql import make_engine

from .fhir import patient


async def _audit(client):
    entries = (await client.get("/_history?_count=1000")).json()["entry"]
    prov = [e["resource"] for e in entries if e.get("resource", {}).get("resourceType") == "Provenance"]
    events = [e["resource"] for e in entries if e.get("resource", {}).get("resourceType") == "AuditEvent"]
    return prov, events


async def test_every_change_has_a_provenance_and_an_audit_event(client):
    rid = (await client.post("/Patient", json=patient())).json()["id"]
    await client.put(f"/Patient/{rid}", json=patient(id=rid, gender="male"), headers={"X-Reason": "Corrected sex"})
    await client.patch(f"/Patient/{rid}", json=[{"op": "add", "path": "/active", "value": True}],
                       headers={"content-type": "application/json-patch+json"})
    await client.delete(f"/Patient/{rid}")
    prov, events = await _audit(client)
    targets = sorted(p["target"][0]["reference"] for p in prov)
    assert targets == [f"Patient/{rid}/_history/{v}" for v in (1, 2, 3, 4)]
    by_target = {p["target"][0]["reference"]: p for p in prov}
    assert by_target[f"Patient/{rid}/_history/2"]["authorization"][0]["concept"]["text"] == "Corrected sex"
    assert [by_target[f"Patient/{rid}/_history/{v}"]["activity"]["coding"][0]["code"] for v in (1, 2, 3, 4)] == [
        "CREATE", "UPDATE", "UPDATE", "DELETE"]
    actions = {e["entity"][0]["what"]["reference"]: e["action"] for e in events}
    assert actions == {f"Patient/{rid}/_history/1": "C", f"Patient/{rid}/_history/2": "U",
                       f"Patient/{rid}/_history/3": "U", f"Patient/{rid}/_history/4": "D"}
    codes = {e["entity"][0]["what"]["reference"]: e["code"]["coding"][0]["code"] for e in events}
    assert codes[f"Patient/{rid}/_history/3"] == "patch"
    for record in prov:
        Provenance.model_validate(record)
        assert check_required_bindings(record) == []
        assert record["recorded"] == record["meta"]["lastUpdated"]
    for record in events:
        AuditEvent.model_validate(record)
        assert check_required_bindings(record) == []
        assert record["agent"][0]["requestor"] is True


async def test_transaction_entries_are_each_audited(client):
    body = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(id="tx2"), "request": {"method": "PUT", "url": "Patient/tx2"}}]}
    await client.post("", json=body)
    prov, events = await _audit(client)
    assert len(prov) == 2 and len(events) == 2


async def test_failed_writes_leave_no_audit_records(client):
    await client.post("/Patient", json=patient(gender="bogus"))
    await client.put("/Patient/x", json=patient(id="y"))
    assert await _audit(client) == ([], [])


async def test_chain_verifies_and_detects_tampering(client, repo):
    for _ in range(3):
        await client.post("/Patient", json=patient())
    verdict = await verify(repo)
    assert verdict.ok and verdict.checked == 6

    # alter one stored audit record behind the API's back
    async with repo.engine.begin() as conn:
        row = (await conn.execute(select(audit_chain.c.seq, audit_chain.c.res_type, audit_chain.c.res_id)
                                  .order_by(audit_chain.c.seq).offset(2).limit(1))).one()
        v = resource_versions.c
        content = (await conn.execute(select(v.content).where(v.res_id == row.res_id))).scalar_one()
        record = orjson.loads(content)
        record["recorded"] = "2001-01-01T00:00:00Z"
        await conn.execute(update(resource_versions).where(v.res_id == row.res_id)
                           .values(content=orjson.dumps(record).decode()))
    verdict = await verify(repo)
    assert not verdict.ok and verdict.checked == 2
    assert verdict.broken_seq == row.seq and verdict.broken_record == f"{row.res_type}/{row.res_id}"
    assert "altered" in verdict.problem


async def test_chain_detects_a_removed_link(client, repo):
    for _ in range(2):
        await client.post("/Patient", json=patient())
    async with repo.engine.begin() as conn:
        seqs = (await conn.execute(select(audit_chain.c.seq).order_by(audit_chain.c.seq))).scalars().all()
        await conn.execute(audit_chain.delete().where(audit_chain.c.seq == seqs[1]))
    verdict = await verify(repo)
    assert not verdict.ok and verdict.broken_seq == seqs[2] and "predecessor" in verdict.problem


# -- the audit trail is searchable (its index rows are built from templates: persist.audit_index_rows)

def test_audit_index_rows_are_those_of_the_records():
    """The template shortcut gives exactly what the generic extraction gives for each record."""
    from fhir_ctms.audit import records
    from fhir_ctms.interactions.context import instant
    from fhir_ctms.interactions.persist import audit_index_rows
    from fhir_ctms.search.index import index_rows
    actors = [records.Actor(), records.Actor("Dr Who", "Practitioner/pr-1", "10.0.0.7"),
              records.Actor("a client", None, "2001:db8::1")]
    cases = 0
    for build in (records.provenance, records.audit_event):
        for rtype, rid, version in (("Patient", "p1", "1"), ("ResearchStudy", "x" * 64, "12"),
                                    ("Observation", "0190c8b2-7d1e-7000-8000-000000000000", "3")):
            for interaction in ("create", "update", "patch", "delete"):
                for actor in actors:
                    for ts in (1, 1_795_410_000_123_456, 1_795_410_000_000_000):
                        for why in ("Recorded through the fhir-ctms REST API", "Corrected sex, see CAPA-12"):
                            record = build(f"{rtype}/{rid}/_history/{version}", interaction, instant(ts), actor,
                                           why, "fhir-ctms")
                            got = audit_index_rows(build, (rtype, rid, version), interaction, ts, actor, why,
                                                   "fhir-ctms")
                            assert sorted(got) == sorted(index_rows(record)), (build.__name__, rtype, interaction)
                            cases += 1
    assert cases == 2 * 3 * 4 * 3 * 3 * 2


async def test_the_audit_trail_is_searchable(client):
    """AuditEvent and Provenance are searched like any resource: by the changed resource, the
    action, the time."""
    rid = (await client.post("/Patient", json=patient())).json()["id"]
    await client.put(f"/Patient/{rid}", json=patient(id=rid, gender="male"), headers={"X-Reason": "Corrected sex"})
    other = (await client.post("/Patient", json=patient())).json()["id"]

    async def found(path: str) -> list[dict]:
        r = await client.get(path)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]

    events = await found(f"/AuditEvent?entity=Patient/{rid}")
    assert sorted(e["entity"][0]["what"]["reference"] for e in events) == [
        f"Patient/{rid}/_history/1", f"Patient/{rid}/_history/2"]
    assert [e["action"] for e in await found(f"/AuditEvent?entity=Patient/{rid}&action=U")] == ["U"]
    provs = await found(f"/Provenance?target=Patient/{rid}/_history/2")
    assert [p["authorization"][0]["concept"]["text"] for p in provs] == ["Corrected sex"]
    assert len(await found(f"/Provenance?target=Patient/{other}")) == 1
    recorded = provs[0]["recorded"]
    at = await found(f"/Provenance?recorded={recorded}")
    assert [p["target"][0]["reference"] for p in at] == [f"Patient/{rid}/_history/2"]
    assert await found(f"/AuditEvent?entity=Patient/{rid}&date=lt2000") == []


# -- the chain's positions (migration 0008) -------------------------------------------------------

async def test_chain_positions_follow_each_other_and_cannot_fork(client, repo):
    for _ in range(2):
        await client.post("/Patient", json=patient())
    async with repo.engine.connect() as conn:
        rows = (await conn.execute(select(audit_chain).order_by(audit_chain.c.seq))).all()
    assert [r.position for r in rows] == [1, 2, 3, 4]
    assert [r.prev_hash for r in rows[1:]] == [r.chain_hash for r in rows[:-1]]
    # a second link claiming the head's predecessor (a fork) is refused by the database itself
    fork = {c: getattr(rows[-1], c) for c in ("partition", "res_type", "res_id", "content_hash", "prev_hash",
                                              "chain_hash", "position")}
    with pytest.raises(IntegrityError):
        async with repo.engine.begin() as conn:
            await conn.execute(audit_chain.insert().values(**fork))
    assert (await verify(repo)).ok


def _alembic(sync_conn, action: str, revision: str) -> None:
    from alembic import command

    from fhir_ctms.storage.migrate import _config
    getattr(command, action)(_config(sync_conn), revision)


async def test_migration_0008_numbers_the_existing_links_in_chain_order(fresh_database_url):
    engine = make_engine(fresh_database_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "downgrade", "0007")
            # links as 0007 stored them: no position; two partitions, interleaved
            for n, part in enumerate(["default", "other", "default", "default", "other"]):
                await conn.execute(text(
                    "INSERT INTO audit_chain (partition, res_type, res_id, content_hash, prev_hash, chain_hash) "
                    "VALUES (:p, 'Provenance', :i, 'c', :prev, 'h')"), {"p": part, "i": f"r{n}", "prev": f"p{n}"})
            await conn.run_sync(_alembic, "upgrade", "head")
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT partition, res_id, position FROM audit_chain ORDER BY seq"))).all()
        assert [tuple(r) for r in rows] == [("default", "r0", 1), ("other", "r1", 1), ("default", "r2", 2),
                                            ("default", "r3", 3), ("other", "r4", 2)]
        with pytest.raises(IntegrityError):  # the position is unique in its partition
            async with engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO audit_chain (partition, position, res_type, res_id, content_hash, prev_hash, "
                    "chain_hash) VALUES ('other', 2, 'Provenance', 'r5', 'c', 'p5', 'h')"))
    finally:
        await engine.dispose()
