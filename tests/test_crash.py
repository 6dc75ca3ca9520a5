"""Crash durability: SIGKILL the server under concurrent write load, restart it, check everything.

Four writer threads run creates, updates with If-Match, deletes with If-Match and small
transaction Bundles against a live server, each recording every write the server
acknowledged (2xx) with the version its ETag (and Location) names. The server is killed
with SIGKILL while they run, restarted on the same database, and then:

- every acknowledged write is there at its version (vread 200 with the content that was
  written, or 410 for a deletion);
- every stored resource version has exactly one Provenance (target = its versioned
  reference) and exactly one AuditEvent (entity.what = it), and no audit record points at
  a version that does not exist: a write and its audit records are all or nothing;
- history rows and the current-version rows agree, every audit record has one chain link;
- ``fhir-ctms audit verify`` exits 0, also after a write made by the restarted server.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

from fhir_ctms.storage.schema import audit_chain, resource_versions, resources
from fhir_ctms.storage.sql import make_engine

WRITERS = 4
#: the writers run until the kill, at most this long
LOAD_SECONDS = 3.0
#: kill once this many writes were acknowledged (or LOAD_SECONDS / 2 passed)
KILL_AFTER_ACKS = 200
AUDIT_TYPES = ("Provenance", "AuditEvent")
MARK_SYSTEM = "http://example.org/crash-mark"
FHIR_CTMS = Path(sys.executable).with_name("fhir-ctms")
_ETAG = re.compile(r'W/"(\d+)"')


@dataclass(frozen=True)
class Ack:
    """A write the server acknowledged: ``type/id`` at ``version`` (``mark`` identifies the content)."""

    type: str
    id: str
    version: int
    deleted: bool
    mark: str | None

    @property
    def ref(self) -> str:
        return f"{self.type}/{self.id}/_history/{self.version}"


@dataclass
class Writer:
    base: str
    seed: int
    stop: threading.Event
    acks: list[Ack] = field(default_factory=list)
    #: (method, status, body) of every non-2xx answer received (before the kill: a bug)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    #: what this writer owns and may update or delete: (type, id) -> (version, resource)
    live: dict[tuple[str, str], tuple[int, dict]] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(self.seed)
        deadline = time.monotonic() + LOAD_SECONDS
        try:
            with httpx.Client(base_url=self.base, timeout=15) as http:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    op = rnd.choice(["create", "create", "update", "update", "delete", "transaction"])
                    try:
                        getattr(self, op)(http, rnd)
                    except httpx.TransportError:
                        return  # the server is gone: this write may or may not have happened
        except BaseException as exc:  # reported by the test
            self.error = exc

    # -- the operations --------------------------------------------------------------------
    def _mark(self) -> str:
        return uuid.uuid4().hex

    def _patient(self, mark: str, rid: str | None = None) -> dict:
        body = {"resourceType": "Patient", "identifier": [{"system": MARK_SYSTEM, "value": mark}],
                "name": [{"family": f"Crash-{mark[:8]}"}]}
        if rid:
            body["id"] = rid
        return body

    def _refused(self, what: str, r: httpx.Response) -> None:
        self.refused.append((what, r.status_code, r.text[:500]))

    def create(self, http: httpx.Client, rnd: random.Random) -> None:
        mark = self._mark()
        r = http.post("/Patient", json=self._patient(mark))
        if r.status_code != 201:
            return self._refused("POST Patient", r)
        rid, version = r.json()["id"], _etag_version(r)
        assert r.headers["location"].endswith(f"/Patient/{rid}/_history/{version}"), r.headers
        self.acks.append(Ack("Patient", rid, version, False, mark))
        self.live[("Patient", rid)] = (version, r.json())

    def _pick(self, rnd: random.Random) -> tuple[str, str] | None:
        return rnd.choice(sorted(self.live)) if self.live else None

    def update(self, http: httpx.Client, rnd: random.Random) -> None:
        key = self._pick(rnd)
        if key is None:
            return self.create(http, rnd)
        rtype, rid = key
        version, _ = self.live[key]
        mark = self._mark()
        body = self._patient(mark, rid) if rtype == "Patient" else _observation(mark, None, rid)
        r = http.put(f"/{rtype}/{rid}", json=body, headers={"If-Match": f'W/"{version}"'})
        if r.status_code != 200:
            return self._refused(f"PUT {rtype} If-Match {version}", r)
        new = _etag_version(r)
        assert new == version + 1, (rtype, rid, version, new)
        assert r.headers["location"].endswith(f"/{rtype}/{rid}/_history/{new}"), r.headers
        self.acks.append(Ack(rtype, rid, new, False, mark))
        self.live[key] = (new, r.json())

    def delete(self, http: httpx.Client, rnd: random.Random) -> None:
        key = self._pick(rnd)
        if key is None:
            return self.create(http, rnd)
        rtype, rid = key
        version, _ = self.live[key]
        r = http.delete(f"/{rtype}/{rid}", headers={"If-Match": f'W/"{version}"'})
        if r.status_code not in (200, 204):
            return self._refused(f"DELETE {rtype} If-Match {version}", r)
        new = _etag_version(r)
        assert new == version + 1, (rtype, rid, version, new)
        self.acks.append(Ack(rtype, rid, new, True, None))
        del self.live[key]

    def transaction(self, http: httpx.Client, rnd: random.Random) -> None:
        """A new Patient, an Observation about it (urn:uuid reference) and, when this writer
        owns a resource, an update of it with ifMatch: all in one transaction."""
        p_mark, o_mark = self._mark(), self._mark()
        full_url = f"urn:uuid:{uuid.uuid4()}"
        entries = [
            {"fullUrl": full_url, "resource": self._patient(p_mark),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": _observation(o_mark, full_url), "request": {"method": "POST", "url": "Observation"}},
        ]
        marks: list[str] = [p_mark, o_mark]
        key = self._pick(rnd)
        if key is not None:
            rtype, rid = key
            version, _ = self.live[key]
            u_mark = self._mark()
            body = self._patient(u_mark, rid) if rtype == "Patient" else _observation(u_mark, None, rid)
            entries.append({"resource": body, "request": {"method": "PUT", "url": f"{rtype}/{rid}",
                                                          "ifMatch": f'W/"{version}"'}})
            marks.append(u_mark)
        r = http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        if r.status_code != 200:
            return self._refused("POST transaction", r)
        out = r.json()
        assert out["type"] == "transaction-response" and len(out["entry"]) == len(entries), out
        for mark, entry in zip(marks, out["entry"]):
            response = entry["response"]
            resource = entry["resource"]
            rtype, rid = resource["resourceType"], resource["id"]
            version = int(_ETAG.fullmatch(response["etag"]).group(1))
            assert response["location"].endswith(f"{rtype}/{rid}/_history/{version}"), response
            assert resource["meta"]["versionId"] == str(version)
            self.acks.append(Ack(rtype, rid, version, False, mark))
            self.live[(rtype, rid)] = (version, resource)
        patient_id = out["entry"][0]["resource"]["id"]
        assert out["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


def _observation(mark: str, subject: str | None, rid: str | None = None) -> dict:
    body: dict = {"resourceType": "Observation", "status": "final",
                  "identifier": [{"system": MARK_SYSTEM, "value": mark}],
                  "code": {"text": "crash test"}, "valueString": mark}
    if subject:
        body["subject"] = {"reference": subject}
    if rid:
        body["id"] = rid
    return body


def _etag_version(r: httpx.Response) -> int:
    m = _ETAG.fullmatch(r.headers.get("etag", ""))
    assert m, f"no ETag W/\"n\" in {r.request.method} {r.request.url} -> {r.status_code} {dict(r.headers)}"
    return int(m.group(1))


def _json(value: object) -> dict:
    return json.loads(value) if isinstance(value, (str, bytes)) else value  # type: ignore[return-value]


async def _database_rows(database_url: str) -> tuple[list, list, list]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            v, r, a = resource_versions.c, resources.c, audit_chain.c
            versions = (await conn.execute(select(v.res_type, v.res_id, v.version, v.deleted, v.content)
                                           .where(v.partition == "default"))).all()
            current = (await conn.execute(select(r.res_type, r.res_id, r.version, r.deleted)
                                          .where(r.partition == "default"))).all()
            links = (await conn.execute(select(a.seq, a.res_type, a.res_id).where(a.partition == "default")
                                        .order_by(a.seq))).all()
    finally:
        await engine.dispose()
    return versions, current, links


def _audit_verify(database_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url}
    return subprocess.run([str(FHIR_CTMS), "audit", "verify"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_acknowledged_writes_survive_sigkill(live_server):
    server = live_server()
    stop = threading.Event()
    writers = [Writer(server.url, seed, stop) for seed in range(WRITERS)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for t in threads:
        t.start()

    # kill in the middle of the load: once enough writes were acknowledged (bounded wait)
    started = time.monotonic()
    while (sum(len(w.acks) for w in writers) < KILL_AFTER_ACKS
           and time.monotonic() - started < LOAD_SECONDS / 2
           and any(t.is_alive() for t in threads)):
        time.sleep(0.02)
    assert all(t.is_alive() for t in threads), "the writers stopped before the kill: " + repr(
        [(w.error, w.refused[:3]) for w in writers])
    # snapshot what was refused before the kill: those answers came from a healthy server
    refused_before_kill = [r for w in writers for r in list(w.refused)]
    server.kill()
    stop.set()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a writer did not stop after the kill"
    assert [w.error for w in writers if w.error] == []
    assert refused_before_kill == [], "writes refused by a healthy server under concurrent load"

    acks = [a for w in writers for a in w.acks]
    assert len(acks) >= 10, f"too few acknowledged writes before the kill: {len(acks)}"
    assert len({a.ref for a in acks}) == len(acks), "two acknowledgements of the same version"
    kinds = Counter("delete" if a.deleted else ("create" if a.version == 1 else "update") for a in acks)
    assert kinds["create"] and kinds["update"], kinds

    # -- restart on the same database ------------------------------------------------------
    restarted = live_server(database_url=server.database_url)
    with httpx.Client(base_url=restarted.url, timeout=15) as http:
        for a in acks:
            r = http.get(f"/{a.type}/{a.id}/_history/{a.version}")
            if a.deleted:
                assert r.status_code == 410, (a, r.status_code, r.text)
            else:
                assert r.status_code == 200, (a, r.status_code, r.text)
                body = r.json()
                assert body["meta"]["versionId"] == str(a.version), (a, body)
                assert body["identifier"] == [{"system": MARK_SYSTEM, "value": a.mark}], (a, body)
        # the newest acknowledged version of each resource is not older than its current one
        newest: dict[tuple[str, str], Ack] = {}
        for a in acks:
            if (a.type, a.id) not in newest or newest[(a.type, a.id)].version < a.version:
                newest[(a.type, a.id)] = a
        for (rtype, rid), a in newest.items():
            r = http.get(f"/{rtype}/{rid}")
            assert r.status_code in (200, 410), (rtype, rid, r.status_code, r.text)
            assert _etag_version(r) >= a.version, (a, r.headers)

        # the restarted server writes on, continuing the audit chain
        r = http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "After"}]})
        assert r.status_code == 201, r.text
        after = f"Patient/{r.json()['id']}/_history/1"

    # -- nothing partial: versions and audit records, one to one ---------------------------
    versions, current, links = asyncio.run(_database_rows(server.database_url))
    data_refs: set[str] = set()
    provenance_targets: Counter[str] = Counter()
    audit_entities: Counter[str] = Counter()
    audit_records: set[tuple[str, str]] = set()
    per_resource: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for rtype, rid, version, deleted, content in versions:
        if rtype in AUDIT_TYPES:
            assert version == 1 and not deleted, (rtype, rid, version, deleted)
            audit_records.add((rtype, rid))
            record = _json(content)
            if rtype == "Provenance":
                targets = [t["reference"] for t in record["target"]]
                assert len(targets) == 1, record
                provenance_targets[targets[0]] += 1
            else:
                whats = [e["what"]["reference"] for e in record["entity"]]
                assert len(whats) == 1, record
                audit_entities[whats[0]] += 1
        else:
            data_refs.add(f"{rtype}/{rid}/_history/{version}")
            per_resource.setdefault((rtype, rid), []).append((version, deleted))

    missing = sorted(a.ref for a in acks if a.ref not in data_refs)
    assert missing == [], f"acknowledged versions lost in the crash: {missing}"
    assert after in data_refs
    assert {r for r, n in provenance_targets.items() if n != 1} == set(), "a version with several Provenances"
    assert {r for r, n in audit_entities.items() if n != 1} == set(), "a version with several AuditEvents"
    assert sorted(data_refs - set(provenance_targets)) == [], "versions stored without their Provenance"
    assert sorted(data_refs - set(audit_entities)) == [], "versions stored without their AuditEvent"
    assert sorted(set(provenance_targets) - data_refs) == [], "Provenance of a version that does not exist"
    assert sorted(set(audit_entities) - data_refs) == [], "AuditEvent of a version that does not exist"

    # history is contiguous and the current-version table agrees with it
    current_rows = {(rtype, rid): (version, deleted) for rtype, rid, version, deleted in current}
    for key, rows in per_resource.items():
        rows.sort()
        assert [v for v, _ in rows] == list(range(1, len(rows) + 1)), (key, rows)
        assert current_rows.get(key) == rows[-1], (key, current_rows.get(key), rows[-1])
    assert {k for k in current_rows if k[0] not in AUDIT_TYPES} == set(per_resource)
    assert {k for k in current_rows if k[0] in AUDIT_TYPES} == audit_records

    # every audit record has exactly one chain link, and every link has its record
    linked = Counter((rtype, rid) for _, rtype, rid in links)
    assert {k for k, n in linked.items() if n != 1} == set()
    assert set(linked) == audit_records
    assert len(audit_records) == 2 * len(data_refs)

    verdict = _audit_verify(server.database_url)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert f"audit chain intact: {len(audit_records)} records" in verdict.stdout, verdict.stdout
