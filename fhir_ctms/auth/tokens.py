"""The server's JWTs: access tokens (RFC 9068 ``at+jwt``), id tokens, and their verification.

:func:`verify_access_token` is what a resource server calls (part 2 of issue 5): signature by
``kid`` against the server's live keys (ES384/RS384 only, so ``alg: none``, an HMAC made with
a public key, or an RS256 id token never verify), ``typ``, ``exp``, ``iss`` and ``aud``. It
returns the grant as a plain :class:`AccessGrant`. Revocation (RFC 7009) is a database look-up
on top (the token's ``jti``, or its whole grant: ``grant_id``, the family of tokens descended
from one authorization code, revoked when that code is used twice or a rotated refresh token
is replayed):
:func:`verify_access` does both, and is the one verification path of the resource server: a
token whose ``iss`` is a configured external OpenID Connect provider is verified by
``auth/external.py`` instead, into the same :class:`AccessGrant`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..storage.auth_store import AuthStore
from . import scopes as scope_parser
from .keys import ALGORITHMS, KeyRing

if TYPE_CHECKING:
    from .external import ExternalIssuers

ACCESS_TYP = "at+jwt"
#: clock skew tolerated on ``exp`` and ``iat``, seconds
LEEWAY = 30
#: launch context parameters of a token response (SMART App Launch 2.2, scopes-and-launch-context)
#: carried in the access token, so introspection returns them (SMART token-introspection)
CONTEXT_CLAIMS = ("patient", "encounter", "fhirUser", "fhirContext", "need_patient_banner", "smart_style_url",
                  "intent", "tenant")


class InvalidToken(Exception):
    """A token that is not valid here: bad signature, unknown kid, expired, wrong iss/aud/typ."""


@dataclass(frozen=True)
class AccessGrant:
    """What a valid access token grants."""
    jti: str
    client_id: str
    subject: str
    scopes: scope_parser.Scopes
    scope: str                                  # as granted, space separated
    expires: int
    issued: int
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    fhir_context: tuple[dict[str, Any], ...] = ()
    roles: tuple[str, ...] = ()                 # the user's roles (auth/roles.py), which narrowed its user/ scopes
    issuer: str | None = None                   # an external provider's; None: this server's own token
    grant_id: str | None = None                 # the family of tokens of one authorization (revoked together)


def sign(key: Any, kid: str, alg: str, claims: dict[str, Any], typ: str = "JWT") -> str:
    return jwt.encode({"alg": alg, "kid": kid, "typ": typ}, claims, key, algorithms=[alg])


def decode(token: str, keys: KeySet, typ: str) -> dict[str, Any]:
    """The claims of a JWT signed by one of ``keys`` with header ``typ``; ``exp`` checked."""
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken(f"not a valid token: {exc}") from exc
    if decoded.header.get("typ") != typ:
        raise InvalidToken(f"not a {typ} token")
    claims = decoded.claims
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp + LEEWAY < time.time():
        raise InvalidToken("the token has expired")
    return claims


def kid_of(token: str) -> str | None:
    try:
        from joserfc.jws import extract_compact
        return extract_compact(token.encode("ascii")).headers().get("kid")
    except (JoseError, ValueError, UnicodeError):
        return None


def unverified_claims(token: str | None) -> dict[str, Any] | None:
    """The claims of a JWT, read WITHOUT verifying it (None when unreadable): only to choose how to
    verify it, or to say who a refused token claimed to be."""
    if not token:
        return None
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def claimed(token: str | None) -> tuple[str | None, str | None]:
    """(``sub``, ``client_id``) a JWT *claims*, read without verifying it (a client assertion's
    ``sub`` is its client id): only for the audit record of a token or client assertion that
    was refused (who it said it was). Clipped to 128 characters; (None, None) when unreadable."""
    claims = unverified_claims(token)
    if claims is None:
        return None, None

    def text(value: Any) -> str | None:
        return value[:128] if isinstance(value, str) and value else None
    return text(claims.get("sub")), text(claims.get("client_id") or claims.get("azp"))


def access_claims(*, issuer: str, audience: str, client_id: str, subject: str, scope: str, lifetime: int,
                  context: dict[str, Any], roles: tuple[str, ...] = (), grant_id: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "client_id": client_id,
                              "scope": scope, "iat": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
    if roles:
        claims["roles"] = list(roles)  # RFC 9068 2.2.3.1
    if grant_id:
        claims["grant_id"] = grant_id
    for name in CONTEXT_CLAIMS:
        if context.get(name) not in (None, "", []):  # need_patient_banner: false is a value
            claims[name] = context[name]
    return claims


def verify_access_token(token: str, keys: KeySet, *, issuer: str, audience: str) -> AccessGrant:
    """The grant of a valid access token, or :class:`InvalidToken`."""
    claims = decode(token, keys, ACCESS_TYP)
    if claims.get("iss") != issuer:
        raise InvalidToken("the token was issued by another server")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise InvalidToken("the token is for another audience")
    scope = claims.get("scope")
    if not isinstance(scope, str) or not isinstance(claims.get("jti"), str):
        raise InvalidToken("the token has no scope or jti")
    roles = claims.get("roles")
    return AccessGrant(
        jti=claims["jti"], client_id=str(claims.get("client_id", "")), subject=str(claims.get("sub", "")),
        scopes=scope_parser.parse(scope), scope=scope, expires=claims["exp"], issued=int(claims.get("iat", 0)),
        patient=claims.get("patient"), encounter=claims.get("encounter"), fhir_user=claims.get("fhirUser"),
        fhir_context=tuple(claims.get("fhirContext") or ()),
        roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
        grant_id=claims["grant_id"] if isinstance(claims.get("grant_id"), str) else None)


async def verify_access(token: str, ring: KeyRing, store: AuthStore, *, issuer: str, audience: str,
                        external: "ExternalIssuers | None" = None) -> AccessGrant:
    """:func:`verify_access_token` with the server's keys, then refused if revoked; a token of an
    accepted external provider (``external``) is verified by it instead. A token whose ``iss`` is
    neither is refused at once."""
    claims = unverified_claims(token) if external else None
    if external and claims is not None and claims.get("iss") != issuer:
        if external.accepts(claims.get("iss")):
            return await external.verify(token)
        raise InvalidToken("the token was issued by an issuer this server does not accept")
    grant = verify_access_token(token, await ring.verifier(kid_of(token)), issuer=issuer, audience=audience)
    if await store.access_revoked(grant.jti, *((f"grant:{grant.grant_id}",) if grant.grant_id else ())):
        raise InvalidToken("the token was revoked")
    return grant
