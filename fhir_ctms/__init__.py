"""fhir-ctms: a FHIR R5 native Clinical Trial Management System server."""

__version__ = "0.1.0"
FHIR_VERSION = "5.0.0"
