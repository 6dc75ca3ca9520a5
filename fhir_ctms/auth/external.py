"""Access tokens of external OpenID Connect providers (a hospital's IdP), accepted beside the
server's own (issue 5).

Each provider is configured (``FHIR_CTMS_AUTH_EXTERNAL_ISSUERS``, ``config.ExternalIssuer``) with
its ``issuer``, the ``audience`` its tokens must name and its ``jwks_uri`` (by default read from
``{issuer}/.well-known/openid-configuration``, whose ``issuer`` must match). A bearer JWT whose
``iss`` is one of them is verified here (RFC 7519, RFC 9068 for the claims):

- the signature, by ``kid`` against the provider's JWK Set (fetched with httpx, cached
  :data:`JWKS_TTL` seconds; fetched again at once for a ``kid`` not in it, at most once per
  :data:`REFETCH_INTERVAL` seconds per provider, so unknown kids cannot make the server hammer
  the IdP); algorithms RS256, RS384, ES256 and ES384 only, so ``none`` and an HMAC keyed with a
  public key never verify; symmetric keys of the JWK Set are ignored;
- ``iss`` exactly; ``aud`` (a string or a list) containing the configured audience; ``exp``
  required and ``nbf``/``iat`` when present, with :data:`LEEWAY` seconds of clock skew; ``sub``
  required.

The grant is an :class:`~fhir_ctms.auth.tokens.AccessGrant` like a built-in token's, so the
resource server (``interactions/access.py``) and the audit records treat both alike: the scopes
come from ``scope_claim`` (a space separated string, or a list as in ``scp``), their ``user/``
scopes narrowed by the roles of ``roles_claim`` through the role mapping
(``auth/roles.py``: no role, no ``user/`` scope); ``patient/`` and ``system/`` scopes are taken
as the provider issued them. ``sub`` and ``fhirUser`` (``fhir_user_claim``) name the user in
Provenance and AuditEvent, ``client_id`` or ``azp`` the client, ``patient_claim`` the launch
patient. Revocation is the provider's business: a token stays valid here until it expires (keep
its lifetime short).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry

from ..config import ExternalIssuer
from . import scopes as sc
from .roles import RoleMap
from .tokens import LEEWAY, AccessGrant, InvalidToken

ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: seconds a provider's JWK Set is used before it is fetched again
JWKS_TTL = 300
#: least seconds between two fetches caused by an unknown ``kid``
REFETCH_INTERVAL = 30
#: seconds during which a provider whose keys could never be read is not asked again
FAILURE_BACKOFF = 5
#: a token's ``typ`` header, when present, must be one of these
_TYPES = (None, "JWT", "at+jwt", "application/at+jwt")

Fetch = Callable[[str], Awaitable[Any]]


async def fetch_json(url: str) -> Any:
    """A JSON document over HTTP(S) (no redirects, 5 s)."""
    import httpx
    try:
        async with httpx.AsyncClient(timeout=5, follow_redirects=False) as http:
            response = await http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise InvalidToken(f"the issuer's keys could not be read from {url}") from exc


class _Provider:
    """One provider: its configuration and its cached keys."""

    def __init__(self, config: ExternalIssuer, fetch: Fetch) -> None:
        self.config, self.fetch = config, fetch
        self.jwks_uri = config.jwks_uri
        self.keys: dict[str, Any] | None = None
        self.fetched = 0.0
        self.refetched = -REFETCH_INTERVAL - 1.0
        self.failed = -FAILURE_BACKOFF - 1.0
        self.lock = asyncio.Lock()

    async def key(self, kid: str) -> Any:
        """The provider's public key ``kid``, or :class:`InvalidToken`."""
        async with self.lock:
            now = time.monotonic()
            if self.keys is None and now - self.failed < FAILURE_BACKOFF:
                raise InvalidToken("the issuer's keys could not be read (retried in a few seconds)")
            if self.keys is None or now - self.fetched > JWKS_TTL:
                await self._load(now)
            assert self.keys is not None
            if kid not in self.keys and now - self.refetched >= REFETCH_INTERVAL:
                self.refetched = now  # a rotation at the provider: look once more
                await self._load(now)
            key = self.keys.get(kid)
        if key is None:
            raise InvalidToken("no key of the issuer has the token's kid")
        return key

    async def _load(self, now: float) -> None:
        try:
            if self.jwks_uri is None:
                discovery = await self.fetch(self.config.issuer.rstrip("/") + "/.well-known/openid-configuration")
                if not isinstance(discovery, dict) or discovery.get("issuer") != self.config.issuer \
                        or not isinstance(discovery.get("jwks_uri"), str):
                    raise InvalidToken("the issuer's openid-configuration names another issuer or no jwks_uri")
                self.jwks_uri = discovery["jwks_uri"]
            self.keys = public_keys(await self.fetch(self.jwks_uri))
            self.fetched = now
        except InvalidToken:
            self.failed = now
            if self.keys is None:
                raise
            # the provider is unreachable: keep the keys known so far, and ask again in a while
            self.fetched = now - JWKS_TTL + REFETCH_INTERVAL


def public_keys(jwks: Any) -> dict[str, Any]:
    """The signing keys of a JWK Set by kid: RSA and EC public keys with a kid (not ``use: enc``);
    anything else (symmetric keys, private parts, unreadable entries) is left out."""
    out: dict[str, Any] = {}
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC") or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
        try:
            out[kid] = JWKRegistry.import_key(public)
        except (JoseError, ValueError, TypeError):
            continue
    return out


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _words(value: Any) -> tuple[str, ...]:
    """A space separated string or a list of strings, as words."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(w for v in value if isinstance(v, str) for w in v.split())
    return ()


def _header(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, unverified."""
    from joserfc.jws import extract_compact
    try:
        obj = extract_compact(token.encode("ascii"))
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidToken("not a valid token: not a signed JWT") from exc
    if not isinstance(claims, dict):
        raise InvalidToken("not a valid token: the claims are not an object")
    return obj.headers(), claims


class ExternalIssuers:
    """The configured providers; :meth:`verify` turns one's access token into an AccessGrant."""

    def __init__(self, issuers: Iterable[ExternalIssuer], roles: RoleMap, fetch: Fetch = fetch_json) -> None:
        self.roles = roles
        self.providers = {i.issuer: _Provider(i, fetch) for i in issuers}

    def __bool__(self) -> bool:
        return bool(self.providers)

    def accepts(self, iss: Any) -> bool:
        return isinstance(iss, str) and iss in self.providers

    async def verify(self, token: str) -> AccessGrant:
        header, unverified = _header(token)
        provider = self.providers.get(unverified.get("iss"))  # type: ignore[arg-type]
        if provider is None:
            raise InvalidToken("the token was issued by an issuer this server does not accept")
        config = provider.config
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"the token's alg must be one of {', '.join(ALGORITHMS)}")
        if header.get("typ") not in _TYPES:
            raise InvalidToken("the token's typ is not an access token's")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token has no kid")
        key = await provider.key(kid)
        if key.alg is not None and key.alg != alg:
            raise InvalidToken("the token's alg is not its key's")
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken("not a valid token: the signature does not verify") from exc
        now = time.time()
        if claims.get("iss") != config.issuer:
            raise InvalidToken("the token was issued by another server")
        aud = claims.get("aud")
        if not (aud == config.audience or (isinstance(aud, list) and config.audience in aud)):
            raise InvalidToken("the token is for another audience")
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp + LEEWAY < now:
            raise InvalidToken("the token has expired")
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf - LEEWAY > now):
            raise InvalidToken("the token is not valid yet (nbf)")
        if iat is not None and (not isinstance(iat, (int, float)) or iat - LEEWAY > now):
            raise InvalidToken("the token was issued in the future (iat)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("the token has no sub")
        return self._grant(config, claims, token)

    def _grant(self, config: ExternalIssuer, claims: dict[str, Any], token: str) -> AccessGrant:
        raw = _claim(claims, config.scope_claim)
        if raw is None and config.scope_claim == "scope":
            raw = claims.get("scp")
        roles = _words(_claim(claims, config.roles_claim))
        narrowed = self.roles.narrow(sc.parse(" ".join(_words(raw))), roles)
        scopes = sc.Scopes(narrowed.resources, narrowed.smart)
        patient = claims.get(config.patient_claim)
        patient = patient.removeprefix("Patient/") if isinstance(patient, str) and patient else None
        fhir_user = claims.get(config.fhir_user_claim)
        client = claims.get("client_id") or claims.get("azp")
        jti = claims.get("jti")
        return AccessGrant(
            jti=jti if isinstance(jti, str) and jti else hashlib.sha256(token.encode()).hexdigest()[:32],
            client_id=client if isinstance(client, str) else "", subject=claims["sub"], scopes=scopes,
            scope=str(scopes), expires=int(claims["exp"]), issued=int(claims.get("iat") or 0), patient=patient,
            fhir_user=fhir_user if isinstance(fhir_user, str) and fhir_user else None, roles=roles,
            issuer=config.issuer)
