"""Build the two audit records of a change.

- Provenance (R5 provenance.html): ``target`` is the exact versioned reference,
  ``activity`` a v3-DataOperation code, ``why`` the reason given in ``X-Reason``
  (or the configured default), ``agent`` the actor and the server as custodian. A client may
  instead send its Provenance as the ``X-Provenance`` header (:func:`x_provenance`): its reason
  (R5 ``authorization``) becomes the reason (``X-Reason`` wins when both are sent) and its
  ``activity`` codings are recorded before the v3-DataOperation code.
- AuditEvent shaped after the IHE Basic Audit Log Patterns (BALP) "RESTful
  Create/Update/Patch/Delete" events: category ``rest``, ``code`` the RESTful
  interaction, ``action`` C/U/D, outcome success, three agents (the user as
  requestor, the client as DICOM "Source Role ID" with its network address, the
  server as "Destination Role ID"), the server as source, the versioned reference as entity (role: domain resource),
  the reason as ``authorization``.

Security events (no change, so no Provenance; :func:`security_event`) are AuditEvents after
BALP's authorization-decision pattern (``IHE.BasicAudit.AuthZconsent``) and the DICOM "User
Authentication" event (the FHIR ``audit-event-example-login``), R4 ``type``/``subtype`` becoming
R5 ``category``/``code``:

| event | category (DCM) | code | action | outcome |
|---|---|---|---|---|
| 401 at the FHIR API (no, malformed or unverifiable bearer token) | 110114 User Authentication | DCM 110122 Login | E | 4 Minor failure |
| failed login at ``/auth/login`` (wrong username or password) | 110114 User Authentication | DCM 110122 Login | E | 4 Minor failure |
| failed client authentication or grant at ``/auth/token`` and the other client-authenticated endpoints (``invalid_client``, ``invalid_grant``) | 110114 User Authentication | DCM 110122 Login | E | 4 Minor failure |
| 403 at the FHIR API (scope, compartment or granular condition) | 110113 Security Alert | BALP AuthZsubType ``AuthZ-Role`` (a decision from the token's scopes, no consent) | the interaction's C/R/U/D/E | 8 Serious failure (as BALP's deny example) |

A failed authentication is a minor failure (nothing was done, and an honest client reaches it by
an expired token or a typo); a denial is BALP's serious failure (an authenticated party asked
for what its grant does not cover). ``outcome.detail`` says why. Agents: the claimed user
(``humanuser``; from an unverified token or the login form: what it claimed, not who it is) when
there is one, the client (DICOM "Source Role ID", the claimed client id) with the network
address, and the server ("Destination Role ID"); the source is the server, as Application Server
(type 4, the FHIR API) or Security Server (type 6, the authorization server). A 403 names the
resource (``entity.what``: ``Type/id`` as a reference, a type as display) and the interaction
(``entity.detail`` ``interaction``); a 401 names the request (``entity.what.display``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..errors import BadRequest

V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_EVENT_OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
BALP_AUTHZ = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"

#: the codes of the security events (DICOM and BALP: category, code), their outcomes and sources
USER_AUTHENTICATION = {"system": DICOM, "code": "110114", "display": "User Authentication"}
LOGIN = {"system": DICOM, "code": "110122", "display": "Login"}
SECURITY_ALERT = {"system": DICOM, "code": "110113", "display": "Security Alert"}
AUTHZ_ROLE = {"system": BALP_AUTHZ, "code": "AuthZ-Role", "display": "Authorization Decision using only Roles"}
MINOR_FAILURE = {"system": AUDIT_EVENT_OUTCOME, "code": "4", "display": "Minor failure"}
SERIOUS_FAILURE = {"system": AUDIT_EVENT_OUTCOME, "code": "8", "display": "Serious failure"}
APPLICATION_SERVER = {"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}
SECURITY_SERVER = {"system": SECURITY_SOURCE_TYPE, "code": "6", "display": "Security Server"}

#: the AuditEvent action of each interaction asked for (BALP: a search is E, a query)
INTERACTION_ACTION = {"create": "C", "read": "R", "vread": "R", "history-instance": "R", "history-type": "R",
                      "history-system": "R", "update": "U", "patch": "U", "delete": "D"}

#: interaction -> (Provenance activity, AuditEvent action)
_ACTIVITY = {"create": ("CREATE", "C"), "update": ("UPDATE", "U"), "patch": ("UPDATE", "U"),
             "delete": ("DELETE", "D")}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: the user of the access token (its ``fhirUser`` as ``reference``, its
    subject as ``display``), the OAuth client it acts through, and the network address;
    "anonymous" when the server runs without authorization."""

    display: str = "anonymous"
    reference: str | None = None
    address: str | None = None
    #: the OAuth client id (None: no token)
    client: str | None = None
    #: the user's roles (auth/roles.py: they narrowed its user/ scopes), as the agent's role
    roles: tuple[str, ...] = ()

    def as_reference(self) -> dict[str, str]:
        ref = {"display": self.display}
        if self.reference:
            ref["reference"] = self.reference
        return ref

    def role(self) -> list[dict[str, str]]:
        """The roles as the agent's ``role`` (CodeableConcepts with text: the names come from
        the deployment's role mapping, not from a code system)."""
        return [{"text": r} for r in self.roles]

    def client_reference(self) -> dict[str, str]:
        """The client application (AuditEvent's "Source Role ID" agent)."""
        return {"display": self.client} if self.client else self.as_reference()


def provenance(target: str, interaction: str, recorded: str, actor: Actor, reason: str,
               source_name: str, activity: str | None = None) -> dict[str, Any]:
    """``activity``: the client's activity (a CodeableConcept as JSON text, from
    ``X-Provenance``): its codings come first, then the v3-DataOperation code."""
    operation, _ = _ACTIVITY[interaction]
    done: dict[str, Any] = {"coding": [{"system": V3_DATA_OPERATION, "code": operation}]}
    if activity:
        given = json.loads(activity)
        done = {**given, "coding": [*(given.get("coding") or []), *done["coding"]]}
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "authorization": [{"concept": {"text": reason}}],
        "activity": done,
        "agent": [
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
             **({"role": actor.role()} if actor.roles else {}),
             "who": actor.as_reference()},
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "custodian"}]},
             "who": {"display": source_name}},
        ],
    }


def audit_event(target: str, interaction: str, recorded: str, actor: Actor, reason: str,
                source_name: str, activity: str | None = None) -> dict[str, Any]:
    """(``activity`` is the Provenance's only: the AuditEvent's code is the interaction.)"""
    _, action = _ACTIVITY[interaction]
    user = {"type": {"coding": [{"system": V3_PARTICIPATION, "code": "AUT", "display": "author (originator)"}]},
             "who": actor.as_reference(), "requestor": True}
    if actor.roles:
        user["role"] = actor.role()
    client: dict[str, Any] = {
        "type": {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]},
        "who": actor.client_reference(), "requestor": False}
    if actor.address:
        client["networkString"] = actor.address
    server = {"type": {"coding": [{"system": DICOM, "code": "110152", "display": "Destination Role ID"}]},
              "who": {"display": source_name}, "requestor": False}
    return {
        "resourceType": "AuditEvent",
        "category": [{"coding": [{"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}]}],
        "code": {"coding": [{"system": RESTFUL_INTERACTION, "code": interaction}]},
        "action": action,
        "recorded": recorded,
        "outcome": {"code": {"system": AUDIT_EVENT_OUTCOME, "code": "0", "display": "Success"}},
        "authorization": [{"text": reason}],
        "agent": [user, client, server],
        "source": {
            "observer": {"display": f"{source_name} {__version__}"},
            "type": [{"coding": [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}]}],
        },
        "entity": [{"what": {"reference": target},
                    "role": {"coding": [{"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}]}}],
    }


def security_event(kind: str, recorded: str, actor: Actor, detail: str, source_name: str, *,
                   auth_server: bool = False, interaction: str | None = None, target: str | None = None,
                   request: str | None = None) -> dict[str, Any]:
    """The AuditEvent of a failed authentication (``kind`` "authentication") or an authorization
    denial ("denial"); the codes are in the module's docstring. ``target``: ``Type/id`` (a
    reference) or ``Type`` (display) of a denial; ``request``: what a failed authentication asked
    for (``GET /fhir/Patient/1``)."""
    denial = kind == "denial"
    agents: list[dict[str, Any]] = []
    if actor.reference or (actor.display not in ("anonymous", actor.client)):
        agents.append({"type": {"coding": [{"system": SECURITY_ROLE_TYPE, "code": "humanuser",
                                            "display": "human user"}]},
                       "who": actor.as_reference(), "requestor": True})
    client: dict[str, Any] = {
        "type": {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": actor.client or "unknown client"},
        "requestor": not agents}
    if actor.address:
        client["networkString"] = actor.address
    agents.append(client)
    agents.append({"type": {"coding": [{"system": DICOM, "code": "110152", "display": "Destination Role ID"}]},
                   "who": {"display": source_name}, "requestor": False})
    record: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "category": [{"coding": [SECURITY_ALERT if denial else USER_AUTHENTICATION]}],
        "code": {"coding": [AUTHZ_ROLE if denial else LOGIN],
                 "text": "Authorization denied" if denial else "Authentication failed"},
        "action": INTERACTION_ACTION.get(interaction or "", "E") if denial else "E",
        "recorded": recorded,
        "outcome": {"code": SERIOUS_FAILURE if denial else MINOR_FAILURE, "detail": [{"text": detail[:1024]}]},
        "agent": agents,
        "source": {"observer": {"display": f"{source_name} {__version__}"},
                   "type": [{"coding": [SECURITY_SERVER if auth_server else APPLICATION_SERVER]}]},
    }
    if denial:
        entity: dict[str, Any] = {}
        if target and "/" in target:
            entity["what"] = {"reference": target}
        else:
            entity["what"] = {"display": target or "system"}
        entity["role"] = {"coding": [{"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}]}
        entity["detail"] = [{"type": {"text": "interaction"}, "valueString": interaction or "unknown"}]
        record["entity"] = [entity]
    elif request:
        record["entity"] = [{"what": {"display": request[:1024]}}]
    return record


def x_provenance(header: str) -> tuple[str | None, str | None]:
    """The reason and activity a client gives in an ``X-Provenance`` header (R5 provenance.html,
    "Provenance of a write": a Provenance resource as JSON whose target the server fills in):
    (the reason text, the activity as JSON text), each None when not given. The reason is the
    first ``authorization`` (R5; ``concept.text``, else its first coding's display or code);
    R4's ``reason`` (CodeableConcepts) is read too. Everything else in the header is ignored (the
    server is the author's witness: agents, target and times are its own). Not JSON, not a
    Provenance, or an unusable reason or activity: 400."""
    try:
        prov = json.loads(header)
    except ValueError:
        raise BadRequest("X-Provenance is not JSON") from None
    if not isinstance(prov, dict) or prov.get("resourceType") != "Provenance":
        raise BadRequest("X-Provenance must be a Provenance resource (JSON)")
    concepts: list[Any] = []
    for a in prov.get("authorization") or []:
        concepts.append(a.get("concept") if isinstance(a, dict) else None)
    concepts += list(prov.get("reason") or []) if isinstance(prov.get("reason"), list) else []
    reason = None
    for c in concepts:
        if not isinstance(c, dict):
            raise BadRequest("X-Provenance: authorization.concept must be a CodeableConcept")
        codings = [x for x in c.get("coding") or [] if isinstance(x, dict)]
        text = c.get("text") or next((x.get("display") or x.get("code") for x in codings
                                      if x.get("display") or x.get("code")), None)
        if isinstance(text, str) and text.strip():
            reason = text.strip()
            break
    activity = prov.get("activity")
    if activity is not None:
        if not isinstance(activity, dict) or not isinstance(activity.get("coding", []), list) \
                or not all(isinstance(x, dict) for x in activity.get("coding", [])):
            raise BadRequest("X-Provenance: activity must be a CodeableConcept")
        codings = [{k: c[k] for k in ("system", "version", "code", "display")
                    if isinstance(c.get(k), str)} for c in activity.get("coding", [])]
        text = activity.get("text")
        activity = {**({"coding": [c for c in codings if c]} if any(codings) else {}),
                    **({"text": text} if isinstance(text, str) and text else {})}
    if reason is not None and len(reason) > 1024:
        raise BadRequest("X-Provenance: the reason is limited to 1024 characters")
    return reason, json.dumps(activity, sort_keys=True) if activity else None
