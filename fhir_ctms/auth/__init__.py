"""The SMART App Launch 2.2 authorization server, free of any web framework.

``scopes`` (parsing and granting), ``pkce``, ``passwords``, ``keys`` (the server's signing keys),
``tokens`` (signing and verifying the server's JWTs), ``clients`` (client authentication),
``flows`` (authorize, token, introspect, revoke, launch), ``discovery`` (smart-configuration).
HTTP lives in ``fhir_ctms.api.smart``, storage in ``fhir_ctms.storage.auth_store``.
"""
