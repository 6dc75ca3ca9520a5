"""An EHR launch of a browser app built on the JavaScript SMART client (npm ``fhirclient``,
its browser build, fetched by ``scripts/ensure-fhirclient-js``), in headless Chromium driven by
Playwright, against a live server with authorization on, on both databases.

The app is ``tests/js/`` (``launch.html``, ``index.html``), served by a small HTTP server of the
test. The EHR (a confidential client) gets a launch handle for patient 1 with the study and the
site as ``fhirContext``; Chromium opens ``launch.html?iss=...&launch=...``; the library discovers
the endpoints and redirects to the real login page (PKCE S256); the user signs in and allows;
on ``index.html`` the library exchanges the code and the page reads the patient's
ResearchSubjects and the study in context, and writes them as JSON into ``<pre id=result>``.

Where the app lives: in the main test the app's HTTP server also passes ``/fhir`` and ``/auth``
through to the FHIR server, so the app and the server share an origin (as when both are served
behind one host); ``test_cross_origin_app`` serves the app from an origin of its own, so every
call of the library (discovery, the token endpoint, the FHIR API) is a CORS request.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhir_ctms.auth.passwords import hash_secret
from fhir_ctms.config import Settings
from fhir_ctms.importer import import_files
from fhir_ctms.storage.auth_store import AuthStore, ClientRecord, UserRecord
from fhir_ctms.storage.sql import SqlRepository

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(__file__).resolve().parent / "js"
ENSURE = ROOT / "scripts" / "ensure-fhirclient-js"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

APP_ID = "ctms-subject-viewer"
APP_SCOPES = "launch openid fhirUser patient/Patient.rs patient/ResearchSubject.rs patient/ResearchStudy.rs"
EHR_SECRET = "secret-of-the-ehr-integration"
USER, PASSWORD = "coordinator.gb01", "a long pass phrase for the site"
STUDY, SITE = "nova-204", "nova-204-gb-01"
PATIENT_1, PATIENT_2 = "pt-8841", "pt-8842"
SUBJECT_1, SUBJECT_2 = "rs-gb01-001", "rs-gb01-002"
TITLE = "A phase 3 study of NV-204 against standard care in adults with chronic kidney disease"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                reason="Debian's chromium is not installed (make test installs it)")


# -- the JavaScript library -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def fhirclient_js() -> Path:
    """The browser build of fhirclient: from the cache, else fetched by the script (which
    ``make test`` runs first); skipped only when it cannot be had outside CI."""
    run = subprocess.run([sys.executable, str(ENSURE)], capture_output=True, text=True, timeout=300)
    path = Path(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 and run.stdout.strip() else None
    if path is None or not path.is_file():
        message = f"the fhirclient JavaScript library is not available: {run.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# -- the app's HTTP server ---------------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "content-length"}


@dataclass
class AppServer:
    """The app's files at ``/``; with ``upstream`` (host, port), ``/fhir`` and ``/auth`` passed
    through to the FHIR server unchanged (the Host header too, so the server names itself by the
    app's origin)."""
    files: dict[str, Path]
    upstream: tuple[str, int] | None = None
    url: str = ""

    def start(self) -> AppServer:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                path = urlsplit(self.path).path
                if app.upstream and path.split("/")[1] in ("fhir", "auth"):
                    self._pass_through()
                elif self.command == "GET" and path.lstrip("/") in app.files:
                    body = app.files[path.lstrip("/")].read_bytes()
                    kind = "text/html" if path.endswith(".html") else "text/javascript"
                    self._reply(200, [("Content-Type", kind + "; charset=utf-8")], body)
                else:
                    self._reply(404, [("Content-Type", "text/plain")], b"not found")

            def _pass_through(self) -> None:
                assert app.upstream is not None
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn = http.client.HTTPConnection(*app.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self._reply(r.status, [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP_BY_HOP], data)
                finally:
                    conn.close()

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        # "localhost": another origin than the FHIR server's 127.0.0.1, and a secure context
        # (the library's PKCE needs crypto.subtle)
        self.url = f"http://localhost:{self.httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def app_server(fhirclient_js: Path) -> Iterator[Any]:
    started: list[AppServer] = []

    def start() -> AppServer:
        files = {"launch.html": APP_DIR / "launch.html", "index.html": APP_DIR / "index.html",
                 "fhir-client.min.js": fhirclient_js}
        server = AppServer(files).start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


# -- the data and the registrations --------------------------------------------------------------

def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


CTMS = "http://fhir-ctms.org/fhir/CodeSystem/"


def _data() -> dict[str, Any]:
    """A study, one site in the UK with its institution, two patients, a ResearchSubject each
    (shaped as profiles/README.md says: levels, milestones, subject progress)."""
    def subject(sid: str, patient: str, number: str, randomised: str) -> dict[str, Any]:
        return {"resourceType": "ResearchSubject", "id": sid, "status": "active",
                "identifier": [{"system": "http://example.org/nova-204/subject-number", "value": number}],
                "study": {"reference": f"ResearchStudy/{SITE}"}, "subject": {"reference": f"Patient/{patient}"},
                "progress": [
                    {"subjectState": _coding("http://terminology.hl7.org/CodeSystem/research-subject-state",
                                             "screening"),
                     "milestone": _coding("http://hl7.org/fhir/research-subject-milestone", "Screened"),
                     "startDate": "2026-06-02", "endDate": randomised},
                    {"subjectState": _coding("http://terminology.hl7.org/CodeSystem/research-subject-state",
                                             "on-study"),
                     "milestone": _coding("http://hl7.org/fhir/research-subject-milestone", "Randomized"),
                     "startDate": randomised}],
                "assignedComparisonGroup": "nv-204"}

    resources = [
        {"resourceType": "Organization", "id": "org-nova", "active": True, "name": "Nova Renal Therapeutics Ltd"},
        {"resourceType": "Organization", "id": "org-gb-01", "active": True, "name": "Royal Borough Hospital"},
        {"resourceType": "ResearchStudy", "id": STUDY, "status": "active", "title": TITLE,
         "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT09920204"}],
         "classifier": [_coding(CTMS + "study-level", "study")],
         "phase": _coding("http://hl7.org/fhir/research-study-phase", "phase-3"),
         "associatedParty": [{"role": _coding("http://hl7.org/fhir/research-study-party-role", "sponsor"),
                              "party": {"reference": "Organization/org-nova"}}],
         "comparisonGroup": [{"linkId": "nv-204", "name": "NV-204 20 mg"},
                             {"linkId": "soc", "name": "Standard of care"}],
         "recruitment": {"targetNumber": 480},
         "progressStatus": [{"state": _coding(CTMS + "study-milestone", "first-subject-in"), "actual": True,
                             "period": {"start": "2026-04-20"}}]},
        {"resourceType": "ResearchStudy", "id": SITE, "status": "active", "title": "NOVA-204 site GB-01",
         "classifier": [_coding(CTMS + "study-level", "site")],
         "partOf": [{"reference": f"ResearchStudy/{STUDY}"}],
         "site": [{"reference": "Organization/org-gb-01"}],
         "region": [_coding("urn:iso:std:iso:3166", "GB")],
         "recruitment": {"targetNumber": 24},
         "progressStatus": [{"state": _coding(CTMS + "site-milestone", "activated"), "actual": True,
                             "period": {"start": "2026-05-11"}}]},
        {"resourceType": "Patient", "id": PATIENT_1, "gender": "female", "birthDate": "1958-09-30",
         "name": [{"family": "Okafor", "given": ["Adaeze"]}]},
        {"resourceType": "Patient", "id": PATIENT_2, "gender": "male", "birthDate": "1966-01-14",
         "name": [{"family": "Lindqvist", "given": ["Per"]}]},
        subject(SUBJECT_1, PATIENT_1, "GB01-001", "2026-06-16"),
        subject(SUBJECT_2, PATIENT_2, "GB01-002", "2026-06-23"),
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _prepare(database_url: str, tmp_path: Path, redirect_uri: str) -> None:
    """Import the data set as ``fhir-ctms import`` does, and register the app, the EHR and the user."""
    bundle = tmp_path / "nova-204.json"
    bundle.write_text(json.dumps(_data()))

    async def work() -> None:
        repo = SqlRepository.from_url(database_url)
        try:
            report = await import_files([bundle], repo, Settings(database_url=database_url), progress=False)
            assert not report.rejected, report.rejected
            store = AuthStore(repo.engine)
            now = int(time.time())
            await store.add_client(ClientRecord(APP_ID, "public", redirect_uris=(redirect_uri,), scopes=APP_SCOPES,
                                                created=now))
            await store.add_client(ClientRecord("ehr-gb01", "confidential-symmetric", scopes="fhir-ctms/launch",
                                                secret_hash=hash_secret(EHR_SECRET), created=now))
            await store.add_user(UserRecord(USER, hash_secret(PASSWORD), fhir_user="Practitioner/crc-gb01",
                                            created=now))
        finally:
            await repo.close()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work()).result()


#: the CTMS fhirContext role of a study site (README "Authorization (SMART)")
SITE_ROLE = "http://fhir-ctms.org/fhir/fhir-context-role/site"


def _ehr_launch(server_url: str, patient: str, client_id: str = APP_ID) -> str:
    """What the EHR does: post the context, get the handle it passes to the app."""
    r = httpx.post(server_url.rsplit("/fhir", 1)[0] + "/auth/launch", auth=("ehr-gb01", EHR_SECRET), json={
        "patient": patient, "client_id": client_id,
        "fhirContext": [{"reference": f"ResearchStudy/{STUDY}"},
                        {"reference": f"ResearchStudy/{SITE}", "role": SITE_ROLE}]})
    assert r.status_code == 201, r.text
    return r.json()["launch"]


@dataclass
class Launched:
    page: Any
    requests: list[Any]
    result: dict[str, Any] | None
    error: str


def _run_app(app: str, iss: str, handle: str, check: Any, *, decision: str = "allow") -> Any:
    """Open the app as the EHR would, sign in on the login page, ``decision`` on the consent
    page; then ``check(Launched)`` while the page is open; returns what it returns."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            requests: list[Any] = []
            console: list[str] = []
            page.on("request", lambda request: requests.append(request))
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))

            def wait_for(condition: str) -> None:
                try:
                    page.wait_for_function(condition, timeout=20_000)
                except PlaywrightError as exc:  # say where the app got stuck
                    seen = [(r.method, r.url, r.response() and r.response().status) for r in requests]
                    raise AssertionError(f"stuck at {page.url}\nconsole: {console}\nrequests: {seen}") from exc

            page.goto(f"{app}/launch.html?{httpx.QueryParams({'iss': iss, 'launch': handle})}")
            wait_for("() => document.title.startsWith('Sign in') || document.getElementById('error')?.textContent")
            if page.title().startswith("Sign in"):  # the server's login page
                page.fill("#username", USER)
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                page.wait_for_selector("#allow")
                page.click("#" + decision)
                page.wait_for_url(app + "/index.html*")
                wait_for("() => document.getElementById('result').textContent"
                         " || document.getElementById('error').textContent")
            text = page.locator("#result").text_content() if page.locator("#result").count() else ""
            error = page.locator("#error").text_content() or ""
            return check(Launched(page, requests, json.loads(text) if text else None, error))
        finally:
            browser.close()


_ATTEMPTS = """async (paths) => {
  const out = {};
  for (const path of paths) {
    try { out[path] = {data: await window.smartClient.request(path)}; }
    catch (e) { out[path] = {status: e.status || e.statusCode || 0, message: String(e.message)}; }
  }
  return out;
}"""


# -- the tests ------------------------------------------------------------------------------------

def _setup(live_server, fresh_database_url, app_server, tmp_path, *, same_origin: bool) -> tuple[Any, AppServer, str]:
    """The FHIR server (authorization on) with the data and registrations, the app's server;
    returns them and the ``iss`` the EHR gives the app."""
    app = app_server()
    database_url = fresh_database_url()
    _prepare(database_url, tmp_path, app.url + "/index.html")
    # same origin: the app's server is a reverse proxy in front of the FHIR server, which must then
    # be told its public base URL (it refuses a Host that does not name it: README "Configuration")
    env = {"FHIR_CTMS_PUBLIC_BASE_URL": app.url + "/fhir"} if same_origin else {}
    server = live_server(database_url=database_url, FHIR_CTMS_AUTH_ENABLED="true", **env)
    upstream = urlsplit(server.url)
    if same_origin:
        app.upstream = (upstream.hostname, upstream.port)
        return server, app, app.url + "/fhir"
    return server, app, server.url


def test_ehr_launch_with_the_javascript_client(live_server, fresh_database_url, app_server, tmp_path):
    server, app, iss = _setup(live_server, fresh_database_url, app_server, tmp_path, same_origin=True)
    handle = _ehr_launch(server.url, PATIENT_1)

    def check(run: Launched) -> dict[str, Any]:
        assert run.error == "" and run.result is not None
        # from the page, with the page's token: patient 2's data is never given
        return {"attempts": run.page.evaluate(_ATTEMPTS, [
            f"ResearchSubject/{SUBJECT_2}", f"Patient/{PATIENT_2}", f"ResearchSubject?patient={PATIENT_2}",
            f"ResearchSubject?study=ResearchStudy/{SITE}", f"ResearchSubject/{SUBJECT_1}"]),
            "requests": [(r.method, r.url, r.post_data) for r in run.requests], "result": run.result}

    out = _run_app(app.url, iss, handle, check)
    result = out["result"]
    # the launch context, as the token response carried it
    assert result["patient"] == PATIENT_1 and result["token"]["patient"] == PATIENT_1
    assert result["token"]["fhirContext"] == [{"reference": f"ResearchStudy/{STUDY}"},
                                              {"reference": f"ResearchStudy/{SITE}", "role": SITE_ROLE}]
    assert set(result["token"]["scope"].split()) == set(APP_SCOPES.split())
    assert result["user"] == "Practitioner/crc-gb01"
    assert result["idTokenFhirUser"] == f"{iss}/Practitioner/crc-gb01"
    # the patient's ResearchSubjects: patient 1's only; the study and the site in context
    assert result["subjects"] == [{"id": SUBJECT_1, "subject": f"Patient/{PATIENT_1}",
                                   "study": f"ResearchStudy/{SITE}"}]
    assert result["study"] == {"id": STUDY, "title": TITLE}
    assert result["site"] == {"id": SITE, "title": "NOVA-204 site GB-01", "partOf": [f"ResearchStudy/{STUDY}"]}

    # the library used PKCE S256 and the launch handle, and exchanged the code with its verifier
    authorize = [u for m, u, _ in out["requests"] if urlsplit(u).path == "/auth/authorize"]
    assert len(authorize) == 1
    asked = {k: v[0] for k, v in parse_qs(urlsplit(authorize[0]).query).items()}
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["launch"] == handle and asked["aud"] == iss and asked["client_id"] == APP_ID
    assert asked["redirect_uri"] == app.url + "/index.html"
    tokens = [body for m, u, body in out["requests"] if m == "POST" and urlsplit(u).path == "/auth/token"]
    assert len(tokens) == 1
    sent = {k: v[0] for k, v in parse_qs(tokens[0]).items()}
    assert sent["grant_type"] == "authorization_code" and sent["client_id"] == APP_ID
    assert 43 <= len(sent["code_verifier"]) <= 128
    digest = hashlib.sha256(sent["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == asked["code_challenge"]

    attempts = out["attempts"]
    for path in (f"ResearchSubject/{SUBJECT_2}", f"Patient/{PATIENT_2}"):
        assert attempts[path].get("status") in (403, 404), attempts[path]
        assert "data" not in attempts[path]
    # a search for patient 2 is refused or empty; the whole site's subjects are patient 1's only
    other = attempts[f"ResearchSubject?patient={PATIENT_2}"]
    assert other.get("status") == 403 or other["data"].get("entry", []) == [], other
    site = attempts[f"ResearchSubject?study=ResearchStudy/{SITE}"]["data"]
    assert [e["resource"]["id"] for e in site.get("entry", [])] == [SUBJECT_1]
    assert attempts[f"ResearchSubject/{SUBJECT_1}"]["data"]["subject"]["reference"] == f"Patient/{PATIENT_1}"


def test_denied_consent_gives_the_app_no_token(live_server, fresh_database_url, app_server, tmp_path):
    server, app, iss = _setup(live_server, fresh_database_url, app_server, tmp_path, same_origin=True)
    handle = _ehr_launch(server.url, PATIENT_1)

    def check(run: Launched) -> tuple[str, list[str], Any]:
        return run.error, [u for u in (r.url for r in run.requests)], run.result
    error, urls, result = _run_app(app.url, iss, handle, check, decision="deny")
    assert result is None and "access_denied" in error
    assert not [u for u in urls if urlsplit(u).path in ("/auth/token",) or "/fhir/ResearchSubject" in u]


def test_cross_origin_app(live_server, fresh_database_url, app_server, tmp_path):
    server, app, iss = _setup(live_server, fresh_database_url, app_server, tmp_path, same_origin=False)
    handle = _ehr_launch(server.url, PATIENT_1)
    result = _run_app(app.url, iss, handle, lambda run: (run.error, run.result))
    assert result[0] == "" and result[1]["subjects"][0]["id"] == SUBJECT_1
