"""The ASGI application: settings, the repository, the routes and the error boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..config import Settings, get_settings
from ..storage.migrate import upgrade
from ..storage.repository import Repository
from ..storage.sql import SqlRepository
from . import boundary, routes


def create_app(settings: Settings | None = None, repo: Repository | None = None,
               migrate: bool = True) -> FastAPI:
    """The app; with no ``repo`` one is opened on ``settings.database_url`` at startup
    (and migrated to the newest schema when ``migrate``)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = None
        if app.state.repo is None:
            own = SqlRepository.from_url(settings.database_url, settings.partition,
                                          pool_size=settings.pool_size)
            if migrate:
                await upgrade(own.engine)
            app.state.repo = own
        try:
            yield
        finally:
            if own is not None:
                await own.close()
                app.state.repo = None

    app = FastAPI(title="fhir-ctms", version=__version__, lifespan=lifespan,
                  description="FHIR R5 Clinical Trial Management System server")
    app.state.settings = settings
    app.state.repo = repo
    boundary.install(app)
    app.include_router(routes.router)
    return app
