"""The one place that parses, validates and serialises FHIR JSON."""
