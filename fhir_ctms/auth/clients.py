"""Client authentication at the token, introspection, revocation and launch endpoints.

Three kinds of client (SMART App Launch 2.2, client-authentication):

- ``public``: identified by ``client_id`` only (PKCE protects its codes);
- ``confidential-symmetric``: a secret, sent as HTTP Basic (``client_secret_basic``) or in the
  form (``client_secret_post``), checked against its Argon2 hash;
- ``confidential-asymmetric``: ``private_key_jwt`` (RFC 7523): a client assertion signed RS384 or
  ES384 with a key of the client's registered JWK Set (or its ``jwks_uri``), selected by
  ``kid``; ``iss`` = ``sub`` = client_id, ``aud`` = the endpoint, ``exp`` at most five minutes
  ahead, ``nbf`` (if any) not in the future (RFC 7523 3), and a ``jti`` never seen before
  (remembered in the database until it expires). A header that points at keys (``jku``,
  ``x5u``, ``jwk``, ``x5c``) is refused: keys come from the registration only (there is no
  allow-list of key URLs).

Every failed authentication is ``invalid_client`` (401) and says no more than needed; a
``client_assertion_type`` other than RFC 7523's, or an assertion type without an assertion, is
a malformed request: ``invalid_request`` (400, RFC 6749 5.2; what Inferno's backend services
tests expect).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..storage.auth_store import AuthStore, ClientRecord
from .errors import OAuthError
from .keys import ALGORITHMS
from .passwords import verify_secret
from .tokens import LEEWAY

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: JOSE header parameters that name keys: never followed (RFC 7515 4.1.2-4.1.6; RFC 8725 3.10)
KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")
KINDS = ("public", "confidential-symmetric", "confidential-asymmetric")
#: an allowed scope that lets a confidential client (an EHR) create launch handles; it is not a
#: SMART scope, so it is never granted in a token
LAUNCH_ISSUER = "fhir-ctms/launch"

JwksFetcher = Callable[[str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Credentials:
    """What a request presents: client_id, and a secret or an assertion, and how."""
    client_id: str | None
    method: str                     # none | client_secret_basic | client_secret_post | private_key_jwt
    secret: str | None = None
    assertion: str | None = None


def credentials(form: Mapping[str, str], authorization: str | None) -> Credentials:
    if authorization and authorization[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise OAuthError("invalid_client", "malformed Basic credentials") from exc
        client_id = unquote(user.replace("+", " "))
        if form.get("client_id") not in (None, client_id):
            raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        return Credentials(client_id, "client_secret_basic", secret=unquote(password.replace("+", " ")))
    if form.get("client_assertion_type") is not None or form.get("client_assertion") is not None:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        if not form.get("client_assertion"):
            raise OAuthError("invalid_request", "client_assertion is required with client_assertion_type")
        return Credentials(form.get("client_id"), "private_key_jwt", assertion=form["client_assertion"])
    if form.get("client_secret") is not None:
        return Credentials(form.get("client_id"), "client_secret_post", secret=form["client_secret"])
    return Credentials(form.get("client_id"), "none")


async def fetch_jwks(uri: str) -> dict[str, Any]:
    """A client's JWK Set from its ``jwks_uri`` (cached for five minutes)."""
    cached = _JWKS_CACHE.get(uri)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    import httpx
    try:
        async with httpx.AsyncClient(timeout=5, follow_redirects=False) as http:
            response = await http.get(uri, headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise OAuthError("invalid_client", "the client's jwks_uri could not be read") from exc
    _JWKS_CACHE[uri] = (time.monotonic() + 300, body)
    return body


_JWKS_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}


class ClientAuth:
    """Authenticates clients against the store."""

    def __init__(self, store: AuthStore, max_lifetime: int = 300, fetch: JwksFetcher = fetch_jwks) -> None:
        self.store, self.max_lifetime, self.fetch = store, max_lifetime, fetch

    async def authenticate(self, creds: Credentials, audiences: tuple[str, ...]) -> ClientRecord:
        """The client, authenticated as its kind requires (``audiences``: the acceptable ``aud``
        of an assertion, the endpoint's URL), or ``invalid_client``."""
        if creds.method == "private_key_jwt":
            return await self._assertion(creds, audiences)
        if not creds.client_id:
            raise OAuthError("invalid_client", "no client authentication")
        client = await self.store.client(creds.client_id)
        if creds.method == "none":
            if client is None or client.kind != "public":
                raise OAuthError("invalid_client", "unknown client, or client authentication required")
            return client
        ok = await asyncio.to_thread(verify_secret, client.secret_hash if client else None, creds.secret or "")
        if client is None or client.kind != "confidential-symmetric" or not ok:
            raise OAuthError("invalid_client", "client authentication failed")
        return client

    async def _assertion(self, creds: Credentials, audiences: tuple[str, ...]) -> ClientRecord:
        token = creds.assertion or ""
        try:
            from joserfc.jws import extract_compact
            obj = extract_compact(token.encode("ascii"))
            header, unverified = obj.headers(), json.loads(obj.payload)
        except (JoseError, ValueError, UnicodeError) as exc:
            raise OAuthError("invalid_client", "the client assertion is not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise OAuthError("invalid_client", "client assertions must be signed RS384 or ES384")
        if any(name in header for name in KEY_HEADERS):
            raise OAuthError("invalid_client", "the assertion's header names keys (jku, x5u, jwk or x5c): "
                                               "only the registered keys are used")
        client_id = unverified.get("iss") if isinstance(unverified, dict) else None
        if not isinstance(client_id, str) or (creds.client_id and creds.client_id != client_id):
            raise OAuthError("invalid_client", "the assertion's iss is not the client")
        client = await self.store.client(client_id)
        if client is None or client.kind != "confidential-asymmetric":
            raise OAuthError("invalid_client", "unknown client or not registered for private_key_jwt")
        jwks = client.jwks if client.jwks is not None else await self.fetch(client.jwks_uri or "")
        kid = header.get("kid")
        if not kid or kid not in {k.get("kid") for k in jwks.get("keys", [])}:
            raise OAuthError("invalid_client", "no registered key has the assertion's kid")
        try:
            keys = KeySet.import_key_set({"keys": [k for k in jwks["keys"] if k.get("kid") == kid]})
            claims = jwt.decode(token, keys, algorithms=list(ALGORITHMS)).claims
        except (JoseError, ValueError, TypeError) as exc:
            raise OAuthError("invalid_client", "the assertion's signature does not verify") from exc
        now = int(time.time())
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        exp, jti = claims.get("exp"), claims.get("jti")
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise OAuthError("invalid_client", "the assertion's iss and sub must be the client_id")
        if not any(a in audiences for a in auds):
            raise OAuthError("invalid_client", "the assertion's aud is not this endpoint")
        if not isinstance(exp, int) or exp + LEEWAY < now:
            raise OAuthError("invalid_client", "the assertion has expired")
        if exp > now + self.max_lifetime + LEEWAY:
            raise OAuthError("invalid_client", f"the assertion's exp is more than {self.max_lifetime} s ahead")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int) or nbf > now + LEEWAY):
            raise OAuthError("invalid_client", "the assertion is not valid yet (nbf)")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise OAuthError("invalid_client", "the assertion has no jti")
        if not await self.store.remember_jti(client_id, jti, exp + LEEWAY, now):
            raise OAuthError("invalid_client", "the assertion's jti was used before (replay)")
        return client
