"""A resource's JSON validated against a StructureDefinition snapshot (R5 profiling.html,
validation.html "Profiles").

:func:`compile_profile` turns a snapshot into a tree of :class:`Element` checks, once per
profile; :meth:`Profile.validate` walks a resource (a JSON dict) along that tree and returns
:class:`~fhir_ctms.errors.Issue` values, each with an ``expression`` (``ResearchStudy.recruitment
.targetNumber``, ``ResearchStudy.comparisonGroup[1].linkId``). What is checked, element by element:

- cardinality: ``min`` and ``max`` of every element whose parent is present (choice elements
  ``value[x]`` by the JSON names of their types, nested backbone elements in each repetition);
- ``fixed[x]`` (equal) and ``pattern[x]`` (the instance contains the pattern: each key, each
  list item matched by some item);
- required and extensible bindings the profile sets (its differential): the value set's codes
  come from :func:`fhir_ctms.terminology.codes`; a value set the server does not hold is skipped
  and logged (the R5 core required bindings are checked on every write by
  ``resources/bindings.py`` already). Required: a code, Coding or CodeableConcept not from the
  value set is an error; extensible: a CodeableConcept whose codings are all from elsewhere is a
  warning;
- types the profile narrows: a choice element's JSON name must be one of the allowed types, and a
  Reference's literal type (``Patient/1``) one of its target profiles' types;
- extension slices (R5 profiling.html#slicing, discriminator ``value`` on ``url``, rules open):
  a slice's cardinality counted over the extensions of its url (the ``url`` it fixes in a complex
  extension, ``Extension.extension:protocol``; the extension its type profiles in a resource,
  ``ResearchStudy.extension:siteProtocol``), its own elements checked on each of them;
  extensions of other urls are left to the open slicing (and a CTMS extension, wherever it
  sits, to its own definition: ``validation.validate``);
- every constraint (``constraint.expression``) evaluated by fhirpathpy on each instance of its
  element (``%resource`` the resource): severity error gives an error, warning a warning, the
  key leads the message. Skipped: ``ele-1`` (every element has a value or children: the JSON
  parser and the model see to it, and fhirpathpy lacks ``hasValue()``), ``ext-1`` except on an
  extension's root, best-practice constraints (``elementdefinition-bestpractice``) and those
  calling ``resolve()`` (it needs the referenced resource: enc-2). An empty result passes
  (only ``false`` fails); an expression fhirpathpy cannot compile or run is
  logged once and skipped.

Elements without a check of their own or below them are not walked, so a resource costs the
few elements its profile constrains. fhirpathpy costs some 100 us an expression, so two kinds of
constraint are not evaluated where they cannot fail: those on ``contained`` (dom-2 to dom-5)
without contained resources, and ``x.exists() implies ...`` / ``x.exists().not() or ...``
without ``x``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Issue

_log = logging.getLogger(__name__)

_BEST_PRACTICE = "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice"
_CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
#: the datatypes of choice elements spelled as in their JSON names (the rest are primitives)
_COMPLEX = {"Address", "Age", "Annotation", "Attachment", "CodeableConcept", "CodeableReference",
            "Coding", "ContactPoint", "Count", "Distance", "Duration", "HumanName", "Identifier",
            "Money", "Period", "Quantity", "Range", "Ratio", "RatioRange", "Reference",
            "SampledData", "Signature", "Timing", "ContactDetail", "DataRequirement", "Expression",
            "ParameterDefinition", "RelatedArtifact", "TriggerDefinition", "UsageContext",
            "Availability", "ExtendedContactDetail", "Dosage", "Meta"}
#: an invariant that holds when its first element is absent: ``x.exists() implies ...``,
#: ``x.exists().not() or ...``
_GUARD = re.compile(r"^\(?\s*([a-z][A-Za-z0-9]*)\.exists\(\)\s*\)?\s+implies\s"
                    r"|^([a-z][A-Za-z0-9]*)\.exists\(\)\.not\(\)\s+or\s")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


@dataclass(slots=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str
    run: Callable[[Any, dict[str, Any]], list[Any]] | None = None
    #: about contained resources only (dom-2 to dom-5: ``contained...``): true without them
    contained: bool = False
    #: ``x.exists() implies ...`` / ``x.exists().not() or ...``: true when the node has no ``x``
    guard: str | None = None


@dataclass(slots=True)
class Element:
    """One element of a snapshot, with what is checked on it."""

    path: str                     #: ``ResearchStudy.recruitment.targetNumber`` (no slice names)
    name: str                     #: JSON name, or the prefix of a choice element (``value``)
    min: int = 0
    max: int | None = None        #: None: unbounded
    repeats: bool = False         #: the base allows more than one (instances get ``[i]``)
    choice: bool = False
    types: tuple[str, ...] = ()
    check_types: bool = False     #: the profile narrowed the types: check choice names, targets
    targets: frozenset[str] | None = None  #: Reference target types (None: any)
    fixed: tuple[str, Any] | None = None
    pattern: tuple[str, Any] | None = None
    binding: tuple[str, str] | None = None  #: (strength, value set) set by the profile
    constraints: list[Constraint] = field(default_factory=list)
    children: list[Element] = field(default_factory=list)
    slices: dict[str, Element] = field(default_factory=dict)  #: url -> slice (of an extension)
    slice_name: str | None = None
    #: the FHIRPath type of an instance (a type code or a backbone path; None: a choice's own)
    fp_type: str | None = None


@dataclass(slots=True)
class Profile:
    url: str
    type: str
    root: Element
    #: for an extension, where it may be used (element paths, ``ResearchStudy``)
    contexts: tuple[str, ...] = ()

    def validate(self, value: dict[str, Any], resource: dict[str, Any] | None = None,
                 expression: str | None = None, root: dict[str, Any] | None = None) -> list[Issue]:
        """The issues of ``value`` (a resource, or for an extension the extension's JSON within
        ``resource`` at ``expression``; ``root`` the outermost resource when ``resource`` is a
        Bundle entry's or a contained one)."""
        issues: list[Issue] = []
        env = {"resource": resource or value, "rootResource": root or resource or value}
        _check_item(self.root, value, expression or self.type, env, issues, self)
        return issues


# --------------------------------------------------------------------------- compile


def _max(text: str | None) -> int | None:
    return None if text in (None, "*") else int(text)  # type: ignore[arg-type]


def _target_types(types: list[dict[str, Any]],
                  resolve_base: Callable[[str], str | None]) -> frozenset[str] | None:
    out: set[str] = set()
    for t in types:
        if t.get("code") != "Reference":
            continue
        for url in t.get("targetProfile") or []:
            base = url.removeprefix(_CORE_SD) if url.startswith(_CORE_SD) else resolve_base(url)
            if base is None or base == "Resource":
                return None
            out.add(base)
    return frozenset(out) or None


def _constraints(element: dict[str, Any], is_root: bool) -> list[Constraint]:
    out = []
    for c in element.get("constraint") or []:
        key = c.get("key", "")
        expression = c.get("expression")
        if key == "ele-1" or (key == "ext-1" and not is_root) or not expression \
                or "resolve()" in expression:
            continue
        if any(x.get("url") == _BEST_PRACTICE and x.get("valueBoolean")
               for x in c.get("extension") or []):
            continue
        guard = _GUARD.match(expression)
        out.append(Constraint(key, c.get("severity", "error"), c.get("human", key), expression,
                              contained=expression.startswith("contained."),
                              guard=guard.group(1) or guard.group(2) if guard else None))
    return out


def compile_profile(sd: dict[str, Any],
                    resolve_base: Callable[[str], str | None] = lambda u: None) -> Profile:
    """The checks of a StructureDefinition's snapshot; ``resolve_base`` names the resource type
    of a (non-core) profile URL used as a reference target."""
    snapshot = sd["snapshot"]["element"]
    diff = {e["id"]: e for e in (sd.get("differential") or {}).get("element", [])}
    diff_ids = set(diff)
    snapshot_by_id = {e["id"]: e for e in snapshot}
    by_id: dict[str, Element] = {}
    keep: dict[str, bool] = {}
    order: list[tuple[str, str | None]] = []  # (id, parent id)
    root_id = snapshot[0]["id"]
    for e in snapshot:
        eid = e["id"]
        path = e["path"]
        last = eid.rsplit(".", 1)[-1]
        name, _, slice_name = last.partition(":")
        choice = name.endswith("[x]")
        types = e.get("type") or []
        in_diff = eid in diff_ids
        el = Element(
            path=path, name=name[:-3] if choice else name, min=int(e.get("min", 0)),
            max=_max(e.get("max")),
            repeats=_max((e.get("base") or {}).get("max", e.get("max"))) != 1,
            choice=choice, types=tuple(t.get("code", "") for t in types),
            check_types="type" in (diff.get(eid) or {}),
            constraints=_constraints(e, eid == root_id), slice_name=slice_name or None)
        codes = el.types
        if eid == root_id:
            el.fp_type = sd["type"]
        elif not codes or codes[0] in ("BackboneElement", "Element"):
            el.fp_type = path
        elif len(codes) == 1 and not codes[0].startswith("http://"):
            el.fp_type = codes[0]
        if el.check_types:
            el.targets = _target_types(types, resolve_base)
        for k, v in e.items():
            if k.startswith("fixed"):
                el.fixed = (k[5:], v)
            elif k.startswith("pattern"):
                el.pattern = (k[7:], v)
        b = (diff.get(eid) or {}).get("binding") or {}
        if b.get("strength") in ("required", "extensible") and b.get("valueSet"):
            el.binding = (b["strength"], b["valueSet"])
        for c in el.constraints:
            try:
                c.run = _fhirpath(c.expression)
            except Exception:  # noqa: BLE001 - an expression fhirpathpy cannot parse
                _log.warning("%s: constraint %s not evaluable by fhirpathpy: %s", sd.get("url"),
                             c.key, c.expression)
        by_id[eid] = el
        keep[eid] = bool(in_diff or el.min > 0 or el.constraints or el.fixed or el.pattern)
        parent = None if eid == root_id else (
            eid.rsplit(":", 1)[0] if slice_name else eid.rsplit(".", 1)[0])
        order.append((eid, parent))
    # an element is walked when it or something below it has a check
    for eid, parent in reversed(order):
        if parent is not None and keep[eid]:
            keep[parent] = True
    for eid, parent in order:
        if parent is None or not keep[eid]:
            continue
        el = by_id[eid]
        host = by_id[parent]
        if el.slice_name is not None:
            host.slices[_slice_url(eid, el, by_id, snapshot_by_id[eid])] = el
        else:
            host.children.append(el)
    root = by_id[root_id]
    contexts = tuple(c.get("expression", "") for c in sd.get("context") or []
                     if c.get("type") == "element")
    return Profile(sd["url"], sd["type"], root, contexts)


def _slice_url(eid: str, el: Element, by_id: dict[str, Element], snap: dict[str, Any]) -> str:
    """The url an extension slice matches (the discriminator ``value`` on ``url``): its fixed
    ``url`` (a part of a complex extension), else the extension its type profiles (a
    resource's extension slice)."""
    url_element = by_id.get(eid + ".url")
    if url_element is not None and url_element.fixed is not None:
        return url_element.fixed[1]
    profiles = [u for t in snap.get("type") or [] for u in t.get("profile") or []]
    if len(profiles) == 1:
        return profiles[0].partition("|")[0]
    return el.slice_name or ""


def _fhirpath(expression: str) -> Callable[[Any, dict[str, Any]], list[Any]]:
    import fhirpathpy

    from ..search.fhirpath import model

    return fhirpathpy.compile(expression, model=model().raw,
                              options={"returnRawData": True, "traceFn": _no_trace})


def _no_trace(label: str, value: Any) -> None:
    """``trace()`` in an invariant (dom-3 has one) prints by default: silenced."""


# --------------------------------------------------------------------------- validate


def _json_suffix(type_code: str) -> str:
    return type_code[:1].upper() + type_code[1:]


def _values(el: Element, node: dict[str, Any]) -> tuple[str, list[Any], str | None]:
    """(JSON key, values, type code) of an element in its parent's JSON."""
    if not el.choice:
        v = node.get(el.name)
        return el.name, ([] if v is None else v if isinstance(v, list) else [v]), (
            el.types[0] if len(el.types) == 1 else None)
    for key, v in node.items():
        if key.startswith(el.name) and key[len(el.name):][:1].isupper():
            suffix = key[len(el.name):]
            code = next((t for t in el.types if _json_suffix(t) == suffix), None)
            return key, ([] if v is None else [v]), code or "?" + suffix
    return el.name + "[x]", [], None


def _label(n: int | None) -> str:
    return "*" if n is None else str(n)


def _check_children(el: Element, node: dict[str, Any], expr: str, env: dict[str, Any],
                    issues: list[Issue], profile: Profile) -> None:
    for child in el.children:
        key, values, type_code = _values(child, node)
        where = f"{expr}.{key}"
        if type_code is not None and type_code.startswith("?"):
            if child.check_types:
                shown = type_code[1:] if type_code[1:] in _COMPLEX else (
                    type_code[1:2].lower() + type_code[2:])
                issues.append(Issue("structure", f"{where}: the type {shown} is not allowed here "
                                    f"({', '.join(child.types)}) by {profile.url}",
                                    expression=(where,)))
            type_code = None  # counted for the cardinality, not checked as any type
        if child.slices:
            _check_slices(child, values, where, env, issues, profile)
        count = len(values)
        if count < child.min:
            issues.append(Issue("required", f"{where}: minimum required = {child.min}, but only "
                                f"found {count} ({profile.url})", expression=(where,)))
        if child.max is not None and count > child.max:
            issues.append(Issue("structure", f"{where}: maximum allowed = {child.max}, but found "
                                f"{count} ({profile.url})", expression=(where,)))
        for i, value in enumerate(values):
            item_expr = f"{where}[{i}]" if child.repeats else where
            _check_item(child, value, item_expr, env, issues, profile, type_code)


def _check_slices(el: Element, values: list[Any], where: str, env: dict[str, Any],
                  issues: list[Issue], profile: Profile) -> None:
    for url, sl in el.slices.items():
        matching = [(i, v) for i, v in enumerate(values) if isinstance(v, dict) and v.get("url") == url]
        sexpr = f"{where}('{url}')"
        if len(matching) < sl.min:
            issues.append(Issue("required", f"{sexpr}: minimum required = {sl.min}, but only found "
                                f"{len(matching)} ({profile.url})", expression=(sexpr,)))
        if sl.max is not None and len(matching) > sl.max:
            issues.append(Issue("structure", f"{sexpr}: maximum allowed = {sl.max}, but found "
                                f"{len(matching)} ({profile.url})", expression=(sexpr,)))
        for i, v in matching:
            _check_item(sl, v, f"{where}[{i}]", env, issues, profile, "Extension")


def _check_item(el: Element, value: Any, expr: str, env: dict[str, Any], issues: list[Issue],
                profile: Profile, type_code: str | None = None) -> None:
    if el.fixed is not None and value != el.fixed[1]:
        issues.append(Issue("value", f"{expr}: the value must be {el.fixed[1]!r} "
                            f"({profile.url})", expression=(expr,)))
    if el.pattern is not None and not _contains(value, el.pattern[1]):
        issues.append(Issue("value", f"{expr}: the value must match the pattern "
                            f"{el.pattern[1]!r} ({profile.url})", expression=(expr,)))
    if el.binding is not None:
        _check_binding(el, value, expr, type_code, issues, profile)
    if el.targets is not None and isinstance(value, dict):
        ref = value.get("reference")
        m = _REFERENCE.search(ref) if isinstance(ref, str) else None
        if m and m.group(1) not in el.targets:
            issues.append(Issue("value", f"{expr}: a reference to {m.group(1)} is not allowed here "
                                f"(only {', '.join(sorted(el.targets))}) by {profile.url}",
                                expression=(f"{expr}.reference",)))
    for c in el.constraints:
        if c.run is None or (c.contained and not (isinstance(value, dict) and "contained" in value)):
            continue
        if c.guard is not None and isinstance(value, dict) and not any(
                k.startswith(c.guard) for k in value):
            continue  # the condition's element is absent (a choice's JSON names start with it too)
        try:
            if isinstance(value, dict) and "resourceType" in value:
                node = value
            else:
                known = type_code if type_code and type_code[0] not in "?h" else None
                node = _node(value, el.fp_type or known)
            result = c.run(node, env)
        except Exception:  # noqa: BLE001 - fhirpathpy failing on an expression: skip it
            _log.warning("constraint %s of %s could not be evaluated at %s", c.key, profile.url,
                         expr, exc_info=True)
            c.run = None  # once
            continue
        if any(r is False or getattr(r, "data", None) is False for r in result):
            code = "invariant"
            issues.append(Issue(code, f"{c.key}: {c.human} ({profile.url})",
                                severity="error" if c.severity == "error" else "warning",
                                expression=(expr,)))
    if el.children and isinstance(value, dict):
        _check_children(el, value, expr, env, issues, profile)


def _node(value: Any, fp_type: str | None) -> Any:
    from fhirpathpy.engine.nodes import ResourceNode

    return ResourceNode.create_node(value, fp_type)


def _contains(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], v)
                                               for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return value == pattern


_unknown_sets: set[str] = set()


def _codes(url: str) -> frozenset[tuple[str, str]] | None:
    try:
        from ..terminology import codes
    except ImportError:  # pragma: no cover - the terminology package is part of the server
        return None
    found = codes(url)
    if found is None and url not in _unknown_sets:
        _unknown_sets.add(url)
        _log.warning("value set %s is not held by the server: its binding is not checked", url)
    return found


def _check_binding(el: Element, value: Any, expr: str, type_code: str | None, issues: list[Issue],
                   profile: Profile) -> None:
    strength, vs = el.binding  # type: ignore[misc]
    codes = _codes(vs)
    if codes is None:
        return
    if isinstance(value, str):  # code
        if strength == "required" and not any(c == value for _, c in codes):
            issues.append(Issue("code-invalid", f"{expr}: the code {value!r} is not in the value set "
                                f"{vs} (required by {profile.url})", expression=(expr,)))
        return
    if not isinstance(value, dict):
        return
    codings = [value] if "coding" not in value and ("code" in value or "system" in value) else (
        value.get("coding") or [])
    pairs = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
    if any(p in codes for p in pairs):
        return
    if strength == "required":
        shown = ", ".join(f"{s}|{c}" for s, c in pairs) or "no coding"
        issues.append(Issue("code-invalid", f"{expr}: {shown} is not in the value set {vs} "
                            f"(required by {profile.url})", expression=(expr,)))
    elif pairs:
        issues.append(Issue("code-invalid", f"{expr}: none of the codings is from the value set "
                            f"{vs} (extensible in {profile.url}); use one of its codes when one "
                            f"fits", severity="warning", expression=(expr,)))
