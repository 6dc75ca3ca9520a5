"""Helpers of the SMART tests: registering clients and users, PKCE pairs, client assertions,
access tokens minted with the server's key ring (no flow), their Authorization headers, and the
login and consent forms posted the way a browser posts them (httpx)."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhir_ctms.auth.keys import KeyRing
from fhir_ctms.auth.passwords import hash_secret
from fhir_ctms.auth.pkce import s256
from fhir_ctms.auth.tokens import ACCESS_TYP, access_claims, sign
from fhir_ctms.storage.auth_store import AuthStore, ClientRecord, UserRecord

from .conftest import BASE, empty_tables

REDIRECT = "https://app.example/callback"
SECRET = "s3cret-of-the-confidential-app"
PASSWORD = "correct horse battery"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def register(store: AuthStore) -> dict[str, Any]:
    """A public app, a confidential-symmetric app, an EHR that creates launches, backend services
    with an RS384 and an ES384 key, and a user with two patients. Returns the private keys."""
    now = int(time.time())
    rs = RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True)
    es = ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, private=True)
    rs.ensure_kid()
    es.ensure_kid()
    app_scopes = ("launch launch/patient openid fhirUser offline_access online_access "
                  "patient/*.rs user/*.cruds patient/Observation.rs?category=laboratory")
    await store.add_client(ClientRecord("public-app", "public", (REDIRECT,), app_scopes, created=now))
    await store.add_client(ClientRecord("secret-app", "confidential-symmetric", (REDIRECT,), app_scopes,
                                        hash_secret(SECRET), created=now))
    await store.add_client(ClientRecord("ehr", "confidential-symmetric", (), "fhir-ctms/launch",
                                        hash_secret(SECRET), created=now))
    await store.add_client(ClientRecord("backend-rs", "confidential-asymmetric", (), "system/*.rs system/Group.cruds",
                                        jwks={"keys": [rs.as_dict(private=False)]}, created=now))
    await store.add_client(ClientRecord("backend-es", "confidential-asymmetric", (), "system/*.rs",
                                        jwks={"keys": [es.as_dict(private=False)]}, created=now))
    await store.add_user(UserRecord("alice", hash_secret(PASSWORD), "Practitioner/prac-1", ("pat-001", "pat-002"),
                                    now))
    return {"rs": rs, "es": es}


async def registered(repo: Any) -> AuthStore:
    """``repo`` emptied, then :func:`register`'s clients and user added: its auth store."""
    await empty_tables(repo)
    store = AuthStore(repo.engine)
    await register(store)
    return store


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of an access token."""
    return {"Authorization": "Bearer " + token}


def minter(store: AuthStore, *, fhir: str = BASE, client_id: str = "secret-app"
           ) -> Callable[..., Awaitable[dict[str, str]]]:
    """``mint(scope, *, subject="alice", context=None, roles=(), client=None, claims=None)``: the
    Authorization header of an access token for ``fhir`` signed by the server's key ring (ES384,
    an hour), as if ``client`` (default ``client_id``) had been granted ``scope``, without the
    authorization flow; ``claims`` are set over the token's own (to forge odd tokens)."""
    ring = KeyRing(store, "ES384", 3600)

    async def mint(scope: str, *, subject: str = "alice", context: dict[str, Any] | None = None,
                   roles: tuple[str, ...] = (), client: str | None = None,
                   claims: dict[str, Any] | None = None) -> dict[str, str]:
        key, record = await ring.signer()
        body = access_claims(issuer=fhir, audience=fhir, client_id=client or client_id, subject=subject,
                             scope=scope, lifetime=3600, context=context or {}, roles=roles)
        body.update(claims or {})
        return bearer(sign(key, record.kid, record.alg, body, ACCESS_TYP))
    return mint


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def assertion(key: Any, client_id: str, aud: str, *, alg: str | None = None, kid: str | None = None,
              exp_in: int = 240, jti: str | None = None, sub: str | None = None,
              header: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> str:
    """A client assertion (RFC 7523); ``header`` and ``extra`` add header parameters and claims."""
    alg = alg or ("ES384" if isinstance(key, ECKey) else "RS384")
    now = int(time.time())
    claims = {"iss": client_id, "sub": sub or client_id, "aud": aud, "exp": now + exp_in,
              "jti": jti or uuid.uuid4().hex, **(extra or {})}
    return jwt.encode({"alg": alg, "kid": kid or key.kid, "typ": "JWT", **(header or {})}, claims, key,
                      algorithms=[alg])


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden field {name} in the page"
    return unescape(m.group(1))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def authorize_params(fhir_base: str, challenge: str, *, client_id: str = "public-app",
                     scope: str = "launch/patient openid fhirUser offline_access patient/*.rs",
                     state: str = "st-123", **extra: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
            "state": state, "aud": fhir_base, "code_challenge": challenge, "code_challenge_method": "S256",
            **extra}


async def log_in(http: httpx.AsyncClient, authorize_url: str, params: dict[str, str], *,
                 patient: str | None = "pat-001", decision: str = "allow",
                 password: str = PASSWORD) -> httpx.Response:
    """GET the authorization request, post the login form, then the consent form; returns the
    final response (a 303 to the app, or a page)."""
    page = await http.get(authorize_url, params=params)
    assert page.status_code == 200, page.text
    auth = authorize_url.rsplit("/", 1)[0]
    form = {"ticket": hidden(page.text, "ticket"), "csrf_token": hidden(page.text, "csrf_token"),
            "username": "alice", "password": password}
    consent = await http.post(auth + "/login", data=form)
    if consent.status_code != 200:
        return consent
    choice = {"ticket": hidden(consent.text, "ticket"), "csrf_token": hidden(consent.text, "csrf_token"),
              "decision": decision}
    if patient is not None and 'name="patient"' in consent.text:
        choice["patient"] = patient
    return await http.post(auth + "/consent", data=choice)
