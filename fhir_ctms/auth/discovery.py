"""Where the authorization server is, and what it supports: SMART's ``.well-known/smart-configuration``
(App Launch 2.2, conformance) and the ``oauth-uris`` extension of the CapabilityStatement.

The FHIR base URL is the tokens' ``iss`` and ``aud``; the endpoints live beside it, under
``/auth`` at the same origin (``https://host/fhir`` -> ``https://host/auth/token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import ALGORITHMS, ID_TOKEN_ALG

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES = (
    "launch-ehr", "launch-standalone", "authorize-post",
    "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient",
    "context-banner", "context-style",
    "sso-openid-connect", "permission-offline", "permission-online",
    "permission-patient", "permission-user", "permission-v1", "permission-v2",
)
SCOPES_SUPPORTED = (
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
    "offline_access", "online_access",
    "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.rs", "user/*.rs", "system/*.rs",
    "patient/*.read", "user/*.read", "system/*.read", "patient/*.write", "user/*.write", "system/*.write",
)


@dataclass(frozen=True)
class Endpoints:
    fhir: str       # the FHIR base URL: issuer and audience of access tokens

    @property
    def auth(self) -> str:
        base = self.fhir.rstrip("/")
        origin = base[: -len("/fhir")] if base.endswith("/fhir") else base
        return origin + "/auth"

    @property
    def authorize(self) -> str:
        return self.auth + "/authorize"

    @property
    def token(self) -> str:
        return self.auth + "/token"

    @property
    def introspect(self) -> str:
        return self.auth + "/introspect"

    @property
    def revoke(self) -> str:
        return self.auth + "/revoke"

    @property
    def jwks(self) -> str:
        return self.auth + "/jwks"

    @property
    def launch(self) -> str:
        return self.auth + "/launch"

    @property
    def issuer(self) -> str:
        return self.fhir.rstrip("/")


def smart_configuration(ep: Endpoints) -> dict[str, Any]:
    return {
        "issuer": ep.issuer,
        "jwks_uri": ep.jwks,
        "authorization_endpoint": ep.authorize,
        "token_endpoint": ep.token,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "introspection_endpoint": ep.introspect,
        "revocation_endpoint": ep.revoke,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(ep: Endpoints) -> dict[str, Any]:
    """OpenID Connect discovery (``sso-openid-connect``): what an app needs to check id tokens,
    which are signed RS256 (SMART App Launch 2.2: the EHR SHALL support RSA SHA-256)."""
    return {
        "issuer": ep.issuer,
        "jwks_uri": ep.jwks,
        "authorization_endpoint": ep.authorize,
        "token_endpoint": ep.token,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
    }


def security(ep: Endpoints) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: the SMART service and its ``oauth-uris``."""
    return {
        "extension": [{"url": OAUTH_URIS, "extension": [
            {"url": "authorize", "valueUri": ep.authorize},
            {"url": "token", "valueUri": ep.token},
            {"url": "revoke", "valueUri": ep.revoke},
            {"url": "introspect", "valueUri": ep.introspect},
        ]}],
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                     "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"}],
        "description": "SMART App Launch 2.2: authorization code with PKCE (S256), EHR and standalone "
                       "launch, backend services (client_credentials with private_key_jwt); "
                       f"configuration at {ep.issuer}/.well-known/smart-configuration",
    }
