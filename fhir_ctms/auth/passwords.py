"""Password and client-secret hashing: Argon2id through argon2-cffi (its recommended parameters)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
#: verified when the user is unknown, so that a wrong name costs what a wrong password does
_DUMMY = _HASHER.hash("no such user")


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_secret(hashed: str | None, secret: str) -> bool:
    try:
        return _HASHER.verify(hashed or _DUMMY, secret) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False
