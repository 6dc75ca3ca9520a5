"""The server's own signing keys: made on first use, kept in the database, rotated.

Two keys sign, each the newest not retired of its algorithm: one of ``auth_signing_alg``
(ES384 on P-384, or RS384 on RSA 3072) signs access tokens and the login tickets, and an RS256
key (RSA 2048) signs id tokens, since SMART App Launch 2.2 (and OpenID Connect Core 3.1.3.7)
require every server to support "Signing ID Tokens with RSA SHA-256". ``fhir-ctms keys rotate``
adds a new key of each and retires the others, which stay in the published JWKS (and verify)
until every token they signed has expired: ``retired + access token lifetime + a margin``. Keys
are made by joserfc; the private JWK is stored as it is, so the database holding it must be
protected like any key store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from ..storage.auth_store import AuthStore, KeyRecord

#: the algorithms of access tokens (and of client assertions, SMART client-confidential-asymmetric)
ALGORITHMS = ("ES384", "RS384")
#: the algorithm of id tokens (SMART App Launch 2.2: "SHALL support Signing ID Tokens with RSA SHA-256")
ID_TOKEN_ALG = "RS256"
#: seconds a retired key outlives the longest token it signed (clock skew, slow clients)
MARGIN = 300
#: seconds between reloads of the key list (a rotation by the CLI is seen within this)
RELOAD = 30


def generate(alg: str, now: int | None = None) -> KeyRecord:
    if alg == "ES384":
        key: Any = ECKey.generate_key("P-384", parameters={"alg": alg, "use": "sig"}, private=True)
    elif alg in ("RS384", ID_TOKEN_ALG):
        size = 3072 if alg == "RS384" else 2048
        key = RSAKey.generate_key(size, parameters={"alg": alg, "use": "sig"}, private=True)
    else:
        raise ValueError(f"signing algorithm must be one of {', '.join(ALGORITHMS)}, not {alg}")
    key.ensure_kid()
    return KeyRecord(key.kid, alg, key.as_dict(private=True), int(now or time.time()))


def import_key(record: KeyRecord) -> Any:
    cls = ECKey if record.alg.startswith("ES") else RSAKey
    return cls.import_key(record.private_jwk)


class KeyRing:
    """The keys as the server uses them, reloaded from the store every ``RELOAD`` seconds
    (or at once when a token names a kid not seen yet). ``alg`` is the access tokens'; an
    ``ID_TOKEN_ALG`` key is kept beside it for id tokens."""

    def __init__(self, store: AuthStore, alg: str, token_lifetime: int) -> None:
        self.store, self.alg, self.keep = store, alg, token_lifetime + MARGIN
        self._records: list[KeyRecord] = []
        self._loaded = 0.0
        self._lock = asyncio.Lock()

    async def _load(self, force: bool = False) -> list[KeyRecord]:
        if force or time.monotonic() - self._loaded > RELOAD or not self._records:
            async with self._lock:
                records = await self.store.keys()
                missing = [a for a in dict.fromkeys((self.alg, ID_TOKEN_ALG))
                           if not any(r.retired is None and r.alg == a for r in records)]
                for alg in missing:  # first use (or a new algorithm): make one
                    await self.store.add_key(generate(alg))
                if missing:
                    records = await self.store.keys()
                self._records, self._loaded = records, time.monotonic()
        return self._records

    def _live(self, records: list[KeyRecord], now: int) -> list[KeyRecord]:
        return [r for r in records if r.retired is None or r.retired + self.keep > now]

    async def signer(self, alg: str | None = None) -> tuple[Any, KeyRecord]:
        """The private key that signs with ``alg`` (default: the access tokens'), and its record."""
        alg = alg or self.alg
        records = await self._load()
        active = [r for r in records if r.retired is None and r.alg == alg]
        if not active:
            records = await self._load(force=True)
            active = [r for r in records if r.retired is None and r.alg == alg]
        record = max(active, key=lambda r: (r.created, r.kid))
        return import_key(record), record

    async def verifier(self, kid: str | None = None) -> KeySet:
        """The live keys (public halves); reloaded first when ``kid`` is not among them."""
        records = await self._load()
        if kid is not None and kid not in {r.kid for r in records}:
            records = await self._load(force=True)
        now = int(time.time())
        return KeySet([_public(import_key(r)) for r in self._live(records, now)])

    async def jwks(self) -> dict[str, Any]:
        records = await self._load()
        now = int(time.time())
        return {"keys": [import_key(r).as_dict(private=False) for r in self._live(records, now)]}


def _public(key: Any) -> Any:
    return type(key).import_key(key.as_dict(private=False))


async def rotate(store: AuthStore, alg: str) -> KeyRecord:
    """New signing keys (of ``alg``, the access tokens', and of ``ID_TOKEN_ALG``); the others retire
    now (and stay published until their tokens expire). Returns the access tokens' new key."""
    record = generate(alg)
    records = [record] + ([generate(ID_TOKEN_ALG, record.created)] if alg != ID_TOKEN_ALG else [])
    await store.add_keys(records, retire_others_at=record.created)
    return record
