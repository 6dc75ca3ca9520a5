"""The ASGI application: ``/fhir`` goes to the FHIR REST app, everything else to FastAPI
(including ``/fhir/.well-known/`` and the authorization server under ``/auth``, api/smart.py).

Both share one :class:`State` (settings and repository); the repository is
opened (and migrated) at startup unless one is given.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..config import Settings, get_settings
from ..operations.reindex import load_stored
from ..storage.migrate import upgrade
from ..storage.repository import Repository
from ..storage.sql import SqlRepository
from . import boundary, openapi, smart
from .rest import FhirRest, State

log = logging.getLogger("fhir_ctms")

PREFIX = "/fhir"
#: under /fhir but served by FastAPI: SMART discovery (api/smart.py)
WELL_KNOWN = PREFIX + "/.well-known/"


#: what a browser app may send and read across origins (CORS): the FHIR headers it needs
CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_EXPOSED = ("Location", "Content-Location", "ETag", "Last-Modified", "WWW-Authenticate", "Retry-After")


class Server:
    """The ASGI callable uvicorn serves: a path test, then one of the two apps. A request with
    an ``Origin`` header (a browser app's, or its preflight) goes through Starlette's
    ``CORSMiddleware`` first; others skip it, so API clients pay nothing for CORS."""

    def __init__(self, state: State, rest: FhirRest, web: FastAPI) -> None:
        self.state, self.rest, self.web = state, rest, web
        origins = state.settings.cors_origins
        self.cors = CORSMiddleware(self.dispatch, allow_origins=origins, allow_methods=CORS_METHODS,
                                   allow_headers=["*"], expose_headers=CORS_EXPOSED,
                                   max_age=600) if origins else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.cors is not None:
                for name, _ in scope["headers"]:
                    if name == b"origin":
                        await self.cors(scope, receive, send)
                        return
            if _is_rest(scope["path"]):
                await self.rest(scope, receive, send)
                return
        await self.web(scope, receive, send)

    async def dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Behind CORS: the same path test."""
        await (self.rest if _is_rest(scope["path"]) else self.web)(scope, receive, send)


def _is_rest(path: str) -> bool:
    return path.startswith(_UNDER) and not path.startswith(WELL_KNOWN) or path == PREFIX


_UNDER = PREFIX + "/"


def create_app(settings: Settings | None = None, repo: Repository | None = None,
               migrate: bool = True) -> Server:
    """The app; with no ``repo`` one is opened on ``settings.database_url`` at startup
    (and migrated to the newest schema when ``migrate``)."""
    settings = settings or get_settings()
    state = State(settings, repo)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        own = None
        if state.repo is None:
            own = SqlRepository.from_url(settings.database_url, settings.partition,
                                          pool_size=settings.pool_size)
            if migrate:
                await upgrade(own.engine)
            state.repo = own
        # SearchParameters created through the API and made active by $reindex stay active
        # across restarts (and in every worker): without this, writes after a restart would
        # stop maintaining their index rows
        loaded, failed = await load_stored(state.repo)
        for url, why in failed:
            log.warning("stored SearchParameter %s not loaded: %s", url, why)
        # the conformance resources of profiles/ and terminology/, served like any resource
        # (written only when changed: a restart adds no version)
        from ..conformance import install
        for name, why in (await install(state.repo, settings)).failed:
            log.warning("conformance resource %s not stored: %s", name, why)
        # What start-up loaded (definitions, models, their schemas: ~240 k objects) goes to the
        # permanent generation, which the collector never walks. Each full collection walked
        # them all: ~100 ms with the loop blocked, a few times a minute under load, and
        # read-by-id's p99 on PostgreSQL was ~95 ms in the rounds one hit (~6 ms without)
        gc.collect()
        gc.freeze()
        # and the youngest generation is collected after 10,000 net allocations instead of 700:
        # a request's objects die by reference counting, and under a create load the 700-object
        # collections (~200 a second) took ~2% of the core
        gc.set_threshold(10_000, 10, 10)
        try:
            yield
        finally:
            if own is not None:
                await own.close()
                state.repo = None

    web = FastAPI(title="fhir-ctms", version=__version__, lifespan=lifespan,
                  description="FHIR R5 Clinical Trial Management System server")
    web.state.fhir = state
    boundary.install(web)
    web.include_router(smart.router)
    web.openapi = lambda: openapi.document(web, PREFIX)  # type: ignore[method-assign]
    return Server(state, FhirRest(state, PREFIX), web)
