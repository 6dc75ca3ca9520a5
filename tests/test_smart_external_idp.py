"""Access tokens of external OpenID Connect providers (``auth/external.py``) against a live server,
on both databases. Two real IdPs run in the test (HTTP servers on free ports serving
``/.well-known/openid-configuration`` and a JWK Set made with joserfc) and sign tokens with
their private keys; the server is configured with both (one found through discovery, one by its
``jwks_uri``, with ``scp`` lists and a ``groups`` roles claim) and accepts their tokens beside
its own, narrowing ``user/`` scopes by the roles claim. Every way a token can be wrong is a 401:
wrong ``aud`` or ``iss``, an issuer not configured, expired, not yet valid, no ``sub``, an
unknown ``kid`` (after one rate-limited refetch), ``alg: none``, HS256 keyed with the public
key, a tampered payload or signature."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_ctms.auth.external import ExternalIssuers, public_keys
from fhir_ctms.auth.roles import role_map
from fhir_ctms.auth.tokens import InvalidToken
from fhir_ctms.config import ExternalIssuer
from fhir_ctms.storage.auth_store import AuthStore
from fhir_ctms.storage.sql import make_engine

from .smart import ASSERTION, assertion, register

AUDIENCE_A = "https://ctms.example/fhir"
AUDIENCE_B = "ctms-api"


class IdP:
    """A small OpenID Connect provider: discovery and a JWK Set over HTTP, tokens signed here."""

    def __init__(self, path: str = "") -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.hits: dict[str, int] = {}
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                idp.hits[self.path] = idp.hits.get(self.path, 0) + 1
                if self.path == path + "/.well-known/openid-configuration":
                    body: Any = {"issuer": idp.issuer, "jwks_uri": idp.issuer + "/jwks",
                                 "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
                elif self.path == path + "/jwks":
                    body = {"keys": [idp.keys[k].as_dict(private=False) for k in idp.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.http.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def add_key(self, kid: str, alg: str, publish: bool = True) -> None:
        if alg.startswith("RS"):
            key: Any = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg, "use": "sig"}, private=True)
        else:
            curve = {"ES256": "P-256", "ES384": "P-384"}[alg]
            key = ECKey.generate_key(curve, parameters={"kid": kid, "alg": alg, "use": "sig"}, private=True)
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def jwks_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p.endswith("/jwks"))

    def token(self, kid: str, audience: str, *, alg: str | None = None, **claims: Any) -> str:
        key = self.keys[kid]
        alg = alg or key.as_dict()["alg"]
        now = int(time.time())
        body = {"iss": self.issuer, "aud": audience, "sub": "u-123", "iat": now, "exp": now + 300,
                "jti": uuid.uuid4().hex, "azp": "hospital-portal", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": alg, "kid": kid, "typ": "at+jwt"}, body, key, algorithms=[alg])

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def idps() -> Iterator[tuple[IdP, IdP, IdP]]:
    """A (discovered; RS256), B (configured jwks_uri; ES256), C (never configured)."""
    a, b, c = IdP(), IdP("/realms/trial"), IdP()
    a.add_key("a-1", "RS256")
    b.add_key("b-1", "ES256")
    c.add_key("c-1", "RS256")
    yield a, b, c
    for idp in (a, b, c):
        idp.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + (b64(sign(head.encode())) if sign else "")


def unverified(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_tokens_of_configured_providers_are_accepted_and_every_bad_one_refused(
        idps, live_server, fresh_database_url):
    a, b, c = idps
    url = fresh_database_url()

    async def setup() -> dict[str, Any]:
        engine = make_engine(url)
        try:
            return await register(AuthStore(engine))
        finally:
            await engine.dispose()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        own_keys = pool.submit(asyncio.run, setup()).result()
    issuers = [
        {"issuer": a.issuer, "audience": AUDIENCE_A, "roles_claim": "realm_access.roles"},
        {"issuer": b.issuer, "audience": AUDIENCE_B, "jwks_uri": b.issuer + "/jwks", "scope_claim": "scp",
         "roles_claim": "groups", "fhir_user_claim": "fhir_user"},
    ]
    server = live_server(database_url=url, FHIR_CTMS_AUTH_ENABLED="true",
                         FHIR_CTMS_AUTH_EXTERNAL_ISSUERS=json.dumps(issuers))
    fhir = server.url
    http = httpx.Client(base_url=fhir, timeout=30)

    def h(token: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + token}

    # -- accepted --------------------------------------------------------------------------------
    manager = a.token("a-1", AUDIENCE_A, scope="openid fhirUser user/*.cruds", fhirUser="Practitioner/prac-7",
                      realm_access={"roles": ["study-manager", "offline_access"]})
    r = http.put("/ResearchStudy/acme-101", json={"resourceType": "ResearchStudy", "id": "acme-101",
                                                  "status": "active"}, headers=h(manager))
    assert r.status_code == 201, r.text
    assert a.hits.get("/.well-known/openid-configuration") == 1 and a.jwks_hits() == 1  # discovery, then the keys
    patients = []
    for _ in range(2):
        r = http.post("/Patient", json={"resourceType": "Patient"}, headers=h(manager))
        assert r.status_code == 201, r.text
        patients.append(r.json()["id"])
    # the IdP's user is the agent of the change, as with a built-in token
    prov = http.get(f"/Provenance?target=Patient/{patients[0]}", headers=h(manager)).json()["entry"][0]["resource"]
    assert prov["agent"][0]["who"] == {"display": "u-123", "reference": "Practitioner/prac-7"}
    event = http.get(f"/AuditEvent?entity=Patient/{patients[0]}", headers=h(manager)).json()["entry"][0]["resource"]
    whos = [agent["who"] for agent in event["agent"]]
    assert {"display": "u-123", "reference": "Practitioner/prac-7"} in whos and {"display": "hospital-portal"} in whos
    assert a.jwks_hits() == 1  # the keys are cached

    # provider B: scopes as an scp list, roles in groups: a monitor reads, does not create patients
    monitor = b.token("b-1", AUDIENCE_B, scp=["user/ResearchStudy.rs", "user/Patient.cruds"], groups=["monitor"],
                      fhir_user="Practitioner/cra-1")
    assert http.get("/ResearchStudy/acme-101", headers=h(monitor)).status_code == 200
    assert http.get(f"/Patient/{patients[0]}", headers=h(monitor)).status_code == 200
    refused = http.post("/Patient", json={"resourceType": "Patient"}, headers=h(monitor))
    assert refused.status_code == 403 and "insufficient_scope" in refused.headers["www-authenticate"]
    # no roles claim: no user/ scopes (403, the token itself is valid)
    no_roles = a.token("a-1", AUDIENCE_A, scope="user/*.rs")
    assert http.get("/ResearchStudy/acme-101", headers=h(no_roles)).status_code == 403
    # patient/ scopes with the patient claim: that patient's compartment only
    patient_token = a.token("a-1", [AUDIENCE_A, "other-api"], scope="patient/*.rs", patient=patients[0])
    assert http.get(f"/Patient/{patients[0]}", headers=h(patient_token)).status_code == 200
    assert http.get(f"/Patient/{patients[1]}", headers=h(patient_token)).status_code == 403
    # the server's own tokens still work beside them (a backend service)
    token_url = fhir.rsplit("/fhir", 1)[0] + "/auth/token"
    own = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                      "client_assertion_type": ASSERTION,
                                      "client_assertion": assertion(own_keys["rs"], "backend-rs", token_url)})
    assert own.status_code == 200, own.text
    assert http.get("/ResearchStudy/acme-101", headers=h(own.json()["access_token"])).status_code == 200

    # a key rotation at the IdP: an unknown kid makes the server fetch the keys once more
    a.add_key("a-2", "ES384")
    rotated = a.token("a-2", AUDIENCE_A, scope="user/ResearchStudy.rs", realm_access={"roles": ["auditor"]})
    assert http.get("/ResearchStudy/acme-101", headers=h(rotated)).status_code == 200
    assert a.jwks_hits() == 2

    # -- refused -----------------------------------------------------------------------------------
    def refused_because(token: str, reason: str) -> None:
        r = http.get("/ResearchStudy/acme-101", headers=h(token))
        assert r.status_code == 401, (reason, r.status_code, r.text)
        challenge = r.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and reason in challenge, (reason, challenge)
        assert r.json()["resourceType"] == "OperationOutcome"

    good = dict(scope="user/*.rs", realm_access={"roles": ["auditor"]})
    refused_because(a.token("a-1", "https://elsewhere.example/fhir", **good), "another audience")
    refused_because(a.token("a-1", AUDIENCE_A, iss=a.issuer + "/other", **good), "does not accept")
    c_token = c.token("c-1", AUDIENCE_A, **good)
    refused_because(c_token, "does not accept")  # an issuer not configured
    assert c.hits == {}  # never contacted
    refused_because(a.token("a-1", AUDIENCE_A, exp=int(time.time()) - 600, **good), "expired")
    refused_because(a.token("a-1", AUDIENCE_A, exp=None, **good), "expired")  # exp is required
    refused_because(a.token("a-1", AUDIENCE_A, nbf=int(time.time()) + 600, **good), "nbf")
    refused_because(a.token("a-1", AUDIENCE_A, sub=None, **good), "no sub")
    # an unknown kid: B's keys are fetched once more, and the kid is still unknown
    b.add_key("ghost", "ES256", publish=False)
    hits = b.jwks_hits()
    refused_because(b.token("ghost", AUDIENCE_B, scp="user/*.rs", groups=["auditor"]), "kid")
    assert b.jwks_hits() == hits + 1
    # at once another unknown kid: no new fetch (at most one per 30 s), still refused
    refused_because(b.token("ghost", AUDIENCE_B, scp="user/*.rs", groups=["auditor"]), "kid")
    assert b.jwks_hits() == hits + 1
    # A's iss and a kid A publishes, signed with another key (C's)
    claims = unverified(a.token("a-1", AUDIENCE_A, **good))
    refused_because(jwt.encode({"alg": "RS256", "kid": "a-1", "typ": "at+jwt"}, claims, c.keys["c-1"],
                               algorithms=["RS256"]), "signature")
    # alg none
    refused_because(forged({"alg": "none", "kid": "a-1"}, claims), "alg")
    # HS256 keyed with the IdP's public key (PEM and JWK text), the classic confusion
    public_pem = a.keys["a-1"].as_pem(private=False)
    public_jwk = json.dumps(a.keys["a-1"].as_dict(private=False)).encode()
    for secret in (public_pem, public_jwk):
        refused_because(forged({"alg": "HS256", "kid": "a-1", "typ": "at+jwt"}, claims,
                               lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest()), "alg")
    # RS384 with a key published for RS256 only
    same_key = RSAKey.import_key({k: v for k, v in a.keys["a-1"].as_dict(private=True).items() if k != "alg"})
    refused_because(jwt.encode({"alg": "RS384", "kid": "a-1"}, claims, same_key, algorithms=["RS384"]),
                    "not its key's")
    # RS512 is not among the algorithms accepted
    refused_because(forged({"alg": "RS512", "kid": "a-1"}, claims), "alg")
    # a tampered payload (wider scopes) under the original signature; a tampered signature
    valid = a.token("a-1", AUDIENCE_A, **good)
    head, _, sig = valid.split(".")
    wider = b64(json.dumps({**unverified(valid), "scope": "user/*.cruds",
                            "realm_access": {"roles": ["study-manager"]}}).encode())
    refused_because(f"{head}.{wider}.{sig}", "signature")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    refused_because(f"{head}.{valid.split('.')[1]}.{flipped}", "signature")
    refused_because("garbage", "not a valid token")
    # the untampered token is fine
    assert http.get("/ResearchStudy/acme-101", headers=h(valid)).status_code == 200
    http.close()


# -- the pieces, in-process ------------------------------------------------------------------------

def test_only_public_signing_keys_of_a_jwk_set_are_used():
    rsa = RSAKey.generate_key(2048, parameters={"kid": "r", "alg": "RS256"}, private=True)
    enc = ECKey.generate_key("P-256", parameters={"kid": "e", "use": "enc"}, private=True)
    keys = public_keys({"keys": [
        rsa.as_dict(private=True),                        # a private part published by mistake: stripped
        enc.as_dict(private=False),                       # an encryption key: not for signatures
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},      # symmetric: never
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},         # no kid
        {"kty": "EC", "kid": "broken", "crv": "P-256"},   # unreadable
        "not a key"]})
    assert list(keys) == ["r"] and not keys["r"].is_private
    assert public_keys({"keys": "x"}) == {} and public_keys([]) == {}


async def test_an_unreachable_provider_refuses_its_tokens_and_is_not_asked_at_every_request():
    idp = IdP()
    idp.add_key("k", "RS256")
    token = idp.token("k", "aud")
    idp.close()  # its port no longer answers
    issuers = ExternalIssuers([ExternalIssuer(issuer=idp.issuer, audience="aud")], role_map(None))
    with pytest.raises(InvalidToken, match="could not be read"):
        await issuers.verify(token)
    with pytest.raises(InvalidToken, match="retried in a few seconds"):  # backing off
        await issuers.verify(token)
    assert issuers.accepts(idp.issuer) and not issuers.accepts("https://other") and not issuers.accepts(None)
