"""HTTP of the SMART authorization server (FastAPI routes over ``fhir_ctms.auth.flows``).

| route | what |
|---|---|
| ``GET /fhir/.well-known/smart-configuration`` | discovery (public) |
| ``GET /fhir/.well-known/openid-configuration`` | OpenID Connect discovery of the issuer (public) |
| ``GET, POST /auth/authorize`` | the authorization request (``authorize-post`` too): the login page, or an error |
| ``POST /auth/login`` | the login form: the consent page, or the login page again (429 while throttled) |
| ``POST /auth/consent`` | Allow/Deny: a 303 to the app's redirect URI with ``code`` or ``error``, and ``state`` |
| ``POST /auth/token`` | RFC 6749 token endpoint (authorization_code, refresh_token, client_credentials) |
| ``POST /auth/introspect`` | RFC 7662 |
| ``POST /auth/revoke`` | RFC 7009 |
| ``GET /auth/jwks`` | the server's public keys |
| ``POST /auth/launch`` | an EHR (confidential client allowed ``fhir-ctms/launch``) gets a launch handle for a JSON context |

A wrong username or password at ``/auth/login``, a login refused by throttling, and an
``invalid_client`` or ``invalid_grant`` at the endpoints where clients authenticate, are audited
(an AuditEvent per failure, written as the FHIR API's refusals are: ``audit.records.security_event``).

Where the server is (the issuer, the endpoints): ``FHIR_CTMS_PUBLIC_BASE_URL``; without it, the
request's ``Host`` only when it names the address the server itself was reached at (the ASGI
``server``, loopback names counting as one), else 421 Misdirected Request: a forged ``Host``
can neither poison discovery nor make a client assertion's ``aud`` check accept another
server's URL (behind a proxy, set the public base URL).

The browser forms are protected against CSRF by a double-submit cookie (``SameSite=Lax``,
``HttpOnly``): each form carries the cookie's value, and the signed ticket is bound to it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..audit import records
from ..audit.records import Actor
from ..auth import flows
from ..auth.clients import credentials
from ..auth.discovery import Endpoints, openid_configuration, smart_configuration
from ..auth.errors import OAuthError, PageError
from ..auth.throttle import Throttled
from ..auth.tokens import claimed
from ..interactions.context import instant, now_us
from ..interactions.persist import record_security_event
from . import smart_pages as pages

CSRF_COOKIE = "fhir_ctms_csrf"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _server(request: Request) -> flows.AuthServer:
    """The authorization server, shared with the FHIR app (which verifies tokens with its keys)."""
    return request.app.state.fhir.auth


def _endpoints(request: Request) -> Endpoints:
    """The issuer and endpoints: the public base URL, else from a ``Host`` naming this server
    (``OAuthError`` 421 for any other ``Host``)."""
    settings = request.app.state.fhir.settings
    if settings.public_base_url:
        return Endpoints(settings.public_base_url.rstrip("/"))
    scope = request.scope
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    host = request.headers.get("host")
    if host is None:
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    elif not own_host(host, server, scheme):
        raise OAuthError("invalid_request", f"the Host {host[:100]!r} is not this server's address; behind a proxy "
                         "or under another name, set FHIR_CTMS_PUBLIC_BASE_URL", 421)
    return Endpoints(f"{scheme}://{host}{scope.get('root_path', '')}/fhir")


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def own_host(host: str, server: Any, scheme: str = "http") -> bool:
    """Whether a ``Host`` header names the address the request reached (``server``: the ASGI
    scope's ``(host, port)``); ``localhost``, ``127.0.0.1`` and ``::1`` are one address."""
    if not server or len(server) != 2:
        return False
    default = 443 if scheme in ("https", "wss") else 80
    try:
        parts = urlsplit("//" + host)
        name, port = parts.hostname, parts.port or default
    except ValueError:
        return False
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return False
    own = str(server[0]).lower().strip("[]")
    same = name == own or (name in _LOOPBACK and (own in _LOOPBACK or own.startswith("127.")))
    return same and port == (int(server[1]) if server[1] is not None else default)


def _oauth_error(exc: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if exc.error in ("invalid_token", "insufficient_scope"):  # a bearer token refused (RFC 6750 3)
        headers["WWW-Authenticate"] = f'Bearer realm="fhir-ctms", error="{exc.error}"'
    elif exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fhir-ctms"'
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**_PAGE_HEADERS, **(headers or {})})


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _form(request: Request) -> dict[str, str]:
    """The form fields (a repeated field is an error, RFC 6749 3.1)."""
    form = await request.form()
    out: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in out:
            raise OAuthError("invalid_request", f"{key} is repeated")
        if not isinstance(value, str):
            raise OAuthError("invalid_request", f"{key} must be a form field")
        out[key] = value
    return out


def _csrf(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token, and whether it is new (so the cookie must be set)."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and 20 <= len(token) <= 100:
        return token, False
    return secrets.token_urlsafe(32), True


def _with_cookie(response: Response, request: Request, token: str, new: bool) -> Response:
    if new:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="lax", path="/auth",
                            secure=request.url.scheme == "https")
    return response


@router.get("/fhir/.well-known/smart-configuration")
async def smart_config(request: Request) -> JSONResponse:
    try:
        ep = _endpoints(request)
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(smart_configuration(ep), headers={"Cache-Control": "max-age=300"})


@router.get("/fhir/.well-known/openid-configuration")
async def openid_config(request: Request) -> JSONResponse:
    try:
        ep = _endpoints(request)
    except OAuthError as exc:
        return _oauth_error(exc)
    return JSONResponse(openid_configuration(ep), headers={"Cache-Control": "max-age=300"})


@router.get("/auth/jwks")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(await _server(request).ring.jwks(), headers={"Cache-Control": "max-age=60"})


@router.api_route("/auth/authorize", methods=["GET", "POST"])
async def authorize(request: Request) -> Response:
    server = _server(request)
    try:
        ep = _endpoints(request)
        if request.method == "POST":
            params = await _form(request)
        else:
            params = {}
            for key, value in request.query_params.multi_items():
                if key in params:
                    raise PageError(f"The parameter {key} is repeated.")
                params[key] = value
        pending = await server.begin(params, ep)
    except flows.AuthorizeError as exc:
        return RedirectResponse(exc.location(), status_code=303 if request.method == "POST" else 302)
    except (PageError, OAuthError) as exc:
        return _html(pages.error(str(exc) if isinstance(exc, PageError) else exc.description),
                     exc.status if isinstance(exc, OAuthError) else 400)
    csrf, new = _csrf(request)
    ticket = await server.ticket(pending, csrf)
    page = pages.login(ep.auth + "/login", ticket, csrf, pending.client_id)
    return _with_cookie(_html(page), request, csrf, new)


async def _ticket(request: Request, server: flows.AuthServer) -> tuple[dict[str, str], flows.Pending, str]:
    form = await _form(request)
    csrf = request.cookies.get(CSRF_COOKIE)
    if not csrf or not secrets.compare_digest(form.get("csrf_token", ""), csrf):
        raise PageError("The form was not sent by this browser (CSRF check failed): start again.")
    return form, await server.read_ticket(form.get("ticket"), csrf), csrf


@router.post("/auth/login")
async def login(request: Request) -> Response:
    server = _server(request)
    try:
        ep = _endpoints(request)
        form, pending, csrf = await _ticket(request, server)
    except (PageError, OAuthError) as exc:
        return _html(pages.error(str(exc)), exc.status if isinstance(exc, OAuthError) else 400)
    username = form.get("username", "")
    try:
        user = await server.login(username, form.get("password", ""), _address(request))
    except Throttled as exc:  # refused without looking at the password
        await _audit_failure(request, username or None, pending.client_id,
                             f"Login refused at /auth/login: {exc}")
        minutes = -(-exc.retry_after // 60)
        page = pages.login(ep.auth + "/login", form["ticket"], csrf, pending.client_id,
                           f"Too many failed sign-in attempts. Try again in {minutes} minute{'s' * (minutes != 1)}.")
        return _html(page, 429, {"Retry-After": str(exc.retry_after)})
    if user is None:
        await _audit_failure(request, username or None, pending.client_id,
                             "Login failed at /auth/login: wrong username or password")
        return _html(pages.login(ep.auth + "/login", form["ticket"], csrf, pending.client_id,
                                 "Wrong username or password."), 401)
    try:
        signed_in = server.sign_in(pending, user)  # user/ scopes narrowed by the user's roles
    except flows.AuthorizeError as exc:
        return RedirectResponse(exc.location(), status_code=303)
    ticket = await server.ticket(signed_in, csrf)
    return _html(_consent(ep, signed_in, ticket, csrf, user.patients))


def _consent(ep: Endpoints, pending: flows.Pending, ticket: str, csrf: str, patients: tuple[str, ...],
             error: str | None = None) -> str:
    scopes = str(pending.scopes).split()
    return pages.consent(ep.auth + "/consent", ticket, csrf, pending.client_id, pending.username or "", scopes,
                         patients if pending.needs_patient else None, error)


@router.post("/auth/consent")
async def consent(request: Request) -> Response:
    server = _server(request)
    try:
        ep = _endpoints(request)
        form, pending, csrf = await _ticket(request, server)
        user = await server.store.user(pending.username or "")
        if user is None:
            raise PageError("Not signed in: start again from the application.")
    except (PageError, OAuthError) as exc:
        return _html(pages.error(str(exc)), exc.status if isinstance(exc, OAuthError) else 400)
    if form.get("decision") != "allow":
        return RedirectResponse(server.deny(pending), status_code=303)
    try:
        location = await server.approve(pending, user, form.get("patient"), ep)
    except flows.AuthorizeError as exc:  # back to the app (a spent launch, a patient the user may not open)
        return RedirectResponse(exc.location(), status_code=303)
    except OAuthError as exc:
        return _html(_consent(ep, pending, form["ticket"], csrf, user.patients, exc.description), 400)
    return RedirectResponse(location, status_code=303)


#: the OAuth errors that are failed authentications (of the client, or of the grant it presents)
AUDITED_ERRORS = frozenset({"invalid_client", "invalid_grant", "invalid_token"})


async def _audit_failure(request: Request, user: str | None, client: str | None, detail: str) -> None:
    """The AuditEvent of a failed authentication at the authorization server (the claimed user
    and client, the network address; ``audit.records.security_event``), in its own write
    transaction; a failure to write it is logged, never the answer."""
    state = request.app.state.fhir
    who = Actor(display=(user or client or "anonymous")[:128], address=request.client.host if request.client else None,
                client=client[:128] if client else None)
    ts = now_us()
    record = records.security_event("authentication", instant(ts), who, detail, state.settings.source_name,
                                    auth_server=True)
    await record_security_event(state.repo, record, ts)


async def _refused(request: Request, exc: OAuthError, form: dict[str, str]) -> JSONResponse:
    """The OAuth error response; a failed client or grant authentication is audited first."""
    if exc.error in AUDITED_ERRORS:
        authorization = request.headers.get("authorization") or ""
        try:
            creds = credentials(form, authorization)
            client = creds.client_id or claimed(creds.assertion)[0]
        except OAuthError:
            client = form.get("client_id")
        if client is None and authorization[:7].lower() == "bearer ":  # a refused bearer token: whose it said
            client = claimed(authorization[7:].strip())[1]
        await _audit_failure(request, None, client,
                             f"{request.url.path}: {exc.error}: {exc.description}"[:1024])
    return _oauth_error(exc)


async def _client_call(request: Request, method: str) -> tuple[Any, JSONResponse | None]:
    """A form-posted call that authenticates its client (token, introspect, revoke): the
    server's ``method``'s result, or the OAuth error response (audited when it is a failed
    authentication)."""
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        call = getattr(_server(request), method)
        return await call(form, request.headers.get("authorization"), _endpoints(request)), None
    except OAuthError as exc:
        return None, await _refused(request, exc, form)


@router.post("/auth/token")
async def token(request: Request) -> JSONResponse:
    body, refused = await _client_call(request, "token")
    return refused or JSONResponse(body, headers=_NO_STORE)


@router.post("/auth/introspect")
async def introspect(request: Request) -> JSONResponse:
    body, refused = await _client_call(request, "introspect")
    return refused or JSONResponse(body, headers=_NO_STORE)


@router.post("/auth/revoke")
async def revoke(request: Request) -> Response:
    _, refused = await _client_call(request, "revoke")
    return refused or Response(status_code=200, headers=_NO_STORE)


@router.post("/auth/launch")
async def launch(request: Request) -> JSONResponse:
    """The launch context as a JSON body (the client authenticating by HTTP Basic), or as the
    form field ``context`` (JSON text) beside ``client_assertion_type`` and ``client_assertion``
    (``private_key_jwt``) or ``client_id`` and ``client_secret``."""
    form: dict[str, str] = {}
    try:
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = await _form(request)
            text = form.pop("context", "")
        else:
            form, text = {}, (await request.body()).decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError as exc:
            raise OAuthError("invalid_request", "the launch context must be a JSON object") from exc
        out = await _server(request).create_launch(body, form, request.headers.get("authorization"),
                                                   _endpoints(request))
    except OAuthError as exc:
        return await _refused(request, exc, form)
    return JSONResponse(out, status_code=201, headers=_NO_STORE)
