"""The fixtures themselves: both databases are reachable and migrated."""

async def test_metadata_on_each_backend(client, backend):
    r = await client.get("/metadata")
    assert r.status_code == 200
    assert r.json()["fhirVersion"] == "5.0.0"


def test_live_server_serves(live_server):
    import httpx
    server = live_server()
    r = httpx.post(server.url + "/Patient", json={"resourceType": "Patient", "gender": "other"})
    assert r.status_code == 201, r.text
    assert httpx.get(r.headers["location"]).json()["gender"] == "other"
