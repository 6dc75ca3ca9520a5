"""The summary forms of a resource (R5 search.html#summary): ``_summary=true`` and ``text``.

Which elements are "summary" (``ElementDefinition.isSummary``) and which are mandatory comes
from the fhir.resources R5 models, which carry both from the core definitions; results are
cached per type. A subset is tagged SUBSETTED, as the spec requires.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources import get_fhir_model_class

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def _wire(model: Any, names: list[str]) -> frozenset[str]:
    out = {"resourceType"}
    for name in names:
        field = model.model_fields.get(name)
        wire = field.alias if field is not None and field.alias else name
        out |= {wire, "_" + wire}  # a primitive's id and extensions travel with it
    return frozenset(out)


@lru_cache(maxsize=None)
def summary_keys(rtype: str) -> frozenset[str]:
    """The top-level JSON keys of ``_summary=true``: the summary elements."""
    model = get_fhir_model_class(rtype)
    return _wire(model, list(model.summary_elements_sequence()))


@lru_cache(maxsize=None)
def text_keys(rtype: str) -> frozenset[str]:
    """The top-level JSON keys of ``_summary=text``: text, id, meta and the mandatory elements."""
    model = get_fhir_model_class(rtype)
    required = [name for name, field in model.model_fields.items()
                if field.is_required() or (field.json_schema_extra or {}).get("element_required")]
    return _wire(model, ["id", "meta", "text", *required])


def subset(resource: dict[str, Any], keys: frozenset[str] | set[str]) -> dict[str, Any]:
    """``resource`` with only ``keys`` at the top level, tagged SUBSETTED."""
    out = {k: v for k, v in resource.items() if k in keys}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out
