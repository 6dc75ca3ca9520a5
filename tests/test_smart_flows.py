"""The SMART authorization server in-process, on both databases: discovery, the authorization
code flow with PKCE (forms posted as a browser would), EHR launch with study context, refresh
rotation, revocation, introspection, backend services, and the refusals."""

from __future__ import annotations

import base64
import time

import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

from fhir_ctms.auth import keys as server_keys
from fhir_ctms.auth.tokens import InvalidToken, verify_access_token
from fhir_ctms.storage.auth_store import AuthStore

from .conftest import empty_tables, make_client
from .smart import (ASSERTION, REDIRECT, SECRET, assertion, authorize_params, log_in, pkce_pair, query,
                    register)

FHIR = "http://testserver/fhir"
AUTH = "http://testserver/auth"
TOKEN = AUTH + "/token"


@pytest_asyncio.fixture
async def smart(repo):
    await empty_tables(repo)
    store = AuthStore(repo.engine)
    keys = await register(store)
    async with make_client(repo, auth_enabled=True) as http:
        yield http, store, keys


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def code_flow(http, *, client_id="public-app", scope=None, **extra):
    verifier, challenge = pkce_pair()
    params = authorize_params(FHIR, challenge, client_id=client_id, **({"scope": scope} if scope else {}), **extra)
    done = await log_in(http, AUTH + "/authorize", params)
    assert done.status_code == 303, done.text
    back = query(done.headers["location"])
    assert done.headers["location"].startswith(REDIRECT + "?")
    assert back["state"] == "st-123"
    return back["code"], verifier


async def exchange(http, code, verifier, client_id="public-app", **extra):
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    if client_id:
        form["client_id"] = client_id
    return await http.post(TOKEN, data=form, **extra)


async def test_discovery_and_capability_statement(smart):
    http, _, _ = smart
    conf = (await http.get("/.well-known/smart-configuration")).json()
    assert conf["token_endpoint"] == TOKEN and conf["authorization_endpoint"] == AUTH + "/authorize"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
            "permission-v2", "permission-patient", "permission-user", "authorize-post"} <= set(conf["capabilities"])
    assert set(conf["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    oidc = (await http.get("/.well-known/openid-configuration")).json()
    assert oidc["issuer"] == conf["issuer"] == FHIR and oidc["jwks_uri"] == conf["jwks_uri"]
    assert "RS256" in oidc["id_token_signing_alg_values_supported"]  # SMART: SHALL support RS256 id tokens
    jwks = (await http.get(conf["jwks_uri"])).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])
    # the access tokens' key and the id tokens' RSA key are both published
    assert {k["alg"] for k in jwks["keys"]} == {"ES384", "RS256"}
    assert [k["kty"] for k in jwks["keys"] if k["alg"] == "RS256"] == ["RSA"]
    security = (await http.get("/metadata")).json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"authorize": AUTH + "/authorize", "token": TOKEN, "revoke": AUTH + "/revoke",
                    "introspect": AUTH + "/introspect"}
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    # with auth enabled the FHIR API needs a token (tests/test_smart_access.py), /metadata does not
    assert (await http.get("/Patient")).status_code == 401


async def test_capability_statement_without_auth_has_no_security(repo):
    async with make_client(repo) as http:
        assert "security" not in (await http.get("/metadata")).json()["rest"][0]
        assert (await http.get("/.well-known/smart-configuration")).status_code == 200


async def test_standalone_launch_public_client(smart):
    http, store, _ = smart
    code, verifier = await code_flow(http, nonce="n-1")
    r = await exchange(http, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["patient"] == "pat-001" and body["need_patient_banner"] is True
    assert body["expires_in"] == 3600 and body["refresh_token"]
    assert set(body["scope"].split()) == {"launch/patient", "openid", "fhirUser", "offline_access", "patient/*.rs"}
    assert body["fhirUser"] == FHIR + "/Practitioner/prac-1"
    ring = server_keys.KeyRing(store, "ES384", 3600)
    grant = verify_access_token(body["access_token"], await ring.verifier(), issuer=FHIR, audience=FHIR)
    assert grant.patient == "pat-001" and grant.client_id == "public-app" and grant.subject == "alice"
    assert [str(s) for s in grant.scopes.resources] == ["patient/*.rs"]
    # the id token is signed RS256 with the published RSA key (and is never an access token)
    published = KeySet.import_key_set((await http.get(AUTH + "/jwks")).json())
    decoded = jwt.decode(body["id_token"], published, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    id_token = decoded.claims
    assert id_token["fhirUser"] == FHIR + "/Practitioner/prac-1" and id_token["aud"] == "public-app"
    assert id_token["nonce"] == "n-1" and id_token["iss"] == FHIR
    with pytest.raises(InvalidToken):
        verify_access_token(body["id_token"], await ring.verifier(), issuer=FHIR, audience=FHIR)
    rs = basic("secret-app", SECRET)
    assert (await http.post(AUTH + "/introspect", data={"token": body["access_token"]}, headers=rs)).json()["active"]
    # the code is single use: a second exchange fails and revokes what the first gave, the access
    # token too (RFC 6749 4.1.2)
    again = await exchange(http, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    refresh = await http.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                           "client_id": "public-app"})
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"
    info = (await http.post(AUTH + "/introspect", data={"token": body["access_token"]}, headers=rs)).json()
    assert info == {"active": False}
    assert (await http.get("/Patient", headers={"Authorization": f"Bearer {body['access_token']}"})).status_code == 401


async def test_openid_alone_gives_an_id_token(smart):
    http, _, _ = smart
    code, verifier = await code_flow(http, scope="openid launch/patient patient/*.rs", nonce="n-2")
    body = (await exchange(http, code, verifier)).json()
    assert set(body["scope"].split()) == {"openid", "launch/patient", "patient/*.rs"}
    published = KeySet.import_key_set((await http.get(AUTH + "/jwks")).json())
    claims = jwt.decode(body["id_token"], published, algorithms=["RS256"]).claims
    assert claims["sub"] == "alice" and claims["nonce"] == "n-2" and "fhirUser" not in claims


async def test_patient_picker_limits_choice_and_scopes_are_intersected(smart):
    http, _, _ = smart
    verifier, challenge = pkce_pair()
    params = authorize_params(FHIR, challenge, scope="launch/patient patient/*.cruds system/*.rs bogus")
    refused = await log_in(http, AUTH + "/authorize", params, patient="pat-999")
    assert refused.status_code == 400 and "may not open" in refused.text
    done = await log_in(http, AUTH + "/authorize", params, patient="pat-002")
    body = (await exchange(http, query(done.headers["location"])["code"], verifier)).json()
    # asked patient/*.cruds, allowed patient/*.rs (and a granular scope within it): the intersection
    assert set(body["scope"].split()) == {"launch/patient", "patient/*.rs"}
    assert body["patient"] == "pat-002" and "refresh_token" not in body and "id_token" not in body


async def test_authorize_post_and_deny(smart):
    http, _, _ = smart
    _, challenge = pkce_pair()
    page = await http.post(AUTH + "/authorize", data=authorize_params(FHIR, challenge))
    assert page.status_code == 200 and 'name="password"' in page.text
    assert page.headers["x-frame-options"] == "DENY"
    denied = await log_in(http, AUTH + "/authorize", authorize_params(FHIR, challenge), decision="deny")
    assert denied.status_code == 303
    assert query(denied.headers["location"]) == {"error": "access_denied", "error_description": "the user declined",
                                                  "state": "st-123"}


async def test_wrong_password_and_csrf(smart):
    http, _, _ = smart
    _, challenge = pkce_pair()
    wrong = await log_in(http, AUTH + "/authorize", authorize_params(FHIR, challenge), password="nope-nope")
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    page = await http.get(AUTH + "/authorize", params=authorize_params(FHIR, challenge))
    from .smart import PASSWORD, hidden
    form = {"ticket": hidden(page.text, "ticket"), "csrf_token": "forged-token-forged-token",
            "username": "alice", "password": PASSWORD}
    assert (await http.post(AUTH + "/login", data=form)).status_code == 400
    http.cookies.clear()  # another browser: the right form field, but no cookie
    form["csrf_token"] = hidden(page.text, "csrf_token")
    assert (await http.post(AUTH + "/login", data=form)).status_code == 400


@pytest.mark.parametrize("change, error", [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "system/*.rs"}, "invalid_scope"),
    ({"scope": "launch patient/*.rs"}, "invalid_request"),  # the launch scope without a launch handle
    ({"launch": "no-such-handle", "scope": "launch patient/*.rs"}, "invalid_request"),
])
async def test_authorize_errors_redirect_with_state(smart, change, error):
    http, _, _ = smart
    _, challenge = pkce_pair()
    params = {k: v for k, v in {**authorize_params(FHIR, challenge), **change}.items() if v is not None}
    r = await http.get(AUTH + "/authorize", params=params)
    assert r.status_code == 302, r.text
    back = query(r.headers["location"])
    assert r.headers["location"].startswith(REDIRECT) and back["error"] == error and back["state"] == "st-123"


@pytest.mark.parametrize("change", [{"redirect_uri": "https://app.example/callback/other"},
                                    {"redirect_uri": "https://evil.example/callback"},
                                    {"client_id": "nobody"}])
async def test_bad_client_or_redirect_uri_is_never_redirected(smart, change):
    http, _, _ = smart
    _, challenge = pkce_pair()
    r = await http.get(AUTH + "/authorize", params={**authorize_params(FHIR, challenge), **change})
    assert r.status_code == 400 and "location" not in r.headers


async def test_token_refusals(smart):
    http, _, _ = smart
    code, verifier = await code_flow(http)
    wrong_verifier = await exchange(http, code, pkce_pair()[0])
    assert wrong_verifier.status_code == 400 and wrong_verifier.json()["error"] == "invalid_grant"
    code, verifier = await code_flow(http)
    r = await http.post(TOKEN, data={"grant_type": "authorization_code", "code": code, "client_id": "public-app",
                                     "redirect_uri": REDIRECT + "/x", "code_verifier": verifier})
    assert r.json()["error"] == "invalid_grant"
    assert (await http.post(TOKEN, data={"grant_type": "password", "client_id": "public-app"})).json()["error"] \
        == "unsupported_grant_type"
    # a code issued to one client is not another's
    code, verifier = await code_flow(http)
    r = await exchange(http, code, verifier, client_id=None, headers=basic("secret-app", SECRET))
    assert r.json()["error"] == "invalid_grant"


async def test_confidential_symmetric_client(smart):
    http, _, _ = smart
    code, verifier = await code_flow(http, client_id="secret-app")
    bad = await exchange(http, code, verifier, client_id=None, headers=basic("secret-app", "wrong"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert "www-authenticate" in bad.headers
    # no credentials at all for a confidential client
    assert (await exchange(http, code, verifier, client_id="secret-app")).status_code == 401
    ok = await exchange(http, code, verifier, client_id=None, headers=basic("secret-app", SECRET))
    assert ok.status_code == 200, ok.text
    # client_secret_post
    code, verifier = await code_flow(http, client_id="secret-app")
    post = await http.post(TOKEN, data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                        "code_verifier": verifier, "client_id": "secret-app", "client_secret": SECRET})
    assert post.status_code == 200, post.text


async def test_refresh_rotation_and_family_revocation(smart):
    http, _, _ = smart
    code, verifier = await code_flow(http)
    first = (await exchange(http, code, verifier)).json()

    async def refresh(token, **extra):
        return await http.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": token,
                                            "client_id": "public-app", **extra})
    second = await refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["patient"] == "pat-001"
    narrowed = await refresh(second["refresh_token"], scope="patient/Patient.rs")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "patient/Patient.rs"
    third = narrowed.json()
    escalate = await refresh(third["refresh_token"], scope="patient/*.cruds")
    assert escalate.status_code == 400 and escalate.json()["error"] == "invalid_scope"
    # the narrowed grant stays narrowed: the original scope cannot come back at a later refresh
    back = await refresh(third["refresh_token"], scope="patient/*.rs")
    assert back.status_code == 400 and back.json()["error"] == "invalid_scope"
    kept = await refresh(third["refresh_token"])
    assert kept.status_code == 200, kept.text
    assert set(kept.json()["scope"].split()) == {"patient/Patient.rs", "offline_access"}
    assert kept.json()["refresh_token"]  # still an offline_access grant
    third = kept.json()
    # the rotated token used again: refused, and the whole family dies with it
    replay = await refresh(first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    dead = await refresh(third["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


async def test_revocation_and_introspection(smart):
    http, _, keys = smart
    code, verifier = await code_flow(http)
    tokens = (await exchange(http, code, verifier)).json()
    rs = basic("secret-app", SECRET)  # a resource server introspects as a confidential client
    info = (await http.post(AUTH + "/introspect", data={"token": tokens["access_token"]}, headers=rs)).json()
    assert info["active"] is True and info["patient"] == "pat-001" and info["client_id"] == "public-app"
    assert "patient/*.rs" in info["scope"].split() and info["exp"] > time.time()
    assert (await http.post(AUTH + "/introspect", data={"token": "garbage"}, headers=rs)).json() == {"active": False}
    assert (await http.post(AUTH + "/introspect", data={"token": tokens["access_token"]})).status_code == 401
    # an appropriately scoped bearer token authenticates the caller too (SMART token-introspection):
    # a confidential client's token with a system/ (or user/) scope
    backend = (await backend_token(http, keys["rs"], "backend-rs")).json()["access_token"]
    bearer = {"Authorization": f"Bearer {backend}"}
    by_bearer = (await http.post(AUTH + "/introspect", data={"token": tokens["access_token"]}, headers=bearer)).json()
    assert by_bearer == info
    # a public app's patient/ token is not appropriately scoped; a forged token is not a token
    patient_token = {"Authorization": f"Bearer {tokens['access_token']}"}
    r = await http.post(AUTH + "/introspect", data={"token": backend}, headers=patient_token)
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = await http.post(AUTH + "/introspect", data={"token": backend}, headers={"Authorization": "Bearer x.y.z"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert r.headers["www-authenticate"].startswith("Bearer ")
    # revoke the access token (RFC 7009): 200, and introspection says inactive
    r = await http.post(AUTH + "/revoke", data={"token": tokens["access_token"], "client_id": "public-app"})
    assert r.status_code == 200
    info = (await http.post(AUTH + "/introspect", data={"token": tokens["access_token"]}, headers=rs)).json()
    assert info == {"active": False}
    # revoke the refresh token: it no longer refreshes
    assert (await http.post(AUTH + "/revoke", data={"token": tokens["refresh_token"],
                                                    "client_id": "public-app"})).status_code == 200
    r = await http.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                     "client_id": "public-app"})
    assert r.json()["error"] == "invalid_grant"
    # an unknown token is not an error
    assert (await http.post(AUTH + "/revoke", data={"token": "x", "client_id": "public-app"})).status_code == 200


SITE_ROLE = "http://fhir-ctms.org/fhir/fhir-context-role/site"


async def test_ehr_launch_with_study_context(smart):
    http, _, _ = smart
    context = {"patient": "pat-002", "encounter": "enc-1", "need_patient_banner": False, "intent": "enrol",
               "smart_style_url": "https://ehr.example/style.json", "tenant": "acme",
               "fhirContext": [{"reference": "ResearchStudy/acme-101"}, {"reference": "ResearchStudy/acme-101-uk01",
                                                                          "role": SITE_ROLE}]}
    refused = await http.post(AUTH + "/launch", json=context, headers=basic("secret-app", SECRET))
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    assert (await http.post(AUTH + "/launch", json=context, headers=basic("ehr", "wrong"))).status_code == 401
    bad = await http.post(AUTH + "/launch", json={"fhirContext": [{"reference": "Nope/1"}]}, headers=basic("ehr", SECRET))
    assert bad.status_code == 400
    made = await http.post(AUTH + "/launch", json={**context, "client_id": "public-app"}, headers=basic("ehr", SECRET))
    assert made.status_code == 201, made.text
    handle = made.json()["launch"]
    # the handle is bound to the app it was made for
    _, challenge = pkce_pair()
    r = await http.get(AUTH + "/authorize", params=authorize_params(
        FHIR, challenge, client_id="secret-app", scope="launch patient/*.rs", launch=handle))
    assert query(r.headers["location"])["error"] == "invalid_request"
    code, verifier = await code_flow(http, scope="launch openid fhirUser patient/*.rs", launch=handle)
    body = (await exchange(http, code, verifier)).json()
    assert body["patient"] == "pat-002" and body["encounter"] == "enc-1" and body["need_patient_banner"] is False
    assert body["fhirContext"] == context["fhirContext"]
    assert body["intent"] == "enrol" and body["tenant"] == "acme" and body["smart_style_url"] == context["smart_style_url"]
    # introspection returns every launch context parameter of the token response (SMART token-introspection)
    info = (await http.post(AUTH + "/introspect", data={"token": body["access_token"]},
                            headers=basic("secret-app", SECRET))).json()
    for name in ("patient", "encounter", "need_patient_banner", "fhirContext", "intent", "smart_style_url",
                 "tenant", "fhirUser"):
        assert info[name] == body[name], name
    # the handle is single use: spent when the code was issued
    _, challenge = pkce_pair()
    r = await http.get(AUTH + "/authorize", params=authorize_params(
        FHIR, challenge, scope="launch patient/*.rs", launch=handle))
    assert r.status_code == 302 and query(r.headers["location"])["error"] == "invalid_request"


async def test_ehr_launch_handle_spent_between_authorize_and_consent(smart):
    """Two authorizations opened with one handle: the first consent spends it, the second is refused."""
    http, _, _ = smart
    handle = (await http.post(AUTH + "/launch", json={"patient": "pat-001"}, headers=basic("ehr", SECRET))).json()["launch"]
    from .smart import PASSWORD, hidden
    consents = []
    for _ in range(2):
        _, challenge = pkce_pair()
        page = await http.get(AUTH + "/authorize", params=authorize_params(
            FHIR, challenge, scope="launch patient/*.rs", launch=handle))
        assert page.status_code == 200, page.text
        consent = await http.post(AUTH + "/login", data={
            "ticket": hidden(page.text, "ticket"), "csrf_token": hidden(page.text, "csrf_token"),
            "username": "alice", "password": PASSWORD})
        consents.append({"ticket": hidden(consent.text, "ticket"), "csrf_token": hidden(consent.text, "csrf_token"),
                         "decision": "allow"})
    first = await http.post(AUTH + "/consent", data=consents[0])
    assert first.status_code == 303 and "code" in query(first.headers["location"])
    second = await http.post(AUTH + "/consent", data=consents[1])
    assert second.status_code == 303
    back = query(second.headers["location"])
    assert back["error"] == "invalid_request" and "code" not in back and back["state"] == "st-123"


async def test_ehr_launch_patient_must_be_the_users(smart):
    """alice may open pat-001 and pat-002 only: an EHR launch for pat-003 is refused at sign-in,
    back to the app; a user without a patient list may open any."""
    http, store, _ = smart
    handle = (await http.post(AUTH + "/launch", json={"patient": "pat-003"}, headers=basic("ehr", SECRET))).json()["launch"]
    _, challenge = pkce_pair()
    done = await log_in(http, AUTH + "/authorize", authorize_params(FHIR, challenge, scope="launch patient/*.rs",
                                                                     launch=handle))
    assert done.status_code == 303, done.text
    back = query(done.headers["location"])
    assert back["error"] == "access_denied" and "code" not in back
    # the handle was not spent by the refusal, and a user allowed any patient completes it
    from fhir_ctms.auth.passwords import hash_secret
    from fhir_ctms.storage.auth_store import UserRecord

    from .smart import PASSWORD, hidden
    await store.add_user(UserRecord("carol", hash_secret(PASSWORD), "Practitioner/prac-2", (), int(time.time())))
    verifier, challenge = pkce_pair()
    page = await http.get(AUTH + "/authorize", params=authorize_params(FHIR, challenge, scope="launch patient/*.rs",
                                                                        launch=handle))
    consent = await http.post(AUTH + "/login", data={"ticket": hidden(page.text, "ticket"),
                                                    "csrf_token": hidden(page.text, "csrf_token"),
                                                    "username": "carol", "password": PASSWORD})
    done = await http.post(AUTH + "/consent", data={"ticket": hidden(consent.text, "ticket"),
                                                   "csrf_token": hidden(consent.text, "csrf_token"), "decision": "allow"})
    body = (await exchange(http, query(done.headers["location"])["code"], verifier)).json()
    assert body["patient"] == "pat-003"


@pytest.mark.parametrize("role", ["site", "", "urn", 7, "not a uri"])
async def test_ehr_launch_fhir_context_role_must_be_an_absolute_uri(smart, role):
    http, _, _ = smart
    r = await http.post(AUTH + "/launch", json={"fhirContext": [{"reference": "ResearchStudy/s1", "role": role}]},
                        headers=basic("ehr", SECRET))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "absolute URI" in r.json()["error_description"]


async def test_ehr_launch_fhir_context_roles_accepted(smart):
    http, _, _ = smart
    for role in (SITE_ROLE, "launch", "urn:oid:1.2.3"):
        r = await http.post(AUTH + "/launch", json={"fhirContext": [{"reference": "ResearchStudy/s1", "role": role}]},
                            headers=basic("ehr", SECRET))
        assert r.status_code == 201, (role, r.text)


async def backend_token(http, key, client_id, aud=TOKEN, scope="system/*.rs", **kw):
    return await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": scope,
                                        "client_assertion_type": ASSERTION,
                                        "client_assertion": assertion(key, client_id, aud, **kw)})


@pytest.mark.parametrize("which, client_id", [("rs", "backend-rs"), ("es", "backend-es")])
async def test_backend_services(smart, which, client_id):
    http, store, keys = smart
    key = keys[which]
    r = await backend_token(http, key, client_id, scope="system/*.rs system/Group.cruds patient/*.rs openid")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = {"system/*.rs"} if which == "es" else {"system/*.rs", "system/Group.cruds"}
    assert set(body["scope"].split()) == expected and "refresh_token" not in body
    # backend services' tokens live at most 300 s (auth_backend_token_lifetime), the token says so too
    claims = jwt.decode(body["access_token"], KeySet.import_key_set((await http.get(AUTH + "/jwks")).json()),
                        algorithms=["ES384"]).claims
    assert body["expires_in"] == 300 and claims["exp"] - claims["iat"] == 300
    ring = server_keys.KeyRing(store, "ES384", 3600)
    grant = verify_access_token(body["access_token"], await ring.verifier(), issuer=FHIR, audience=FHIR)
    assert grant.client_id == client_id and grant.subject == client_id
    # replayed jti
    jti = "fixed-jti-" + which
    assert (await backend_token(http, key, client_id, jti=jti)).status_code == 200
    replay = await backend_token(http, key, client_id, jti=jti)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    public = key.as_dict(private=False)
    for kw in ({"aud": "https://elsewhere.example/token"}, {"exp_in": -120}, {"exp_in": 3600},
               {"kid": "unknown-kid"}, {"sub": "someone-else"},
               # headers pointing at keys are never followed (no allow-list): refused even naming the right key
               {"header": {"jku": "https://attacker.example/jwks.json"}},
               {"header": {"x5u": "https://attacker.example/cert.pem"}},
               {"header": {"jwk": public}}, {"header": {"x5c": ["MIIB"]}},
               # not valid before (RFC 7523 3), beyond the leeway
               {"extra": {"nbf": int(time.time()) + 120}}, {"extra": {"nbf": "soon"}}):
        r = await backend_token(http, key, client_id, **kw)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", kw
    # a key the client never registered, under the registered kid
    other = ECKey.generate_key("P-384", private=True) if which == "es" else None
    if other is not None:
        assert (await backend_token(http, other, client_id, kid=key.kid)).status_code == 401
    only_user = await backend_token(http, key, client_id, scope="patient/*.rs")
    assert only_user.status_code == 400 and only_user.json()["error"] == "invalid_scope"


async def test_backend_services_malformed_requests(smart):
    """A wrong client_assertion_type is a malformed request (400 invalid_request, as Inferno's
    backend services tests expect); an assertion that is not a JWT fails client authentication
    (RFC 7521 4.2.1: invalid_client); a nbf within the leeway passes."""
    http, _, keys = smart
    good = assertion(keys["rs"], "backend-rs", TOKEN)
    r = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                     "client_assertion_type": "not_an_assertion_type", "client_assertion": good})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                     "client_assertion_type": ASSERTION})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                     "client_assertion_type": ASSERTION, "client_assertion": "not-a-jwt"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    ok = await backend_token(http, keys["rs"], "backend-rs", extra={"nbf": int(time.time()) + 5})
    assert ok.status_code == 200, ok.text


async def test_backend_token_lifetime_setting(repo):
    await empty_tables(repo)
    keys = await register(AuthStore(repo.engine))
    async with make_client(repo, auth_backend_token_lifetime=120) as http:
        body = (await backend_token(http, keys["es"], "backend-es")).json()
    assert body["expires_in"] == 120


async def test_issuer_comes_from_a_host_naming_this_server_only(smart):
    """Without a public base URL, a Host that does not name the server is refused (421): it can
    neither poison discovery nor turn the assertion's aud check to another server's URL."""
    http, _, keys = smart
    forged = {"Host": "evil.example"}
    r = await http.get("/.well-known/smart-configuration", headers=forged)
    assert r.status_code == 421 and "FHIR_CTMS_PUBLIC_BASE_URL" in r.json()["error_description"]
    assert (await http.get("/.well-known/openid-configuration", headers=forged)).status_code == 421
    evil_token = "http://evil.example/auth/token"
    r = await http.post(TOKEN, headers=forged, data={
        "grant_type": "client_credentials", "scope": "system/*.rs", "client_assertion_type": ASSERTION,
        "client_assertion": assertion(keys["es"], "backend-es", evil_token)})
    assert r.status_code == 421
    _, challenge = pkce_pair()
    assert (await http.get(AUTH + "/authorize", params=authorize_params(FHIR, challenge),
                           headers=forged)).status_code == 421
    assert (await http.get("/.well-known/smart-configuration",
                           headers={"Host": "testserver:8080"})).status_code == 421  # another port
    # the server's own name (and its port, explicit or not) is fine
    for host in ("testserver", "testserver:80", "TESTSERVER"):
        r = await http.get("/.well-known/smart-configuration", headers={"Host": host})
        assert r.status_code == 200 and r.json()["token_endpoint"] == f"http://{host}/auth/token"


async def test_public_base_url_wins_over_host(repo):
    await empty_tables(repo)
    async with make_client(repo, public_base_url="https://ctms.example/fhir") as http:
        r = await http.get("/.well-known/smart-configuration", headers={"Host": "evil.example"})
    assert r.status_code == 200 and r.json()["token_endpoint"] == "https://ctms.example/auth/token"


def test_own_host():
    from fhir_ctms.api.smart import own_host
    assert own_host("127.0.0.1:8080", ("127.0.0.1", 8080))
    assert own_host("localhost:8080", ("127.0.0.1", 8080)) and own_host("[::1]:8080", ("127.0.0.1", 8080))
    assert own_host("ctms.example", ("ctms.example", None)) and own_host("ctms.example", ("ctms.example", 80))
    assert own_host("ctms.example", ("ctms.example", 443), "https")
    assert not own_host("localhost:8081", ("127.0.0.1", 8080))
    assert not own_host("evil.example:8080", ("127.0.0.1", 8080))
    assert not own_host("localhost:8080", ("10.0.0.5", 8080))
    assert not own_host("user@127.0.0.1:8080", ("127.0.0.1", 8080))
    assert not own_host("127.0.0.1:8080/x", ("127.0.0.1", 8080))
    assert not own_host("127.0.0.1:port", ("127.0.0.1", 8080))
    assert not own_host("127.0.0.1", None)


async def test_client_credentials_needs_private_key_jwt(smart):
    http, _, _ = smart
    r = await http.post(TOKEN, data={"grant_type": "client_credentials", "scope": "system/*.rs"},
                        headers=basic("secret-app", SECRET))
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


async def test_access_token_verification_refuses_forgeries(smart):
    http, store, keys = smart
    body = (await backend_token(http, keys["es"], "backend-es")).json()
    token = body["access_token"]
    ring = server_keys.KeyRing(store, "ES384", 3600)
    live = await ring.verifier()
    assert verify_access_token(token, live, issuer=FHIR, audience=FHIR).scope == "system/*.rs"
    with pytest.raises(InvalidToken):
        verify_access_token(token, live, issuer="https://other.example/fhir", audience=FHIR)
    with pytest.raises(InvalidToken):
        verify_access_token(token, live, issuer=FHIR, audience="https://other.example/fhir")
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(InvalidToken):
        verify_access_token(tampered, live, issuer=FHIR, audience=FHIR)
    claims = jwt.decode(token, live, algorithms=["ES384"]).claims
    none = (base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode() + "."
            + payload + ".")
    with pytest.raises(InvalidToken):
        verify_access_token(none, live, issuer=FHIR, audience=FHIR)
    # HS256 keyed with the server's public key
    public = (await ring.jwks())["keys"][0]
    hmac_key = OctKey.import_key(str(public).encode())
    forged = jwt.encode({"alg": "HS256", "kid": public["kid"], "typ": "at+jwt"}, claims, hmac_key,
                        algorithms=["HS256"])
    with pytest.raises(InvalidToken):
        verify_access_token(forged, live, issuer=FHIR, audience=FHIR)
    stranger = ECKey.generate_key("P-384", private=True)
    foreign = jwt.encode({"alg": "ES384", "kid": "stranger", "typ": "at+jwt"}, claims, stranger, algorithms=["ES384"])
    with pytest.raises(InvalidToken):
        verify_access_token(foreign, KeySet(live.keys), issuer=FHIR, audience=FHIR)
    es_record = next(r for r in await store.keys() if r.alg == "ES384")
    expired = jwt.encode({"alg": "ES384", "kid": es_record.kid, "typ": "at+jwt"}, {**claims, "exp": 1000},
                         server_keys.import_key(es_record), algorithms=["ES384"])
    with pytest.raises(InvalidToken):
        verify_access_token(expired, live, issuer=FHIR, audience=FHIR)
    # signed RS256 by the server's own id token key: a valid signature, but not an access token algorithm
    rs_record = next(r for r in await store.keys() if r.alg == "RS256")
    id_signed = jwt.encode({"alg": "RS256", "kid": rs_record.kid, "typ": "at+jwt"}, claims,
                           server_keys.import_key(rs_record), algorithms=["RS256"])
    with pytest.raises(InvalidToken):
        verify_access_token(id_signed, live, issuer=FHIR, audience=FHIR)


async def test_key_rotation_keeps_old_tokens_valid(smart):
    http, store, keys = smart
    before = (await backend_token(http, keys["es"], "backend-es")).json()["access_token"]
    old = {k["kid"]: k["alg"] for k in (await http.get(AUTH + "/jwks")).json()["keys"]}
    assert sorted(old.values()) == ["ES384", "RS256"]
    new = await server_keys.rotate(store, "ES384")
    ring = server_keys.KeyRing(store, "ES384", 3600)
    _, signer = await ring.signer()
    _, id_signer = await ring.signer("RS256")  # the id tokens' key rotates with it
    assert signer.kid == new.kid and id_signer.alg == "RS256" and id_signer.kid not in old
    published = {k["kid"] for k in (await ring.jwks())["keys"]}
    assert published == set(old) | {new.kid, id_signer.kid}
    assert verify_access_token(before, await ring.verifier(), issuer=FHIR, audience=FHIR)
    # a key retired longer ago than any token lives is no longer published
    gone = server_keys.KeyRing(store, "ES384", -10_000)
    assert {k["kid"] for k in (await gone.jwks())["keys"]} == {new.kid, id_signer.kid}
