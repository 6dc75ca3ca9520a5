"""SMART scopes (App Launch 2.2, scopes-and-launch-context) as plain values, and what is granted.

A resource scope is ``context/Type.permissions[?query]``:

- context ``patient``, ``user`` or ``system``; Type an R5 resource type or ``*``;
- SMART v2 permissions: the letters of ``cruds`` (create, read, update, delete, search), each at
  most once and in that order (``rs``, ``cruds``); SMART v1 ``read`` (= ``rs``), ``write``
  (= ``cud``) and ``*`` (= ``cruds``) are accepted too;
- v2 granular scopes narrow by search parameters: ``patient/Observation.rs?category=laboratory``
  (the parameters are ANDed).

Other scopes SMART defines: ``launch``, ``launch/patient``, ``launch/encounter``, ``openid``,
``fhirUser``, ``profile``, ``offline_access``, ``online_access``. Anything else is unknown and
never granted.

:func:`grant` is the intersection of what a client asks for and what it may have, scope by
scope: ``patient/*.cruds`` asked, ``patient/Observation.rs`` allowed gives
``patient/Observation.rs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from ..resources.registry import RESOURCE_TYPES

CONTEXTS = ("patient", "user", "system")
PERMISSIONS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V1_BACK = {v: k for k, v in V1.items()}
#: the non-resource scopes SMART defines
SMART_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
                          "offline_access", "online_access"})
_RESOURCE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(?:\?(.*))?$")


@dataclass(frozen=True)
class ResourceScope:
    context: str                                # patient | user | system
    type: str                                   # an R5 resource type, or "*"
    permissions: str                            # a subsequence of "cruds"
    query: tuple[tuple[str, str], ...] = ()     # v2 granular: search parameters, ANDed
    v1: bool = False                            # written in SMART v1 syntax

    def __str__(self) -> str:
        perms = _V1_BACK[self.permissions] if self.v1 and self.permissions in _V1_BACK else self.permissions
        query = "?" + urlencode(self.query, safe="|:/,*") if self.query else ""
        return f"{self.context}/{self.type}.{perms}{query}"

    def allows(self, permission: str, rtype: str) -> bool:
        """Whether this scope grants ``permission`` (one of c r u d s) on ``rtype`` (query aside)."""
        return permission in self.permissions and self.type in ("*", rtype)


@dataclass(frozen=True)
class Scopes:
    """A parsed scope string: the resource scopes, the SMART scopes, and anything unknown."""
    resources: tuple[ResourceScope, ...] = ()
    smart: frozenset[str] = frozenset()
    unknown: tuple[str, ...] = ()

    def __contains__(self, name: str) -> bool:
        return name in self.smart

    def __str__(self) -> str:
        return " ".join([*(s for s in _SMART_ORDER if s in self.smart), *map(str, self.resources)])

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(r.context for r in self.resources)


_SMART_ORDER = ("launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
                "offline_access", "online_access")


def parse_resource_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None when ``text`` is not one (bad context, type or permissions)."""
    m = _RESOURCE.match(text)
    if m is None:
        return None
    context, rtype, perms, query = m.groups()
    if rtype != "*" and rtype not in RESOURCE_TYPES:
        return None
    v1 = perms in V1
    if v1:
        perms = V1[perms]
    elif not perms or "".join(c for c in PERMISSIONS if c in perms) != perms:
        return None  # unknown letters, repeated or out of order
    if v1 and query:
        return None  # granular queries are v2 only
    params: tuple[tuple[str, str], ...] = ()
    if query is not None:
        params = tuple(sorted(parse_qsl(query, keep_blank_values=True)))
        if not params or any(not k for k, _ in params):
            return None
    return ResourceScope(context, rtype, perms, params, v1)


def parse(text: str | None) -> Scopes:
    resources: list[ResourceScope] = []
    smart: set[str] = set()
    unknown: list[str] = []
    for token in (text or "").split():
        if token in SMART_SCOPES:
            smart.add(token)
        elif (scope := parse_resource_scope(token)) is not None:
            if scope not in resources:
                resources.append(scope)
        else:
            unknown.append(token)
    return Scopes(tuple(resources), frozenset(smart), tuple(unknown))


def _intersect(asked: ResourceScope, allowed: ResourceScope) -> ResourceScope | None:
    if asked.context != allowed.context:
        return None
    if allowed.type == "*":
        rtype = asked.type
    elif asked.type in ("*", allowed.type):
        rtype = allowed.type
    else:
        return None
    perms = "".join(c for c in PERMISSIONS if c in asked.permissions and c in allowed.permissions)
    if not perms:
        return None
    query = tuple(sorted(set(asked.query) | set(allowed.query)))  # both filters apply: ANDed
    return ResourceScope(asked.context, rtype, perms, query, asked.v1 and not query)


def grant(asked: Scopes, allowed: Scopes, *, contexts: tuple[str, ...] = CONTEXTS) -> Scopes:
    """What is granted: each asked scope narrowed to what ``allowed`` covers, only in ``contexts``
    (``system`` for backend services, ``patient``/``user`` for user launches)."""
    out: list[ResourceScope] = []
    for a in asked.resources:
        if a.context not in contexts:
            continue
        for b in allowed.resources:
            s = _intersect(a, b)
            if s is not None and s not in out:
                out.append(s)
    # a scope within another granted one adds nothing (patient/Observation.rs beside patient/*.rs)
    kept = [s for s in out if not any(t != s and _intersect(s, t) == _normal(s) for t in out)]
    return Scopes(tuple(kept), asked.smart & allowed.smart)


def covers(granted: Scopes, asked: Scopes) -> bool:
    """Whether every scope of ``asked`` is within ``granted`` (no escalation, e.g. on refresh)."""
    if asked.unknown or not asked.smart <= granted.smart:
        return False
    for a in asked.resources:
        if not any(_intersect(a, g) == _normal(a) for g in granted.resources):
            return False
    return True


def _normal(s: ResourceScope) -> ResourceScope:
    return ResourceScope(s.context, s.type, s.permissions, s.query, s.v1 and not s.query)
