"""``fhir-ctms clients``, ``users`` and ``keys``: stored in the database, used by a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

CLI = [sys.executable, "-m", "fhir_ctms.cli"]


def _kid(token: str) -> str:
    from joserfc.jws import extract_compact
    return extract_compact(token.encode()).headers()["kid"]


def run(database_url, *args, stdin=None):
    env = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, input=stdin)


def test_clients_users_and_keys_from_the_command_line(fresh_database_url, live_server, tmp_path):
    url = fresh_database_url()
    key = ECKey.generate_key("P-384", parameters={"alg": "ES384"}, private=True)
    key.ensure_kid()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    added = run(url, "clients", "add", "--id", "registry-export", "--type", "confidential-asymmetric",
                "--jwks-file", str(jwks), "--scope", "system/ResearchStudy.rs system/Group.rs")
    assert added.returncode == 0, added.stderr
    secret = run(url, "clients", "add", "--id", "web-app", "--type", "confidential-symmetric",
                 "--redirect-uri", "https://app.example/cb", "--scope", "openid fhirUser user/*.rs")
    assert secret.returncode == 0 and "client secret (shown once): " in secret.stdout
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    assert run(url, "clients", "add", "--id", "x", "--type", "confidential-asymmetric",
               "--jwks-file", str(private)).returncode == 1  # a private key is refused
    assert run(url, "clients", "add", "--id", "web-app", "--type", "public").returncode == 1  # exists
    assert run(url, "users", "add", "--username", "carol", "--password-stdin", "--fhir-user", "Practitioner/p9",
               "--patient", "pat-001", stdin="a long enough password\n").returncode == 0
    assert run(url, "users", "add", "--username", "dave", "--password-stdin", stdin="short\n").returncode == 1
    listed = run(url, "clients", "list").stdout
    assert "registry-export\tconfidential-asymmetric" in listed and "web-app\tconfidential-symmetric" in listed
    assert "carol\tPractitioner/p9\tpat-001" in run(url, "users", "list").stdout

    server = live_server(database_url=url)
    token_url = server.url.rsplit("/fhir", 1)[0] + "/auth/token"

    def backend_token():
        now = int(time.time())
        assertion = jwt.encode({"alg": "ES384", "kid": key.kid, "typ": "JWT"},
                               {"iss": "registry-export", "sub": "registry-export", "aud": token_url,
                                "exp": now + 60, "jti": uuid.uuid4().hex}, key, algorithms=["ES384"])
        return httpx.post(token_url, data={
            "grant_type": "client_credentials", "scope": "system/ResearchStudy.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})
    first = backend_token()
    assert first.status_code == 200, first.text
    old_kid = _kid(first.json()["access_token"])
    rotated = run(url, "keys", "rotate")
    # two new keys: the access tokens' (ES384) and the id tokens' (RS256)
    new = [line.split() for line in rotated.stdout.splitlines()]
    assert rotated.returncode == 0 and len(new) == 2 and all(w[:3] == ["new", "signing", "key"] for w in new)
    assert sorted(w[4] for w in new) == ["(ES384)", "(RS256)"]
    new_kid = next(w[3] for w in new if w[4] == "(ES384)")
    keys_listed = [line.split("\t") for line in run(url, "keys", "list").stdout.splitlines()]
    # the access tokens' key and the id tokens' RS256 key, each rotated: two signing, two retired
    assert len(keys_listed) == 4 and [new_kid, "ES384"] in [k[:2] for k in keys_listed if k[3] == "signing"]
    assert sorted(k[1] for k in keys_listed if k[3] == "signing") == ["ES384", "RS256"]
    assert sorted(k[1] for k in keys_listed if k[3] != "signing") == ["ES384", "RS256"]
    server = live_server(database_url=url)  # a restarted server (a running one reloads within 30 s)
    token_url = server.url.rsplit("/fhir", 1)[0] + "/auth/token"
    published = {k["kid"] for k in httpx.get(server.url.rsplit("/fhir", 1)[0] + "/auth/jwks").json()["keys"]}
    assert published == {k[0] for k in keys_listed} and {old_kid, new_kid} <= published
    assert _kid(backend_token().json()["access_token"]) == new_kid
    assert run(url, "clients", "remove", "registry-export").returncode == 0
    assert backend_token().status_code == 401
    assert run(url, "clients", "remove", "registry-export").returncode == 1
