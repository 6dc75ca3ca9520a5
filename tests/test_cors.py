"""CORS (api/app.py): browser apps on other origins may call the FHIR API, discovery and the
authorization server's endpoints; requests without an ``Origin`` skip it. The whole flow in a
browser is tests/test_smart_js_client.py::test_cross_origin_app."""

from __future__ import annotations

from .conftest import make_client

APP = "https://app.example"


async def test_a_preflight_of_an_authorised_write_is_allowed(repo):
    async with make_client(repo) as c:
        r = await c.options("/ResearchSubject", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, prefer"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert all(h in allowed for h in ("authorization", "content-type", "prefer"))
    assert "access-control-allow-credentials" not in r.headers


async def test_responses_to_a_browser_name_the_headers_it_may_read(repo):
    async with make_client(repo) as c:
        created = await c.post("/Patient", json={"resourceType": "Patient"},
                               headers={"Origin": APP, "Content-Type": "application/fhir+json"})
        missing = await c.get("/Patient/nope", headers={"Origin": APP})
        discovery = await c.get("/.well-known/smart-configuration", headers={"Origin": APP})
    assert created.status_code == 201 and created.headers["access-control-allow-origin"] == "*"
    exposed = created.headers["access-control-expose-headers"].lower()
    assert "location" in exposed and "etag" in exposed and "www-authenticate" in exposed
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == "*"
    assert discovery.headers["access-control-allow-origin"] == "*"


async def test_no_origin_no_cors_headers(repo):
    async with make_client(repo) as c:
        r = await c.get("/metadata")
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_only_the_configured_origins(repo):
    async with make_client(repo, cors_origins=[APP]) as c:
        ok = await c.get("/metadata", headers={"Origin": APP})
        other = await c.get("/metadata", headers={"Origin": "https://evil.example"})
        refused = await c.options("/Patient", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert ok.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-origin" not in other.headers
    assert refused.status_code == 400


async def test_cors_off(repo):
    async with make_client(repo, cors_origins=[]) as c:
        r = await c.get("/metadata", headers={"Origin": APP})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
