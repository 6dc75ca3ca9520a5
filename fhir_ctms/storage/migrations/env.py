"""Alembic environment: runs the migrations on the engine ``fhir_ctms.storage.migrate`` passes in."""

from alembic import context

from fhir_ctms.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
