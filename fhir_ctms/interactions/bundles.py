"""Bundles built around stored JSON: entries carry the stored text as an orjson Fragment,
so a page of history or search results is never parsed or rebuilt."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from ..storage.repository import Stored
from .context import etag, instant


def url(base: str, path: str, params: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()) -> str:
    query = urlencode(list(params))
    target = f"{base}/{path}" if path else base
    return f"{target}?{query}" if query else target


def bundle(kind: str, entries: list[dict[str, Any]], links: list[tuple[str, str]], ts: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "timestamp": ts,
            "link": [{"relation": rel, "url": u} for rel, u in links], "entry": entries}


def resource_entry(base: str, stored: Stored) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base}/{stored.type}/{stored.id}"}
    if stored.content is not None:
        entry["resource"] = orjson.Fragment(stored.content)
    return entry


def status_line(stored: Stored) -> str:
    """The HTTP status the write of this version answered."""
    if stored.method == "DELETE":
        return "204 No Content"
    return "201 Created" if stored.version == 1 else "200 OK"


def history_entry(base: str, stored: Stored) -> dict[str, Any]:
    entry = resource_entry(base, stored)
    path = stored.type if stored.method == "POST" else f"{stored.type}/{stored.id}"
    # a patch appears as the update it amounts to (bdl-14: no PATCH in a history Bundle)
    method = "PUT" if stored.method == "PATCH" else stored.method
    entry["request"] = {"method": method, "url": path}
    entry["response"] = {"status": status_line(stored), "etag": etag(stored.version),
                         "lastModified": instant(stored.ts_us)}
    return entry
