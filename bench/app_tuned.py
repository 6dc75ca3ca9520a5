"""An experiment, not the shipped configuration: the fhir-ctms app with engine arguments of our choosing.

The server builds its engine with ``make_engine(url)`` (SQLAlchemy's default pool: 5 connections
plus 10 "overflow" ones that are closed as soon as they are returned while 5 are idle, which under
concurrent load means opening and closing connections all the time). This entry point builds the
repository with ``SqlRepository.from_url(url, **BENCH_APP_ENGINE_KW)`` (default: a fixed pool of
32 connections, no overflow) and serves the unchanged app with it, to measure what that change
would buy. The schema must exist already (bench/bench.py starts the real app first).

    FHIR_CTMS_DATABASE_URL=... uvicorn bench.app_tuned:app
"""

from __future__ import annotations

import json
import os

from fhir_ctms.api.app import create_app
from fhir_ctms.config import get_settings
from fhir_ctms.storage.sql import SqlRepository

ENGINE_KW = json.loads(os.environ.get("BENCH_APP_ENGINE_KW") or '{"pool_size": 32, "max_overflow": 0}')

_settings = get_settings()
app = create_app(_settings, SqlRepository.from_url(_settings.database_url, _settings.partition, **ENGINE_KW),
                 migrate=False)
