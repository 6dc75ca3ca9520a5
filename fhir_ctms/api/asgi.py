"""The ASGI entry point for uvicorn: ``fhir_ctms.api.asgi:app`` (settings from the environment)."""

from .app import create_app

app = create_app()
