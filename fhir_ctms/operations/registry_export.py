"""``GET [base]/ResearchStudy/[id]/$registry-export``
(profiles/OperationDefinition-ResearchStudy-registry-export.json): the study as a
ClinicalTrials.gov API v2 record, ``{"protocolSection": {...modules...}}``, for the modules the
CTMS holds (``fhir_ctms.ctgov.fields.MAPPED``).

Read from the stored study, its country- and site-level ResearchStudies (``partOf`` the study,
or a site ``partOf`` one of its countries: a site partOf both is read once), the Organizations
and Locations the sites point at and the Organizations of the study's parties (the sponsor's
type gives its class). Locations are in site id order (an imported study's sites are
``<study>-site-001``...: the registry's order). A status derived from the CTMS's milestones is
verified on the day of the export. The answer is not a FHIR resource: the record itself,
``application/json``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..ctgov import codes as C
from ..ctgov import to_record
from ..errors import BadRequest, Gone, NotFound, Unprocessable
from ..interactions.context import Context, FhirRequest, FhirResponse
from ..search.parse import parse
from ..storage.repository import Session

_PAGE = 500


async def registry_export(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    if params:
        raise BadRequest(f"$registry-export takes no parameters (got {', '.join(sorted({n for n, _ in params}))})")
    async with ctx.repo.session(write=False) as s:
        st = await s.current("ResearchStudy", req.id or "")
        if st is None:
            raise NotFound(f"ResearchStudy/{req.id} does not exist")
        if st.deleted or st.content is None:
            raise Gone(f"ResearchStudy/{req.id} is deleted")
        study = orjson.loads(st.content)
        level = _level(study)
        if study.get("partOf") or level in ("site", "country"):
            raise Unprocessable(f"ResearchStudy/{req.id} is a {level or 'part'} of another study: "
                                "$registry-export exports a study (classifier study, no partOf)")
        children = {c["id"]: c for c in await _parts(s, req.id or "")}
        countries = [c for c in children.values() if _level(c) == "country"]
        for country in countries:
            for c in await _parts(s, country["id"]):
                children.setdefault(c["id"], c)
        sites = sorted((c for c in children.values()
                        if _level(c) == "site" or (_level(c) is None and c.get("site"))),
                       key=lambda c: c["id"])
        refs = [ref for site in sites for ref in site.get("site") or []]
        refs += [p["party"] for p in study.get("associatedParty") or [] if isinstance(p.get("party"), dict)]
        related: dict[str, dict[str, Any]] = {}
        for ref in refs:
            target = ref.get("reference") or ""
            rtype, _, rid = target.partition("/")
            if rtype in ("Organization", "Location") and rid and target not in related:
                found = await s.current(rtype, rid)
                if found is not None and not found.deleted and found.content is not None:
                    related[target] = orjson.loads(found.content)
    return FhirResponse(200, body=to_record(study, sites, related), headers={"Content-Type": "application/json"})


def _level(study: dict[str, Any]) -> str | None:
    for concept in study.get("classifier") or []:
        code = C.code_of(concept, C.STUDY_LEVEL)
        if code:
            return code
    return None


async def _parts(s: Session, study_id: str) -> list[dict[str, Any]]:
    """The current ResearchStudies ``partOf`` ResearchStudy/``study_id``, page by page."""
    q = parse(("ResearchStudy",), [("part-of", f"ResearchStudy/{study_id}")], strict=True)
    out: list[dict[str, Any]] = []
    after = None
    while True:
        rows = await s.search(q, limit=_PAGE, after=after)
        out += [orjson.loads(st.content) for st, _ in rows if st.content is not None]
        if len(rows) < _PAGE:
            return out
        after = rows[-1][1]
