"""The ``fhir-ctms`` command: serve, import, audit verify, db upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from .config import get_settings

app = typer.Typer(help="fhir-ctms: a FHIR R5 Clinical Trial Management System server.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


def _repo():
    from .storage.sql import SqlRepository
    s = get_settings()
    return SqlRepository.from_url(s.database_url, s.partition)


@app.command()
def serve(host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
          workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info") -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (migrating the database first)."""
    import uvicorn
    uvicorn.run("fhir_ctms.api.asgi:app", host=host, port=port, workers=workers, log_level=log_level)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from .storage.migrate import upgrade

    async def run() -> None:
        repo = _repo()
        try:
            await upgrade(repo.engine)
        finally:
            await repo.close()
    asyncio.run(run())
    typer.echo(f"database at the newest schema: {get_settings().database_url}")


@app.command("import")
def import_(files: Annotated[list[Path], typer.Argument(help="Bundle (.json) or NDJSON (.ndjson) files.")],
            quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False) -> None:
    """Load Bundles and NDJSON files; report what was rejected and why."""
    from .importer import import_files
    from .storage.migrate import upgrade

    async def run():
        repo = _repo()
        try:
            await upgrade(repo.engine)
            return await import_files(files, repo, get_settings(), progress=not quiet)
        finally:
            await repo.close()
    report = asyncio.run(run())
    typer.echo(f"loaded {report.loaded} resources, rejected {len(report.rejected)}")
    for line in report.rejected:
        typer.echo(f"  rejected: {line}", err=True)
    raise typer.Exit(1 if report.rejected else 0)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit hash chain from its first link; report the first broken one."""
    from .audit.chain import verify

    async def run():
        repo = _repo()
        try:
            return await verify(repo)
        finally:
            await repo.close()
    verdict = asyncio.run(run())
    if verdict.ok:
        typer.echo(f"audit chain intact: {verdict.checked} records, head {verdict.head}")
        return
    typer.echo(f"audit chain BROKEN at link {verdict.broken_seq} ({verdict.broken_record}): {verdict.problem}; "
               f"{verdict.checked} records before it are intact", err=True)
    raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
