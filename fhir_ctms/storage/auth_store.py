"""The authorization server's storage: one small interface over the auth tables (migrations 0006, 0007).

It runs on the repository's SQLAlchemy engine (``SqlRepository.engine``), SQLAlchemy Core only,
the same statements on SQLite and PostgreSQL. Every operation that must be atomic (using a
code once, rotating a refresh token, remembering a ``jti``) is one statement, so it needs no
transaction isolation of its own: an ``UPDATE ... WHERE used = false`` that changed a row is
the one use that counts, and a duplicate primary key is a replay.

It stores and returns values; what they mean (hashing, checks, tokens) is ``fhir_ctms.auth``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .schema import (auth_clients, auth_codes, auth_jti, auth_keys, auth_launches, auth_login_failures,
                     auth_refresh_tokens, auth_revoked, auth_users)


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    kind: str                                   # public | confidential-symmetric | confidential-asymmetric
    redirect_uris: tuple[str, ...] = ()
    scopes: str = ""                            # the scopes the client may be granted
    secret_hash: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    created: int = 0


@dataclass(frozen=True)
class UserRecord:
    username: str
    password_hash: str
    fhir_user: str | None = None
    patients: tuple[str, ...] = ()
    created: int = 0
    roles: tuple[str, ...] = ()                 # role names (auth/roles.py): the user/ scopes it may hold


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    alg: str
    private_jwk: dict[str, Any]
    created: int
    retired: int | None = None


@dataclass(frozen=True)
class Stored:
    """A stored grant (a code's or a refresh token's): who it is for and what it carries."""
    client_id: str
    grant: dict[str, Any]
    expires: int
    family: str = ""
    state: str = ""


class AuthStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- clients --------------------------------------------------------------------------------

    async def add_client(self, c: ClientRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_clients).values(
                client_id=c.client_id, kind=c.kind, secret_hash=c.secret_hash,
                redirect_uris=json.dumps(list(c.redirect_uris)), scopes=c.scopes,
                jwks=json.dumps(c.jwks) if c.jwks is not None else None, jwks_uri=c.jwks_uri, created=c.created))

    async def client(self, client_id: str) -> ClientRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(auth_clients).where(auth_clients.c.client_id == client_id))).first()
        return _client(row) if row is not None else None

    async def clients(self) -> list[ClientRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(auth_clients).order_by(auth_clients.c.client_id))).all()
        return [_client(r) for r in rows]

    async def remove_client(self, client_id: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(auth_clients).where(auth_clients.c.client_id == client_id))
            # its refresh tokens die with it
            await conn.execute(update(auth_refresh_tokens).where(auth_refresh_tokens.c.client_id == client_id)
                               .values(state="revoked"))
        return done.rowcount > 0

    # -- users ----------------------------------------------------------------------------------

    async def add_user(self, u: UserRecord) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_users).values(
                username=u.username, password_hash=u.password_hash, fhir_user=u.fhir_user,
                patients=json.dumps(list(u.patients)), created=u.created, roles=json.dumps(list(u.roles))))

    async def user(self, username: str) -> UserRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(auth_users).where(auth_users.c.username == username))).first()
        return _user(row) if row is not None else None

    async def users(self) -> list[UserRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(auth_users).order_by(auth_users.c.username))).all()
        return [_user(r) for r in rows]

    async def remove_user(self, username: str) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(auth_users).where(auth_users.c.username == username))
        return done.rowcount > 0

    async def set_roles(self, username: str, roles: tuple[str, ...]) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(update(auth_users).where(auth_users.c.username == username)
                                      .values(roles=json.dumps(list(roles))))
        return done.rowcount > 0

    # -- failed logins (throttling) ----------------------------------------------------------------

    async def add_login_failure(self, subjects: tuple[str, ...], at: int, forget_before: int) -> None:
        """One failed login, once per subject (the username's, the address's); rows older than
        ``forget_before`` go."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(auth_login_failures).where(auth_login_failures.c.at < forget_before))
            await conn.execute(insert(auth_login_failures),
                               [{"id": uuid.uuid4().hex, "subject": s, "at": at} for s in subjects])

    async def login_failures(self, subject: str, since: int) -> list[int]:
        """The times of ``subject``'s failed logins since ``since``, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(auth_login_failures.c.at).where(
                auth_login_failures.c.subject == subject, auth_login_failures.c.at >= since)
                .order_by(auth_login_failures.c.at))).all()
        return [r.at for r in rows]

    async def clear_login_failures(self, subject: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(auth_login_failures).where(auth_login_failures.c.subject == subject))

    # -- authorization codes: single use ---------------------------------------------------------

    async def put_code(self, code_hash: str, client_id: str, grant: dict[str, Any], expires: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_codes).values(code_hash=code_hash, client_id=client_id,
                                                         grant_json=json.dumps(grant), expires=expires, used=False))

    async def use_code(self, code_hash: str) -> tuple[Stored | None, bool]:
        """The code's grant, and whether this was its first use (the code is spent either way)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(auth_codes).where(auth_codes.c.code_hash == code_hash))).first()
            if row is None:
                return None, False
            done = await conn.execute(update(auth_codes).where(auth_codes.c.code_hash == code_hash,
                                                               auth_codes.c.used.is_(False)).values(used=True))
        return Stored(row.client_id, json.loads(row.grant_json), row.expires), done.rowcount == 1

    # -- refresh tokens: rotated on every use --------------------------------------------------------

    async def put_refresh(self, token_hash: str, family: str, client_id: str, grant: dict[str, Any],
                          expires: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_refresh_tokens).values(
                token_hash=token_hash, family=family, client_id=client_id, grant_json=json.dumps(grant),
                expires=expires, state="active"))

    async def refresh(self, token_hash: str) -> Stored | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(auth_refresh_tokens)
                                      .where(auth_refresh_tokens.c.token_hash == token_hash))).first()
        if row is None:
            return None
        return Stored(row.client_id, json.loads(row.grant_json), row.expires, row.family, row.state)

    async def retire_refresh(self, token_hash: str) -> bool:
        """Mark an active token rotated; False when it was not active (already used or revoked)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(update(auth_refresh_tokens).where(
                auth_refresh_tokens.c.token_hash == token_hash, auth_refresh_tokens.c.state == "active")
                .values(state="rotated"))
        return done.rowcount == 1

    async def revoke_family(self, family: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(auth_refresh_tokens).where(auth_refresh_tokens.c.family == family)
                               .values(state="revoked"))

    # -- EHR launch handles ---------------------------------------------------------------------

    async def put_launch(self, handle_hash: str, client_id: str | None, context: dict[str, Any],
                         expires: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(auth_launches).values(handle_hash=handle_hash, client_id=client_id,
                                                            context_json=json.dumps(context), expires=expires))

    async def launch(self, handle_hash: str) -> tuple[str | None, dict[str, Any], int] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(auth_launches).where(auth_launches.c.handle_hash == handle_hash))).first()
        return (row.client_id, json.loads(row.context_json), row.expires) if row is not None else None

    async def use_launch(self, handle_hash: str, now: int) -> bool:
        """Spend a launch handle (single use): True for the one use that counts, False when it was
        spent before, or has expired (expired ones go too)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(auth_launches).where(auth_launches.c.handle_hash == handle_hash,
                                                                  auth_launches.c.expires >= now))
            await conn.execute(delete(auth_launches).where(auth_launches.c.expires < now))
        return done.rowcount == 1

    # -- replay caches --------------------------------------------------------------------------

    async def remember_jti(self, client_id: str, jti: str, expires: int, now: int) -> bool:
        """Record a client assertion's ``jti``; False if it was seen before (a replay)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(auth_jti).where(auth_jti.c.expires < now))
                await conn.execute(insert(auth_jti).values(client_id=client_id, jti=jti, expires=expires))
        except IntegrityError:
            return False
        return True

    async def revoke_access(self, jti: str, expires: int, now: int) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(auth_revoked).where(auth_revoked.c.expires < now))
                await conn.execute(insert(auth_revoked).values(jti=jti, expires=expires))
        except IntegrityError:
            pass  # revoked already

    async def access_revoked(self, *ids: str) -> bool:
        """Whether any of ``ids`` (an access token's ``jti``, ``grant:<family>`` for every token of a
        grant) is revoked."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(auth_revoked.c.jti).where(auth_revoked.c.jti.in_(ids)).limit(1))).first()
        return row is not None

    # -- the server's signing keys ----------------------------------------------------------------

    async def keys(self) -> list[KeyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(auth_keys).order_by(auth_keys.c.created, auth_keys.c.kid))).all()
        return [KeyRecord(r.kid, r.alg, json.loads(r.private_jwk), r.created, r.retired) for r in rows]

    async def add_key(self, key: KeyRecord, *, retire_others_at: int | None = None) -> None:
        """Store a new signing key; with ``retire_others_at`` every older active key retires then."""
        await self.add_keys([key], retire_others_at=retire_others_at)

    async def add_keys(self, keys: list[KeyRecord], *, retire_others_at: int | None = None) -> None:
        """Store new signing keys in one transaction; with ``retire_others_at`` every older active
        key retires then."""
        async with self.engine.begin() as conn:
            if retire_others_at is not None:
                await conn.execute(update(auth_keys).where(auth_keys.c.retired.is_(None))
                                   .values(retired=retire_others_at))
            for key in keys:
                await conn.execute(insert(auth_keys).values(kid=key.kid, alg=key.alg,
                                                            private_jwk=json.dumps(key.private_jwk),
                                                            created=key.created, retired=key.retired))


def _client(r: Any) -> ClientRecord:
    return ClientRecord(r.client_id, r.kind, tuple(json.loads(r.redirect_uris)), r.scopes, r.secret_hash,
                        json.loads(r.jwks) if r.jwks else None, r.jwks_uri, r.created)


def _user(r: Any) -> UserRecord:
    return UserRecord(r.username, r.password_hash, r.fhir_user, tuple(json.loads(r.patients)), r.created,
                      tuple(json.loads(r.roles or "[]")))
