"""One Settings class: every option, read from ``FHIR_CTMS_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExternalIssuer(BaseModel):
    """An OpenID Connect provider (a hospital's IdP) whose access tokens the FHIR API accepts."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the ``iss`` of its tokens, exactly
    issuer: str
    #: the ``aud`` its tokens must contain (e.g. this server's FHIR base)
    audience: str
    #: where its public keys are; by default from ``{issuer}/.well-known/openid-configuration``
    jwks_uri: str | None = None
    #: the claim holding the SMART scopes: a space separated string or a list (``scp``)
    scope_claim: str = "scope"
    #: the claim holding the user's roles (a dotted path such as ``realm_access.roles`` works);
    #: its ``user/`` scopes are narrowed to what the roles allow, as for built-in users
    roles_claim: str = "roles"
    #: the claims holding the user's FHIR resource and the launch patient
    fhir_user_claim: str = "fhirUser"
    patient_claim: str = "patient"


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
    #: The base URL clients see (behind a proxy), and the authorization server's issuer; by default
    #: derived from each request (the authorization server accepts only a ``Host`` naming the
    #: address it was reached at, api/smart.py).
    public_base_url: str | None = None
    #: Origins whose browser apps may call the API, discovery and the token endpoint (CORS; SMART
    #: App Launch 2.2 asks it of servers that serve browser apps). ``*`` (the default): any origin,
    #: without credentials (the API takes bearer tokens, never cookies). ``[]``: no CORS headers.
    cors_origins: list[str] = ["*"]
    #: CTMS profiles mandatory: a ResearchStudy must conform to ctms-study/-country/-site (by its
    #: study-level classifier), a ResearchSubject to ctms-subject, etc. (fhir_ctms/validation),
    #: claimed or not. Off: only the profiles a resource claims in meta.profile are checked.
    require_profiles: bool = False
    #: A meta.profile the server does not know is a 422 (off: ignored on write, a warning in $validate).
    reject_unknown_profiles: bool = False

    # -- SMART App Launch authorization server (fhir_ctms/auth) --------------------------------
    #: Require a SMART bearer token on every FHIR request but /metadata (401 without one, 403 when
    #: its scopes do not cover the request) and advertise SMART on FHIR security in the
    #: CapabilityStatement. Off by default for the library and the tests; ``fhir-ctms serve``
    #: turns it on unless ``--dev`` (or this variable set to false). The authorization endpoints
    #: (/auth/...) and /fhir/.well-known/smart-configuration are served either way.
    auth_enabled: bool = False
    #: Lifetimes in seconds: access tokens (and id tokens), authorization codes, EHR launch
    #: handles, refresh tokens for ``offline_access`` and for ``online_access``.
    auth_access_token_lifetime: int = 3600
    auth_code_lifetime: int = 60
    auth_launch_lifetime: int = 300
    auth_offline_refresh_lifetime: int = 90 * 24 * 3600
    auth_online_refresh_lifetime: int = 8 * 3600
    #: Lifetime of backend services' access tokens (client_credentials), seconds: SMART backend
    #: services recommend at most 300 (and never more than ``auth_access_token_lifetime``).
    auth_backend_token_lifetime: int = 300
    #: Algorithm of the server's access token key (``ES384`` or ``RS384``); id tokens are always
    #: signed RS256 by an RSA key of their own (SMART App Launch 2.2).
    auth_signing_alg: str = "ES384"
    #: Longest lifetime accepted for a client assertion (``exp`` - now), seconds (SMART: 5 minutes).
    auth_assertion_max_lifetime: int = 300
    #: Style sheet URL sent as ``smart_style_url`` in token responses of user launches (none if unset).
    auth_smart_style_url: str | None = None
    #: A JSON or TOML file mapping each role to the ``user/`` scopes it may hold; it replaces the
    #: default mapping of ``fhir_ctms/auth/roles.py`` (checked when the settings are read).
    auth_roles_file: str | None = None
    #: External OpenID Connect providers whose JWTs the FHIR API accepts beside its own tokens
    #: (``fhir_ctms/auth/external.py``): a JSON list of objects (``ExternalIssuer``).
    auth_external_issuers: list[ExternalIssuer] = []
    #: Login throttling (``/auth/login``): after this many failed attempts for one username, or
    #: ``..._per_address`` from one network address, within ``auth_login_window`` seconds, every
    #: attempt is refused (429) for the window, even with the right password.
    auth_login_max_failures: int = 5
    auth_login_max_failures_per_address: int = 20
    auth_login_window: int = 900

    @field_validator("auth_roles_file")
    @classmethod
    def _roles_file_readable(cls, value: str | None) -> str | None:
        if value:
            from .auth.roles import load_file
            load_file(value)  # a broken file stops the start, with its reason
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
