"""OAuth 2.0 errors (RFC 6749 sections 4.1.2.1 and 5.2) as exceptions the HTTP layer renders."""

from __future__ import annotations


class OAuthError(Exception):
    """``error`` and ``error_description`` of an OAuth error response, with its HTTP status
    (400, or 401 for ``invalid_client``)."""

    def __init__(self, error: str, description: str = "", status: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status or (401 if error == "invalid_client" else 400)

    def body(self) -> dict[str, str]:
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out


class PageError(Exception):
    """An authorization request that cannot be sent back to the client (unknown client, bad
    redirect URI): shown to the user instead of redirecting (RFC 6749 4.1.2.1)."""
