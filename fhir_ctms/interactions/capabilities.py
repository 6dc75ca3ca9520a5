"""capabilities (R5 http.html#capabilities): the CapabilityStatement, generated.

Everything in it is derived from what the server runs: the resource types from
the R5 definitions, the interactions from ``table.INTERACTIONS`` and
``bundle.CODES``, the search parameters from ``fhir_ctms.search``, the
operations from ``fhir_ctms.operations``, each resource's ``supportedProfile`` from the
StructureDefinitions of ``profiles/`` (the constraints on a resource type: profiles, not
extensions), and, when ``auth_enabled``, ``rest.security``
(SMART-on-FHIR, the ``oauth-uris`` extension) from ``fhir_ctms.auth.discovery``. Nothing is
written by hand.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from .. import FHIR_VERSION, __version__
from ..operations import OPERATIONS
from ..resources import profiles
from ..resources.registry import AUDIT_TYPES, RESOURCE_TYPES
from ..search.parameters import compartments, params_for
from ..storage.repository import Session
from .context import Context, FhirRequest, FhirResponse

#: when this server process started: the CapabilityStatement's date
STARTED = datetime.now(timezone.utc).isoformat(timespec="seconds")

_NOT_FOR_AUDIT = {"create", "update", "patch", "delete"}
#: the parameter types searched (storage/search_sql.py); special ones (near, _text...) are not
SEARCHED_TYPES = {"string", "token", "reference", "date", "number", "quantity", "uri", "composite"}


def _search_params(rtype: str) -> list[dict[str, Any]]:
    out = []
    for code, p in sorted(params_for(rtype).items()):
        if _searched(code, p):
            out.append({"name": code, "definition": p.url, "type": p.type})
    return out


def _searched(code: str, p: Any) -> bool:
    return p.type in SEARCHED_TYPES and (p.expression is not None or code in ("_id", "_lastUpdated"))


def supported_profiles() -> dict[str, list[str]]:
    """resource type -> the canonical URLs of the profiles of ``profiles/`` on it (sorted)."""
    out: dict[str, list[str]] = {}
    for sd in profiles.resources("StructureDefinition"):
        if (sd.get("derivation") == "constraint" and sd.get("kind") == "resource"
                and isinstance(sd.get("type"), str) and isinstance(sd.get("url"), str)):
            out.setdefault(sd["type"], []).append(sd["url"])
    return {t: sorted(urls) for t, urls in out.items()}


def _resource(rtype: str, supported: dict[str, list[str]]) -> dict[str, Any]:
    from .table import INTERACTIONS  # the table lists this module's handler too
    codes = [i.code for i in INTERACTIONS.values() if i.level in ("instance", "type")
             and not (rtype in AUDIT_TYPES and i.code in _NOT_FOR_AUDIT)]
    writable = rtype not in AUDIT_TYPES
    out: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": c} for c in codes],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable,
        "conditionalRead": "full-support",
        "conditionalUpdate": writable,
        "conditionalPatch": writable,
        "conditionalDelete": "single" if writable else "not-supported",
        "searchParam": _search_params(rtype),
    }
    if supported.get(rtype):
        out["supportedProfile"] = supported[rtype]
    ops = [op for op in OPERATIONS if rtype in op.resource_types]
    if ops:
        out["operation"] = [{"name": op.code, "definition": op.url} for op in ops]
    return out


@lru_cache(maxsize=8)
def capability_statement(base: str, date: str = STARTED, smart: bool = False, cors: bool = False) -> dict[str, Any]:
    """``smart``: the server is protected by its SMART authorization server (``auth_enabled``):
    ``rest.security`` names the SMART-on-FHIR service and its ``oauth-uris``, and says with
    ``cors`` whether browser apps of other origins are answered (``cors_origins`` not empty)."""
    from . import bundle
    from .table import INTERACTIONS
    system = [i.code for i in INTERACTIONS.values() if i.level == "system"] + list(bundle.CODES)
    supported = supported_profiles()
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "FHIR R5 RESTful API of fhir-ctms. Every change is versioned and audited "
                         "(a Provenance and an AuditEvent in the same transaction).",
        "resource": [_resource(t, supported) for t in sorted(RESOURCE_TYPES)],
        "interaction": [{"code": c} for c in system],
        "searchParam": [{"name": code, "definition": p.url, "type": p.type}
                        for code, p in sorted(params_for("Resource").items()) if _searched(code, p)],
        # compartment searches ([compartment]/[id]/[type]) by the R5 CompartmentDefinitions
        "compartment": [f"http://hl7.org/fhir/CompartmentDefinition/{c.lower()}" for c in sorted(compartments())],
    }
    if smart:
        from ..auth.discovery import Endpoints, security
        # cors first, as R5 orders the elements (and decided here, from the settings)
        rest["security"] = {"cors": cors, **{k: v for k, v in security(Endpoints(base)).items() if k != "cors"}}
    system_ops = [op for op in OPERATIONS if op.system]
    if system_ops:
        rest["operation"] = [{"name": op.code, "definition": op.url} for op in system_ops]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-ctms",
        "kind": "instance",
        "software": {"name": "fhir-ctms", "version": __version__},
        "implementation": {"description": "fhir-ctms FHIR R5 server", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }


async def capabilities(req: FhirRequest, ctx: Context, s: Session) -> FhirResponse:
    return FhirResponse(200, body=capability_statement(ctx.base, STARTED, ctx.settings.auth_enabled,
                                                       bool(ctx.settings.cors_origins)))
