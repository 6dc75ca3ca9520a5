"""FHIRPath expressions of search parameters: splitting, rewriting, and evaluation.

Implements what R5 searchparameter.html (``SearchParameter.expression``) and search.html
need from FHIRPath (fhirpath.html):

* **text** (standard library only, also used by ``scripts/extract_search_parameters.py``):
  split an expression into its top-level ``|`` alternatives, keep the alternatives that
  apply to one base type (``split_per_base``), and rewrite the ``.where(resolve() is X)``
  filters into a check of the reference's type done by the caller (``strip_resolve``);
* **evaluation** (``compile_expression``): an alternative that is a plain dotted path whose
  steps may carry ``ofType(X)`` or ``where(element = 'literal')``, optionally ending in
  ``as X`` (``Patient.name.family``, ``Observation.value.ofType(Quantity)``,
  ``(Observation.effective as dateTime)``, ``Patient.telecom.where(system='email')``), is
  walked on the JSON dict directly with the R5 model tables that fhirpathpy ships; any
  other alternative runs through fhirpathpy (compiled once, cached), with a stub
  ``resolve()`` that knows a reference's type but not its target.

Every result comes with the FHIR type of the value when it is known (``Quantity``,
``dateTime``, a backbone path such as ``Observation.component``), ``None`` otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources as _files
from typing import Any

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# --------------------------------------------------------------------------- text


def split_union(expression: str) -> list[str]:
    """The top-level ``|`` alternatives (not inside parentheses, brackets or quotes), stripped."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def strip_parens(text: str) -> str:
    """``((X))`` -> ``X`` when the outer parentheses enclose the whole text."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text  # "(a) | (b)" or "(a).b": not one enclosing pair
        text = text[1:-1].strip()
    return text


def leading_identifier(alternative: str) -> str | None:
    """The first identifier of an alternative (``Patient`` in ``(Patient.name)``)."""
    m = _IDENT.match(alternative.lstrip("( \t\n"))
    return m.group(0) if m else None


def split_per_base(expression: str, bases: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map each base type to the alternatives of *expression* that apply to it.

    An alternative belongs to the base type it starts with. One that starts with no base
    type (``(start | requestedPeriod.start).first()`` in ``clinical-date``) goes to the only
    base left without alternatives between its neighbours (the alternatives are in base
    order). Returns the mapping and the alternatives that could not be placed.
    """
    if len(bases) == 1:
        return {bases[0]: expression.strip()}, []
    alts = split_union(expression)
    owner: list[str | None] = []
    for alt in alts:
        ident = leading_identifier(alt)
        owner.append(ident if ident in bases else None)
    covered = {o for o in owner if o}
    order = {b: i for i, b in enumerate(bases)}
    unplaced: list[str] = []
    for i, alt in enumerate(alts):
        if owner[i] is not None:
            continue
        before = max((order[o] for o in owner[:i] if o), default=-1)
        after = min((order[o] for o in owner[i + 1:] if o), default=len(bases))
        candidates = [b for b in bases[before + 1:after] if b not in covered]
        if len(candidates) == 1:
            owner[i] = candidates[0]
        else:
            unplaced.append(alt)
    out: dict[str, list[str]] = {}
    for alt, base in zip(alts, owner):
        if base is not None:
            out.setdefault(base, []).append(alt)
    return {b: " | ".join(a) for b, a in out.items()}, unplaced


_RESOLVE_IS = re.compile(
    r"\.where\(\s*(resolve\(\)\s+is\s+[A-Za-z]+(?:\s+or\s+resolve\(\)\s+is\s+[A-Za-z]+)*)\s*\)$"
)


def strip_resolve(alternative: str) -> tuple[str, frozenset[str] | None]:
    """``X.where(resolve() is A [or resolve() is B])`` -> (``X``, {A, B}); else (alt, None).

    The caller keeps only the references whose type is one of the returned types.
    """
    text = strip_parens(alternative)
    m = _RESOLVE_IS.search(text)
    if not m:
        return alternative, None
    types = frozenset(re.findall(r"is\s+([A-Za-z]+)", m.group(1)))
    return text[: m.start()], types


# --------------------------------------------------------------------------- simple paths

_STEP = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\.ofType\(\s*([A-Za-z]+)\s*\))?"
    r"(?:\.where\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*'([^'\\]*)'\s*\))?"
)
_AS = re.compile(r"^(.*?)\s+as\s+([A-Za-z]+)$")


@dataclass(frozen=True, slots=True)
class Step:
    """One element of a simple path: ``name``, ``name.ofType(T)``, ``name.where(f='v')``."""

    name: str
    of_type: str | None = None
    where: tuple[str, str] | None = None  #: keep the values whose child ``f`` equals ``v``


@dataclass(frozen=True, slots=True)
class SimplePath:
    """``Root.a.b.ofType(T)``: a root type (or ``None`` for a relative path) and its steps."""

    root: str | None
    steps: tuple[Step, ...]


def parse_simple_path(alternative: str) -> SimplePath | None:
    """A plain dotted path, each step optionally followed by ``ofType(T)`` and/or
    ``where(element = 'literal')``, the whole optionally followed by ``as T``."""
    text = strip_parens(alternative)
    as_type = None
    m = _AS.match(text)
    if m:
        text, as_type = strip_parens(m.group(1)), m.group(2)
    steps: list[Step] = []
    pos = 0
    while True:
        sm = _STEP.match(text, pos)
        if not sm or sm.group(1) in _FUNCTION_NAMES:
            return None
        where = (sm.group(3), sm.group(4)) if sm.group(3) else None
        steps.append(Step(sm.group(1), sm.group(2), where))
        pos = sm.end()
        if pos == len(text):
            break
        if text[pos] != ".":
            return None
        pos += 1
    if as_type is not None:
        last = steps[-1]
        if last.of_type is not None or last.where is not None:
            return None
        steps[-1] = Step(last.name, as_type)
    root = None
    if steps[0].name[:1].isupper():
        first = steps.pop(0)
        if first.of_type is not None or first.where is not None:
            return None
        root = first.name
    return SimplePath(root, tuple(steps))


# identifiers that are functions or keywords, never element names
_FUNCTION_NAMES = frozenset({"as", "is", "and", "or", "not", "where", "exists", "ofType"})


class Model:
    """The R5 model tables fhirpathpy ships (``fhirpathpy/models/r5``), loaded once."""

    def __init__(self) -> None:
        base = _files.files("fhirpathpy.models").joinpath("r5")
        self.raw = {
            name: json.loads(base.joinpath(f"{name}.json").read_text(encoding="utf-8"))
            for name in ("choiceTypePaths", "path2Type", "pathsDefinedElsewhere", "type2Parent")
        }
        self.path2type: dict[str, str] = self.raw["path2Type"]
        self.choices: dict[str, list[str]] = self.raw["choiceTypePaths"]
        self.elsewhere: dict[str, str] = self.raw["pathsDefinedElsewhere"]
        self.parent: dict[str, str] = self.raw["type2Parent"]

    def element(self, ctx: str, name: str) -> tuple[str, bool]:
        """The type of ``ctx.name`` and whether it is a backbone (then the type is its path)."""
        full = f"{ctx}.{name}"
        t = self.path2type.get(full)
        if t is not None:
            return ("string" if t.startswith("System.") else t), False
        redirect = self.elsewhere.get(full)
        return (redirect or full), True

    def is_a(self, type_name: str, wanted: str) -> bool:
        while type_name:
            if type_name == wanted:
                return True
            type_name = self.parent.get(type_name, "")
        return False


@lru_cache(maxsize=1)
def model() -> Model:
    return Model()


Item = tuple[Any, "str | None"]  # (value, FHIR type or backbone path or None)


def _add(out: list[Item], value: Any, t: str | None) -> None:
    for v in value if isinstance(value, list) else (value,):
        if v is None:
            continue
        if t == "Resource" and isinstance(v, dict):
            out.append((v, v.get("resourceType")))
        else:
            out.append((v, t))


def walk(path: SimplePath, value: Any, ctx: str | None) -> list[Item]:
    """Evaluate a simple path on a JSON value whose type (or backbone path) is *ctx*."""
    m = model()
    # a type name first: FHIRPath keeps the input only if it is of that type
    if path.root is not None and (not isinstance(value, dict) or ctx is None or (
            ctx != path.root and not m.is_a(ctx, path.root))):
        return []
    items: list[Item] = [(value, ctx)]
    for step in path.steps:
        name, of_type = step.name, step.of_type
        out: list[Item] = []
        for node, nctx in items:
            if not isinstance(node, dict) or nctx is None:
                continue
            choices = m.choices.get(f"{nctx}.{name}")
            if choices is not None:
                for c in choices:
                    key = name + c[:1].upper() + c[1:]
                    if key in node:
                        t, _ = m.element(nctx, key)
                        if of_type is None or m.is_a(t, of_type):  # canonical is a uri
                            _add(out, node[key], t)
                continue
            if name not in node:
                continue
            t, _ = m.element(nctx, name)
            if of_type is not None:
                sub: list[Item] = []
                _add(sub, node[name], t)
                out.extend(i for i in sub if i[1] is not None and m.is_a(i[1], of_type))
            else:
                _add(out, node[name], t)
        if step.where is not None:
            field, literal = step.where
            out = [i for i in out if isinstance(i[0], dict) and i[0].get(field) == literal]
        items = out
        if not items:
            break
    return items


# --------------------------------------------------------------------------- fhirpathpy


def _resolve_stub(inputs: list) -> list:
    """``resolve()`` without a store: a stub resource of the reference's type (and id)."""
    from fhirpathpy.engine.nodes import ResourceNode

    out = []
    for ref in inputs:
        text = ref.get("reference") if isinstance(ref, dict) else ref
        rtype = ref.get("type") if isinstance(ref, dict) else None
        stub: dict[str, Any] = {}
        if isinstance(text, str):
            parts = text.split("|", 1)[0].split("/_history/", 1)[0].rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2][:1].isupper():
                rtype, stub["id"] = parts[-2], parts[-1]
        if isinstance(rtype, str) and rtype[:1].isupper() and "/" not in rtype:
            out.append(ResourceNode.create_node({"resourceType": rtype, **stub}))
    return out


_ABSTRACT_ROOT = re.compile(r"^(\(*\s*)(?:Resource|DomainResource|CanonicalResource|MetadataResource)\.")


def _fhirpathpy(expression: str) -> Callable[[Any, str | None], list[Item]]:
    import fhirpathpy
    from fhirpathpy.engine.nodes import ResourceNode

    # fhirpathpy filters a leading type name on resourceType equality, so ``Resource.id``
    # finds nothing on a Patient: the path is made relative (the same on any resource)
    expression = _ABSTRACT_ROOT.sub(r"\1", expression)
    fn = fhirpathpy.compile(
        expression,
        model=model().raw,
        options={
            "returnRawData": True,
            "userInvocationTable": {"resolve": {"fn": _resolve_stub, "arity": {0: []}}},
        },
    )

    def run(value: Any, ctx: str | None) -> list[Item]:
        node = value if isinstance(value, dict) and "resourceType" in value else (
            ResourceNode.create_node(value, ctx))
        out: list[Item] = []
        for r in fn(node):
            if isinstance(r, ResourceNode):
                data, t = r.data, r.path
                if t is not None and t.startswith("System."):
                    t = "string"
                if isinstance(data, list):
                    out.extend((d, t) for d in data if d is not None)
                elif data is not None:
                    out.append((data, t))
            elif r is not None:
                out.append((r, None))
        return out

    return run


# --------------------------------------------------------------------------- compiled


@dataclass(frozen=True, slots=True)
class Alternative:
    text: str  #: the alternative as evaluated (``resolve()`` filter removed)
    simple: SimplePath | None  #: set when it is walked directly
    run: Callable[[Any, str | None], list[Item]] | None  #: fhirpathpy otherwise
    ref_types: frozenset[str] | None  #: keep only references to these types


@dataclass(frozen=True, slots=True)
class Compiled:
    expression: str
    alternatives: tuple[Alternative, ...]

    @property
    def fast(self) -> bool:
        return all(a.simple is not None for a in self.alternatives)

    def evaluate(self, value: Any, ctx: str | None) -> Iterable[tuple[Any, str | None, frozenset[str] | None]]:
        """(value, type, reference types filter) for every result of every alternative."""
        for alt in self.alternatives:
            items = walk(alt.simple, value, ctx) if alt.simple is not None else alt.run(value, ctx)
            for v, t in items:
                yield v, t, alt.ref_types


@cache
def compile_expression(expression: str, fast: bool = True) -> Compiled:
    """Compile once; *fast* = False sends every alternative through fhirpathpy (to compare)."""
    alts = []
    for alt in split_union(expression):
        text, ref_types = strip_resolve(alt)
        simple = parse_simple_path(text) if fast else None
        run = None if simple is not None else _fhirpathpy(text)
        alts.append(Alternative(text, simple, run, ref_types))
    return Compiled(expression, tuple(alts))


@cache
def top_level_keys(expression: str, ctx: str) -> tuple[str, ...] | None:
    """The JSON keys of a *ctx* resource the expression can start from, when every
    alternative is a simple path (a resource without any of them gives nothing); else None."""
    keys: list[str] = []
    for alt in compile_expression(expression).alternatives:
        if alt.simple is None or not alt.simple.steps:
            return None
        name = alt.simple.steps[0].name
        choices = model().choices.get(f"{ctx}.{name}")
        keys.extend(name + c[:1].upper() + c[1:] for c in choices) if choices else keys.append(name)
    return tuple(dict.fromkeys(keys))
