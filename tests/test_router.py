"""The request-line table (interactions/router.py): ``route`` looks a path's route up by the kinds
of its segments (a cache); here it is held to the plain rule it replaces, for any path: the first
route, most specific first, whose shape the segments fit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_ctms.errors import MethodNotAllowed, NotFound
from fhir_ctms.interactions.router import COMPARTMENT, ID, OP, ROUTES, TYPE, VID, route

SEGMENT = st.sampled_from(["Patient", "ResearchStudy", "123", "metadata", "_history", "_search", "$reindex",
                           "$", "$x", "2", "", "_format", "$milestones"]) | st.text(min_size=0, max_size=6)
METHOD = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def reference(method: str, segments: list[str]) -> tuple[str, dict[str, str | None]] | str:
    """The rule, written out: the interaction and placeholder values, or "404"/"405"."""
    for r in ROUTES:
        if len(r.shape) != len(segments):
            continue
        fits = all(
            (len(got) >= 2 and got[0] == "$") if want == OP else bool(got) if want in (TYPE, ID, VID, COMPARTMENT)
            else want == got for want, got in zip(r.shape, segments))
        if not fits:
            continue
        interaction = r.methods.get("GET" if method == "HEAD" else method)
        if interaction is None:
            return "405"
        values = dict(zip(r.shape, segments))
        return interaction, {"type": values.get(TYPE), "id": values.get(ID), "vid": values.get(VID),
                             "compartment": values.get(COMPARTMENT),
                             "operation": values[OP][1:] if OP in values else None}
    return "404"


def actual(method: str, segments: list[str]) -> tuple[str, dict[str, str | None]] | str:
    try:
        m = route(method, segments)
    except NotFound:
        return "404"
    except MethodNotAllowed:
        return "405"
    return m.interaction, {"type": m.type, "id": m.id, "vid": m.vid, "compartment": m.compartment,
                           "operation": m.operation}


@settings(max_examples=3000, deadline=None)
@given(METHOD, st.lists(SEGMENT, min_size=0, max_size=5))
def test_route_is_the_first_fitting_shape(method: str, segments: list[str]) -> None:
    assert actual(method, segments) == reference(method, segments)


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "Patient/1", ("read", {"type": "Patient", "id": "1"})),
    ("GET", "Patient/_history", ("history-type", {"type": "Patient"})),
    ("GET", "Patient/1/_history/2", ("vread", {"type": "Patient", "id": "1", "vid": "2"})),
    ("POST", "ResearchStudy/9/$milestones", ("operation", {"type": "ResearchStudy", "id": "9", "operation": "milestones"})),
    ("GET", "Patient/1/ResearchSubject", ("search-compartment", {"compartment": "Patient", "id": "1", "type": "ResearchSubject"})),
    ("GET", "metadata", ("capabilities", {})),
    ("DELETE", "metadata", "405"),
    ("GET", "a/b/c/d/e", "404"),
])
def test_examples(method: str, path: str, expected: object) -> None:
    got = actual(method, path.split("/"))
    if isinstance(expected, str):
        assert got == expected
    else:
        interaction, values = expected  # type: ignore[misc]
        assert got[0] == interaction
        assert {k: v for k, v in got[1].items() if v is not None} == values


def test_prepared_with_copies_every_field() -> None:
    """FhirRequest.prepared_with is dataclasses.replace written out (for speed): it must carry
    every field, including any added later."""
    from dataclasses import fields, replace

    from fhir_ctms.interactions.context import FhirRequest

    values = {f.name: f"value-{f.name}" for f in fields(FhirRequest)}
    req = FhirRequest(**values)
    resource = {"resourceType": "Patient"}
    assert req.prepared_with(resource) == replace(req, resource=resource, prepared=True)
