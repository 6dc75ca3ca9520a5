"""Failed-login throttling at the login page (issue 5).

After ``max_failures`` failed logins for one username, or ``max_per_address`` from one network
address, within ``window`` seconds, every login attempt for that username (from that address)
is refused until ``window`` seconds after the failure that reached the limit, whatever the
password: the password is not even checked, so a locked account gives a guesser nothing. A
refused attempt is not counted (it changes nothing), so the lock ends on time, however often a
guesser keeps trying; a successful login clears the username's failures (not the address's).

The failures are rows of the database (``auth_login_failures``), not counters of one process,
so every worker of a server sees the same counts. The address is the peer's (behind a proxy,
the proxy's: keep the per-address limit above what one proxy's honest users produce). A limit
of 0 turns that counter off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..storage.auth_store import AuthStore


@dataclass
class Throttled(Exception):
    """Too many failed logins: refused for ``retry_after`` more seconds."""
    retry_after: int
    reason: str                         # "username" or "address"

    def __str__(self) -> str:
        return f"too many failed logins for this {self.reason}; refused for {self.retry_after} s"


def locked_until(times: list[int], limit: int, window: int) -> int:
    """When the lock set by ``times`` (failed logins, oldest first) ends: ``window`` seconds after
    the latest failure that had ``limit`` failures (itself included) within ``window`` seconds; 0 if
    none did."""
    until = 0
    for i in range(limit - 1, len(times)):
        if times[i] - times[i - limit + 1] < window:
            until = max(until, times[i] + window)
    return until


class LoginThrottle:
    def __init__(self, store: AuthStore, max_failures: int, max_per_address: int, window: int) -> None:
        self.store, self.window = store, window
        self.limits = {"username": max_failures, "address": max_per_address}

    def _subjects(self, username: str, address: str | None) -> dict[str, str]:
        out = {"username": "user:" + username[:128]}
        if address:
            out["address"] = "address:" + address[:64]
        return {kind: s for kind, s in out.items() if self.limits[kind] > 0}

    async def check(self, username: str, address: str | None, now: int | None = None) -> None:
        """Raise :class:`Throttled` when the username or the address is locked now."""
        now = int(now if now is not None else time.time())
        for kind, subject in self._subjects(username, address).items():
            times = await self.store.login_failures(subject, now - 2 * self.window)
            until = locked_until(times, self.limits[kind], self.window)
            if until > now:
                raise Throttled(until - now, kind)

    async def failed(self, username: str, address: str | None, now: int | None = None) -> None:
        now = int(now if now is not None else time.time())
        subjects = tuple(self._subjects(username, address).values())
        if subjects:
            await self.store.add_login_failure(subjects, now, now - 2 * self.window)

    async def succeeded(self, username: str) -> None:
        if self.limits["username"] > 0:
            await self.store.clear_login_failures("user:" + username[:128])
