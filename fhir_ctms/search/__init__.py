"""Search (R5 search.html): the parameters, a request parsed into a plain value, index values.

- ``parameters``: every R5 search parameter and compartment (extracted from the HL7 packages);
- ``query``: a search request as a plain value; ``parse``: parameters -> ``SearchQuery`` and back;
- ``extract``: a resource's index values at write time; ``index``: those values as storage rows.

The SQL lives in ``fhir_ctms.storage.search_sql``.
"""
