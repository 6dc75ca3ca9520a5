"""Build the two audit records of a change.

- Provenance (R5 provenance.html): ``target`` is the exact versioned reference,
  ``activity`` a v3-DataOperation code, ``why`` the reason given in ``X-Reason``
  (or the configured default), ``agent`` the actor and the server as custodian.
- AuditEvent shaped after the IHE Basic Audit Log Patterns (BALP) "RESTful
  Create/Update/Patch/Delete" events: category ``rest``, ``code`` the RESTful
  interaction, ``action`` C/U/D, outcome success, three agents (the user as
  requestor, the client as DICOM "Source Role ID" with its network address, the
  server as "Destination Role ID"), the server as source, the versioned reference as entity (role: domain resource),
  the reason as ``authorization``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import __version__

V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_EVENT_OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"

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

    def as_reference(self) -> dict[str, str]:
        ref = {"display": self.display}
        if self.reference:
            ref["reference"] = self.reference
        return ref

    def client_reference(self) -> dict[str, str]:
        """The client application (AuditEvent's "Source Role ID" agent)."""
        return {"display": self.client} if self.client else self.as_reference()


def provenance(target: str, interaction: str, recorded: str, actor: Actor, reason: str,
               source_name: str) -> dict[str, Any]:
    activity, _ = _ACTIVITY[interaction]
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "authorization": [{"concept": {"text": reason}}],
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": activity}]},
        "agent": [
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
             "who": actor.as_reference()},
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "custodian"}]},
             "who": {"display": source_name}},
        ],
    }


def audit_event(target: str, interaction: str, recorded: str, actor: Actor, reason: str,
                source_name: str) -> dict[str, Any]:
    _, action = _ACTIVITY[interaction]
    user = {"type": {"coding": [{"system": V3_PARTICIPATION, "code": "AUT", "display": "author (originator)"}]},
             "who": actor.as_reference(), "requestor": True}
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
