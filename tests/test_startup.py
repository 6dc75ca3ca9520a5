"""What the app does at start-up (its lifespan), on both databases."""

from __future__ import annotations

import gc

from fhir_ctms.api.app import create_app
from fhir_ctms.config import Settings
from fhir_ctms.storage.sql import SqlRepository


async def test_start_up_freezes_what_it_loaded(repo: SqlRepository) -> None:
    """The objects start-up made go to the permanent generation (a full collection walking them
    all blocked the loop for ~100 ms: BENCHMARKS.md), and the youngest generation is collected
    less often."""
    gc.unfreeze()
    thresholds = gc.get_threshold()
    server = create_app(Settings(), repo)
    try:
        async with server.web.router.lifespan_context(server.web):
            assert gc.get_freeze_count() > 10_000
            assert gc.get_threshold()[0] == 10_000  # the youngest generation: see api/app.py
    finally:
        gc.unfreeze()  # the test process as it was
        gc.set_threshold(*thresholds)
