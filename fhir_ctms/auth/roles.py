"""Roles: which ``user/`` scopes a user may hold (issue 5).

A user of the built-in login page has roles (``fhir-ctms users add --role monitor``), and a token
of an external OpenID Connect provider names them in a claim (``auth/external.py``). Each role
maps to the ``user/`` scopes it may hold; a user's ``user/`` scopes are the ones asked for,
narrowed to the union of its roles' (:meth:`RoleMap.narrow`, the same intersection as a
client's allowed scopes, ``auth/scopes.grant``): a scope no role covers is dropped (SMART lets
the server grant less than asked), a user without a role gets no ``user/`` scope, and
``patient/``, ``system/`` and the SMART scopes (``openid``, ``launch``...) pass untouched.

:data:`DEFAULT` is the mapping for the CTMS roles; a JSON or TOML file named by
``FHIR_CTMS_AUTH_ROLES_FILE`` replaces it wholly (:func:`load_file`): an object whose keys are the
roles and whose values are ``user/`` scopes, a list or one space separated string::

    {"monitor": ["user/ResearchStudy.rs", "user/DetectedIssue.crus"], "auditor": "user/*.rs"}

The mapping is by resource type, not by study or site: a site coordinator reads every study's
subjects its ``user/`` scopes name. The resource server enforces the token's scopes only, so the
narrowing happens when tokens are issued (authorization, code exchange, refresh) and when an
external token is verified.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import scopes as sc

ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

_STUDY = ("ResearchStudy", "PlanDefinition", "ActivityDefinition", "Organization", "Location", "Practitioner",
          "PractitionerRole", "Group")
_SUBJECT = ("ResearchSubject", "Patient", "Consent")
_VISIT = ("CarePlan", "Appointment", "Encounter")
_FINANCE = ("ChargeItemDefinition", "ChargeItem", "Invoice", "PaymentNotice", "PaymentReconciliation", "Account")


def _scopes(perms: str, types: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"user/{t}.{perms}" for t in types)


#: the CTMS roles and the ``user/`` scopes each may hold
DEFAULT: Mapping[str, tuple[str, ...]] = {
    # runs the study: everything
    "study-manager": ("user/*.cruds",),
    # a CRA: reads the study, its sites, subjects, visits and documents; records monitoring
    # visits (Appointment), findings and deviations (DetectedIssue) and follow-up actions (Task)
    "monitor": (*_scopes("rs", (*_STUDY, *_SUBJECT, "CarePlan", "Encounter", "DocumentReference")),
                *_scopes("crus", ("Appointment", "DetectedIssue", "Task"))),
    # a site's study coordinator: reads the study context; enrols and follows its subjects
    "site-coordinator": (*_scopes("rs", (*_STUDY, "DetectedIssue")),
                         *_scopes("rus", ("Task",)),
                         *_scopes("cruds", (*_SUBJECT, *_VISIT, "DocumentReference", "QuestionnaireResponse"))),
    # site payments: budgets, charges, invoices, remittances; reads the studies, sites and the
    # completed work that is paid for ($payments, $milestones: subjects, consents, visits,
    # procedures), and keeps the sites' payee Groups
    "finance": (*_scopes("cruds", _FINANCE), *_scopes("crus", ("Group",)),
                *_scopes("rs", ("ResearchStudy", "PlanDefinition", "Organization", "Location", "ResearchSubject",
                                "Consent", *_VISIT, "Procedure"))),
    # reads everything, the audit trail included (AuditEvent, Provenance); writes nothing
    "auditor": ("user/*.rs",),
    # a hospital EHR reading which of its patients are in which study, and their visits
    "ehr-integration": _scopes("rs", ("ResearchStudy", "ResearchSubject", "Patient", "Consent", "PlanDefinition",
                                      "CarePlan", "Appointment", "Encounter")),
}


@dataclass(frozen=True)
class RoleMap:
    """Roles and the ``user/`` scopes each may hold."""
    roles: Mapping[str, sc.Scopes]

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[str] | str]) -> "RoleMap":
        """Checked: role names (lower case, digits, ``-_.``) and ``user/`` resource scopes only."""
        if not isinstance(mapping, Mapping):
            raise ValueError("the role mapping must be an object of role: scopes")
        out: dict[str, sc.Scopes] = {}
        for role, value in mapping.items():
            if not isinstance(role, str) or not ROLE_NAME.fullmatch(role):
                raise ValueError(f"role name {role!r}: lower-case letters, digits, '-', '_' or '.'")
            texts = value.split() if isinstance(value, str) else value
            if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"role {role}: the scopes must be a list of strings or one string")
            parsed = sc.parse(" ".join(texts))
            wrong = [*parsed.unknown, *parsed.smart, *(str(r) for r in parsed.resources if r.context != "user")]
            if wrong:
                raise ValueError(f"role {role}: only user/ resource scopes, not {', '.join(wrong)}")
            out[role] = sc.Scopes(parsed.resources)
        return cls(out)

    def allowed(self, roles: Iterable[str]) -> sc.Scopes:
        """The ``user/`` scopes the roles together may hold (an unknown role: none)."""
        found: list[sc.ResourceScope] = []
        for role in roles:
            for s in self.roles.get(role, sc.Scopes()).resources:
                if s not in found:
                    found.append(s)
        return sc.Scopes(tuple(found))

    def narrow(self, asked: sc.Scopes, roles: Iterable[str]) -> sc.Scopes:
        """``asked`` with its ``user/`` scopes narrowed to what ``roles`` allow; the rest as asked."""
        users = sc.grant(sc.Scopes(tuple(r for r in asked.resources if r.context == "user")),
                         self.allowed(roles), contexts=("user",)).resources
        kept = tuple(r for r in asked.resources if r.context != "user")
        return sc.Scopes((*kept, *users), asked.smart, asked.unknown)


def parse_text(text: str, suffix: str) -> RoleMap:
    """A role mapping from JSON, or from TOML when ``suffix`` is ``.toml``."""
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"the roles file is not valid {'TOML' if suffix == '.toml' else 'JSON'}: {exc}") from exc
    return RoleMap.of(data)


@lru_cache(maxsize=8)
def load_file(path: str) -> RoleMap:
    """The mapping of a roles file (JSON, or TOML by its ``.toml`` suffix); ValueError if broken."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"the roles file {path} cannot be read: {exc}") from exc
    return parse_text(text, p.suffix.lower())


_DEFAULT = RoleMap.of(DEFAULT)


def role_map(path: str | None) -> RoleMap:
    """The configured mapping: the file's when ``FHIR_CTMS_AUTH_ROLES_FILE`` is set, else :data:`DEFAULT`."""
    return load_file(path) if path else _DEFAULT
