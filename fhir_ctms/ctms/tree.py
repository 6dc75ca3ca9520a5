"""A study's tree as ``$enrollment``, ``$milestones`` and ``$payments`` read it: the study-level
ResearchStudy, its country- and site-level ResearchStudies (``part-of``, two levels: a site is
``partOf`` its study and its country, profiles/README.md, so both searches find it) and the
ResearchSubjects of the levels (``study``).

Everything is read through searches on the session the caller gives (the operations pass one
guarded by the request's token, ``interactions/access.py``: what the token cannot search is not
found), in chunks of :data:`CHUNK` values and pages of :data:`PAGE` resources. No web framework
here; the errors are the server's own (``errors.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import Gone, NotFound
from ..resources.json import loads
from ..search.parse import parse
from ..storage.repository import Session
from .enrollment import level_of

PAGE = 500
CHUNK = 50


async def read_study(s: Session, rid: str) -> dict[str, Any]:
    """The current ResearchStudy ``rid`` (404 when it does not exist, 410 when deleted)."""
    st = await s.current("ResearchStudy", rid)
    if st is None:
        raise NotFound(f"ResearchStudy/{rid} does not exist")
    if st.deleted or st.content is None:
        raise Gone(f"ResearchStudy/{rid} is deleted")
    return loads(st.content)


async def search_all(s: Session, q: Any) -> list[dict[str, Any]]:
    """Every current resource the parsed search ``q`` finds (paged)."""
    out: list[dict[str, Any]] = []
    after = None
    while True:
        rows = await s.search(q, limit=PAGE, after=after)
        out += [loads(st.content) for st, _ in rows if st.content is not None]
        if len(rows) < PAGE:
            return out
        after = rows[-1][1]


async def search(s: Session, rtype: str, name: str, values: list[str],
                 also: tuple[tuple[str, str], ...] = ()) -> list[dict[str, Any]]:
    """The current resources of ``rtype`` whose search parameter ``name`` is one of ``values``
    and that match the search parameters ``also`` (one search per chunk of values, commas in a
    value escaped; none when ``values`` is empty)."""
    out: list[dict[str, Any]] = []
    for n in range(0, len(values), CHUNK):
        value = ",".join(v.replace(",", "\\,") for v in values[n:n + CHUNK])
        out += await search_all(s, parse((rtype,), [(name, value), *also], strict=True))
    return out


async def parts(s: Session, study: str,
                level: Callable[[dict[str, Any]], str | None] = level_of) -> list[dict[str, Any]]:
    """The ResearchStudies under the study ``study`` (an id): those ``partOf`` it, then those
    ``partOf`` its countries (``level`` says which are countries). A site ``partOf`` both its
    study and its country is in the list twice; the callers count it once."""
    children = await search(s, "ResearchStudy", "part-of", [f"ResearchStudy/{study}"])
    countries = [c["id"] for c in children if level(c) == "country"]
    if countries:
        children += await search(s, "ResearchStudy", "part-of", [f"ResearchStudy/{c}" for c in countries])
    return children


async def subjects(s: Session, studies: list[str]) -> list[dict[str, Any]]:
    """The ResearchSubjects of the ResearchStudies ``studies`` (ids), in the order searched."""
    return await search(s, "ResearchSubject", "study", [f"ResearchStudy/{i}" for i in studies])


async def study_tree(s: Session, top: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The levels under the study ``top`` (:func:`parts`) and the ResearchSubjects of ``top`` and
    of every level under it."""
    children = await parts(s, top["id"])
    ids = [top["id"], *{c["id"] for c in children}]
    return children, await subjects(s, sorted(ids))
