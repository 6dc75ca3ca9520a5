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
from fhir_ctms.auth.tokens import sign
from fhir_ctms.storage.auth_store import AuthStore

from .conftest import empty_tables, make_client
from .fhir import outcome_codes
from .smart import ASSERTION, REDIRECT, assertion, authorize_params, log_in, minter, pkce_pair, query, register

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
    signed = minter(store, fhir=FHIR)

    async def mint(scope: str, *, patient: str | None = None, fhir_user: str | None = None,
                   client_id: str = "secret-app", sub: str = "alice", **claims: object) -> dict[str, str]:
        context = {k: v for k, v in (("patient", patient), ("fhirUser", fhir_user)) if v}
        return await signed(scope, subject=sub, context=context, client=client_id, claims=claims)

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
    # RFC 6750 3.1: another scheme is no bearer authentication at all (no error code); a malformed
    # Bearer header is an invalid_request (400)
    basic = await http.get("/Patient", headers={"Authorization": "Basic YTpi"})
    denied(basic, 401)
    assert basic.headers["www-authenticate"] == 'Bearer realm="fhir-ctms"'
    for malformed in ("Bearer", "Bearer ", "Bearer two tokens", "Bearer a,b", "bearer {json}"):
        r = await http.get("/Patient", headers={"Authorization": malformed})
        assert r.status_code == 400 and outcome_codes(r) == ["invalid"], (malformed, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer realm="fhir-ctms", error="invalid_request"')
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
    # two conditions: their union (SMART v2 scopes are additive)
    two = await mint("user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs")
    assert ids((await http.get("/Observation", headers=two)).json()) == [
        "Observation/obs-1", "Observation/obs-2", "Observation/obs-3"]


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
                      entry("GET", "Patient/pat-002"),
                      entry("GET", "ResearchSubject/rs-2")):                          # another patient's
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


# -- several granular scopes on one type: the union (SMART v2 scopes are additive) -------------------

VITAL = f"{LAB}|vital-signs"
LABORATORY = f"{LAB}|laboratory"


async def _more_observations(open_) -> None:
    both = observation("obs-7", "pat-001")
    both["category"].append({"coding": [{"system": LAB, "code": "vital-signs"}]})
    for obs in (observation("obs-4", "pat-001", "imaging"), observation("obs-5", "pat-001", "laboratory"),
                observation("obs-6", "pat-002", "vital-signs"), both):
        assert (await open_.put(f"/Observation/{obs['id']}", json=obs)).status_code == 201


async def _walk(http, url: str, headers: dict, relation: str = "next") -> tuple[list[str], list[dict]]:
    seen, pages = [], []
    while url:
        r = await http.get(url, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        matches = [e for e in page.get("entry", []) if e.get("search", {"mode": "match"})["mode"] == "match"]
        assert len(matches) <= 1
        seen += [e["resource"]["id"] for e in matches]
        url = next((link["url"] for link in page["link"] if link["relation"] == relation), None)
    return seen, pages


async def test_two_granular_scopes_on_one_type_read_and_search_their_union(env):
    http, open_, mint, _ = env
    await _more_observations(open_)
    h = await mint(f"patient/Observation.rs?category={LABORATORY} patient/Observation.rs?category={VITAL}",
                   patient="pat-001")
    for rid in ("obs-1", "obs-2", "obs-5", "obs-7"):
        assert (await http.get(f"/Observation/{rid}", headers=h)).status_code == 200, rid
    for rid in ("obs-3", "obs-4", "obs-6"):  # another patient's laboratory and vital signs; imaging
        denied(await http.get(f"/Observation/{rid}", headers=h))
    assert (await http.get("/Observation/obs-2/_history/1", headers=h)).status_code == 200
    denied(await http.get("/Observation/obs-4/_history/1", headers=h))
    # search: the union, each resource once (obs-7 matches both conditions), _total exact
    union = ["Observation/obs-1", "Observation/obs-2", "Observation/obs-5", "Observation/obs-7"]
    assert ids((await http.get("/Observation", headers=h)).json()) == union
    assert (await http.get("/Observation?_total=accurate", headers=h)).json()["total"] == 4
    assert (await http.get("/Observation?_summary=count", headers=h)).json()["total"] == 4
    assert (await http.get("/Observation?_count=0", headers=h)).json()["total"] == 4
    assert ids((await http.get("/Patient/pat-001/Observation", headers=h)).json()) == union
    assert ids((await http.get("/Observation?category=vital-signs", headers=h)).json()) == [
        "Observation/obs-2", "Observation/obs-7"]
    assert (await http.get("/Observation?category=vital-signs&_total=accurate", headers=h)).json()["total"] == 2
    assert ids((await http.get("/Observation?category=imaging", headers=h)).json()) == []
    assert ids((await http.get("/Patient/pat-002/Observation", headers=h)).json()) == []
    # paging one by one: every resource of the union once, in the search's order, either way
    seen, pages = await _walk(http, "/Observation?_count=1&_total=accurate", h)
    assert seen == ["obs-1", "obs-2", "obs-5", "obs-7"] and len(pages) == 4
    assert all(p["total"] == 4 for p in pages)
    back, _ = await _walk(http, next(link["url"] for link in pages[-1]["link"] if link["relation"] == "self"), h,
                          "previous")
    assert back == ["obs-7", "obs-5", "obs-2", "obs-1"]
    assert (await _walk(http, "/Observation?_count=1&_sort=-_id", h))[0] == ["obs-7", "obs-5", "obs-2", "obs-1"]
    assert (await _walk(http, "/Observation?_count=1&_sort=category,-_id", h))[0] == [
        "obs-7", "obs-5", "obs-1", "obs-2"]  # laboratory before vital-signs (obs-7: its lowest)
    every = (await open_.get("/Observation?_sort=category,-_id")).json()
    assert [e["resource"]["id"] for e in every["entry"] if e["resource"]["id"] in seen] == [
        "obs-7", "obs-5", "obs-1", "obs-2"]  # the same order as the unrestricted search
    # a system search over the type
    assert ids((await http.get("?_type=Observation", headers=h)).json()) == union


async def test_two_granular_scopes_filter_includes_and_history(env):
    http, open_, mint, _ = env
    await _more_observations(open_)
    panel = {**observation("obs-1", "pat-001"), "hasMember": [
        {"reference": "Observation/obs-2"}, {"reference": "Observation/obs-4"}, {"reference": "Observation/obs-3"}]}
    assert (await open_.put("/Observation/obs-1", json=panel)).status_code == 200
    h = await mint(f"patient/Observation.rs?category={LABORATORY} patient/Observation.rs?category={VITAL} "
                   "patient/Patient.rs", patient="pat-001")
    found = (await http.get("/Observation?_id=obs-1&_include=Observation:has-member", headers=h)).json()
    assert ids(found) == ["Observation/obs-1"] and ids(found, "include") == ["Observation/obs-2"]
    own = (await http.get("/Patient?_revinclude=Observation:subject", headers=h)).json()
    assert ids(own) == ["Patient/pat-001"]
    assert ids(own, "include") == ["Observation/obs-1", "Observation/obs-2", "Observation/obs-5", "Observation/obs-7"]
    history = (await http.get("/Observation/_history", headers=h)).json()
    assert sorted(e["fullUrl"].rsplit("/", 1)[1] + "@" + e["response"]["etag"] for e in history["entry"]) == [
        'obs-1@W/"1"', 'obs-1@W/"2"', 'obs-2@W/"1"', 'obs-5@W/"1"', 'obs-7@W/"1"']
    paged, _ = await _walk(http, "/Observation/_history?_count=1", h)
    assert sorted(paged) == ["obs-1", "obs-1", "obs-2", "obs-5", "obs-7"]
    assert (await http.get("/Observation/obs-7/_history", headers=h)).status_code == 200
    denied(await http.get("/Observation/obs-4/_history", headers=h))


async def test_granular_scopes_of_different_contexts_are_or_ed(env):
    http, open_, mint, _ = env
    await _more_observations(open_)
    h = await mint(f"patient/Observation.rs?category={LABORATORY} user/Observation.rs?category={VITAL}",
                   patient="pat-001")
    assert ids((await http.get("/Observation", headers=h)).json()) == [
        "Observation/obs-1", "Observation/obs-2", "Observation/obs-5", "Observation/obs-6", "Observation/obs-7"]
    assert (await http.get("/Observation?_total=accurate", headers=h)).json()["total"] == 5
    assert (await http.get("/Observation/obs-6", headers=h)).status_code == 200  # another patient's vital signs
    denied(await http.get("/Observation/obs-3", headers=h))  # another patient's laboratory
    # another patient's compartment: the patient/ condition lets nothing through, the user/ one does
    assert ids((await http.get("/Patient/pat-002/Observation", headers=h)).json()) == ["Observation/obs-6"]
    # a wider scope beside conditional ones: every resource
    wide = await mint(f"patient/Observation.rs?category={LABORATORY} user/Observation.rs?category={VITAL} "
                      "user/Observation.rs", patient="pat-001")
    assert len(ids((await http.get("/Observation", headers=wide)).json())) == 7


async def test_two_granular_write_scopes_allow_a_write_either_covers(env):
    http, open_, mint, _ = env
    await _more_observations(open_)
    h = await mint(f"patient/Observation.cruds?category={LABORATORY} patient/Observation.cruds?category={VITAL}",
                   patient="pat-001")
    before = len((await open_.get("/Observation")).json()["entry"])
    made = await http.post("/Observation", json=observation(None, "pat-001", "vital-signs"), headers=h)
    assert made.status_code == 201, made.text
    lab = await http.post("/Observation", json=observation(None, "pat-001", "laboratory"), headers=h)
    assert lab.status_code == 201
    denied(await http.post("/Observation", json=observation(None, "pat-001", "imaging"), headers=h))
    denied(await http.post("/Observation", json=observation(None, "pat-002", "laboratory"), headers=h))
    amended = {**observation("obs-2", "pat-001", "vital-signs"), "status": "amended"}
    assert (await http.put("/Observation/obs-2", json=amended, headers=h)).status_code == 200
    denied(await http.put("/Observation/obs-2", json=observation("obs-2", "pat-001", "imaging"), headers=h))
    denied(await http.put("/Observation/obs-4", json=observation("obs-4", "pat-001", "laboratory"), headers=h))
    denied(await http.delete("/Observation/obs-4", headers=h))
    tx = {"resourceType": "Bundle", "type": "transaction",
          "entry": [entry("POST", "Observation", observation(None, "pat-001", "laboratory")),
                    entry("POST", "Observation", observation(None, "pat-001", "imaging"))]}
    denied(await http.post("", json=tx, headers=h))
    assert len((await open_.get("/Observation")).json()["entry"]) == before + 2
    stored = (await open_.get("/Observation/obs-2")).json()
    assert stored["status"] == "amended" and stored["category"][0]["coding"][0]["code"] == "vital-signs"
    assert (await open_.get("/Observation/obs-4")).json()["meta"]["versionId"] == "1"
    assert (await http.delete("/Observation/obs-5", headers=h)).status_code == 204


# -- the token's own user (fhirUser) --------------------------------------------------------------

async def test_the_token_may_read_its_own_fhir_user(env):
    http, open_, mint, _ = env
    assert (await open_.put("/Practitioner/prac-2", json={"resourceType": "Practitioner", "id": "prac-2"})).is_success
    me = f"{FHIR}/Practitioner/prac-1"
    h = await mint("openid fhirUser patient/Patient.rs", patient="pat-001", fhir_user=me)
    assert (await http.get("/Practitioner/prac-1", headers=h)).json()["id"] == "prac-1"
    assert (await http.get("/Practitioner/prac-1/_history/1", headers=h)).status_code == 200
    for refused in (http.get("/Practitioner/prac-2", headers=h), http.get("/Practitioner", headers=h),
                    http.get("/Practitioner/prac-1/_history", headers=h),
                    http.put("/Practitioner/prac-1", json={"resourceType": "Practitioner", "id": "prac-1",
                                                           "active": False}, headers=h)):
        denied(await refused)
    tx = {"resourceType": "Bundle", "type": "batch", "entry": [entry("GET", "Practitioner/prac-1"),
                                                                entry("GET", "Practitioner/prac-2")]}
    assert [e["response"]["status"][:3] for e in (await http.post("", json=tx, headers=h)).json()["entry"]] == [
        "200", "403"]
    # only with openid fhirUser granted, and only this server's resource
    denied(await http.get("/Practitioner/prac-1", headers=await mint("patient/Patient.rs", patient="pat-001",
                                                                       fhir_user=me)))
    denied(await http.get("/Practitioner/prac-1", headers=await mint("openid fhirUser patient/Patient.rs",
                                                                       patient="pat-001",
                                                                       fhir_user="https://other.example/fhir/"
                                                                                 "Practitioner/prac-1")))


# -- operations under patient/ tokens ----------------------------------------------------------------

async def test_operations_that_change_nothing_need_read_or_search_on_their_type(env):
    http, open_, mint, _ = env
    screening = [{"type": {"coding": [{"system": "http://hl7.org/fhir/research-subject-progress", "code": "state"}]},
                  "subjectState": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-state",
                                               "code": "screening"}]}, "startDate": "2026-01-05"}]
    for rid, pat in (("rs-1", "pat-001"), ("rs-2", "pat-002")):
        screened = {**subject(rid, pat), "progress": screening}
        assert (await open_.put(f"/ResearchSubject/{rid}", json=screened)).is_success
    patient = await mint("patient/*.rs", patient="pat-001")
    system = await mint("system/*.rs")
    # the operations that count ($enrollment, $milestones, $payments) need every subject: over
    # the part a token sees (the patient's own subject) their figures would be wrong, so a 403
    everyone = await http.get("/ResearchStudy/study-1/$enrollment?date=2026-02-01", headers=system)
    assert everyone.status_code == 200, everyone.text
    assert _screened(everyone.json()) == 2
    for path in ("/ResearchStudy/study-1/$enrollment", "/ResearchStudy/study-1/$milestones",
                 "/ResearchStudy/$milestones", "/ResearchStudy/study-1/$payments"):
        r = await http.get(path, headers=patient)
        denied(r)
        assert "without conditions" in r.json()["issue"][0]["diagnostics"], path
    site_only = await mint("user/ResearchStudy.rs user/ResearchSubject.rs?study=ResearchStudy/site-1")
    denied(await http.get("/ResearchStudy/study-1/$enrollment", headers=site_only))
    # $validate of an instance: one the token may read
    assert (await http.get("/Patient/pat-001/$validate", headers=patient)).status_code == 200
    denied(await http.get("/Patient/pat-002/$validate", headers=patient))
    denied(await http.get("/ResearchSubject/rs-2/$validate", headers=patient))
    assert (await http.post("/Observation/$validate", json=observation(None, "pat-001"),
                            headers=patient)).status_code == 200
    # $expand: the type must be readable (patient/*.rs: ValueSet is outside the compartment)
    expand = "/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/administrative-gender"
    assert (await http.get(expand, headers=patient)).status_code == 200
    denied(await http.get(expand, headers=await mint("patient/Patient.rs", patient="pat-001")))
    denied(await http.get(expand, headers=await mint("user/ValueSet.rs?status=active")))
    # a read without search: instance level only
    reader = await mint("user/Patient.r")
    assert (await http.get("/Patient/pat-001/$validate", headers=reader)).status_code == 200
    denied(await http.post("/Patient/$validate", json={"resourceType": "Patient"}, headers=reader))
    # reading data no guard filters ($registry-export: Organizations, Locations): system/ or user/
    r = await http.get("/ResearchStudy/study-1/$registry-export", headers=patient)
    denied(r)
    assert "system/ or user/" in r.json()["issue"][0]["diagnostics"]
    assert (await http.get("/ResearchStudy/study-1/$registry-export", headers=system)).status_code != 403
    # state-changing operations: u with system/ or user/
    for path in ("/ResearchSubject/rs-1/$schedule", "/Patient/$reindex"):
        denied(await http.post(path, headers=await mint("patient/*.cruds", patient="pat-001")))
    # $payments: its GET without persist reads (read-only-unless); a POST with persist needs the
    # permissions of what it writes (ChargeItem, Invoice, Group), not update of the study
    reader = await mint("user/*.rs")
    assert (await http.get("/ResearchStudy/study-1/$payments", headers=reader)).status_code == 200
    r = await http.post("/ResearchStudy/study-1/$payments?persist=true", headers=reader)
    assert r.status_code in (200, 403), r.text  # 200: nothing due in this study, so nothing written
    writer = await mint("user/*.cruds")
    assert (await http.get("/ResearchStudy/study-1/$payments?persist=true", headers=writer)).status_code == 405
    # an unknown operation is a 404, not a refusal
    assert (await http.get("/Patient/pat-001/$nothing", headers=patient)).status_code == 404


def _screened(parameters: dict) -> int | None:
    """The first ``screened`` figure of an $enrollment answer (the study's)."""
    def walk(parts: list) -> int | None:
        for p in parts:
            if p.get("name") == "screened" and "valueInteger" in p:
                return p["valueInteger"]
            found = walk(p.get("part", []))
            if found is not None:
                return found
        return None
    return walk(parameters["parameter"])


# -- forged and broken tokens over HTTP ----------------------------------------------------------------

def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_are_refused_by_the_api(env, repo):
    from joserfc import jwt
    from joserfc.jwk import ECKey, OctKey

    http, open_, mint, _ = env
    good = await mint("system/*.cruds")
    assert (await http.get("/Patient/pat-001", headers=good)).status_code == 200
    token = good["Authorization"].split()[1]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    ring = KeyRing(AuthStore(repo.engine), "ES384", 3600)
    public = (await ring.jwks())["keys"][0]
    key, record = await ring.signer()
    stranger = ECKey.generate_key("P-384", private=True)
    forgeries = {
        "alg none": _b64({"alg": "none", "typ": "at+jwt"}) + "." + payload + ".",
        "alg none, kid": _b64({"alg": "none", "kid": public["kid"], "typ": "at+jwt"}) + "." + payload + ".",
        "HS256 keyed with the public key": jwt.encode(
            {"alg": "HS256", "kid": public["kid"], "typ": "at+jwt"}, claims,
            OctKey.import_key(json.dumps(public).encode()), algorithms=["HS256"]),
        "unknown kid": jwt.encode({"alg": "ES384", "kid": "stranger", "typ": "at+jwt"}, claims, stranger,
                                  algorithms=["ES384"]),
        "a stranger's key under the server's kid": jwt.encode(
            {"alg": "ES384", "kid": public["kid"], "typ": "at+jwt"}, claims, stranger, algorithms=["ES384"]),
        "tampered signature": f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}",
        "tampered claims": f"{head}.{_b64({**claims, 'scope': 'system/*.cruds', 'sub': 'root'})}.{sig}",
        "the server's key, another typ (an id token's)": sign(key, record.kid, record.alg, claims, "JWT"),
        "expired": (await mint("system/*.cruds", exp=int(time.time()) - 600))["Authorization"].split()[1],
        "another audience": (await mint("system/*.cruds", aud="https://other/fhir"))["Authorization"].split()[1],
        "another issuer": (await mint("system/*.cruds", iss="https://other/fhir"))["Authorization"].split()[1],
    }
    for why, forged in forgeries.items():
        for call in (http.get("/Patient/pat-001", headers={"Authorization": f"Bearer {forged}"}),
                     http.post("/Patient", json={"resourceType": "Patient"},
                               headers={"Authorization": f"Bearer {forged}"})):
            r = await call
            assert r.status_code == 401, (why, r.text)
            assert outcome_codes(r) == ["login"], why
            assert r.headers["www-authenticate"].startswith('Bearer realm="fhir-ctms", error="invalid_token"'), why
    # nothing was written by any of them
    assert len((await open_.get("/Patient")).json()["entry"]) == 2


# -- the CapabilityStatement's security ------------------------------------------------------------

async def test_capability_statement_says_whether_cors_is_on(repo):
    from .conftest import make_client as client_of
    async with client_of(repo, auth_enabled=True) as on:
        security = (await on.get("/metadata")).json()["rest"][0]["security"]
        assert security["cors"] is True and security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    async with client_of(repo, auth_enabled=True, cors_origins=[]) as off:
        assert (await off.get("/metadata")).json()["rest"][0]["security"]["cors"] is False
    async with client_of(repo, auth_enabled=True, cors_origins=["https://app.example"]) as some:
        assert (await some.get("/metadata")).json()["rest"][0]["security"]["cors"] is True
