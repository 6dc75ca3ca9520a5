"""Failed-login throttling at ``/auth/login`` (``auth/throttle.py``), on both databases: after the
limit of failures for a username (or from an address) within the window, every attempt is
refused with 429 and a page that says so, even with the right password, and each refusal is
audited like a failed login; the counts live in the database, so two server instances share them."""

from __future__ import annotations

import time

import httpx
import pytest
import pytest_asyncio

from fhir_ctms.api.app import create_app
from fhir_ctms.audit.chain import verify
from fhir_ctms.auth.passwords import hash_secret
from fhir_ctms.auth.throttle import LoginThrottle, Throttled, locked_until
from fhir_ctms.config import Settings
from fhir_ctms.storage.auth_store import AuthStore, UserRecord

from .conftest import empty_tables, make_client
from .smart import PASSWORD, authorize_params, hidden, pkce_pair, register

FHIR = "http://testserver/fhir"
AUTH = "http://testserver/auth"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"


@pytest_asyncio.fixture
async def env(repo):
    await empty_tables(repo)
    store = AuthStore(repo.engine)
    await register(store)
    await store.add_user(UserRecord("bob", hash_secret(PASSWORD), None, (), int(time.time())))
    yield store


async def attempt(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    """A fresh authorization request, then the login form posted once."""
    _, challenge = pkce_pair()
    page = await http.get(AUTH + "/authorize", params=authorize_params(FHIR, challenge))
    assert page.status_code == 200, page.text
    return await http.post(AUTH + "/login", data={
        "ticket": hidden(page.text, "ticket"), "csrf_token": hidden(page.text, "csrf_token"),
        "username": username, "password": password})


async def login_events(open_: httpx.AsyncClient) -> list[dict]:
    r = await open_.get(f"/AuditEvent?outcome={OUTCOME}|4&_count=100&_sort=_lastUpdated")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


async def test_the_sixth_attempt_is_refused_even_with_the_right_password_and_audited(repo, env):
    async with make_client(repo, auth_enabled=True) as http, make_client(repo) as open_:
        for _ in range(5):  # the default limit: 5 failures in 15 minutes
            r = await attempt(http, "alice", "wrong password")
            assert r.status_code == 401 and "Wrong username or password" in r.text
        refused = await attempt(http, "alice", PASSWORD)
        assert refused.status_code == 429
        assert "Too many failed sign-in attempts. Try again in 15 minutes." in refused.text
        assert 895 <= int(refused.headers["retry-after"]) <= 900
        assert refused.headers["cache-control"] == "no-store"
        assert 'name="password"' in refused.text  # the login page, its form kept for later
        again = await attempt(http, "alice", "wrong password")
        assert again.status_code == 429
        # each failure and each refusal is one AuditEvent (failed authentication, minor failure)
        records = await login_events(open_)
        assert len(records) == 7
        texts = [r["outcome"]["detail"][0]["text"] for r in records]
        assert sum("wrong username or password" in t for t in texts) == 5
        refusals = [r for r in records if "Login refused at /auth/login: too many failed logins" in
                    r["outcome"]["detail"][0]["text"]]
        assert len(refusals) == 2
        who = {a["type"]["coding"][0]["code"]: a for a in refusals[0]["agent"]}
        assert who["humanuser"]["who"]["display"] == "alice"
        assert who["110153"]["networkString"] == "127.0.0.1"
        assert refusals[0]["code"]["coding"][0]["code"] == "110122"
        # the refusals were not counted: exactly the five failures are stored for alice
        assert len(await env.login_failures("user:alice", 0)) == 5
        # another user from the same address is not locked (the address limit is 20)
        other = await attempt(http, "bob", PASSWORD)
        assert other.status_code == 200 and "Allow access?" in other.text
    assert (await verify(repo)).ok


async def test_the_counts_are_in_the_database_shared_by_every_server_process(repo, env):
    settings = {"auth_enabled": True, "auth_login_max_failures": 3}
    async with make_client(repo, **settings) as one, make_client(repo, **settings) as two:
        assert (await attempt(one, "alice", "nope-1")).status_code == 401
        assert (await attempt(two, "alice", "nope-2")).status_code == 401
        assert (await attempt(one, "alice", "nope-3")).status_code == 401
        assert (await attempt(two, "alice", PASSWORD)).status_code == 429


async def test_a_success_clears_the_username_count(repo, env):
    async with make_client(repo, auth_enabled=True, auth_login_max_failures=3) as http:
        for _ in range(2):
            assert (await attempt(http, "alice", "wrong")).status_code == 401
        assert (await attempt(http, "alice", PASSWORD)).status_code == 200
        for _ in range(2):
            assert (await attempt(http, "alice", "wrong")).status_code == 401
        assert (await attempt(http, "alice", PASSWORD)).status_code == 200  # 2 + 2 failures, never 3 in a row


async def test_the_address_limit_covers_unknown_and_other_usernames(repo, env):
    async with make_client(repo, auth_enabled=True, auth_login_max_failures_per_address=3) as http:
        for name in ("mallory", "eve", "trent"):
            assert (await attempt(http, name, "guess")).status_code == 401
        refused = await attempt(http, "bob", PASSWORD)  # bob never failed, but this address did
        assert refused.status_code == 429
    # another address is not affected
    app = create_app(Settings(auth_enabled=True, auth_login_max_failures_per_address=3), repo)
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
    async with httpx.AsyncClient(transport=transport, base_url=FHIR) as http:
        assert (await attempt(http, "bob", PASSWORD)).status_code == 200


async def test_the_lock_lasts_the_window_after_the_failure_that_reached_the_limit(env):
    throttle = LoginThrottle(env, max_failures=3, max_per_address=0, window=900)
    t0 = 1_000_000
    for t in (t0, t0 + 100, t0 + 600):
        await throttle.check("carol", "192.0.2.1", now=t)
        await throttle.failed("carol", "192.0.2.1", now=t)
    with pytest.raises(Throttled) as locked:
        await throttle.check("carol", "192.0.2.1", now=t0 + 601)
    assert locked.value.retry_after == 899 and locked.value.reason == "username"
    with pytest.raises(Throttled):
        await throttle.check("carol", None, now=t0 + 1499)  # still within 900 s of the third failure
    await throttle.check("carol", None, now=t0 + 1500)  # over
    await throttle.check("dave", None, now=t0 + 601)  # another username never was locked
    assert await env.login_failures("address:192.0.2.1", 0) == []  # that limit is off (0): not stored


def test_locked_until_counts_failures_within_one_window():
    assert locked_until([], 3, 900) == 0
    assert locked_until([0, 100], 3, 900) == 0
    assert locked_until([0, 100, 899], 3, 900) == 1799
    assert locked_until([0, 100, 900], 3, 900) == 0       # the first is a window older than the third
    assert locked_until([0, 500, 1000, 1100], 3, 900) == 2000
