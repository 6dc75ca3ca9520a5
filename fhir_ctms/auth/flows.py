"""The OAuth 2.0 / SMART App Launch 2.2 flows, as plain async functions over the store.

- authorize (RFC 6749 4.1.1, SMART app-launch): :meth:`AuthServer.begin` checks a request
  (client, exact redirect URI, ``response_type=code``, ``state``, ``aud`` = the FHIR base, PKCE
  S256, the scopes, an EHR ``launch`` handle) and returns the pending authorization; after the
  user logs in and consents, :meth:`AuthServer.approve` makes the code (single use, short-lived).
- token (RFC 6749 4.1.3, 6, SMART backend services): ``authorization_code`` (PKCE verified; a
  code used twice revokes every token it gave, access tokens too), ``refresh_token`` (rotated on
  every use; a rotated token used again revokes its whole family; a narrowed ``scope`` stays
  narrowed for the later refreshes), ``client_credentials`` (``private_key_jwt`` clients,
  ``system/`` scopes only, tokens of at most ``auth_backend_token_lifetime`` seconds).
- id tokens (``openid``, with or without ``fhirUser``/``profile``) signed RS256.
- introspection (RFC 7662, SMART token-introspection: every launch context parameter of the
  token response; the caller authenticates as a confidential client, or with an appropriately
  scoped bearer token, :meth:`AuthServer.introspection_caller`), revocation (RFC 7009), EHR
  launch handles (single use: spent when the code is issued; the user must be allowed the
  launch's patient).

A user's ``user/`` scopes are narrowed to what its roles allow (``auth/roles.py``) when it signs
in (so the consent page shows what can be granted), and again with its current roles when the
code is exchanged and at every refresh (a role taken away shows at the next refresh); when the
request asked for ``user/`` scopes and no resource scope is left, the grant is refused
(``invalid_scope``). Failed logins are throttled (``auth/throttle.py``).

The pending authorization travels between the login and consent pages as a short-lived JWT
signed by the server (a "ticket", its own ``typ``), bound to the browser's CSRF cookie, so the
server keeps no session state for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..config import Settings
from ..resources.registry import RESOURCE_TYPES
from ..storage.auth_store import AuthStore, ClientRecord, UserRecord
from . import pkce
from . import scopes as sc
from .clients import LAUNCH_ISSUER, ClientAuth, credentials
from .discovery import Endpoints
from .errors import OAuthError, PageError
from .external import ExternalIssuers
from .keys import ID_TOKEN_ALG, KeyRing
from .passwords import verify_secret
from .roles import role_map
from .throttle import LoginThrottle
from .tokens import (ACCESS_TYP, CONTEXT_CLAIMS, LEEWAY, InvalidToken, access_claims, decode, kid_of, sign,
                     unverified_claims, verify_access)

TICKET_TYP = "fhir-ctms-authz+jwt"
TICKET_LIFETIME = 600


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class AuthorizeError(OAuthError):
    """An authorization error sent back to the client's redirect URI (with ``state``)."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(error, description)
        self.redirect_uri, self.state = redirect_uri, state

    def location(self) -> str:
        params = self.body()
        if self.state is not None:
            params["state"] = self.state
        return with_query(self.redirect_uri, params)


def with_query(uri: str, params: Mapping[str, str]) -> str:
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


@dataclass(frozen=True)
class Pending:
    """An authorization request that passed every check, waiting for the user."""
    client_id: str
    redirect_uri: str
    state: str
    challenge: str
    scope: str                      # granted (requested within what the client may have)
    launch: dict[str, Any]          # the EHR launch context, if any
    nonce: str | None = None
    username: str | None = None     # once logged in
    launch_id: str | None = None    # the EHR launch handle's digest (spent when the code is issued)

    @property
    def scopes(self) -> sc.Scopes:
        return sc.parse(self.scope)

    @property
    def needs_patient(self) -> bool:
        """A patient must be picked: patient context asked for and none came with the launch."""
        s = self.scopes
        return ("launch/patient" in s or "patient" in s.contexts) and not self.launch.get("patient")


class AuthServer:
    def __init__(self, store: AuthStore, settings: Settings, ring: KeyRing | None = None) -> None:
        self.store, self.settings = store, settings
        self.ring = ring or KeyRing(store, settings.auth_signing_alg, settings.auth_access_token_lifetime)
        self.clients = ClientAuth(store, settings.auth_assertion_max_lifetime)
        self.roles = role_map(settings.auth_roles_file)
        self.external = ExternalIssuers(settings.auth_external_issuers, self.roles)
        self.throttle = LoginThrottle(store, settings.auth_login_max_failures,
                                      settings.auth_login_max_failures_per_address, settings.auth_login_window)

    # -- authorize ----------------------------------------------------------------------------

    async def begin(self, params: Mapping[str, str], ep: Endpoints) -> Pending:
        client_id, redirect_uri = params.get("client_id"), params.get("redirect_uri")
        client = await self.store.client(client_id) if client_id else None
        if client is None:
            raise PageError("Unknown client_id: this application is not registered here.")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            raise PageError("The redirect_uri is not one registered for this application.")
        state = params.get("state")

        def fail(error: str, description: str) -> AuthorizeError:
            return AuthorizeError(error, description, redirect_uri, state)

        if params.get("response_type") != "code":
            raise fail("unsupported_response_type", "response_type must be code")
        if not state:
            raise fail("invalid_request", "state is required")
        try:
            challenge = pkce.check_challenge(params.get("code_challenge"), params.get("code_challenge_method"))
        except OAuthError as exc:
            raise fail(exc.error, exc.description) from exc
        if (params.get("aud") or "").rstrip("/") != ep.issuer:
            raise fail("invalid_request", f"aud must be this FHIR server's base URL, {ep.issuer}")
        asked = sc.parse(params.get("scope"))
        if not params.get("scope"):
            raise fail("invalid_scope", "scope is required")
        granted = sc.grant(asked, sc.parse(client.scopes), contexts=("patient", "user"))
        launch: dict[str, Any] = {}
        launch_id: str | None = None
        if "launch" in granted:
            handle = params.get("launch")
            found = await self.store.launch(digest(handle)) if handle else None
            if found is None or found[2] < time.time():
                raise fail("invalid_request", "the launch parameter is missing, unknown or expired")
            if found[0] not in (None, client.client_id):
                raise fail("invalid_request", "the launch is for another application")
            launch, launch_id = found[1], digest(handle or "")
        if not granted.resources and not granted.smart:
            raise fail("invalid_scope", "none of the requested scopes can be granted to this client")
        nonce = params.get("nonce")
        return Pending(client.client_id, redirect_uri, state, challenge, str(granted), launch, nonce,
                       launch_id=launch_id)

    async def ticket(self, pending: Pending, csrf: str) -> str:
        key, record = await self.ring.signer()
        now = int(time.time())
        claims = {"p": pending.__dict__, "csrf": digest(csrf), "iat": now, "exp": now + TICKET_LIFETIME}
        return sign(key, record.kid, record.alg, claims, TICKET_TYP)

    async def read_ticket(self, ticket: str | None, csrf: str | None) -> Pending:
        if not ticket or not csrf:
            raise PageError("The sign-in form has expired or was not sent by this browser: start again.")
        try:
            claims = decode(ticket, await self.ring.verifier(kid_of(ticket)), TICKET_TYP)
        except InvalidToken as exc:
            raise PageError("The sign-in form has expired: start again from the application.") from exc
        if not secrets.compare_digest(claims.get("csrf", ""), digest(csrf)):
            raise PageError("The sign-in form was not sent by this browser: start again.")
        return Pending(**claims["p"])

    async def login(self, username: str, password: str, address: str | None = None) -> UserRecord | None:
        """The user, or None for a wrong username or password (counted); ``throttle.Throttled``
        when the username or the address has failed too often lately (nothing checked)."""
        await self.throttle.check(username, address)
        user = await self.store.user(username) if username else None
        ok = await asyncio.to_thread(verify_secret, user.password_hash if user else None, password)
        if not ok or user is None:
            await self.throttle.failed(username, address)
            return None
        await self.throttle.succeeded(username)
        return user

    def narrow(self, scope: str, user: UserRecord | None) -> str:
        """``scope`` with its ``user/`` scopes narrowed to what ``user``'s roles allow;
        ``invalid_scope`` when ``user/`` scopes were asked and no resource scope is left."""
        asked = sc.parse(scope)
        out = self.roles.narrow(asked, user.roles if user else ())
        if not out.resources and any(r.context == "user" for r in asked.resources):
            raise OAuthError("invalid_scope", "the user's roles allow none of the requested user/ scopes")
        return str(out)

    def sign_in(self, pending: Pending, user: UserRecord) -> Pending:
        """The pending request once ``user`` has signed in: its scopes narrowed by the user's roles
        (an :class:`AuthorizeError` back to the app when nothing is left)."""
        try:
            scope = self.narrow(pending.scope, user)
            self._check_launch_patient(pending, user)
        except OAuthError as exc:
            raise AuthorizeError(exc.error, exc.description, pending.redirect_uri, pending.state) from exc
        return Pending(**{**pending.__dict__, "scope": scope, "username": user.username})

    @staticmethod
    def _check_launch_patient(pending: Pending, user: UserRecord) -> None:
        """An EHR launch's patient must be one the user may open (a user with no patient list: any)."""
        patient = pending.launch.get("patient") if "launch" in pending.scopes else None
        if patient and user.patients and patient not in user.patients:
            raise OAuthError("access_denied", "the signed-in user may not open the launch's patient")

    async def approve(self, pending: Pending, user: UserRecord, patient: str | None, ep: Endpoints) -> str:
        """The redirect to the app with a new code (``patient``: the one picked, if needed)."""
        pending = Pending(**{**pending.__dict__, "scope": self.narrow(pending.scope, user)})  # roles now
        try:
            self._check_launch_patient(pending, user)
        except OAuthError as exc:
            raise AuthorizeError(exc.error, exc.description, pending.redirect_uri, pending.state) from exc
        scopes = pending.scopes
        context: dict[str, Any] = {}
        if "launch" in scopes:
            context = {k: v for k, v in pending.launch.items() if k in _LAUNCH_KEYS}
        if pending.needs_patient:
            patient = (patient or "").strip().removeprefix("Patient/")
            if not patient or not _ID.fullmatch(patient):
                raise OAuthError("invalid_request", "choose a patient")
            if user.patients and patient not in user.patients:
                raise OAuthError("invalid_request", "this user may not open that patient")
            context["patient"] = patient
            context.setdefault("need_patient_banner", True)
        if self.settings.auth_smart_style_url and "smart_style_url" not in context:
            context["smart_style_url"] = self.settings.auth_smart_style_url
        grant = {"scope": pending.scope, "sub": user.username, "fhirUser": user.fhir_user, "context": context,
                 "redirect_uri": pending.redirect_uri, "challenge": pending.challenge, "nonce": pending.nonce,
                 "auth_time": int(time.time()), "family": uuid.uuid4().hex}
        if pending.launch_id is not None and "launch" in scopes \
                and not await self.store.use_launch(pending.launch_id, int(time.time())):
            raise AuthorizeError("invalid_request", "the launch was used before or has expired",
                                 pending.redirect_uri, pending.state)
        code = secrets.token_urlsafe(32)
        await self.store.put_code(digest(code), pending.client_id, grant,
                                  int(time.time()) + self.settings.auth_code_lifetime)
        return with_query(pending.redirect_uri, {"code": code, "state": pending.state})

    @staticmethod
    def deny(pending: Pending) -> str:
        return AuthorizeError("access_denied", "the user declined", pending.redirect_uri, pending.state).location()

    # -- token --------------------------------------------------------------------------------

    async def token(self, form: Mapping[str, str], authorization: str | None, ep: Endpoints) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise OAuthError("unsupported_grant_type" if grant_type else "invalid_request",
                             f"grant_type {grant_type!r} is not supported" if grant_type else "grant_type is required")
        client = await self.clients.authenticate(credentials(form, authorization), (ep.token,))
        if grant_type == "authorization_code":
            return await self._code(form, client, ep)
        if grant_type == "refresh_token":
            return await self._refresh(form, client, ep)
        return await self._client_credentials(form, client, ep)

    async def _code(self, form: Mapping[str, str], client: ClientRecord, ep: Endpoints) -> dict[str, Any]:
        code, redirect_uri, verifier = form.get("code"), form.get("redirect_uri"), form.get("code_verifier")
        if not code or not redirect_uri or not verifier:
            raise OAuthError("invalid_request", "code, redirect_uri and code_verifier are required")
        stored, first = await self.store.use_code(digest(code))
        if stored is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        grant = stored.grant
        if not first:  # RFC 6749 4.1.2: a code used twice revokes what it was exchanged for
            await self.end_grant(grant["family"])
            raise OAuthError("invalid_grant", "the authorization code was used before")
        if stored.expires < time.time():
            raise OAuthError("invalid_grant", "the authorization code has expired")
        if stored.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the authorization code was issued to another client")
        if redirect_uri != grant["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
        if not pkce.verify(verifier, grant["challenge"]):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        user = await self._user(grant)
        return await self._issue(client, grant, ep, self.narrow(grant["scope"], user), new_refresh=True,
                                 roles=user.roles)

    async def _refresh(self, form: Mapping[str, str], client: ClientRecord, ep: Endpoints) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        stored = await self.store.refresh(digest(token))
        if stored is None or stored.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if stored.state == "rotated":  # a stolen copy or a replay: end the whole grant
            await self.end_grant(stored.family)
            raise OAuthError("invalid_grant", "the refresh token was used before; the grant is revoked")
        if stored.state != "active" or stored.expires < time.time():
            raise OAuthError("invalid_grant", "the refresh token is revoked or expired")
        grant = stored.grant
        scope = grant["scope"]
        if form.get("scope"):
            asked = sc.parse(form["scope"])
            if not sc.covers(sc.parse(scope), asked):
                raise OAuthError("invalid_scope", "a refresh cannot widen the original grant")
            scope = str(asked)
            # SMART: a refresh token holds the same or fewer claims than its access token, so the
            # narrowed scope is the grant from now on (keeping the refresh token's own permission,
            # offline_access or online_access, so the rotated token is of the same kind)
            kept = [s for s in ("offline_access", "online_access") if s in sc.parse(grant["scope"]) and s not in asked]
            grant = {**grant, "scope": " ".join([scope, *kept])}
        user = await self._user(grant)
        scope = self.narrow(scope, user)  # the user's roles now: one taken away narrows the new token
        if not await self.store.retire_refresh(digest(token)):  # lost a race with another use
            await self.end_grant(stored.family)
            raise OAuthError("invalid_grant", "the refresh token was used before; the grant is revoked")
        return await self._issue(client, grant, ep, scope, new_refresh=True, roles=user.roles)

    async def end_grant(self, family: str) -> None:
        """Revoke every token of one authorization: its refresh tokens, and its access tokens (by
        their ``grant_id``, until the last of them has expired)."""
        await self.store.revoke_family(family)
        now = int(time.time())
        await self.store.revoke_access(f"grant:{family}", now + self.settings.auth_access_token_lifetime + LEEWAY, now)

    async def _user(self, grant: dict[str, Any]) -> UserRecord:
        """The user a code or refresh token was granted to, as it is now."""
        user = await self.store.user(grant["sub"])
        if user is None:
            raise OAuthError("invalid_grant", "the user of this grant no longer exists")
        return user

    async def _client_credentials(self, form: Mapping[str, str], client: ClientRecord,
                                  ep: Endpoints) -> dict[str, Any]:
        if client.kind != "confidential-asymmetric":
            raise OAuthError("unauthorized_client", "client_credentials needs private_key_jwt client authentication")
        if not form.get("scope"):
            raise OAuthError("invalid_scope", "scope is required")
        granted = sc.grant(sc.parse(form["scope"]), sc.parse(client.scopes), contexts=("system",))
        granted = sc.Scopes(granted.resources)  # no launch, identity or refresh scopes here
        if not granted.resources:
            raise OAuthError("invalid_scope", "none of the requested system/ scopes can be granted")
        grant = {"scope": str(granted), "sub": client.client_id, "context": {}}
        lifetime = min(self.settings.auth_backend_token_lifetime, self.settings.auth_access_token_lifetime)
        return await self._issue(client, grant, ep, grant["scope"], new_refresh=False, lifetime=lifetime)

    async def _issue(self, client: ClientRecord, grant: dict[str, Any], ep: Endpoints, scope: str,
                     new_refresh: bool, roles: tuple[str, ...] = (), lifetime: int | None = None) -> dict[str, Any]:
        s = self.settings
        lifetime = lifetime or s.auth_access_token_lifetime
        scopes = sc.parse(scope)
        context = dict(grant.get("context") or {})
        fhir_user = grant.get("fhirUser")
        if fhir_user and "fhirUser" in scopes:
            context["fhirUser"] = f"{ep.issuer}/{fhir_user}"
        key, record = await self.ring.signer()
        claims = access_claims(issuer=ep.issuer, audience=ep.issuer, client_id=client.client_id,
                               subject=grant["sub"], scope=scope, lifetime=lifetime,
                               context=context, roles=roles, grant_id=grant.get("family"))
        out: dict[str, Any] = {"access_token": sign(key, record.kid, record.alg, claims, ACCESS_TYP),
                               "token_type": "Bearer", "expires_in": lifetime, "scope": scope}
        out.update({k: v for k, v in context.items() if k in _RESPONSE_KEYS})
        if "openid" in scopes:  # OpenID Connect Core 3.1.3.3: openid alone asks for an id token
            now = int(time.time())
            id_claims = {"iss": ep.issuer, "sub": grant["sub"], "aud": client.client_id, "iat": now,
                         "exp": now + lifetime, "auth_time": grant.get("auth_time", now)}
            if context.get("fhirUser"):
                id_claims["fhirUser"] = context["fhirUser"]
            if grant.get("nonce"):
                id_claims["nonce"] = grant["nonce"]
            id_key, id_record = await self.ring.signer(ID_TOKEN_ALG)  # SMART: RS256 id tokens
            out["id_token"] = sign(id_key, id_record.kid, id_record.alg, id_claims, "JWT")
        original = sc.parse(grant["scope"])
        if new_refresh and ("offline_access" in original or "online_access" in original):
            lifetime = s.auth_offline_refresh_lifetime if "offline_access" in original else s.auth_online_refresh_lifetime
            refresh = secrets.token_urlsafe(32)
            await self.store.put_refresh(digest(refresh), grant["family"], client.client_id, grant,
                                         int(time.time()) + lifetime)
            out["refresh_token"] = refresh
        return out

    # -- introspection and revocation ------------------------------------------------------------

    async def introspection_caller(self, form: Mapping[str, str], authorization: str | None,
                                   ep: Endpoints) -> str:
        """The client id of the caller of the introspection endpoint, which authenticates either as
        a confidential client (a secret or a client assertion) or, as SMART token-introspection
        permits, with an *appropriately scoped* bearer token: an access token of this server,
        valid and not revoked, issued to a registered confidential client (a SMART app's or a
        backend service's) and carrying at least one ``system/`` or ``user/`` scope (a token with
        ``patient/`` scopes only, or of a public client, may not introspect: 403
        ``insufficient_scope``). A bearer token that does not verify is 401 ``invalid_token``."""
        if authorization and authorization[:7].lower() == "bearer ":
            if form.get("client_secret") is not None or form.get("client_assertion") is not None:
                raise OAuthError("invalid_request", "use one client authentication method, not a bearer token too")
            try:
                g = await verify_access(authorization[7:].strip(), self.ring, self.store,
                                        issuer=ep.issuer, audience=ep.issuer)
            except InvalidToken as exc:
                raise OAuthError("invalid_token", str(exc), 401) from exc
            client = await self.store.client(g.client_id)
            if client is None or client.kind == "public":
                raise OAuthError("insufficient_scope", "introspection needs the token of a confidential client", 403)
            if not any(r.context in ("system", "user") for r in g.scopes.resources):
                raise OAuthError("insufficient_scope", "introspection needs a token with a system/ or user/ scope", 403)
            return client.client_id
        creds = credentials(form, authorization)
        if creds.method == "none":
            raise OAuthError("invalid_client", "introspection needs an authenticated (confidential) client "
                                               "or a bearer token")
        return (await self.clients.authenticate(creds, (ep.token, ep.introspect))).client_id

    async def introspect(self, form: Mapping[str, str], authorization: str | None,
                         ep: Endpoints) -> dict[str, Any]:
        caller = await self.introspection_caller(form, authorization, ep)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        try:
            g = await verify_access(token, self.ring, self.store, issuer=ep.issuer, audience=ep.issuer)
        except InvalidToken:
            stored = await self.store.refresh(digest(token))
            if (stored is None or stored.client_id != caller or stored.state != "active"
                    or stored.expires < time.time()):
                return {"active": False}
            out = {"active": True, "token_type": "refresh_token", "client_id": stored.client_id,
                   "scope": stored.grant["scope"], "exp": stored.expires, "sub": stored.grant["sub"]}
            out.update({k: v for k, v in (stored.grant.get("context") or {}).items() if k in CONTEXT_CLAIMS})
            return out
        out = {"active": True, "token_type": "Bearer", "scope": g.scope, "client_id": g.client_id,
               "sub": g.subject, "exp": g.expires, "iat": g.issued, "iss": ep.issuer, "aud": ep.issuer, "jti": g.jti}
        claims = unverified_claims(token) or {}  # verified above: its launch context, as in the token response
        out.update({k: claims[k] for k in CONTEXT_CLAIMS if k in claims})
        if g.roles:
            out["roles"] = list(g.roles)
        return out

    async def revoke(self, form: Mapping[str, str], authorization: str | None, ep: Endpoints) -> None:
        client = await self.clients.authenticate(credentials(form, authorization), (ep.token, ep.revoke))
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        stored = await self.store.refresh(digest(token))
        if stored is not None:
            if stored.client_id == client.client_id:  # RFC 7009 2.1: its access tokens too
                await self.end_grant(stored.family)
            return
        try:
            g = await verify_access(token, self.ring, self.store, issuer=ep.issuer, audience=ep.issuer)
        except InvalidToken:
            return  # RFC 7009 2.2: an invalid token is not an error
        if g.client_id == client.client_id:
            await self.store.revoke_access(g.jti, g.expires, int(time.time()))

    # -- EHR launch handles -------------------------------------------------------------------

    async def create_launch(self, body: Any, form: Mapping[str, str], authorization: str | None,
                            ep: Endpoints) -> dict[str, Any]:
        creds = credentials(form, authorization)
        if creds.method == "none":
            raise OAuthError("invalid_client", "creating a launch needs an authenticated (confidential) client")
        caller = await self.clients.authenticate(creds, (ep.token, ep.launch))
        if LAUNCH_ISSUER not in caller.scopes.split():
            raise OAuthError("unauthorized_client", f"this client may not create launches (needs {LAUNCH_ISSUER})")
        context = launch_context(body)
        target = body.get("client_id")
        if target is not None and (not isinstance(target, str) or await self.store.client(target) is None):
            raise OAuthError("invalid_request", "client_id names no registered application")
        handle = secrets.token_urlsafe(24)
        lifetime = self.settings.auth_launch_lifetime
        await self.store.put_launch(digest(handle), target, context, int(time.time()) + lifetime)
        return {"launch": handle, "expires_in": lifetime}


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LAUNCH_KEYS = ("patient", "encounter", "fhirContext", "need_patient_banner", "smart_style_url", "intent", "tenant")
#: fhirContext roles SMART App Launch 2.2 defines (scopes-and-launch-context): the only relative ones
SMART_ROLES = frozenset({"launch"})
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s]+")
_RESPONSE_KEYS = _LAUNCH_KEYS + ("fhirUser",)


def launch_context(body: Any) -> dict[str, Any]:
    """The context of an EHR launch, checked: ``patient`` and ``encounter`` ids, ``fhirContext``
    entries (``reference`` ``Type/id``, ``canonical`` or ``identifier``, optional ``role``: an
    absolute URI, or a role SMART defines, ``SMART_ROLES``; never empty), ``need_patient_banner``,
    ``smart_style_url``, ``intent``, ``tenant``."""
    if not isinstance(body, dict):
        raise OAuthError("invalid_request", "the launch context must be a JSON object")
    out: dict[str, Any] = {}
    for name, rtype in (("patient", "Patient"), ("encounter", "Encounter")):
        value = body.get(name)
        if value is None:
            continue
        value = value.removeprefix(rtype + "/") if isinstance(value, str) else value
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise OAuthError("invalid_request", f"{name} must be a {rtype} id")
        out[name] = value
    entries = body.get("fhirContext")
    if entries is not None:
        if not isinstance(entries, list):
            raise OAuthError("invalid_request", "fhirContext must be a list")
        for e in entries:
            if not isinstance(e, dict) or not ({"reference", "canonical", "identifier"} & e.keys()):
                raise OAuthError("invalid_request", "each fhirContext entry needs a reference, canonical or identifier")
            ref = e.get("reference")
            if ref is not None:
                rtype, _, rid = ref.partition("/") if isinstance(ref, str) else ("", "", "")
                if rtype not in RESOURCE_TYPES or not _ID.fullmatch(rid):
                    raise OAuthError("invalid_request", f"fhirContext reference {ref!r} is not Type/id")
            role = e.get("role")
            good = isinstance(role, str) and (role in SMART_ROLES or _ABSOLUTE_URI.fullmatch(role))
            if role is not None and not good:
                raise OAuthError("invalid_request", f"fhirContext role {role!r} must be an absolute URI (e.g. "
                                 "http://fhir-ctms.org/fhir/fhir-context-role/site) or a role SMART defines "
                                 f"({', '.join(sorted(SMART_ROLES))})")
        out["fhirContext"] = entries
    for name, kind in (("need_patient_banner", bool), ("smart_style_url", str), ("intent", str), ("tenant", str)):
        if body.get(name) is not None:
            if not isinstance(body[name], kind):
                raise OAuthError("invalid_request", f"{name} has the wrong type")
            out[name] = body[name]
    return out
