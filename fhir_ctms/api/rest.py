"""The FHIR REST API under ``/fhir`` as a plain ASGI application.

One request: route the method and path through the table in
``fhir_ctms.interactions.router`` (404, 405 with ``Allow``), negotiate the
response type (406), check and read the body (415, 413), run the interaction,
render the result. Any exception ends at :func:`boundary.error_response`. With ``auth_enabled``
every request but ``/metadata`` needs a bearer token (401 otherwise), verified here into an
``AccessGrant`` on the interaction's ``Context``; its scopes are enforced below, in
``interactions/access.py``. Each 401, and each 403 (noted on the ``Context`` by
``interactions/access.py``), is audited here (``audit.records.security_event``), in a write
transaction of its own once the request's sessions have ended.

Why not FastAPI routes here: measured on this machine (BENCHMARKS.md), the
framework's routing, request objects, dependency solving and response classes
cost more per read-by-id than the interaction and the database together
(FHIR reads bodies, parameters and headers by its own rules, so the framework
had nothing to validate). FastAPI still serves everything else (``/openapi.json``,
``/docs``, and the authorization endpoints, ``api/smart.py``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from ..audit import records
from ..audit.records import Actor
from ..auth.tokens import AccessGrant, InvalidToken, claimed, verify_access
from ..config import Settings
from ..errors import BadRequest, Forbidden, Unauthorized
from ..interactions import bundle
from ..interactions.access import note_denial
from ..interactions.context import Context, instant, now_us
from ..interactions.persist import record_security_event
from ..interactions.router import FORM, PATCH, route
from ..interactions.table import perform
from ..search.parameters import resource_types
from ..storage.repository import Repository
from . import boundary
from .http import ClientGone, Incoming, Outgoing, context, fhir_request, form_params, incoming, read_body, render
from .negotiation import FHIR_JSON, JSON_PATCH, check_body_type, response_type
from .negotiation import FORM as FORM_TYPE

Send = Callable[[dict[str, Any]], Awaitable[None]]

_BODY_TYPES = {FORM: (FORM_TYPE,), PATCH: (JSON_PATCH,)}
_RESOURCE_TYPES = (FHIR_JSON, "application/json")


class State:
    """What every request needs: the settings and the repository (set at startup), and the
    authorization server (its keys and store: token verification here, the endpoints in
    ``api/smart.py``)."""

    def __init__(self, settings: Settings, repo: Repository | None) -> None:
        self.settings = settings
        self.repo = repo
        self._auth: Any = None

    @property
    def auth(self) -> Any:
        """The ``auth.flows.AuthServer`` on the repository's engine (made on first use)."""
        from ..auth.flows import AuthServer
        from ..storage.auth_store import AuthStore
        engine = self.repo.engine  # type: ignore[union-attr]
        if self._auth is None or self._auth.store.engine is not engine:
            self._auth = AuthServer(AuthStore(engine), self.settings)
        return self._auth


_REALM = 'Bearer realm="fhir-ctms"'


def _challenge(error: str, description: str) -> dict[str, str]:
    text = description.replace("\\", "").replace('"', "'")
    return {"WWW-Authenticate": f'{_REALM}, error="{error}", error_description="{text}"'}


#: RFC 6750 section 2.1: ``Bearer`` 1*SP b64token
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


async def authenticate(state: State, authorization: str | None, base: str) -> AccessGrant:
    """The grant of the request's bearer token (RFC 6750 section 3.1), or an error with a
    ``WWW-Authenticate`` challenge:

    - no ``Authorization`` header, or another scheme (``Basic``...): 401 with the bare challenge
      (the request "lacks any authentication information ... or attempted using an unsupported
      authentication method": no error code);
    - a malformed ``Bearer`` header (no token, or not a b64token): 400 ``invalid_request``;
    - a token that does not verify (signature by kid, exp, iss and aud = the FHIR base,
      revocation): 401 ``invalid_token``."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("This server requires a bearer token (SMART App Launch): see "
                           f"{base}/.well-known/smart-configuration", headers={"WWW-Authenticate": _REALM})
    token = token.strip()
    if not _B64TOKEN.match(token):
        raise BadRequest("The Authorization header must be 'Bearer <access token>'",
                         headers=_challenge("invalid_request", "Bearer token expected"))
    server = state.auth
    try:
        return await verify_access(token, server.ring, server.store, issuer=base, audience=base,
                                   external=server.external)  # or an external provider's (auth/external.py)
    except InvalidToken as exc:
        raise Unauthorized(f"Invalid access token: {exc}", headers=_challenge("invalid_token", str(exc))) from exc


class FhirRest:
    def __init__(self, state: State, prefix: str = "/fhir") -> None:
        self.state = state
        self.prefix = prefix
        # the search parameters, with the custom ones of profiles/, loaded now rather than by
        # the first request (a broken profiles/ SearchParameter stops the start)
        resource_types()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        try:
            out = await self.handle(scope, receive)
        except ClientGone:
            return
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes an OperationOutcome
            out = boundary.error_response(exc)
        await send({"type": "http.response.start", "status": out.status, "headers": out.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else out.body})

    async def handle(self, scope: dict[str, Any], receive: Any) -> Outgoing:
        settings, repo = self.state.settings, self.state.repo
        inc = incoming(scope, self.prefix, settings)
        match = route(inc.method, inc.segments)
        grant = None
        if settings.auth_enabled and match.interaction != "capabilities":  # /metadata stays public
            try:
                grant = await authenticate(self.state, inc.headers.get("authorization"), inc.base)
            except (Unauthorized, BadRequest) as exc:  # BadRequest: a malformed Authorization header
                await self._audit_failed_authentication(inc, exc)
                raise
        media = response_type(inc.param("_format"), inc.headers.get("accept"), match.interaction == "operation")
        body, params = b"", None
        kind = match.route.bodies.get(inc.method)
        if kind is not None:
            checked = check_body_type(inc.headers.get("content-type"), _BODY_TYPES.get(kind, _RESOURCE_TYPES))
            body = await read_body(receive, inc.headers, settings.max_body_bytes)
            if checked == FORM_TYPE:
                params, body = inc.params + form_params(body), b""
        req = fhir_request(inc, match, body, params)
        ctx = context(inc, repo, settings, grant)
        try:
            if match.interaction == "bundle":
                # Prefer: return applies to the entries (bundle.process), not to the response Bundle
                res = await bundle.process(req, ctx)
            else:
                res = await perform(req, ctx)
        except Forbidden as exc:
            note_denial(ctx, req, exc)  # one the layers below did not note (a transaction's conditional match)
            raise
        finally:
            if ctx.denials:  # every session of the request has ended (a refused write rolled back)
                await self._audit_denials(ctx)
        return render(inc, req, res, media)

    # -- the audit records of refusals (audit.records.security_event) ------------------------------

    async def _audit_failed_authentication(self, inc: Incoming, exc: Unauthorized | BadRequest) -> None:
        """A 401 (or the 400 of a malformed Authorization header): the AuditEvent names the user
        and client the token claims (unverified), the network address and the request; written in
        its own transaction, never failing the answer."""
        settings = self.state.settings
        sub, client = claimed(_bearer(inc.headers.get("authorization")))
        who = Actor(display=sub or "anonymous", address=inc.client, client=client)
        ts = now_us()
        detail = exc.diagnostics + (" (user and client as claimed by the unverified token)" if sub or client else "")
        record = records.security_event("authentication", instant(ts), who, detail, settings.source_name,
                                         request=f"{inc.method} {self.prefix}/{'/'.join(inc.segments)}")
        await record_security_event(self.state.repo, record, ts)

    async def _audit_denials(self, ctx: Context) -> None:
        """One AuditEvent per 403 of the request: the token's user and client, the address, the
        resource (or type) and the interaction asked for."""
        for req, text in ctx.denials:
            instance = req.id is not None and req.compartment is None and (
                req.interaction in _INSTANCE or req.interaction == "operation")
            target = f"{req.type}/{req.id}" if instance and req.type else req.type
            interaction = f"operation ${req.operation}" if req.interaction == "operation" else req.interaction
            ts = now_us()
            record = records.security_event("denial", instant(ts), ctx.actor, text, ctx.settings.source_name,
                                             interaction=interaction, target=target)
            await record_security_event(ctx.repo, record, ts)
        ctx.denials.clear()


_INSTANCE = frozenset({"read", "vread", "update", "patch", "delete", "history-instance"})


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
