"""The one write path: a new version, its index rows and its two audit records, in one transaction.

Every interaction that changes data (create, update, patch, delete, and each
entry of a batch or transaction) ends in :func:`write`, so no change can be
stored without its Provenance and AuditEvent, and none of them without the
others: they share the caller's database transaction.

An audit record that belongs to no change (a failed authentication, an authorization denial:
``audit.records.security_event``) is stored by :func:`record_security_event` the same way (a
resource version, its index rows, a chain link) in a write transaction of its own, so it stays
when the refused request's own transaction rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import uuid_utils

from ..audit import chain, records
from ..errors import Conflict
from ..resources.json import dumps
from ..search.index import index_rows
from ..storage.repository import IndexRow, Repository, Session, Stored, VersionConflict
from .context import Context, instant, now_us
from . import reactions

_METHOD = {"create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}
log = logging.getLogger("fhir_ctms")


def new_id() -> str:
    """A server-assigned id: a UUIDv7 (RFC 9562), which starts with its creation time, so new
    rows go to the end of every index keyed by id instead of a random page (measured: a
    create with its search index rows cost 29% less than with random UUIDv4 ids). uuid-utils (Rust)
    makes one in 0.2 us where the pure-Python uuid6 took 3.3 us, three times a change, and keeps
    them in time order without running ahead of the clock."""
    return str(uuid_utils.uuid7())


def _stamp(resource: dict[str, Any], rid: str, version: int, ts_us: int) -> str:
    """Set id and meta.versionId/lastUpdated (in place, first after resourceType) and serialise."""
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(ts_us)
    rest = resource.copy()
    rtype = rest.pop("resourceType")
    rest.pop("id", None)
    rest.pop("meta", None)
    resource.clear()
    resource["resourceType"], resource["id"], resource["meta"] = rtype, rid, meta
    resource.update(rest)
    return dumps(resource).decode()


async def write(s: Session, ctx: Context, rtype: str, rid: str, resource: dict[str, Any] | None,
                interaction: str, current: Stored | None) -> Stored:
    """Store ``resource`` (None: a deletion) as the version after ``current`` and audit it; then
    the reactions to a write of its type (``interactions/reactions.py``), in the same transaction."""
    version = current.version + 1 if current else 1
    ts = now_us() if current is None else max(now_us(), current.ts_us + 1)
    content = _stamp(resource, rid, version, ts) if resource is not None else None
    new = Stored(rtype, rid, version, ts, resource is None, content, _METHOD[interaction])
    try:
        await s.put(new, previous=current.version if current else None)
    except VersionConflict as exc:
        raise Conflict(str(exc)) from exc
    await s.set_index(rtype, rid, index_rows(resource) if resource is not None else [], new=current is None)
    await _audit(s, ctx, (rtype, rid, str(version)), interaction, ts)
    if resource is not None:
        await reactions.run(s, ctx, rtype, resource)  # the server's own consequences, same transaction
    return new


async def _audit(s: Session, ctx: Context, target: tuple[str, str, str], interaction: str, ts: int) -> None:
    why = ctx.reason or ctx.settings.default_reason
    reference = "{}/{}/_history/{}".format(*target)
    for build in (records.provenance, records.audit_event):
        record = build(reference, interaction, instant(ts), ctx.actor, why, ctx.settings.source_name,
                       ctx.activity)
        rid = new_id()
        rtype = record["resourceType"]
        content = _stamp(record, rid, 1, ts)
        await s.put(Stored(rtype, rid, 1, ts, False, content, "POST"), previous=None)
        await s.set_index(rtype, rid, audit_index_rows(build, target, interaction, ts, ctx.actor, why,
                                                       ctx.settings.source_name, ctx.activity), new=True)
        await chain.append(s, rtype, rid, record)


async def record_security_event(repo: Repository | None, record: dict[str, Any], ts: int) -> str | None:
    """Store ``record`` (an AuditEvent of no change, ``recorded`` = ``instant(ts)``) in a write
    transaction of its own: the version, its index rows (extracted, not templated: these are
    rare), the chain link. Never raises: a failure is logged and None returned, so that the
    401 or 403 being recorded is still the answer. Returns the new id."""
    if repo is None:
        log.error("security audit event not recorded (no repository): %s", record.get("outcome"))
        return None
    try:
        rid = new_id()
        content = _stamp(record, rid, 1, ts)
        async with repo.session(write=True) as s:
            await s.put(Stored("AuditEvent", rid, 1, ts, False, content, "POST"), previous=None)
            await s.set_index("AuditEvent", rid, index_rows(record), new=True)
            await chain.append(s, "AuditEvent", rid, record)
        return rid
    except Exception:  # noqa: BLE001 - the refusal is the answer; its record's failure is logged
        log.exception("security audit event could not be recorded: %s", record.get("outcome"))
        return None


# -- the audit records' index rows ----------------------------------------------------------------
# An audit record is one of a few templates filled with the change's target and time, so its
# index rows are extracted once per template (search.index.index_rows, the same extraction as
# every resource's) and the target and time put into copies: ~95 us of extraction per change
# saved. tests/test_audit.py checks them against index_rows of each record.

_ID, _VID, _TS = "x-audit-target", "0", 0


_TARGET, _TIME = 1, 2  # what a template row takes from the change (0: nothing)


@lru_cache(maxsize=256)
def _audit_template(build: Callable[..., dict[str, Any]], rtype: str, interaction: str, actor: records.Actor,
                    why: str, source: str, activity: str | None = None) -> tuple[tuple[IndexRow, int], ...]:
    record = build(f"{rtype}/{_ID}/_history/{_VID}", interaction, instant(_TS), actor, why, source, activity)
    return tuple((row, _TARGET if row.kind == "reference" and row.values == (rtype, _ID, _VID) else
                  _TIME if row.kind == "date" and row.values == (_TS, _TS + 1) else 0)  # an instant: [ts, ts + 1 us)
                 for row in index_rows(record))


def audit_index_rows(build: Callable[..., dict[str, Any]], target: tuple[str, str, str], interaction: str,
                     ts: int, actor: records.Actor, why: str, source: str,
                     activity: str | None = None) -> list[IndexRow]:
    """The index rows of ``build(target, interaction, instant(ts), actor, why, source, activity)``."""
    return [row if fill == 0 else IndexRow("reference", row.param, target) if fill == _TARGET
            else IndexRow("date", row.param, (ts, ts + 1))
            for row, fill in _audit_template(build, target[0], interaction, actor, why, source, activity)]
