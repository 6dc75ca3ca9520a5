"""``fhir-ctms db upgrade``: Alembic migrations, run on the configured async engine."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine


def _config(connection: object) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "fhir_ctms.storage:migrations")
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), revision))
