"""The ``fhir-ctms`` command: serve, import, audit verify, db upgrade; clients, users and keys of the
SMART authorization server."""

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
clients_app = typer.Typer(help="SMART client applications of the authorization server.", no_args_is_help=True)
users_app = typer.Typer(help="Users of the authorization server's login page.", no_args_is_help=True)
keys_app = typer.Typer(help="The authorization server's signing keys.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")


def _repo():
    from .storage.sql import SqlRepository
    s = get_settings()
    return SqlRepository.from_url(s.database_url, s.partition)


@app.command()
def serve(host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
          workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
          dev: Annotated[bool, typer.Option("--dev", help="Development: no authorization (the FHIR API "
                                                          "answers requests without a token).")] = False) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (migrating the database first).

    Every FHIR request needs a SMART bearer token (FHIR_CTMS_AUTH_ENABLED defaults to true here;
    /metadata and /fhir/.well-known stay public), unless --dev turns authorization off."""
    import os

    import uvicorn
    if dev:
        os.environ["FHIR_CTMS_AUTH_ENABLED"] = "false"
    else:
        os.environ.setdefault("FHIR_CTMS_AUTH_ENABLED", "true")
    get_settings.cache_clear()
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
def import_(files: Annotated[list[Path], typer.Argument(help="Bundle (.json) or NDJSON (.ndjson) files; with "
                                                          "--clinicaltrials-gov, ClinicalTrials.gov API v2 study records.")],
            quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
            skip_existing: Annotated[bool, typer.Option(
                "--skip-existing", help="Leave out Bundle entries that PUT a resource already stored "
                                        "(load an example once).")] = False,
            clinicaltrials_gov: Annotated[bool, typer.Option(
                "--clinicaltrials-gov", help="The files are ClinicalTrials.gov API v2 study records (JSON): each "
                                             "becomes the study, its countries and sites, in one transaction.")] = False,
            ) -> None:
    """Load Bundles and NDJSON files, or ClinicalTrials.gov records; report what was rejected and why."""
    from .importer import import_clinicaltrials_gov, import_files
    from .storage.migrate import upgrade

    async def run():
        repo = _repo()
        try:
            await upgrade(repo.engine)
            if clinicaltrials_gov:
                return await import_clinicaltrials_gov(files, repo, get_settings())
            return await import_files(files, repo, get_settings(), progress=not quiet,
                                      skip_existing=skip_existing)
        finally:
            await repo.close()
    report = asyncio.run(run())
    if clinicaltrials_gov:
        for line in report.studies:
            typer.echo(f"imported {line}")
        for line in report.notes:
            typer.echo(f"  note: {line}", err=True)
        typer.echo(f"imported {len(report.studies)} record(s) ({report.loaded} resources), rejected {len(report.rejected)}")
    else:
        skipped = f", skipped {report.skipped} already stored" if report.skipped else ""
        typer.echo(f"loaded {report.loaded} resources, rejected {len(report.rejected)}{skipped}")
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


def _with_store(work):
    """Run ``work(store)`` on the configured database (migrated first)."""
    from .storage.auth_store import AuthStore
    from .storage.migrate import upgrade

    async def run():
        repo = _repo()
        try:
            await upgrade(repo.engine)
            return await work(AuthStore(repo.engine))
        finally:
            await repo.close()
    return asyncio.run(run())


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


@clients_app.command("add")
def clients_add(
        client_id: Annotated[str, typer.Option("--id", help="The client_id.")],
        kind: Annotated[str, typer.Option("--type", help="public | confidential-symmetric | confidential-asymmetric")],
        redirect_uri: Annotated[list[str], typer.Option("--redirect-uri", help="An exact redirect URI (repeatable).")] = [],  # noqa: B006
        scope: Annotated[list[str], typer.Option("--scope", help="Scopes the client may be granted (repeatable, or space separated).")] = [],  # noqa: B006
        jwks_file: Annotated[Path | None, typer.Option("--jwks-file", help="The client's public JWK Set (private_key_jwt).")] = None,
        jwks_uri: Annotated[str | None, typer.Option("--jwks-uri", help="Where the client publishes its JWK Set.")] = None,
        secret: Annotated[str | None, typer.Option("--secret", help="The client secret (generated and printed when omitted).")] = None,
) -> None:
    """Register a client application."""
    import json
    import secrets
    import time

    from .auth.clients import KINDS
    from .auth.passwords import hash_secret
    from .storage.auth_store import ClientRecord
    if kind not in KINDS:
        _fail(f"--type must be one of {', '.join(KINDS)}")
    jwks = None
    if kind == "confidential-asymmetric":
        if (jwks_file is None) == (jwks_uri is None):
            _fail("a confidential-asymmetric client needs exactly one of --jwks-file and --jwks-uri")
        if jwks_file is not None:
            jwks = json.loads(jwks_file.read_text())
            if not isinstance(jwks, dict) or not all(isinstance(k, dict) and k.get("kid") for k in jwks.get("keys", [None])):
                _fail("--jwks-file must hold a JWK Set whose keys all have a kid")
            if any("d" in k for k in jwks["keys"]):
                _fail("--jwks-file holds a private key: register the public keys only")
    elif jwks_file or jwks_uri:
        _fail("--jwks-file and --jwks-uri are for confidential-asymmetric clients")
    printed = None
    if kind == "confidential-symmetric":
        if secret is None:
            secret = printed = secrets.token_urlsafe(32)
    elif secret is not None:
        _fail("--secret is for confidential-symmetric clients")
    scopes = " ".join(" ".join(scope).split())
    record = ClientRecord(client_id, kind, tuple(redirect_uri), scopes, hash_secret(secret) if secret else None,
                          jwks, jwks_uri, int(time.time()))

    async def work(store):
        if await store.client(client_id) is not None:
            _fail(f"client {client_id} exists already")
        await store.add_client(record)
    _with_store(work)
    typer.echo(f"client {client_id} added ({kind})")
    if printed:
        typer.echo(f"client secret (shown once): {printed}")


@clients_app.command("list")
def clients_list() -> None:
    """The registered clients."""
    async def work(store):
        return await store.clients()
    for c in _with_store(work):
        where = c.jwks_uri or ("jwks registered" if c.jwks else "")
        typer.echo(f"{c.client_id}\t{c.kind}\t{' '.join(c.redirect_uris)}\t{c.scopes}\t{where}")


@clients_app.command("remove")
def clients_remove(client_id: Annotated[str, typer.Argument(help="The client_id.")]) -> None:
    """Remove a client (its refresh tokens are revoked)."""
    async def work(store):
        return await store.remove_client(client_id)
    if not _with_store(work):
        _fail(f"no client {client_id}")
    typer.echo(f"client {client_id} removed")


@users_app.command("add")
def users_add(
        username: Annotated[str, typer.Option("--username", help="The login name.")],
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")] = False,
        fhir_user: Annotated[str | None, typer.Option("--fhir-user", help="The user's FHIR resource, e.g. Practitioner/123.")] = None,
        patient: Annotated[list[str], typer.Option("--patient", help="A Patient id the user may pick (repeatable; none: any).")] = [],  # noqa: B006
        role: Annotated[list[str], typer.Option("--role", help="A role, e.g. study-manager, monitor (repeatable; none: no user/ scopes).")] = [],  # noqa: B006
) -> None:
    """Add a user of the login page (the password is hashed with Argon2id). Its roles decide which
    user/ scopes it may be granted (FHIR_CTMS_AUTH_ROLES_FILE, else the default mapping)."""
    import re
    import sys
    import time

    from .auth.passwords import hash_secret
    from .storage.auth_store import UserRecord
    if not password_stdin:
        _fail("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    if fhir_user is not None and not re.fullmatch(r"(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}", fhir_user):
        _fail("--fhir-user must be Practitioner/id, PractitionerRole/id, Patient/id, RelatedPerson/id or Person/id")
    patients = tuple(p.removeprefix("Patient/") for p in patient)
    roles = _roles(role)
    record = UserRecord(username, hash_secret(password), fhir_user, patients, int(time.time()), roles)

    async def work(store):
        if await store.user(username) is not None:
            _fail(f"user {username} exists already")
        await store.add_user(record)
    _with_store(work)
    typer.echo(f"user {username} added")


@users_app.command("list")
def users_list() -> None:
    """The users."""
    async def work(store):
        return await store.users()
    for u in _with_store(work):
        typer.echo(f"{u.username}\t{u.fhir_user or ''}\t{' '.join(u.patients)}\t{' '.join(u.roles)}")


def _roles(given: list[str]) -> tuple[str, ...]:
    """The roles named, checked against the configured role mapping."""
    from .auth.roles import role_map
    known = role_map(get_settings().auth_roles_file).roles
    roles = tuple(dict.fromkeys(given))
    unknown = [r for r in roles if r not in known]
    if unknown:
        _fail(f"unknown role {', '.join(unknown)}: the roles are {', '.join(known)}")
    return roles


@users_app.command("set-roles")
def users_set_roles(username: Annotated[str, typer.Argument(help="The login name.")],
                    role: Annotated[list[str], typer.Option("--role", help="A role (repeatable; none: no roles).")] = [],  # noqa: B006
                    ) -> None:
    """Replace a user's roles (tokens already issued keep their scopes until they expire; a refresh
    gets the new roles' scopes)."""
    roles = _roles(role)

    async def work(store):
        return await store.set_roles(username, roles)
    if not _with_store(work):
        _fail(f"no user {username}")
    typer.echo(f"user {username}: roles {' '.join(roles) or '(none)'}")


@users_app.command("roles")
def users_roles() -> None:
    """The roles and the user/ scopes each may be granted."""
    from .auth.roles import role_map
    for name, scopes in role_map(get_settings().auth_roles_file).roles.items():
        typer.echo(f"{name}\t{scopes}")


@users_app.command("remove")
def users_remove(username: Annotated[str, typer.Argument(help="The login name.")]) -> None:
    """Remove a user."""
    async def work(store):
        return await store.remove_user(username)
    if not _with_store(work):
        _fail(f"no user {username}")
    typer.echo(f"user {username} removed")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old ones stay published until the tokens they signed expire."""
    from .auth.keys import rotate

    async def work(store):
        await rotate(store, get_settings().auth_signing_alg)
        return [k for k in await store.keys() if not k.retired]
    for record in _with_store(work):  # the access tokens' key, and the id tokens' (RS256)
        typer.echo(f"new signing key {record.kid} ({record.alg})")


@keys_app.command("list")
def keys_list() -> None:
    """The signing keys: kid, algorithm, created, retired."""
    from datetime import datetime, timezone

    def when(t):
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else "signing"

    async def work(store):
        return await store.keys()
    for k in _with_store(work):
        typer.echo(f"{k.kid}\t{k.alg}\t{when(k.created)}\t{when(k.retired) if k.retired else 'signing'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
