"""PKCE (RFC 7636): only the S256 method; ``plain`` and a missing challenge are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from .errors import OAuthError

#: verifiers and S256 challenges: 43 to 128 characters of the unreserved set (RFC 7636 4.1)
_UNRESERVED = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def check_challenge(challenge: str | None, method: str | None) -> str:
    """The challenge of an authorization request, or the ``invalid_request`` refusing it."""
    if not challenge:
        raise OAuthError("invalid_request", "PKCE is required: code_challenge is missing")
    if method != "S256":
        raise OAuthError("invalid_request", "code_challenge_method must be S256 (plain is not supported)")
    if not _UNRESERVED.match(challenge) or len(challenge) != 43:
        raise OAuthError("invalid_request", "code_challenge is not a base64url SHA-256 digest")
    return challenge


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def verify(verifier: str | None, challenge: str) -> bool:
    if not verifier or not _UNRESERVED.match(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
