"""The command line: db upgrade, import (Bundles and NDJSON, with a report), audit verify."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

EXAMPLE = Path(__file__).parent.parent / "examples" / "acme-101-study.json"
CLI = [sys.executable, "-m", "fhir_ctms.cli"]


def run(database_url, *args):
    env = {**os.environ, "FHIR_CTMS_DATABASE_URL": database_url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_import_example_twice_then_verify(fresh_database_url, live_server):
    url = fresh_database_url()
    first = run(url, "import", "--quiet", str(EXAMPLE))
    assert first.returncode == 0, first.stderr
    assert "loaded 34 resources, rejected 0" in first.stdout
    second = run(url, "import", "--quiet", str(EXAMPLE))
    assert second.returncode == 0
    verdict = run(url, "audit", "verify")
    assert verdict.returncode == 0 and "intact: 68 records" in verdict.stdout  # 2nd import was a no-op
    server = live_server(database_url=url)
    site = httpx.get(server.url + "/ResearchStudy/site-uk-01").json()
    assert site["partOf"][0]["reference"] == "ResearchStudy/acme-101"


def test_import_reports_what_was_rejected(fresh_database_url, tmp_path):
    url = fresh_database_url()
    ndjson = tmp_path / "mixed.ndjson"
    ndjson.write_bytes(b"\n".join([
        orjson.dumps({"resourceType": "Patient", "id": "n1"}),
        b"{broken",
        orjson.dumps({"resourceType": "ResearchStudy", "status": "bogus"}),
        orjson.dumps({"resourceType": "Patient"}),
    ]) + b"\n")
    bad_bundle = tmp_path / "bad.json"
    bad_bundle.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "c1"}},
        {"resource": {"resourceType": "Patient", "id": "c2", "gender": "bogus"}}]}))
    result = run(url, "import", "--quiet", str(ndjson), str(bad_bundle))
    assert result.returncode == 1
    assert "loaded 2 resources, rejected 3" in result.stdout
    assert "mixed.ndjson:2" in result.stderr and "mixed.ndjson:3" in result.stderr
    assert "ResearchStudy.status" in result.stderr
    assert "bad.json" in result.stderr and "nothing from this file was loaded" in result.stderr


def test_db_upgrade_is_idempotent(fresh_database_url):
    url = fresh_database_url()
    assert run(url, "db", "upgrade").returncode == 0
    assert run(url, "db", "upgrade").returncode == 0
