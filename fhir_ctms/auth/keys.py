"""The server's own signing keys: made on first use, kept in the database, rotated.

One key signs (the newest not retired); ``fhir-ctms keys rotate`` adds a new one and retires
the others, which stay in the published JWKS (and verify) until every token they signed has
expired: ``retired + access token lifetime + a margin``. Keys are ES384 (P-384) or RS384
(RSA 3072), made by joserfc; the private JWK is stored as it is, so the database holding it
must be protected like any key store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from ..storage.auth_store import AuthStore, KeyRecord

ALGORITHMS = ("ES384", "RS384")
#: seconds a retired key outlives the longest token it signed (clock skew, slow clients)
MARGIN = 300
#: seconds between reloads of the key list (a rotation by the CLI is seen within this)
RELOAD = 30


def generate(alg: str, now: int | None = None) -> KeyRecord:
    if alg == "ES384":
        key: Any = ECKey.generate_key("P-384", parameters={"alg": alg, "use": "sig"}, private=True)
    elif alg == "RS384":
        key = RSAKey.generate_key(3072, parameters={"alg": alg, "use": "sig"}, private=True)
    else:
        raise ValueError(f"signing algorithm must be one of {', '.join(ALGORITHMS)}, not {alg}")
    key.ensure_kid()
    return KeyRecord(key.kid, alg, key.as_dict(private=True), int(now or time.time()))


def import_key(record: KeyRecord) -> Any:
    cls = ECKey if record.alg.startswith("ES") else RSAKey
    return cls.import_key(record.private_jwk)


class KeyRing:
    """The keys as the server uses them, reloaded from the store every ``RELOAD`` seconds
    (or at once when a token names a kid not seen yet)."""

    def __init__(self, store: AuthStore, alg: str, token_lifetime: int) -> None:
        self.store, self.alg, self.keep = store, alg, token_lifetime + MARGIN
        self._records: list[KeyRecord] = []
        self._loaded = 0.0
        self._lock = asyncio.Lock()

    async def _load(self, force: bool = False) -> list[KeyRecord]:
        if force or time.monotonic() - self._loaded > RELOAD or not self._records:
            async with self._lock:
                records = await self.store.keys()
                if not any(r.retired is None for r in records):
                    await self.store.add_key(generate(self.alg))  # first use: make one
                    records = await self.store.keys()
                self._records, self._loaded = records, time.monotonic()
        return self._records

    def _live(self, records: list[KeyRecord], now: int) -> list[KeyRecord]:
        return [r for r in records if r.retired is None or r.retired + self.keep > now]

    async def signer(self) -> tuple[Any, KeyRecord]:
        records = await self._load()
        active = [r for r in records if r.retired is None]
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
    """A new signing key; the others retire now (and stay published until their tokens expire)."""
    record = generate(alg)
    await store.add_key(record, retire_others_at=record.created)
    return record
