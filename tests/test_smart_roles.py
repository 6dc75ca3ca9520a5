"""Roles (``auth/roles.py``): a user's ``user/`` scopes narrowed to what its roles allow, at sign-in,
code exchange and refresh, on both databases; the role mapping and its replacement by a file; the
``users`` commands; the migration that adds roles to existing users."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import pytest_asyncio
from joserfc import jwt
from sqlalchemy import text

from fhir_ctms.auth import scopes as sc
from fhir_ctms.auth.keys import KeyRing
from fhir_ctms.auth.passwords import hash_secret
from fhir_ctms.auth.roles import DEFAULT, RoleMap, load_file, parse_text, role_map
from fhir_ctms.config import Settings
from fhir_ctms.storage.auth_store import AuthStore, UserRecord
from fhir_ctms.storage.migrate import upgrade
from fhir_ctms.storage.sql import make_engine

from .conftest import _pg_admin_url, make_client
from .smart import (PASSWORD, REDIRECT, SECRET, authorize_params, bearer, hidden, pkce_pair, query,
                    registered)

FHIR = "http://testserver/fhir"
AUTH = "http://testserver/auth"
TOKEN = AUTH + "/token"


def scopes_of(text_: str) -> set[str]:
    return set(text_.split())


# -- the mapping ----------------------------------------------------------------------------------

def test_the_default_mapping_narrows_user_scopes_and_leaves_the_others():
    roles = role_map(None)
    assert set(roles.roles) == {"study-manager", "monitor", "site-coordinator", "finance", "auditor",
                                "ehr-integration"}
    asked = sc.parse("openid fhirUser launch/patient patient/*.rs user/*.cruds")
    # a study manager keeps everything
    assert scopes_of(str(roles.narrow(asked, ["study-manager"]))) == scopes_of(str(asked))
    # an auditor reads and searches everything (the audit trail too), writes nothing
    assert scopes_of(str(roles.narrow(asked, ["auditor"]))) == {
        "openid", "fhirUser", "launch/patient", "patient/*.rs", "user/*.rs"}
    # a monitor: rs on the study, subject, visit and document types; crus on its own records
    monitor = scopes_of(str(roles.narrow(asked, ["monitor"])))
    assert {"user/ResearchStudy.rs", "user/ResearchSubject.rs", "user/Patient.rs", "user/Encounter.rs",
            "user/DocumentReference.rs", "user/DetectedIssue.crus", "user/Task.crus",
            "user/Appointment.crus", "patient/*.rs", "openid"} <= monitor
    assert not any(s.startswith("user/Invoice") or s.startswith("user/AuditEvent") for s in monitor)
    assert not any(s.startswith("user/") and "d" in s.split(".")[1] for s in monitor)  # never deletes
    # finance: its resources cruds, studies read
    finance = scopes_of(str(roles.narrow(sc.parse("user/*.cruds"), ["finance"])))
    assert {"user/Invoice.cruds", "user/ChargeItem.cruds", "user/ChargeItemDefinition.cruds",
            "user/PaymentNotice.cruds", "user/Account.cruds", "user/ResearchStudy.rs"} <= finance
    assert "user/Patient.rs" not in finance
    # ehr-integration: read-only
    ehr = roles.narrow(sc.parse("user/*.cruds"), ["ehr-integration"])
    assert {r.type for r in ehr.resources} >= {"ResearchStudy", "ResearchSubject", "PlanDefinition", "Appointment"}
    assert {r.permissions for r in ehr.resources} == {"rs"}
    # site coordinator: enrols subjects, reads the study context
    coord = scopes_of(str(roles.narrow(sc.parse("user/*.cruds"), ["site-coordinator"])))
    assert {"user/ResearchSubject.cruds", "user/Patient.cruds", "user/Consent.cruds", "user/Appointment.cruds",
            "user/Encounter.cruds", "user/ResearchStudy.rs"} <= coord
    # a narrower request stays as narrow; roles add up; no role or an unknown one: no user/ scope
    assert str(roles.narrow(sc.parse("user/Invoice.r"), ["finance"])) == "user/Invoice.r"
    both = scopes_of(str(roles.narrow(sc.parse("user/Invoice.rs user/DetectedIssue.rs"), ["finance", "monitor"])))
    assert both == {"user/Invoice.rs", "user/DetectedIssue.rs"}
    assert roles.narrow(sc.parse("user/*.rs"), []).resources == ()
    assert roles.narrow(sc.parse("user/*.rs"), ["no-such-role"]).resources == ()
    # every default scope is a user/ scope of a real type
    assert all(s.startswith("user/") for scopes in DEFAULT.values() for s in scopes)


def test_a_roles_file_replaces_the_default_mapping(tmp_path):
    path = tmp_path / "roles.json"
    path.write_text(json.dumps({"monitor": ["user/ResearchStudy.rs"],
                                "lab": "user/Observation.rs?category=laboratory"}))
    roles = load_file(str(path))
    assert set(roles.roles) == {"monitor", "lab"}  # replaced, not merged
    assert str(roles.narrow(sc.parse("user/*.cruds"), ["monitor"])) == "user/ResearchStudy.rs"
    assert str(roles.narrow(sc.parse("user/Observation.rs"), ["lab"])) == "user/Observation.rs?category=laboratory"
    toml = tmp_path / "roles.toml"
    toml.write_text('auditor = ["user/*.rs"]\n"study-manager" = "user/*.cruds"\n')
    assert set(load_file(str(toml)).roles) == {"auditor", "study-manager"}
    assert Settings(auth_roles_file=str(toml)).auth_roles_file == str(toml)
    for bad, why in (('{"x": ["patient/*.rs"]}', "only user/ resource scopes"),
                     ('{"x": ["user/NoSuchType.rs"]}', "only user/ resource scopes"),
                     ('{"x": ["openid"]}', "only user/ resource scopes"),
                     ('{"Bad Name": ["user/*.rs"]}', "role name"),
                     ('{"x": [1]}', "list of strings"),
                     ('["user/*.rs"]', "an object"),
                     ("{not json", "not valid JSON")):
        with pytest.raises(ValueError, match=why):
            parse_text(bad, ".json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"x": ["system/*.rs"]}')
    with pytest.raises(ValueError, match="only user/ resource scopes"):  # a broken file stops the start
        Settings(auth_roles_file=str(broken))
    with pytest.raises(ValueError, match="cannot be read"):
        Settings(auth_roles_file=str(tmp_path / "missing.json"))
    assert isinstance(RoleMap.of({}), RoleMap)


# -- the flows, in-process on both databases --------------------------------------------------------

DATA = [
    {"resourceType": "ResearchStudy", "id": "acme-101", "status": "active"},
    {"resourceType": "Patient", "id": "pat-001"},
    {"resourceType": "DetectedIssue", "id": "dev-1", "status": "preliminary"},
    {"resourceType": "Invoice", "id": "inv-1", "status": "draft"},
]


@pytest_asyncio.fixture
async def smart(repo):
    store = await registered(repo)
    now = int(time.time())
    for name, roles in (("mona", ("monitor",)), ("fin", ("finance",)), ("audrey", ("auditor",)),
                        ("nobody", ()), ("multi", ("finance", "monitor"))):
        await store.add_user(UserRecord(name, hash_secret(PASSWORD), f"Practitioner/{name}", (), now, roles))
    async with make_client(repo) as open_:
        for resource in DATA:
            r = await open_.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
    async with make_client(repo, auth_enabled=True) as http:
        yield http, store


async def sign_in(http: httpx.AsyncClient, username: str, scope: str) -> tuple[httpx.Response, str]:
    """The authorization request, the login form as ``username``; (the answer to the login, the
    PKCE verifier)."""
    verifier, challenge = pkce_pair()
    page = await http.get(AUTH + "/authorize", params=authorize_params(FHIR, challenge, scope=scope))
    assert page.status_code == 200, page.text
    answer = await http.post(AUTH + "/login", data={
        "ticket": hidden(page.text, "ticket"), "csrf_token": hidden(page.text, "csrf_token"),
        "username": username, "password": PASSWORD})
    return answer, verifier


async def authorize(http: httpx.AsyncClient, username: str, scope: str) -> tuple[str, str, str]:
    """Sign in and allow: (the code, the verifier, the consent page's text)."""
    consent, verifier = await sign_in(http, username, scope)
    assert consent.status_code == 200, consent.text
    choice = {"ticket": hidden(consent.text, "ticket"), "csrf_token": hidden(consent.text, "csrf_token"),
              "decision": "allow"}
    if 'name="patient"' in consent.text:
        choice["patient"] = "pat-001"
    done = await http.post(AUTH + "/consent", data=choice)
    assert done.status_code == 303, done.text
    return query(done.headers["location"])["code"], verifier, consent.text


async def exchange(http: httpx.AsyncClient, code: str, verifier: str) -> httpx.Response:
    return await http.post(TOKEN, data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                        "code_verifier": verifier, "client_id": "public-app"})


async def token_for(http: httpx.AsyncClient, username: str, scope: str) -> dict:
    code, verifier, _ = await authorize(http, username, scope)
    r = await exchange(http, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_monitor_gets_the_monitor_scopes_and_the_api_enforces_them(smart):
    http, store = smart
    code, verifier, consent = await authorize(http, "mona", "openid fhirUser user/*.cruds")
    assert "user/DetectedIssue.crus" in consent and "user/*.cruds" not in consent  # the consent shows the narrowed grant
    r = await exchange(http, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    granted = scopes_of(body["scope"])
    assert {"openid", "fhirUser", "user/ResearchStudy.rs", "user/DetectedIssue.crus"} <= granted
    assert "user/*.cruds" not in granted and not any(s.startswith("user/Invoice") for s in granted)
    ring = KeyRing(store, "ES384", 3600)
    claims = jwt.decode(body["access_token"], await ring.verifier(), algorithms=["ES384"]).claims
    assert claims["roles"] == ["monitor"] and claims["scope"] == body["scope"]
    h = bearer(body["access_token"])
    assert (await http.get("/ResearchStudy/acme-101", headers=h)).status_code == 200
    assert (await http.get("/Patient/pat-001", headers=h)).status_code == 200
    finding = {"resourceType": "DetectedIssue", "status": "final"}
    assert (await http.post("/DetectedIssue", json=finding, headers=h)).status_code == 201
    assert (await http.put("/DetectedIssue/dev-1", json={**finding, "id": "dev-1"}, headers=h)).status_code == 200
    # the AuditEvent of the change names the user's role
    async with store.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT content FROM resources WHERE res_type = 'AuditEvent'"))).all()
    events = [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]
    written = [e for e in events if any(en.get("what", {}).get("reference", "").startswith("DetectedIssue/dev-1")
                                        for en in e.get("entity", []))]
    # (the fixture wrote dev-1 first, without a token: no role there)
    assert sorted(str(e["agent"][0].get("role")) for e in written) == ["None", str([{"text": "monitor"}])]
    assert (await http.delete("/DetectedIssue/dev-1", headers=h)).status_code == 403
    assert (await http.post("/Patient", json={"resourceType": "Patient"}, headers=h)).status_code == 403
    assert (await http.get("/Invoice/inv-1", headers=h)).status_code == 403
    assert (await http.get("/AuditEvent", headers=h)).status_code == 403
    # introspection reports the roles
    info = (await http.post(AUTH + "/introspect", data={"token": body["access_token"]},
                            auth=("secret-app", SECRET))).json()
    assert info["active"] is True and info["roles"] == ["monitor"]


async def test_finance_and_auditor_and_several_roles(smart):
    http, _ = smart
    fin = bearer((await token_for(http, "fin", "user/*.cruds"))["access_token"])
    assert (await http.post("/Invoice", json={"resourceType": "Invoice", "status": "draft"}, headers=fin)).status_code == 201
    assert (await http.get("/ResearchStudy/acme-101", headers=fin)).status_code == 200
    assert (await http.get("/Patient/pat-001", headers=fin)).status_code == 403
    audit = bearer((await token_for(http, "audrey", "user/*.cruds"))["access_token"])
    found = await http.get("/AuditEvent?_count=5", headers=audit)
    assert found.status_code == 200 and found.json()["entry"]
    assert (await http.get("/Provenance?_count=5", headers=audit)).status_code == 200
    assert (await http.post("/Patient", json={"resourceType": "Patient"}, headers=audit)).status_code == 403
    multi = await token_for(http, "multi", "user/Invoice.rs user/DetectedIssue.rs user/Patient.cruds")
    assert scopes_of(multi["scope"]) == {"user/Invoice.rs", "user/DetectedIssue.rs", "user/Patient.rs"}


async def test_a_user_without_roles_gets_no_user_scopes(smart):
    http, _ = smart
    # only user/ scopes asked: nothing left, the app gets invalid_scope back at its redirect URI
    refused, _ = await sign_in(http, "nobody", "openid fhirUser user/*.rs")
    assert refused.status_code == 303
    back = query(refused.headers["location"])
    assert refused.headers["location"].startswith(REDIRECT) and back["error"] == "invalid_scope"
    assert back["state"] == "st-123"
    # with patient/ scopes beside them, those are granted and the user/ ones dropped
    body = await token_for(http, "nobody", "launch/patient patient/*.rs user/*.rs")
    assert scopes_of(body["scope"]) == {"launch/patient", "patient/*.rs"} and body["patient"] == "pat-001"
    # no user/ scope asked: nothing to narrow
    body = await token_for(http, "nobody", "openid fhirUser patient/Patient.rs launch/patient")
    assert "patient/Patient.rs" in scopes_of(body["scope"])


async def test_roles_are_applied_again_at_code_exchange_and_refresh(smart):
    http, store = smart
    # roles taken away between consent and code exchange: the exchange is refused
    code, verifier, _ = await authorize(http, "mona", "user/DetectedIssue.rs")
    await store.set_roles("mona", ())
    r = await exchange(http, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    await store.set_roles("mona", ("monitor",))
    first = await token_for(http, "mona", "offline_access user/*.cruds")
    assert "user/DetectedIssue.crus" in scopes_of(first["scope"])

    async def refresh(token: str) -> httpx.Response:
        return await http.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": token,
                                            "client_id": "public-app"})
    # the monitor becomes an auditor: the refreshed token reads what the monitor grant did, writes nothing
    assert await store.set_roles("mona", ("auditor",))
    second = await refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    granted = scopes_of(second.json()["scope"])
    assert "user/DetectedIssue.rs" in granted and "user/ResearchStudy.rs" in granted
    assert not any(s.startswith("user/") and "c" in s.split(".")[1] for s in granted)
    assert "user/*.rs" not in granted  # a refresh never widens the original grant
    h = bearer(second.json()["access_token"])
    assert (await http.post("/DetectedIssue", json={"resourceType": "DetectedIssue", "status": "final"},
                            headers=h)).status_code == 403
    # no role left: the refresh is refused (and the refresh token stays usable once roles come back)
    await store.set_roles("mona", ())
    third = await refresh(second.json()["refresh_token"])
    assert third.status_code == 400 and third.json()["error"] == "invalid_scope"
    await store.set_roles("mona", ("monitor",))
    fourth = await refresh(second.json()["refresh_token"])
    assert fourth.status_code == 200
    # a removed user's grants end at the next refresh
    await store.remove_user("mona")
    gone = await refresh(fourth.json()["refresh_token"])
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"


# -- the command line and the migration ------------------------------------------------------------

CLI = [sys.executable, "-m", "fhir_ctms.cli"]


def run(database_url: str, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url, **env}
    return subprocess.run([*CLI, *args], env=environment, capture_output=True, text=True, timeout=120, input=stdin)


def test_users_get_roles_from_the_command_line(fresh_database_url, tmp_path):
    url = fresh_database_url()
    added = run(url, "users", "add", "--username", "carol", "--password-stdin", "--role", "monitor",
                "--role", "finance", stdin="a long enough password\n")
    assert added.returncode == 0, added.stderr
    unknown = run(url, "users", "add", "--username", "dave", "--password-stdin", "--role", "cra",
                  stdin="a long enough password\n")
    assert unknown.returncode == 1 and "unknown role cra" in unknown.stderr and "monitor" in unknown.stderr
    assert "carol\t\t\tmonitor finance" in run(url, "users", "list").stdout
    assert run(url, "users", "set-roles", "carol", "--role", "auditor").returncode == 0
    assert run(url, "users", "list").stdout.splitlines() == ["carol\t\t\tauditor"]
    assert run(url, "users", "set-roles", "nobody", "--role", "auditor").returncode == 1
    assert "auditor\tuser/*.rs" in run(url, "users", "roles").stdout
    # a roles file names the roles the command accepts
    roles = tmp_path / "roles.toml"
    roles.write_text('cra = ["user/ResearchStudy.rs"]\n')
    assert run(url, "users", "set-roles", "carol", "--role", "cra", FHIR_CTMS_AUTH_ROLES_FILE=str(roles)).returncode == 0
    assert run(url, "users", "set-roles", "carol", "--role", "monitor",
               FHIR_CTMS_AUTH_ROLES_FILE=str(roles)).returncode == 1


async def _database_at_0006(backend: str, directory) -> str:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / f'{uuid.uuid4().hex}.db'}"
    else:
        admin = _pg_admin_url()
        name = "t_" + uuid.uuid4().hex[:16]
        engine = make_engine(admin, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()
        url = admin.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    try:
        await upgrade(engine, "0006")
    finally:
        await engine.dispose()
    return url


def test_the_migration_gives_existing_users_no_roles(backend, tmp_path):
    async def scenario() -> None:
        url = await _database_at_0006(backend, tmp_path)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:  # a user stored before roles existed
                await conn.execute(text("INSERT INTO auth_users (username, password_hash, fhir_user, patients, created) "
                                        "VALUES ('old', 'x', NULL, '[]', 1)"))
            await upgrade(engine)
            store = AuthStore(engine)
            old = await store.user("old")
            assert old is not None and old.roles == ()
            assert await store.set_roles("old", ("auditor",))
            assert (await store.user("old")).roles == ("auditor",)  # type: ignore[union-attr]
            await store.add_login_failure(("user:old",), 100, 0)
            assert await store.login_failures("user:old", 0) == [100]
        finally:
            await engine.dispose()
    asyncio.run(scenario())
