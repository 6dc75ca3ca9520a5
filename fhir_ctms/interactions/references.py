"""Links between the entries of a transaction (R5 http.html#trules, bundle.html#references).

Before a transaction writes anything, each entry's ``fullUrl`` is mapped to the
resource it becomes (``Type/id``). Then, in every entry's resource:

- a ``reference`` equal to a mapped fullUrl, or relative to the entry's own
  absolute fullUrl base and so resolving to one, is replaced (a ``#fragment`` is kept);
- any other element whose value is a mapped ``urn:uuid:``/``urn:oid:`` (elements of
  type uri, url, uuid, oid) is replaced, and so is a quoted mapped URL in the
  narrative (``href="..."``, ``src="..."``);
- a ``urn:uuid:`` reference that names no entry is an error (it would dangle);
- a conditional reference (``Patient?identifier=...``) is resolved against the
  stored resources and the Bundle's own entries together: exactly one must match.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_URN = ("urn:uuid:", "urn:oid:")


def _strings(value: Any) -> Iterator[tuple[Any, Any, str]]:
    """(container, key, string) for every string in a JSON tree, iteratively."""
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            if isinstance(child, str):
                yield node, key, child
            elif isinstance(child, (dict, list)):
                stack.append(child)


def base_of(full_url: str | None) -> str | None:
    """``http://x/fhir/`` of an absolute RESTful fullUrl ``http://x/fhir/Type/id``."""
    if not full_url or not full_url.startswith(("http://", "https://")):
        return None
    parts = full_url.rstrip("/").rsplit("/", 2)
    return parts[0] + "/" if len(parts) == 3 else None


def rewrite(resource: dict[str, Any], full_url: str | None, ids: dict[str, str]) -> list[str]:
    """Rewrite links to mapped entries in place; return the ``urn:uuid:`` references left dangling."""
    base = base_of(full_url)
    dangling = []
    for parent, key, value in list(_strings(resource)):
        if key == "reference":
            target, _, fragment = value.partition("#")
            resolved = ids.get(target) or (ids.get(base + target) if base and target else None)
            if resolved:
                parent[key] = resolved + ("#" + fragment if fragment else "")
            elif target.startswith("urn:uuid:"):
                dangling.append(value)
        elif key == "div" and any(k in value for k in ids):
            for link, target in ids.items():
                value = value.replace(f'"{link}"', f'"{target}"')
            parent[key] = value
        elif value.startswith(_URN) and value in ids:
            parent[key] = ids[value]
    return dangling


def conditional_references(resource: Any) -> set[str]:
    """References written as search criteria (``Type?params``)."""
    return {value for _, key, value in _strings(resource)
            if key == "reference" and "?" in value and not value.startswith(("http:", "https:", "urn:"))}
