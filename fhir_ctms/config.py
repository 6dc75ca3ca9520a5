"""One Settings class: every option, read from ``FHIR_CTMS_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_CTMS_", extra="ignore")

    #: SQLAlchemy async URL; ``postgresql+asyncpg://user:pw@host/db`` selects PostgreSQL.
    database_url: str = "sqlite+aiosqlite:///./fhir-ctms.db"
    #: Database connections kept open (a fixed pool: opening one per burst costs more than the query).
    pool_size: int = 20
    #: Partition key written on every row (the tenant); one partition for now.
    partition: str = "default"
    #: Request bodies larger than this are refused with 413.
    max_body_bytes: int = 10 * 1024 * 1024
    #: Default and maximum page sizes of history (and search) Bundles.
    default_page_size: int = 50
    max_page_size: int = 1000
    #: Provenance.reason text when a write carries no ``X-Reason`` header.
    default_reason: str = "Recorded through the fhir-ctms REST API"
    #: Name of this server in AuditEvent.source.
    source_name: str = "fhir-ctms"
    #: Maximum number of entries in one batch or transaction Bundle.
    max_bundle_entries: int = 10_000
    #: The base URL clients see (behind a proxy); by default derived from each request.
    public_base_url: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
