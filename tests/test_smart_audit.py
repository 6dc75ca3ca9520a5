"""Failed authentications and authorisation denials are audited (issue 5), on both databases.

A 401 at the FHIR API, a 403 (a scope, the patient compartment, a write landing outside the
grant, a Bundle entry), a wrong password at ``/auth/login`` and a failed client or grant
authentication at ``/auth/token`` each leave one AuditEvent (``audit.records.security_event``),
written in a transaction of its own (so it stays when the refused request's rolls back), with
its index rows (searchable) and on the hash chain (which still verifies). ``/metadata`` and
``.well-known`` are not audited, and a failure to write the record never turns the refusal
into a 500."""

from __future__ import annotations

import logging

import pytest_asyncio
from fhir.resources.auditevent import AuditEvent

from fhir_ctms.audit.chain import verify
from fhir_ctms.interactions import persist
from fhir_ctms.resources.bindings import check_required_bindings
from fhir_ctms.storage.auth_store import AuthStore

from .conftest import empty_tables, make_client
from .smart import SECRET, authorize_params, log_in, minter, pkce_pair, register

FHIR = "http://testserver/fhir"
AUTH = "http://testserver/auth"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
MINOR, SERIOUS = f"{OUTCOME}|4", f"{OUTCOME}|8"

DATA = [
    {"resourceType": "Patient", "id": "pat-001"},
    {"resourceType": "Patient", "id": "pat-002"},
    {"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Patient/pat-001"}},
]


@pytest_asyncio.fixture
async def env(repo):
    """(secured client, unsecured client of the same database, mint)."""
    await empty_tables(repo)
    store = AuthStore(repo.engine)
    await register(store)
    signed = minter(store, fhir=FHIR)

    async def mint(scope: str, *, patient: str | None = None, client_id: str = "secret-app", sub: str = "alice",
                   **claims: object) -> dict[str, str]:
        return await signed(scope, subject=sub, context={"patient": patient} if patient else {},
                            client=client_id, claims=claims)

    async with make_client(repo) as open_, make_client(repo, auth_enabled=True) as http:
        for resource in DATA:
            r = await open_.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        yield http, open_, mint


async def events(open_, query: str) -> list[dict]:
    r = await open_.get(f"/AuditEvent?{query}&_count=100")
    assert r.status_code == 200, r.text
    found = [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]
    for record in found:  # each a valid R5 AuditEvent
        AuditEvent.model_validate(record)
        assert check_required_bindings(record) == []
    return found


def coding(concept: dict) -> tuple[str, str]:
    return concept["coding"][0]["system"], concept["coding"][0]["code"]


def agent(record: dict, code: str) -> dict:
    (found,) = [a for a in record["agent"] if a["type"]["coding"][0]["code"] == code]
    return found


async def test_a_request_without_a_valid_token_is_audited_once(env, repo):
    http, open_, mint = env
    assert await events(open_, f"outcome={MINOR}") == []
    r = await http.get("/Patient/pat-001")
    assert r.status_code == 401
    (record,) = await events(open_, f"outcome={MINOR}")
    assert coding(record["category"][0]) == (DCM, "110114")
    assert coding(record["code"]) == (DCM, "110122")
    assert record["action"] == "E"
    assert record["outcome"]["code"]["code"] == "4"
    assert "bearer token" in record["outcome"]["detail"][0]["text"]
    client = agent(record, "110153")
    assert client["networkString"] == "127.0.0.1" and client["requestor"] is True
    assert record["entity"][0]["what"]["display"] == "GET /fhir/Patient/pat-001"
    assert coding(record["source"]["type"][0])[1] == "4"
    # searchable by its codes too
    assert [e["id"] for e in await events(open_, f"code={DCM}|110122")] == [record["id"]]
    assert [e["id"] for e in await events(open_, f"category={DCM}|110114")] == [record["id"]]

    # public endpoints are not audited; neither is a request that passes
    assert (await http.get("/metadata")).status_code == 200
    assert (await http.get("/.well-known/smart-configuration")).status_code == 200
    assert (await http.get("/Patient/pat-001", headers=await mint("user/*.rs"))).status_code == 200
    assert len(await events(open_, f"outcome={MINOR}")) == 1

    # a token that does not verify: the user and client it claims, as claimed
    bad = await mint("user/*.rs", aud="https://other.example/fhir", sub="mallory", client_id="public-app")
    assert (await http.get("/Patient", headers=bad)).status_code == 401
    (forged,) = [e for e in await events(open_, f"outcome={MINOR}") if e["id"] != record["id"]]
    assert agent(forged, "humanuser")["who"]["display"] == "mallory"
    assert agent(forged, "110153")["who"]["display"] == "public-app"
    assert "Invalid access token" in forged["outcome"]["detail"][0]["text"]
    assert "unverified" in forged["outcome"]["detail"][0]["text"]
    assert (await verify(repo)).ok


async def test_a_denial_is_audited_with_the_resource_and_the_interaction(env, repo):
    http, open_, mint = env
    reader = await mint("user/Observation.r", sub="alice")
    r = await http.get("/Patient/pat-001", headers=reader)
    assert r.status_code == 403
    (record,) = await events(open_, f"outcome={SERIOUS}")
    assert coding(record["category"][0]) == (DCM, "110113")
    assert record["code"]["coding"][0]["code"] == "AuthZ-Role"
    assert record["action"] == "R"
    assert record["entity"][0]["what"] == {"reference": "Patient/pat-001"}
    assert record["entity"][0]["detail"] == [{"type": {"text": "interaction"}, "valueString": "read"}]
    assert "Patient" in record["outcome"]["detail"][0]["text"]
    assert agent(record, "humanuser")["who"]["display"] == "alice"
    assert agent(record, "110153")["who"]["display"] == "secret-app"
    assert agent(record, "110153")["networkString"] == "127.0.0.1"
    assert [e["id"] for e in await events(open_, "entity=Patient/pat-001&action=R")] == [record["id"]]

    # a type-level search: the type and the interaction
    assert (await http.get("/Patient?_id=pat-001", headers=reader)).status_code == 403
    (search,) = await events(open_, f"outcome={SERIOUS}&action=E")
    assert search["entity"][0]["what"] == {"display": "Patient"}
    assert search["entity"][0]["detail"][0]["valueString"] == "search-type"
    assert (await verify(repo)).ok


async def test_a_refused_write_rolls_back_but_its_denial_stays(env, repo):
    http, open_, mint = env
    pat1 = await mint("patient/Observation.cruds", patient="pat-001")
    obs = {"resourceType": "Observation", "id": "obs-9", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/pat-002"}}
    # the write is checked after it is made, in its transaction: 403 and nothing stored
    assert (await http.put("/Observation/obs-9", json=obs, headers=pat1)).status_code == 403
    assert (await open_.get("/Observation/obs-9")).status_code == 404
    assert await events(open_, "entity=Observation/obs-9&outcome=0") == []
    (record,) = await events(open_, f"outcome={SERIOUS}")
    assert record["entity"][0]["what"] == {"reference": "Observation/obs-9"}
    assert record["action"] == "U"
    # a transaction with an entry outside the grant: one denial, nothing written
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**obs, "id": "obs-10", "subject": {"reference": "Patient/pat-001"}},
         "request": {"method": "PUT", "url": "Observation/obs-10"}},
        {"request": {"method": "DELETE", "url": "Patient/pat-002"}}]}
    assert (await http.post("", json=tx, headers=pat1)).status_code == 403
    assert (await open_.get("/Observation/obs-10")).status_code == 404
    denials = await events(open_, f"outcome={SERIOUS}")
    assert len(denials) == 2
    (delete,) = [e for e in denials if e["id"] != record["id"]]
    assert delete["action"] == "D" and delete["entity"][0]["detail"][0]["valueString"] == "delete"
    assert delete["entity"][0]["what"] == {"reference": "Patient/pat-002"}
    # a batch: the refused entry is audited, the batch answers 200
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/obs-1"}},
        {"request": {"method": "GET", "url": "Patient/pat-002"}}]}
    r = await http.post("", json=batch, headers=pat1)
    assert r.status_code == 200
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "403"]
    (read,) = await events(open_, f"outcome={SERIOUS}&entity=Patient/pat-002&action=R")
    assert read["entity"][0]["detail"][0]["valueString"] == "read"
    assert len(await events(open_, f"outcome={SERIOUS}")) == 3
    verdict = await verify(repo)
    assert verdict.ok, verdict


async def test_a_wrong_password_at_login_is_audited(env, repo):
    http, open_, _ = env
    _, challenge = pkce_pair()
    page = await log_in(http, AUTH + "/authorize", authorize_params(FHIR, challenge), password="wrong")
    assert page.status_code == 401 and "Wrong username or password" in page.text
    (record,) = await events(open_, f"outcome={MINOR}")
    assert coding(record["category"][0]) == (DCM, "110114")
    assert coding(record["code"]) == (DCM, "110122")
    assert agent(record, "humanuser")["who"]["display"] == "alice"
    assert agent(record, "110153")["who"]["display"] == "public-app"
    assert agent(record, "110153")["networkString"] == "127.0.0.1"
    assert coding(record["source"]["type"][0])[1] == "6"
    assert "/auth/login" in record["outcome"]["detail"][0]["text"]
    # the right password is not a failure
    ok = await log_in(http, AUTH + "/authorize", authorize_params(FHIR, challenge))
    assert ok.status_code == 303
    assert len(await events(open_, f"outcome={MINOR}")) == 1
    assert (await verify(repo)).ok


async def test_a_failed_client_or_grant_authentication_at_the_token_endpoint_is_audited(env, repo):
    http, open_, _ = env
    form = {"grant_type": "authorization_code", "code": "not-a-code", "redirect_uri": "https://app.example/callback",
            "code_verifier": "v" * 43}
    r = await http.post(AUTH + "/token", data=form, auth=("secret-app", "not-the-secret"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    (record,) = await events(open_, f"outcome={MINOR}")
    client = agent(record, "110153")
    assert client["who"]["display"] == "secret-app" and client["requestor"] is True
    assert client["networkString"] == "127.0.0.1"
    assert [a for a in record["agent"] if a["type"]["coding"][0]["code"] == "humanuser"] == []
    assert "invalid_client" in record["outcome"]["detail"][0]["text"]
    assert coding(record["source"]["type"][0])[1] == "6"
    # the right secret, a code that does not exist: invalid_grant
    r = await http.post(AUTH + "/token", data=form, auth=("secret-app", SECRET))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    grant = [e for e in await events(open_, f"outcome={MINOR}") if e["id"] != record["id"]]
    assert len(grant) == 1 and "invalid_grant" in grant[0]["outcome"]["detail"][0]["text"]
    # other errors (a request the client got wrong) are not authentication failures
    r = await http.post(AUTH + "/token", data={"grant_type": "password"}, auth=("secret-app", SECRET))
    assert r.status_code == 400
    assert len(await events(open_, f"outcome={MINOR}")) == 2
    assert (await verify(repo)).ok


async def test_a_failure_to_write_the_record_does_not_change_the_answer(env, monkeypatch, caplog):
    http, open_, mint = env

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the audit chain is unavailable")
    monkeypatch.setattr(persist.chain, "append", broken)
    with caplog.at_level(logging.ERROR, logger="fhir_ctms"):
        assert (await http.get("/Patient/pat-001")).status_code == 401
        assert (await http.get("/Patient/pat-001", headers=await mint("user/Observation.r"))).status_code == 403
        r = await http.post(AUTH + "/token", data={"grant_type": "client_credentials"}, auth=("secret-app", "x"))
        assert r.status_code == 401
    assert caplog.text.count("security audit event could not be recorded") == 3
    monkeypatch.undo()
    assert await events(open_, f"outcome={MINOR}") == []
    assert await events(open_, f"outcome={SERIOUS}") == []
