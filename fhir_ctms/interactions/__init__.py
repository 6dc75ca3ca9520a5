"""FHIR RESTful interactions (R5 http.html) without HTTP.

Each module implements one interaction as ``async def handle(request, ctx) ->
FhirResponse``: it takes a plain request value and a context holding the
repository, and raises :mod:`fhir_ctms.errors` exceptions; ``fhir_ctms.api``
only adapts HTTP to and from these values.
"""
