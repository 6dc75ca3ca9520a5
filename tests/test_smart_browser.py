"""The SMART authorization code flow with real clients against a live server, on both databases:

- headless Chromium (Debian's ``chromium``, driven by Playwright) loads the authorization URL,
  signs in on the login page, picks the patient and allows; the app's redirect URI is
  intercepted in the browser, and the code exchanged with PKCE;
- the Python ``fhirclient`` library (smart-on-fhir) reads the ``oauth-uris`` of ``/metadata``,
  builds the authorize URL (PKCE S256) and exchanges the code the browser brought back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhir_ctms.storage.auth_store import AuthStore
from fhir_ctms.storage.sql import make_engine

from .smart import PASSWORD, REDIRECT, authorize_params, pkce_pair, register

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (make test installs it)")


def _registered_server(live_server, fresh_database_url):
    url = fresh_database_url()

    async def setup() -> None:
        engine = make_engine(url)
        try:
            await register(AuthStore(engine))
        finally:
            await engine.dispose()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, setup()).result()
    return live_server(database_url=url, FHIR_CTMS_AUTH_ENABLED="true")


def _sign_in_with_chromium(authorize_url: str, patient: str) -> str:
    """Open the URL in Chromium, sign in, pick ``patient``, allow; the URL the app got back."""
    from playwright.sync_api import sync_playwright
    landed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.route(REDIRECT + "*", lambda route: (landed.append(route.request.url),
                                                      route.fulfill(status=200, body="the app")))
            page.goto(authorize_url)
            assert "Sign in" in page.title()
            page.fill("#username", "alice")
            page.fill("#password", "wrong password")
            page.click("#sign-in")
            assert "Wrong username or password" in page.content()
            page.fill("#username", "alice")
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_selector("#allow")
            page.select_option("#patient", patient)
            page.click("#allow")
            page.wait_for_url(REDIRECT + "*")
            page.wait_for_load_state()
            assert "the app" in page.content()
        finally:
            browser.close()
    assert len(landed) == 1
    return landed[0]


def test_authorization_code_flow_in_chromium(live_server, fresh_database_url):
    server = _registered_server(live_server, fresh_database_url)
    conf = httpx.get(server.url + "/.well-known/smart-configuration").json()
    verifier, challenge = pkce_pair()
    params = authorize_params(server.url, challenge, state="browser-state")
    authorize_url = str(httpx.URL(conf["authorization_endpoint"], params=params))
    back = {k: v[0] for k, v in parse_qs(urlsplit(_sign_in_with_chromium(authorize_url, "pat-002")).query).items()}
    assert back["state"] == "browser-state" and back["code"]
    r = httpx.post(conf["token_endpoint"], data={"grant_type": "authorization_code", "code": back["code"],
                                                 "redirect_uri": REDIRECT, "code_verifier": verifier,
                                                 "client_id": "public-app"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient"] == "pat-002" and body["token_type"] == "Bearer" and "id_token" in body
    info = httpx.post(conf["introspection_endpoint"], data={"token": body["access_token"]},
                      auth=("secret-app", "s3cret-of-the-confidential-app")).json()
    assert info["active"] is True and info["patient"] == "pat-002"
    # the same code a second time is refused
    again = httpx.post(conf["token_endpoint"], data={"grant_type": "authorization_code", "code": back["code"],
                                                     "redirect_uri": REDIRECT, "code_verifier": verifier,
                                                     "client_id": "public-app"})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_python_fhirclient_standalone_launch(live_server, fresh_database_url, monkeypatch):
    from fhirclient import client as fhirclient
    from fhirclient.models.capabilitystatement import CapabilityStatementRestResource as RestResource

    # fhirclient 4.x parses with FHIR R4 models, strictly, and R5 added
    # CapabilityStatement.rest.resource.conditionalPatch: teach its model that one element
    r4_properties = RestResource.elementProperties
    monkeypatch.setattr(RestResource, "elementProperties", lambda self: [
        *r4_properties(self), ("conditionalPatch", "conditionalPatch", bool, False, None, False)])

    server = _registered_server(live_server, fresh_database_url)
    saved: list[dict] = []
    smart = fhirclient.FHIRClient(settings={
        "app_id": "public-app", "api_base": server.url, "redirect_uri": REDIRECT,
        "scope": "openid fhirUser offline_access patient/*.rs"}, save_func=saved.append)
    authorize_url = smart.authorize_url  # reads /metadata's oauth-uris; adds launch/patient and PKCE S256
    query = parse_qs(urlsplit(authorize_url).query)
    assert authorize_url.startswith(server.url.rsplit("/fhir", 1)[0] + "/auth/authorize?")
    assert query["code_challenge_method"] == ["S256"] and "launch/patient" in query["scope"][0]
    callback = _sign_in_with_chromium(authorize_url, "pat-001")
    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == "pat-001"
    assert smart.server.auth.refresh_token
    token = smart.server.auth.access_token
    info = httpx.post(server.url.rsplit("/fhir", 1)[0] + "/auth/introspect", data={"token": token},
                      auth=("secret-app", "s3cret-of-the-confidential-app")).json()
    assert info["active"] is True and info["client_id"] == "public-app"
    # the refresh token works through the library too, and is rotated
    old_refresh = smart.server.auth.refresh_token
    smart.server.reauthorize()
    assert smart.server.auth.access_token != token and smart.server.auth.refresh_token != old_refresh
