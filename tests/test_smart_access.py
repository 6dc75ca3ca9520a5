"""The resource server (issue 5, part 2), on both databases: with ``auth_enabled`` every FHIR
request needs a bearer token, and its SMART scopes decide what it may read, search and write.

Tokens are signed by the server's own key ring (``mint``: any scope and launch context), or come
from the real client_credentials flow (backend services); the data is loaded by a client of the
same database without authorization."""

from __future__ import annotations

import base64
import json
import time

import pytest
import pytest_asyncio

from fhir_ctms.auth.keys import KeyRing
from fhir_ctms.auth.tokens import ACCESS_TYP, access_claims, sign
from fhir_ctms.storage.auth_store import AuthStore

from .conftest import empty_tables, make_client
from .fhir import outcome_codes
from .smart import ASSERTION, REDIRECT, assertion, authorize_params, log_in, pkce_pair, query, register

FHIR = "http://testserver/fhir"
TOKEN = "http://testserver/auth/token"
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


def subject(rid: str, patient: str, study: str = "study-1") -> dict:
    return {"resourceType": "ResearchSubject", "id": rid, "status": "active",
            "study": {"reference": f"ResearchStudy/{study}"}, "subject": {"reference": f"Patient/{patient}"}}


def observation(rid: str | None, patient: str, category: str = "laboratory") -> dict:
    obs = {"resourceType": "Observation", "status": "final",
           "category": [{"coding": [{"system": LAB, "code": category}]}],
           "code": {"text": "a measurement"}, "subject": {"reference": f"Patient/{patient}"}}
    if rid:
        obs["id"] = rid
    return obs


DATA = [
    {"resourceType": "Patient", "id": "pat-001", "name": [{"family": "One"}]},
    {"resourceType": "Patient", "id": "pat-002", "name": [{"family": "Two"}]},
    {"resourceType": "Practitioner", "id": "prac-1"},
    {"resourceType": "ResearchStudy", "id": "study-1", "status": "active"},
    subject("rs-1", "pat-001"),
    subject("rs-2", "pat-002"),
    observation("obs-1", "pat-001", "laboratory"),
    observation("obs-2", "pat-001", "vital-signs"),
    observation("obs-3", "pat-002", "laboratory"),
]


@pytest_asyncio.fixture
async def env(repo):
    """(secured client, unsecured client of the same database, mint, the backend keys)."""
    await empty_tables(repo)
    store = AuthStore(repo.engine)
    keys = await register(store)
    ring = KeyRing(store, "ES384", 3600)

    async def mint(scope: str, *, patient: str | None = None, fhir_user: str | None = None,
                   client_id: str = "secret-app", sub: str = "alice", **claims: object) -> dict[str, str]:
        key, record = await ring.signer()
        context = {k: v for k, v in (("patient", patient), ("fhirUser", fhir_user)) if v}
        body = access_claims(issuer=FHIR, audience=FHIR, client_id=client_id, subject=sub, scope=scope,
                             lifetime=3600, context=context)
        body.update(claims)
        return {"Authorization": "Bearer " + sign(key, record.kid, record.alg, body, ACCESS_TYP)}

    async with make_client(repo) as open_, make_client(repo, auth_enabled=True) as http:
        for resource in DATA:
            r = await open_.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        yield http, open_, mint, keys


def ids(bundle: dict, mode: str | None = "match") -> list[str]:
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
                  if mode is None or e.get("search", {}).get("mode") == mode)


def denied(r, status: int = 403) -> None:
    assert r.status_code == status, r.text
    assert outcome_codes(r) == (["forbidden"] if status == 403 else ["login"])


# -- authentication ------------------------------------------------------------------------------

async def test_a_token_is_required_but_metadata_and_discovery_stay_public(env):
    http, _, mint, _ = env
    r = await http.get("/Patient/pat-001")
    denied(r, 401)
    assert r.headers["www-authenticate"] == 'Bearer realm="fhir-ctms"'
    assert r.headers["content-type"].startswith("application/fhir+json")
    for path in ("/Patient", "", "/_history", "/Patient/pat-001/_history/1", "/$reindex"):
        assert (await http.get(path)).status_code == 401, path
    assert (await http.post("/Patient", json={"resourceType": "Patient"})).status_code == 401
    assert (await http.get("/metadata")).status_code == 200
    assert (await http.get("/.well-known/smart-configuration")).status_code == 200
    basic = await http.get("/Patient", headers={"Authorization": "Basic YTpi"})
    denied(basic, 401)
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]
    good = await mint("user/*.rs")
    assert (await http.get("/Patient/pat-001", headers=good)).status_code == 200
    token = good["Authorization"].split()[1]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "scope": "system/*.cruds"}).encode()).rstrip(b"=").decode()
    for bad in ({"Authorization": "Bearer not-a-jwt"}, {"Authorization": f"Bearer {head}.{forged}.{sig}"},
                await mint("user/*.rs", exp=int(time.time()) - 600), await mint("user/*.rs", aud="https://other/fhir"),
                await mint("user/*.rs", iss="https://other/fhir")):
        r = await http.get("/Patient/pat-001", headers=bad)
        denied(r, 401)
        assert 'error="invalid_token"' in r.headers["www-authenticate"], bad


async def test_a_revoked_token_is_refused(env):
    http, _, mint, _ = env
    headers = await mint("user/*.rs", client_id="secret-app")
    assert (await http.get("/Patient/pat-001", headers=headers)).status_code == 200
    token = headers["Authorization"].split()[1]
    r = await http.post("http://testserver/auth/revoke", data={"token": token},
                        auth=("secret-app", "s3cret-of-the-confidential-app"))
    assert r.status_code == 200
    denied(await http.get("/Patient/pat-001", headers=headers), 401)


# -- permissions ---------------------------------------------------------------------------------

async def test_each_permission_letter(env):
    http, _, mint, _ = env
    patch = {"content-type": "application/json-patch+json"}
    c, r, u, d, s = [await mint(f"user/Observation.{x}") for x in "cruds"]
    # c
    assert (await http.post("/Observation", json=observation(None, "pat-001"), headers=c)).status_code == 201
    for req in (http.get("/Observation/obs-1", headers=c), http.get("/Observation", headers=c),
                http.put("/Observation/obs-1", json=observation("obs-1", "pat-001"), headers=c)):
        denied(await req)
    # r: read, vread, instance history
    assert (await http.get("/Observation/obs-1", headers=r)).status_code == 200
    assert (await http.get("/Observation/obs-1/_history/1", headers=r)).status_code == 200
    assert (await http.get("/Observation/obs-1/_history", headers=r)).status_code == 200
    for req in (http.get("/Observation", headers=r), http.get("/Observation/_history", headers=r),
                http.delete("/Observation/obs-1", headers=r), http.get("/Patient/pat-001", headers=r)):
        denied(await req)
    # u: update and patch
    assert (await http.put("/Observation/obs-2", json={**observation("obs-2", "pat-001", "vital-signs"),
                                                       "status": "amended"}, headers=u)).status_code == 200
    ops = [{"op": "replace", "path": "/status", "value": "corrected"}]
    assert (await http.patch("/Observation/obs-2", json=ops, headers={**u, **patch})).status_code == 200
    for req in (http.get("/Observation/obs-2", headers=u), http.delete("/Observation/obs-2", headers=u),
                http.post("/Observation", json=observation(None, "pat-001"), headers=u)):
        denied(await req)
    # d
    for req in (http.get("/Observation/obs-2", headers=d), http.patch("/Observation/obs-2", json=ops,
                                                                       headers={**d, **patch})):
        denied(await req)
    assert (await http.delete("/Observation/obs-2", headers=d)).status_code == 204
    # s: searches and type history
    found = await http.get("/Observation", headers=s)
    assert found.status_code == 200
    assert {"Observation/obs-1", "Observation/obs-3"} <= set(ids(found.json())) and len(ids(found.json())) == 3
    assert (await http.get("/Observation/_history", headers=s)).status_code == 200
    assert (await http.get("/Patient/pat-001/Observation", headers=s)).status_code == 200
    for req in (http.get("/Observation/obs-1", headers=s), http.get("/Patient", headers=s),
                http.get("/Observation/obs-1/_history", headers=s)):
        denied(await req)
    assert (await http.get("/Observation/obs-1", headers=s)).headers["www-authenticate"].endswith(
        'error="insufficient_scope"')
    # v1: read = rs, write = cud
    v1read, v1write = await mint("user/Observation.read"), await mint("user/Observation.write")
    assert (await http.get("/Observation/obs-1", headers=v1read)).status_code == 200
    assert (await http.get("/Observation", headers=v1read)).status_code == 200
    denied(await http.post("/Observation", json=observation(None, "pat-001"), headers=v1read))
    assert (await http.post("/Observation", json=observation(None, "pat-001"), headers=v1write)).status_code == 201
    denied(await http.get("/Observation/obs-1", headers=v1write))


async def test_a_conditional_create_returns_its_match_only_to_a_reader(env):
    http, _, mint, _ = env
    exists = {"If-None-Exist": "_id=obs-1"}
    create_only, create_read = await mint("user/Observation.c"), await mint("user/Observation.cr")
    denied(await http.post("/Observation", json=observation(None, "pat-001"), headers={**create_only, **exists}))
    found = await http.post("/Observation", json=observation(None, "pat-001"), headers={**create_read, **exists})
    assert found.status_code == 200 and found.json()["id"] == "obs-1"
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {**entry("POST", "Observation", observation(None, "pat-001")), "request": {
            "method": "POST", "url": "Observation", "ifNoneExist": "_id=obs-1"}}]}
    denied(await http.post("", json=tx, headers=create_only))
    assert (await http.post("", json=tx, headers=create_read)).status_code == 200


async def test_system_search_and_history_only_cover_the_granted_types(env):
    http, _, mint, _ = env
    h = await mint("user/ResearchSubject.rs user/ResearchStudy.rs")
    everything = (await http.get("", headers=h)).json()
    assert ids(everything) == ["ResearchStudy/study-1", "ResearchSubject/rs-1", "ResearchSubject/rs-2"]
    denied(await http.get("?_type=Patient,ResearchSubject", headers=h))
    history = (await http.get("/_history", headers=h)).json()
    assert {e["request"]["url"].split("/")[0] for e in history["entry"]} == {"ResearchStudy", "ResearchSubject"}
    assert len(history["entry"]) == 3


# -- patient/ scopes -----------------------------------------------------------------------------

async def test_patient_scope_is_the_patients_compartment(env):
    http, _, mint, _ = env
    h = await mint("patient/*.rs", patient="pat-001")
    assert (await http.get("/Patient/pat-001", headers=h)).status_code == 200
    assert (await http.get("/ResearchSubject/rs-1", headers=h)).status_code == 200
    assert (await http.get("/ResearchStudy/study-1", headers=h)).status_code == 200  # not patient data
    for path in ("/Patient/pat-002", "/ResearchSubject/rs-2", "/ResearchSubject/rs-2/_history/1",
                 "/ResearchSubject/rs-2/_history", "/Observation/obs-3", "/Patient/pat-002/ResearchSubject",
                 "/ResearchSubject?subject.name=Two", "/Patient?_has:ResearchSubject:subject:status=active"):
        denied(await http.get(path, headers=h))
    assert ids((await http.get("/ResearchSubject", headers=h)).json()) == ["ResearchSubject/rs-1"]
    assert ids((await http.get("?_type=ResearchSubject", headers=h)).json()) == ["ResearchSubject/rs-1"]
    assert ids((await http.get("?_type=ResearchSubject,Observation", headers=h)).json()) == [
        "Observation/obs-1", "Observation/obs-2", "ResearchSubject/rs-1"]
    denied(await http.get("?_type=ResearchSubject,ResearchStudy", headers=h))  # different access: type by type
    assert ids((await http.get("/ResearchSubject?subject=Patient/pat-002", headers=h)).json()) == []
    assert ids((await http.get("/Patient", headers=h)).json()) == ["Patient/pat-001"]
    assert ids((await http.get("/Observation", headers=h)).json()) == ["Observation/obs-1", "Observation/obs-2"]
    assert ids((await http.get("/Patient/pat-001/ResearchSubject", headers=h)).json()) == ["ResearchSubject/rs-1"]
    assert (await http.get("/ResearchSubject?_total=accurate", headers=h)).json()["total"] == 1
    assert (await http.get("/ResearchSubject?_summary=count", headers=h)).json()["total"] == 1
    # _revinclude: the study's other subjects are another patient's
    study = (await http.get("/ResearchStudy?_revinclude=ResearchSubject:study", headers=h)).json()
    assert ids(study) == ["ResearchStudy/study-1"] and ids(study, "include") == ["ResearchSubject/rs-1"]
    own = (await http.get("/Patient?_revinclude=Observation:subject&_revinclude=ResearchSubject:subject",
                          headers=h)).json()
    assert ids(own, "include") == ["Observation/obs-1", "Observation/obs-2", "ResearchSubject/rs-1"]
    # history: only the patient's resources
    history = (await http.get("/ResearchSubject/_history", headers=h)).json()
    assert [e["fullUrl"] for e in history["entry"]] == [f"{FHIR}/ResearchSubject/rs-1"]
    # reading is not writing
    denied(await http.post("/Observation", json=observation(None, "pat-001"), headers=h))


async def test_a_patient_token_from_the_authorization_code_flow(env):
    http, _, _, _ = env
    verifier, challenge = pkce_pair()
    params = authorize_params(FHIR, challenge, scope="launch/patient openid fhirUser patient/*.rs")
    done = await log_in(http, "http://testserver/auth/authorize", params, patient="pat-002")
    assert done.status_code == 303 and done.headers["location"].startswith(REDIRECT), done.text
    token = await http.post(TOKEN, data={"grant_type": "authorization_code", "code": query(done.headers["location"])["code"],
                                         "redirect_uri": REDIRECT, "code_verifier": verifier, "client_id": "public-app"})
    assert token.status_code == 200 and token.json()["patient"] == "pat-002", token.text
    h = {"Authorization": "Bearer " + token.json()["access_token"]}
    assert (await http.get("/ResearchSubject/rs-2", headers=h)).status_code == 200
    denied(await http.get("/ResearchSubject/rs-1", headers=h))
    found = (await http.get("/ResearchSubject?_include=ResearchSubject:study&_include=ResearchSubject:subject",
                            headers=h)).json()
    assert ids(found) == ["ResearchSubject/rs-2"]
    assert ids(found, "include") == ["Patient/pat-002", "ResearchStudy/study-1"]


async def test_filtered_history_pages_follow_on(env):
    http, open_, mint, _ = env
    for n in range(3):  # more versions of the other patient's Observation between the patient's
        assert (await open_.put("/Observation/obs-3", json={**observation("obs-3", "pat-002"),
                                                            "status": ["amended", "corrected", "final"][n]})).is_success
        assert (await open_.put("/Observation/obs-1", json={**observation("obs-1", "pat-001"),
                                                            "status": ["amended", "corrected", "final"][n]})).is_success
    h = await mint("patient/Observation.rs", patient="pat-001")
    seen, url = [], "/Observation/_history?_count=1"
    while url:
        page = (await http.get(url, headers=h)).json()
        assert len(page.get("entry", [])) <= 1
        seen += [(e["fullUrl"].rsplit("/", 1)[1], e["response"]["etag"]) for e in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == [("obs-1", 'W/"4"'), ("obs-1", 'W/"3"'), ("obs-1", 'W/"2"'), ("obs-2", 'W/"1"'),
                    ("obs-1", 'W/"1"')]


async def test_patient_scope_writes_land_in_the_compartment(env):
    http, open_, mint, _ = env
    h = await mint("patient/*.cruds", patient="pat-001")
    assert (await http.post("/Observation", json=observation(None, "pat-001"), headers=h)).status_code == 201
    denied(await http.post("/Observation", json=observation(None, "pat-002"), headers=h))
    moved = await http.put("/Observation/obs-1", json=observation("obs-1", "pat-002"), headers=h)
    denied(moved)
    denied(await http.put("/Observation/obs-3", json=observation("obs-3", "pat-001"), headers=h))
    denied(await http.delete("/Observation/obs-3", headers=h))
    denied(await http.post("/Practitioner", json={"resourceType": "Practitioner"}, headers=h))
    stored = (await open_.get("/Observation?subject=Patient/pat-002")).json()
    assert ids(stored) == ["Observation/obs-3"]
    assert (await open_.get("/Observation/obs-1")).json()["subject"]["reference"] == "Patient/pat-001"
    assert (await open_.get("/Observation/obs-3")).json()["meta"]["versionId"] == "1"
    assert (await http.delete("/Observation/obs-2", headers=h)).status_code == 204


async def test_include_of_a_type_the_token_does_not_cover_is_dropped(env):
    http, _, mint, _ = env
    only = await mint("user/ResearchSubject.rs")
    q = "/ResearchSubject?_include=ResearchSubject:study&_include=ResearchSubject:subject"
    body = (await http.get(q, headers=only)).json()
    assert ids(body) == ["ResearchSubject/rs-1", "ResearchSubject/rs-2"] and ids(body, "include") == []
    both = await mint("user/ResearchSubject.rs user/ResearchStudy.rs")
    assert ids((await http.get(q, headers=both)).json(), "include") == ["ResearchStudy/study-1"]
    every = await mint("user/*.rs")
    assert ids((await http.get(q, headers=every)).json(), "include") == [
        "Patient/pat-001", "Patient/pat-002", "ResearchStudy/study-1"]


async def test_granular_scope(env):
    http, _, mint, _ = env
    lab = await mint(f"patient/Observation.rs?category={LAB}|laboratory", patient="pat-001")
    assert ids((await http.get("/Observation", headers=lab)).json()) == ["Observation/obs-1"]
    assert (await http.get("/Observation/obs-1", headers=lab)).status_code == 200
    denied(await http.get("/Observation/obs-2", headers=lab))  # the patient's, but vital signs
    denied(await http.get("/Observation/obs-3", headers=lab))  # laboratory, but another patient's
    everyone = await mint("user/Observation.rs?category=laboratory")
    assert ids((await http.get("/Observation", headers=everyone)).json()) == ["Observation/obs-1", "Observation/obs-3"]
    # a wider scope on the same type wins
    wide = await mint("user/Observation.rs?category=laboratory user/Observation.rs")
    assert len(ids((await http.get("/Observation", headers=wide)).json())) == 3
    two = await mint("user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs")
    r = await http.get("/Observation", headers=two)
    denied(r)
    assert "not supported" in r.json()["issue"][0]["diagnostics"]


# -- Bundles -------------------------------------------------------------------------------------

def entry(method: str, url: str, resource: dict | None = None) -> dict:
    e: dict = {"request": {"method": method, "url": url}}
    if resource is not None:
        e["resource"] = resource
    return e


async def test_transaction_with_a_forbidden_entry_fails_whole(env):
    http, open_, mint, _ = env
    h = await mint("patient/*.cruds", patient="pat-001")
    before = len((await open_.get("/Observation")).json()["entry"])
    for forbidden in (entry("POST", "Practitioner", {"resourceType": "Practitioner"}),  # refused up front
                      entry("POST", "Observation", observation(None, "pat-002")),        # after its write
                      entry("GET", "Patient/pat-002")):
        tx = {"resourceType": "Bundle", "type": "transaction",
              "entry": [entry("POST", "Observation", observation(None, "pat-001")), forbidden]}
        denied(await http.post("", json=tx, headers=h))
    assert len((await open_.get("/Observation")).json()["entry"]) == before
    ok = {"resourceType": "Bundle", "type": "transaction",
          "entry": [entry("POST", "Observation", observation(None, "pat-001")), entry("GET", "Patient/pat-001")]}
    assert (await http.post("", json=ok, headers=h)).status_code == 200
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [entry("GET", "Patient/pat-001"), entry("GET", "Patient/pat-002"),
                       entry("POST", "Observation", observation(None, "pat-002"))]}
    r = await http.post("", json=batch, headers=h)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "403", "403"]
    assert len((await open_.get("/Observation")).json()["entry"]) == before + 1


# -- backend services, operations, audit -----------------------------------------------------------

async def test_backend_service_token_from_client_credentials(env):
    http, open_, _, keys = env
    r = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "system/*.rs system/Group.cruds",
                                     "client_assertion_type": ASSERTION,
                                     "client_assertion": assertion(keys["rs"], "backend-rs", TOKEN)})
    assert r.status_code == 200, r.text
    h = {"Authorization": "Bearer " + r.json()["access_token"]}
    assert len(ids((await http.get("/Patient", headers=h)).json())) == 2
    assert ids((await http.get("/ResearchSubject?_include=ResearchSubject:subject", headers=h)).json(),
               "include") == ["Patient/pat-001", "Patient/pat-002"]
    denied(await http.post("/Patient", json={"resourceType": "Patient"}, headers=h))
    made = await http.post("/Group", json={"resourceType": "Group", "type": "person", "membership": "enumerated"},
                           headers=h)
    assert made.status_code == 201, made.text
    events = (await open_.get(f"/AuditEvent?entity=Group/{made.json()['id']}")).json()["entry"]
    agents = events[0]["resource"]["agent"]
    assert agents[0]["who"] == {"display": "backend-rs"} and agents[1]["who"] == {"display": "backend-rs"}
    # operations need an unconditional system/ or user/ scope with u on their type
    denied(await http.post("/Patient/$reindex", headers=h))
    writer = {"Authorization": "Bearer " + (await http.post(TOKEN, data={
        "grant_type": "client_credentials", "scope": "system/Group.cruds", "client_assertion_type": ASSERTION,
        "client_assertion": assertion(keys["rs"], "backend-rs", TOKEN)})).json()["access_token"]}
    assert (await http.post("/Group/$reindex", headers=writer)).status_code == 200
    denied(await http.post("/$reindex", headers=writer))


async def test_audit_records_name_the_user_and_the_client(env):
    http, open_, mint, _ = env
    h = await mint("user/*.cruds", fhir_user=f"{FHIR}/Practitioner/prac-1", sub="alice", client_id="secret-app")
    made = await http.post("/Patient", json={"resourceType": "Patient"}, headers=h)
    assert made.status_code == 201
    target = f"Patient/{made.json()['id']}"
    prov = (await open_.get(f"/Provenance?target={target}")).json()["entry"][0]["resource"]
    assert prov["agent"][0]["who"] == {"display": "alice", "reference": "Practitioner/prac-1"}
    event = (await open_.get(f"/AuditEvent?entity={target}")).json()["entry"][0]["resource"]
    user, client = event["agent"][0], event["agent"][1]
    assert user["who"] == {"display": "alice", "reference": "Practitioner/prac-1"} and user["requestor"] is True
    assert client["who"] == {"display": "secret-app"} and client["networkString"] == "127.0.0.1"
    # without authorization the actor stays anonymous
    other = await open_.post("/Patient", json={"resourceType": "Patient"})
    anon = (await open_.get(f"/Provenance?target=Patient/{other.json()['id']}")).json()
    assert anon["entry"][0]["resource"]["agent"][0]["who"] == {"display": "anonymous"}


# -- a real client against a live server -------------------------------------------------------------

def test_fhirpy_with_a_backend_services_token(live_server, fresh_database_url):
    import asyncio
    import concurrent.futures

    import httpx
    from fhirpy import AsyncFHIRClient
    from fhirpy.base.exceptions import AuthorizationError, ForbiddenError

    from fhir_ctms.storage.sql import make_engine

    url = fresh_database_url()
    holder: dict = {}

    async def setup() -> None:
        engine = make_engine(url)
        try:
            holder.update(await register(AuthStore(engine)))
        finally:
            await engine.dispose()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, setup()).result()
    server = live_server(database_url=url, FHIR_CTMS_AUTH_ENABLED="true")
    conf = httpx.get(server.url + "/.well-known/smart-configuration").json()
    token = httpx.post(conf["token_endpoint"], data={
        "grant_type": "client_credentials", "scope": "system/*.rs system/Group.cruds",
        "client_assertion_type": ASSERTION,
        "client_assertion": assertion(holder["es"], "backend-es", conf["token_endpoint"])})
    # backend-es may have system/*.rs only
    assert token.status_code == 200 and token.json()["scope"] == "system/*.rs", token.text
    writer = httpx.post(conf["token_endpoint"], data={
        "grant_type": "client_credentials", "scope": "system/*.rs system/Group.cruds",
        "client_assertion_type": ASSERTION,
        "client_assertion": assertion(holder["rs"], "backend-rs", conf["token_endpoint"])}).json()

    async def run() -> None:
        anonymous = AsyncFHIRClient(server.url)
        with pytest.raises(AuthorizationError) as missing:  # 401
            await anonymous.resources("Group").fetch()
        assert json.loads(str(missing.value))["issue"][0]["code"] == "login"
        client = AsyncFHIRClient(server.url, authorization="Bearer " + writer["access_token"])
        group = client.resource("Group", type="person", membership="enumerated", name="fhirpy cohort")
        await group.save()
        assert group.id and group["meta"]["versionId"] == "1"
        reader = AsyncFHIRClient(server.url, authorization="Bearer " + token.json()["access_token"])
        got = await reader.reference("Group", group.id).to_resource()
        assert got["name"] == "fhirpy cohort"
        found = await reader.resources("Group").search(name="fhirpy").fetch()
        assert [g.id for g in found] == [group.id]
        assert await reader.resources("Patient").fetch() == []
        with pytest.raises(ForbiddenError) as refused:  # 403: system/*.rs does not create
            await reader.resource("Group", type="person", membership="enumerated").save()
        assert json.loads(str(refused.value))["issue"][0]["code"] == "forbidden"
    asyncio.run(run())


@pytest.mark.parametrize("args, expected", [([], "true"), (["--dev"], "false")])
def test_serve_requires_tokens_unless_dev(monkeypatch, args, expected):
    import os

    import uvicorn
    from typer.testing import CliRunner

    from fhir_ctms import cli

    seen: dict = {}
    monkeypatch.setenv("FHIR_CTMS_AUTH_ENABLED", "unset")
    monkeypatch.delenv("FHIR_CTMS_AUTH_ENABLED")  # restored to absent after the test
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(auth=os.environ.get("FHIR_CTMS_AUTH_ENABLED")))
    result = CliRunner().invoke(cli.app, ["serve", *args])
    assert result.exit_code == 0, result.output
    assert seen == {"auth": expected}
    assert cli.get_settings().auth_enabled is (expected == "true")
    cli.get_settings.cache_clear()
