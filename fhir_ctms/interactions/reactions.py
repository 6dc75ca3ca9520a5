"""Reactions to writes: what the server itself changes, in the same transaction, when a resource
of some type is written.

A module that owns a rule registers a coroutine for a type with :func:`after_write` when it is
imported (the operations' modules are imported by ``interactions/table.py``, through which every
interaction, Bundle entry and import line runs, so their reactions are always in place). ``persist.write`` calls :func:`run` after the version, its index rows and its audit
records are stored, for every create, update and patch (a deletion runs none), and each
reaction of the written type gets ``(session, ctx, resource)``:

- ``session``: the write's own session, beneath any access guard (a reaction applies a rule of
  the server, so its reads are not filtered by the token); whatever it writes it writes through
  an interaction (``table.perform`` on that session), so each of its writes has its version,
  Provenance and AuditEvent and is checked against the caller's token like a transaction entry
  (a token that may not make the reaction's write gets a 403 for the whole change);
- ``ctx``: the caller's ``Context`` (a reaction sets its own ``reason`` for its writes);
- ``resource``: the resource as stored (``id`` and ``meta`` stamped).

Same transaction: a reaction that raises rolls back the whole change, the write that triggered
it included. It refuses with a ``FhirError`` (``errors.py``: a 422 for a rule broken), which
the API boundary turns into an OperationOutcome, never a 500. A reaction's own writes run the
reactions of their types, so a reaction must reach a fixed point (write only when a state
changes).

Registered: ``PaymentNotice`` (``operations/payments.py``, ``confirm_payment``): an ``issued``
site Invoice that its active PaymentNotices pay in full becomes ``balanced``; a notice in another
currency than its Invoice's is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..storage.repository import Session
from .access import GuardedSession
from .context import Context

Reaction = Callable[[Session, Context, dict[str, Any]], Awaitable[None]]

#: type -> its reactions, in registration order
REACTIONS: dict[str, list[Reaction]] = {}


def after_write(rtype: str) -> Callable[[Reaction], Reaction]:
    """Register the decorated coroutine as a reaction to every write of ``rtype``."""
    def register(fn: Reaction) -> Reaction:
        if fn not in REACTIONS.setdefault(rtype, []):
            REACTIONS[rtype].append(fn)
        return fn
    return register


async def run(s: Session, ctx: Context, rtype: str, resource: dict[str, Any]) -> None:
    """The reactions to a write of ``resource`` (of ``rtype``), in ``s``'s transaction."""
    handlers = REACTIONS.get(rtype)
    if not handlers:
        return
    while isinstance(s, GuardedSession):  # the rule is the server's: its reads are not filtered
        s = s.inner
    for handler in handlers:
        await handler(s, ctx, resource)
