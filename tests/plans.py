"""Run a search under each of its plans (``fhir_ctms.storage.search_sql.plan``).

The plan depends on how many resources each clause matches (``SMALL``): the small data sets of
the tests would always take the same one. Setting the threshold forces the others, so that the
same queries check every way a search can run:

- ``chosen``: the threshold as shipped;
- ``walk``: no clause is small: the search walks the default order (or the sort key's index, in
  two phases: resources with a value, then those without) and probes every clause;
- ``drive``: every counted clause is small: the smallest drives and the others are probed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fhir_ctms.storage import search_sql

PLANS = {"chosen": search_sql.SMALL, "walk": 0, "drive": 10 ** 9}


@contextmanager
def forced(plan: str) -> Iterator[None]:
    saved = search_sql.SMALL
    search_sql.SMALL = PLANS[plan]
    try:
        yield
    finally:
        search_sql.SMALL = saved
