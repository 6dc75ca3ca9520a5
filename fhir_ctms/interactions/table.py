"""Every interaction the server implements, declared once.

The HTTP layer and Bundle processing dispatch through :func:`perform`, and the
CapabilityStatement is generated from :data:`INTERACTIONS`, so what is
advertised is exactly what is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import operations
from ..config import Settings
from ..errors import Forbidden
from ..storage.repository import Session
from . import access
from .context import Context, FhirRequest, FhirResponse
from .capabilities import capabilities
from . import create as create_, update as update_
from .create import create
from .delete import delete
from .history import history
from .patch import patch
from .read import read, vread
from .search import search, search_compartment, search_system
from .update import update

Handler = Callable[[FhirRequest, Context, Session], Awaitable[FhirResponse]]


@dataclass(frozen=True, slots=True)
class Interaction:
    #: the CapabilityStatement code (R5 restful-interaction value set)
    code: str
    #: "instance" | "type" | "system" | "server" (capabilities) | "compartment" (not listed as
    #: an interaction: the CapabilityStatement names the compartments instead) | "operation"
    #: (``$name`` at any level: listed as operations, from ``fhir_ctms.operations``)
    level: str
    handler: Handler
    writes: bool
    #: checks that need no database (parsing, validation), run before a session opens, so
    #: that a write session (which holds the writer lock) spends its time on the database
    prepare: Callable[[FhirRequest, Settings], FhirRequest] | None = None


INTERACTIONS: dict[str, Interaction] = {
    "read": Interaction("read", "instance", read, False),
    "vread": Interaction("vread", "instance", vread, False),
    "update": Interaction("update", "instance", update, True, update_.prepare),
    "patch": Interaction("patch", "instance", patch, True),
    "delete": Interaction("delete", "instance", delete, True),
    "history-instance": Interaction("history-instance", "instance", history, False),
    "history-type": Interaction("history-type", "type", history, False),
    "create": Interaction("create", "type", create, True, create_.prepare),
    "search-type": Interaction("search-type", "type", search, False),
    "history-system": Interaction("history-system", "system", history, False),
    "search-system": Interaction("search-system", "system", search_system, False),
    "search-compartment": Interaction("search-compartment", "compartment", search_compartment, False),
    "capabilities": Interaction("capabilities", "server", capabilities, False),
    # an operation opens the sessions it needs (e.g. $reindex commits in batches)
    "operation": Interaction("operation", "operation", operations.invoke, False),
}


async def perform(req: FhirRequest, ctx: Context, s: Session | None = None) -> FhirResponse:
    """Run one interaction in ``s``, or in a session of its own.

    With an access token (``ctx.access``) the interaction runs under its guard
    (``interactions/access.py``): 403 when the token's scopes do not grant it, and a session
    that lets through only what they cover; what it writes is checked before the transaction
    ends. A 403 is noted on ``ctx`` (``access.note_denial``) for the audit trail."""
    spec = INTERACTIONS[req.interaction]
    try:
        guard = access.guard(req, ctx)
        if spec.level == "operation" and s is None:
            await access.check_operation_target(req, ctx)  # the instance it reads: one the token may read
        if s is not None or spec.level == "operation":
            if guard is None or s is None:
                return await spec.handler(req, ctx, s)
            return await guard.run(spec.handler, req, ctx, s)
        if spec.prepare is not None:
            req = spec.prepare(req, ctx.settings)
        async with ctx.repo.session(write=spec.writes) as own:
            if guard is None:
                return await spec.handler(req, ctx, own)
            return await guard.run(spec.handler, req, ctx, own)
    except Forbidden as exc:  # audited by the HTTP layer, after this request's sessions end
        access.note_denial(ctx, req, exc)
        raise
