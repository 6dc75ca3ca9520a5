"""No input makes the server fail: a bounded schemathesis run, and hand-picked nasty requests.

Both tests run against a real server process (``live_server``: uvicorn on a fresh
database), on SQLite and on PostgreSQL, in the normal suite (``make test``).

1. ``test_schemathesis_finds_no_server_error`` runs the schemathesis 4.x CLI
   (``.venv/bin/schemathesis run``) as a subprocess against ``/openapi.json``:

   - phases: the default ones (coverage, fuzzing, stateful; examples is skipped,
     the document has none), generation mode ``all`` (positive and negative data);
   - ``--max-examples`` per operation and a fixed ``--seed``, ``--workers 1`` (several
     workers make the order of requests, hence the database's state, vary from run
     to run; hypothesis also crashed once under 4 workers) and
     ``--generation-database none`` (no examples replayed from an earlier run), so a
     run is reproducible and bounded (50-100 s per backend, 100 examples per operation);
     ``--max-time`` is not used: in 4.x it is a budget the run *fills*, not a cap;
     the subprocess has a hard timeout instead, and each request ``--request-timeout``;
   - hypothesis health checks are suppressed: they judge data generation (and
     ``too_slow`` depends on the CI machine's speed), not the server;
   - the hooks in ``tests/schemathesis_hooks.py`` narrow the deliberately loose
     document (``{type}`` is any string, bodies are any object) so that positive
     cases reach the interactions instead of ending in "unknown resource type".

   Checks, chosen so that every failure is a real contract violation:

   - ``not_a_server_error``: no 5xx, ever. The one that matters.
   - ``ensure_resource_availability``: a resource the stateful phase just created
     (POST 201 with its Location) must not be a 404 at the address the links derive.

   Not enabled, and why:

   - ``content_type_conformance``: FastAPI documents ``application/json`` responses;
     a FHIR server answers ``application/fhir+json`` (R5 http.html#mime-type).
   - ``status_code_conformance``: the document lists only 200 (and FastAPI's 422);
     FHIR's 201/204/400/404/405/406/409/410/412/413/415 are part of the spec, not of it.
   - ``response_schema_conformance`` / ``response_headers_conformance``: the document
     declares no response schema or header, so they can only pass.
   - ``positive_data_acceptance``: "schema-valid" here means "an object with
     resourceType"; FHIR validation rightly rejects most such objects (400/422).
   - ``negative_data_rejection``: the negative cases violate the hooks' narrowed
     schema (e.g. a FHIR batch answers 200 with the failing entry's 400 inside), not
     a contract of the server's; malformed bodies are covered by test 2 instead.
   - ``use_after_free``: after a DELETE, FHIR keeps the history: ``_history`` and
     vread of earlier versions rightly answer 200.
   - ``unsupported_method`` / ``allow_header_conformance``: ``POST /fhir/metadata``
     is a create of the (unknown) type ``metadata`` in FHIR's URL scheme, a 404, not a 405.
   - ``missing_required_header``, ``ignored_auth``, ``object_level_authorization``:
     the API declares no required header and no security scheme.

   The server's stderr is read throughout; a traceback in it fails the test too (an
   exception that did not become a 500). On failure the assertion message holds
   schemathesis's report (with a curl line per failing case) and the server's
   tracebacks, cut to their fhir_ctms frames. To explore further by hand, run the
   command printed in the message with another ``--seed`` or more ``--max-examples``.

2. ``test_nasty_inputs_get_an_operation_outcome`` sends hand-picked hostile requests
   (deep nesting, oversized and non-UTF-8 bodies, NUL and lone surrogates, huge
   numbers, bad ids, types and parameters, garbage headers, malformed Bundles)
   and asserts for each: no 5xx, the expected status where the spec fixes it, and an
   OperationOutcome body (``application/fhir+json``) for every error. All cases run
   and all failures are reported together.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 100
SEED = 20260501
HARD_TIMEOUT = 900  # seconds: far above a normal run; a hung server fails the test, not CI


def _drain(process: subprocess.Popen) -> Callable[[], str]:
    """Read the server's stderr as it comes (an unread pipe that fills would block the
    server); returns a function giving what was read so far."""
    lines: list[str] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in iter(process.stderr.readline, b""):
            lines.append(line.decode("utf-8", "replace"))

    threading.Thread(target=pump, daemon=True).start()
    return lambda: "".join(lines)


def _tail(text: str, limit: int = 8_000) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def _tracebacks(log: str) -> str:
    """Each distinct traceback in the server's stderr, cut to its fhir_ctms frames and its error."""
    seen: dict[str, None] = {}
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()
        kept, i = [], 0
        while i < len(lines):
            if lines[i].lstrip().startswith("File ") and "/fhir_ctms/" in lines[i]:
                kept.append(lines[i].rstrip())
                if i + 1 < len(lines) and not lines[i + 1].lstrip().startswith(("File ", "^")):
                    kept.append(lines[i + 1].rstrip())
            i += 1
        error = next((line for line in lines if line and not line.startswith((" ", "\t"))), "?")
        seen.setdefault("\n".join(kept + [error]), None)
    return "\n\n".join(seen)


def _server_log(log: str) -> str:
    if not log:
        return ""
    summary = _tracebacks(log)
    return ((f"\n\n--- server tracebacks (fhir_ctms frames) ---\n{summary}" if summary else "")
            + f"\n\n--- server stderr (tail) ---\n{_tail(log)}")


# -- 1. schemathesis -----------------------------------------------------------------------------

@pytest.mark.slow
def test_schemathesis_finds_no_server_error(live_server, backend, tmp_path):
    version = subprocess.run([str(SCHEMATHESIS), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and " 4." in version.stdout, \
        f"schemathesis 4.x is needed at {SCHEMATHESIS}: {version.stdout}{version.stderr}"
    server = live_server()
    stderr = _drain(server.process)
    origin = server.url.removesuffix("/fhir")
    command = [
        str(SCHEMATHESIS), "run", f"{origin}/openapi.json",
        "--url", origin,
        "--checks", "not_a_server_error,ensure_resource_availability",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--request-timeout", "60",
        "--output-truncate", "false",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "PYTHONHASHSEED": "0"}
    started = time.monotonic()
    try:
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=HARD_TIMEOUT)
        output, code = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output, code = out + f"\n[schemathesis killed after {HARD_TIMEOUT} s]", -1
    elapsed = time.monotonic() - started
    print(f"schemathesis on {backend}: {elapsed:.0f} s, exit code {code}")
    log = stderr()
    report = (f"schemathesis exited with {code} after {elapsed:.0f} s on {backend}\n"
              f"command: SCHEMATHESIS_HOOKS={HOOKS} {' '.join(command)}\n\n{_tail(output, 60_000)}{_server_log(log)}")
    assert code == 0, report
    assert "Traceback" not in log, "the server logged an exception:\n" + report


# -- 2. hand-picked nasty inputs -----------------------------------------------------------------

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
LIMIT = 10 * 1024 * 1024  # Settings.max_body_bytes


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = FHIR_JSON
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None
    #: the statuses the spec allows (None: any status below 500)
    expect: tuple[int, ...] | None = None
    #: a 2xx may answer with this resourceType instead of an OperationOutcome
    success: str | None = None
    stream: bool = False  # send the body chunked, without Content-Length


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


def _patient(**extra: Any) -> bytes:
    return _json({"resourceType": "Patient", **extra})


def _transaction(*entries: dict[str, Any], kind: str = "transaction") -> bytes:
    return _json({"resourceType": "Bundle", "type": kind, "entry": list(entries)})


def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


BAD = (400, 404, 422)  # the statuses a malformed request may get


def _cases(pid: str) -> list[Case]:
    """``pid``: the id of an existing Patient (at version 1)."""
    deep_arrays = b"[" * 100_000 + b"]" * 100_000
    deep_objects = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    too_big = b'{"resourceType":"Patient","x":"' + b"a" * (LIMIT + 1) + b'"}'
    id65 = "a" * 65
    big = b"123456789012345678901234567890"
    cases = [
        # nesting: orjson's depth limit, not Python's recursion limit
        Case("deep [ on create", "POST", "/Patient", deep_arrays, expect=(400,)),
        Case("deep { on create", "POST", "/Patient", deep_objects, expect=(400,)),
        Case("deep [ on update", "PUT", f"/Patient/{pid}", deep_arrays, expect=(400,)),
        Case("deep { on transaction", "POST", "", deep_objects, expect=(400,)),
        Case("deep [ on patch", "PATCH", f"/Patient/{pid}", deep_arrays, JSON_PATCH, expect=(400,)),
        Case("deep resource in a batch entry", "POST", "",
             b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},'
             b'"resource":{"resourceType":"Patient","x":' + deep_objects + b"}}]}", expect=(400,)),
        # size: the limit is 10 MiB, whether or not Content-Length announces the body
        Case("10 MiB + 1 with Content-Length", "POST", "/Patient", too_big, expect=(413,)),
        Case("10 MiB + 1 chunked", "POST", "/Patient", too_big, expect=(413,), stream=True),
        Case("10 MiB + 1 transaction", "POST", "", too_big, expect=(413,)),
        # encoding
        Case("invalid UTF-8 in a resource", "POST", "/Patient",
             b'{"resourceType":"Patient","name":[{"text":"\xff\xfe\xc3"}]}', expect=(400,)),
        Case("invalid UTF-8 in a transaction", "POST", "", b'{"resourceType":"Bundle","type":"\xc0\xaf"}',
             expect=(400,)),
        Case("invalid UTF-8 in a _search form", "POST", "/Patient/_search", b"identifier=\xff\xfe",
             "application/x-www-form-urlencoded", expect=(400,)),
        Case("invalid UTF-8 in a JSON Patch", "PATCH", f"/Patient/{pid}",
             b'[{"op":"add","path":"/gender","value":"\xff"}]', JSON_PATCH, expect=(400,)),
        Case("a UTF-8 BOM before the JSON", "POST", "/Patient", b"\xef\xbb\xbf" + _patient(), expect=None,
             success="Patient"),
        Case("\\u0000 in a string", "POST", "/Patient", b'{"resourceType":"Patient","gender":"ma\\u0000le"}',
             expect=(400,)),
        Case("\\u0000 in a key", "POST", "/Patient", b'{"resourceType":"Patient","\\u0000":1}', expect=(400,)),
        Case("\\u0000 in a patch value", "PATCH", f"/Patient/{pid}",
             b'[{"op":"add","path":"/birthDate","value":"\\u0000"}]', JSON_PATCH, expect=(400,)),
        Case("lone high surrogate", "POST", "/Patient", b'{"resourceType":"Patient","gender":"\\ud800"}',
             expect=(400,)),
        Case("lone low surrogate", "POST", "/Patient", b'{"resourceType":"Patient","gender":"\\udc00x"}',
             expect=(400,)),
        Case("lone surrogate in a key", "POST", "/Patient", b'{"resourceType":"Patient","\\udfff":1}',
             expect=(400,)),
        # numbers
        Case("1e400", "POST", "/Patient", b'{"resourceType":"Patient","multipleBirthInteger":1e400}',
             expect=(400,)),
        Case("a 30-digit integer", "POST", "/Patient",
             b'{"resourceType":"Patient","multipleBirthInteger":' + big + b"}", expect=None, success="Patient"),
        Case("a 30-digit decimal", "POST", "/Observation",
             b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
             b'"valueQuantity":{"value":' + big + b"}}", expect=None, success="Observation"),
        Case("u64 max integer", "POST", "/Patient",
             b'{"resourceType":"Patient","multipleBirthInteger":18446744073709551615}', expect=None,
             success="Patient"),
        Case("a 30-digit number in a batch", "POST", "",
             b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},'
             b'"resource":{"resourceType":"Patient","multipleBirthInteger":' + big + b"}}]}",
             expect=None, success="Bundle"),
        # ids and types
        Case("read with a 65-character id", "GET", f"/Patient/{id65}", expect=(400, 404)),
        Case("update with a 65-character id", "PUT", f"/Patient/{id65}", _patient(id=id65), expect=(400, 404)),
        Case("create with a 65-character body id", "POST", "/Patient", _patient(id=id65), expect=None,
             success="Patient"),
        Case("delete with a 65-character id", "DELETE", f"/Patient/{id65}", expect=(400, 404)),
        Case("history with a 65-character id", "GET", f"/Patient/{id65}/_history", expect=(400, 404)),
        Case("patch with a 65-character id", "PATCH", f"/Patient/{id65}", b"[]", JSON_PATCH, expect=(400, 404)),
        Case("a unicode resource type (search)", "GET", "/Pätient", expect=(404,)),
        Case("a unicode resource type (create)", "POST", "/患者", _json({"resourceType": "患者"}), expect=(404,)),
        Case("a unicode resource type (read)", "GET", "/Πatient/x", expect=(404,)),
        Case("a unicode resourceType in the body", "POST", "/Patient", _json({"resourceType": "Pätient"}),
             expect=(400,)),
        Case("a unicode id", "GET", "/Patient/ид", expect=(400, 404)),
        Case("an id with an encoded slash", "GET", "/Patient/a%2Fb", expect=(400, 404)),
        # parameters
        Case("_count=-1 (search)", "GET", "/Patient", params={"_count": "-1"}, expect=(400,)),
        Case("_count=-1 (history)", "GET", "/_history", params={"_count": "-1"}, expect=(400,)),
        Case("_count=99999999999999999999 (search)", "GET", "/Patient",
             params={"_count": "99999999999999999999"}, expect=(200, 400), success="Bundle"),
        Case("_count=99999999999999999999 (history)", "GET", "/Patient/_history",
             params={"_count": "99999999999999999999"}, expect=(200, 400), success="Bundle"),
        Case("_count=² (a digit to str.isdigit, not to int)", "GET", "/Patient", params={"_count": "²"},
             expect=(400,)),
        Case("_count=١٢ (Arabic-Indic digits)", "GET", "/_history", params={"_count": "١٢"},
             expect=(200, 400), success="Bundle"),
        Case("_since=not-a-date", "GET", "/_history", params={"_since": "not-a-date"}, expect=(400,)),
        Case("_at=2026-13-45", "GET", "/Patient/_history", params={"_at": "2026-13-45"}, expect=(400,)),
        Case("_at=9999-12-31T23:59:59-14:00", "GET", "/_history", params={"_at": "9999-12-31T23:59:59-14:00"},
             expect=(200, 400), success="Bundle"),
        Case("_since=0001-01-01T00:00:00+14:00", "GET", "/_history",
             params={"_since": "0001-01-01T00:00:00+14:00"}, expect=(200, 400), success="Bundle"),
        Case("_cursor=² (history)", "GET", "/_history", params={"_cursor": "²"}, expect=(400,)),
        Case("_cursor=99999999999999999999 (history)", "GET", "/_history",
             params={"_cursor": "99999999999999999999"}, expect=(200, 400), success="Bundle"),
        Case("vread of version ²", "GET", f"/Patient/{pid}/_history/²", expect=(400, 404)),
        Case("vread of version 99999999999999999999", "GET", f"/Patient/{pid}/_history/99999999999999999999",
             expect=(400, 404)),
        Case("_id with 10,000 commas", "GET", "/Patient", params={"_id": "," * 10_000}, expect=(200, 400),
             success="Bundle"),
        Case("identifier=|", "GET", "/Patient", params={"identifier": "|"}, expect=(400,)),
        Case("identifier of 8,000 characters", "GET", "/Patient", params={"identifier": "x" * 8_000},
             expect=(200, 400, 414), success="Bundle"),
        # headers
        Case("If-Match garbage (update)", "PUT", f"/Patient/{pid}", _patient(id=pid),
             headers={"If-Match": 'W/"1"garbage\'"'}, expect=(400, 412)),
        Case("If-Match garbage (delete)", "DELETE", f"/Patient/{pid}", headers={"If-Match": "*;;,"},
             expect=(400, 412)),
        Case("If-Match garbage (patch)", "PATCH", f"/Patient/{pid}", b"[]", JSON_PATCH,
             headers={"If-Match": "W/"}, expect=(400, 412)),
        Case("If-Match with a huge version", "PUT", f"/Patient/{pid}", _patient(id=pid),
             headers={"If-Match": 'W/"99999999999999999999"'}, expect=(412,)),
        Case("If-None-Match garbage (read)", "GET", f"/Patient/{pid}", headers={"If-None-Match": "x\"y"},
             expect=(200, 400), success="Patient"),
        Case("If-Modified-Since garbage (read)", "GET", f"/Patient/{pid}",
             headers={"If-Modified-Since": "Mon, 99 Foo 99999 99:99:99 XYZ"}, expect=(200, 400),
             success="Patient"),
        Case("If-None-Exist garbage (create)", "POST", "/Patient", _patient(),
             headers={"If-None-Exist": "&&==%%%"}, expect=None, success="Patient"),
        Case("Prefer garbage (create)", "POST", "/Patient", _patient(),
             headers={"Prefer": 'return=";,,=;handling=="strict'}, expect=None, success="Patient"),
        Case("Prefer garbage (search)", "GET", "/Patient", headers={"Prefer": "handling=strict;;;=,=,"},
             params={"unknown": "1"}, expect=None, success="Bundle"),
        Case("Prefer return=OperationOutcome with no body", "DELETE", f"/Patient/{id65}",
             headers={"Prefer": "return=OperationOutcome"}, expect=(400, 404)),
        Case("X-Reason of 1025 characters", "POST", "/Patient", _patient(), headers={"X-Reason": "r" * 1025},
             expect=(400,)),
        # negotiation
        Case("_format=xml", "GET", "/metadata", params={"_format": "xml"}, expect=(406,)),
        Case("_format=xml on a create", "POST", "/Patient", _patient(), params={"_format": "xml"},
             expect=(406,)),
        Case("Accept: application/fhir+xml", "GET", f"/Patient/{pid}",
             headers={"Accept": "application/fhir+xml"}, expect=(406,)),
        Case("Accept fhirVersion=4.0", "GET", "/metadata",
             headers={"Accept": "application/fhir+json; fhirVersion=4.0"}, expect=(406,)),
        Case("Content-Type: text/plain", "POST", "/Patient", _patient(), "text/plain", expect=(415,)),
        Case("Content-Type: text/plain (transaction)", "POST", "", _transaction(), "text/plain", expect=(415,)),
        Case("Content-Type: text/plain (patch)", "PATCH", f"/Patient/{pid}", b"[]", "text/plain", expect=(415,)),
        Case("Content-Type charset=latin-1", "POST", "/Patient", _patient(),
             FHIR_JSON + "; charset=latin-1", expect=(415,)),
        Case("Content-Type garbage", "POST", "/Patient", _patient(), ";;;=\"", expect=(415,)),
        # Bundles
        Case("transaction entry with request: 5", "POST", "",
             _transaction({"request": 5, "resource": {"resourceType": "Patient"}}), expect=(400,)),
        Case("batch entry with request: 5", "POST", "",
             _transaction({"request": 5}, kind="batch"), expect=(200,), success="Bundle"),
        Case("transaction with a urn:uuid reference to nothing", "POST", "", _transaction(
            {"fullUrl": "urn:uuid:6f1f7a2c-0000-4000-8000-000000000001",
             "resource": {"resourceType": "ResearchSubject", "status": "active",
                          "study": {"reference": "ResearchStudy/nothing"},
                          "subject": {"reference": "urn:uuid:6f1f7a2c-0000-4000-8000-0000000000ff"}},
             "request": {"method": "POST", "url": "ResearchSubject"}}),
             expect=(400, 404, 409, 412, 422)),
        Case("transaction PATCH with a non-base64 Binary", "POST", "", _transaction(
            {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH, "data": "not base64!!"},
             "request": {"method": "PATCH", "url": f"Patient/{pid}"}}), expect=(400,)),
        Case("transaction PATCH with base64 of non-JSON", "POST", "", _transaction(
            {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                          "data": base64.b64encode(b"\xff\xfe[").decode()},
             "request": {"method": "PATCH", "url": f"Patient/{pid}"}}), expect=(400,)),
        Case("transaction PATCH with base64 of deep JSON", "POST", "", _transaction(
            {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                          "data": base64.b64encode(deep_arrays).decode()},
             "request": {"method": "PATCH", "url": f"Patient/{pid}"}}), expect=(400,)),
        Case("a document Bundle posted to the base", "POST", "", _json({
            "resourceType": "Bundle", "type": "document",
            "entry": [{"fullUrl": "urn:uuid:6f1f7a2c-0000-4000-8000-000000000002",
                       "resource": {"resourceType": "Composition", "status": "final"}}]}), expect=(400,)),
        Case("a Bundle with no type posted to the base", "POST", "", _json({"resourceType": "Bundle"}),
             expect=(400,)),
        Case("a Patient posted to the base", "POST", "", _patient(), expect=(400,)),
        Case("transaction entry with method TRACE", "POST", "", _transaction(
            {"request": {"method": "TRACE", "url": "Patient"}}), expect=(400,)),
        Case("transaction entry with an absolute foreign url", "POST", "", _transaction(
            {"request": {"method": "GET", "url": "http://evil.example/fhir/Patient"}}), expect=(400,)),
        Case("transaction entry with vread of version ²", "POST", "", _transaction(
            {"request": {"method": "GET", "url": f"Patient/{pid}/_history/²"}}), expect=(400, 404)),
        Case("transaction entry with _count=² ", "POST", "", _transaction(
            {"request": {"method": "GET", "url": "Patient?_count=%C2%B2"}}), expect=(400,)),
        Case("transaction with entry: {}", "POST", "", _json({"resourceType": "Bundle", "type": "transaction",
                                                               "entry": {}}), expect=(400,)),
        Case("transaction with 10,001 entries", "POST", "", _transaction(*([{}] * 10_001)), expect=(400,)),
    ]
    return cases


def _send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.content_type is not None and case.body is not None:
        headers["Content-Type"] = case.content_type
    content: Any = case.body
    if case.stream and case.body is not None:
        content = _chunks(case.body)
    return client.request(case.method, case.path, content=content, headers=headers, params=case.params)


def _problems(case: Case, response: httpx.Response) -> list[str]:
    status = response.status_code
    problems = []
    if status >= 500:
        problems.append(f"server error {status}")
    if case.expect is not None and status not in case.expect:
        problems.append(f"status {status}, expected one of {case.expect}")
    if status in (204, 304):
        return problems
    media = response.headers.get("content-type", "")
    try:
        body = response.json()
    except ValueError:
        return problems + [f"the body is not JSON ({media!r}): {response.text[:300]!r}"]
    kind = body.get("resourceType") if isinstance(body, dict) else None
    if status >= 400 or case.success is None:
        if kind != "OperationOutcome" or not body.get("issue"):
            problems.append(f"not an OperationOutcome with issues: {response.text[:300]!r}")
    elif kind != case.success:
        problems.append(f"a {status} whose body is a {kind}, expected {case.success}")
    if not media.startswith(FHIR_JSON):
        problems.append(f"Content-Type {media!r}")
    return problems


def test_nasty_inputs_get_an_operation_outcome(live_server, backend):
    server = live_server()
    stderr = _drain(server.process)
    failures = []

    def client() -> httpx.Client:  # one connection per case: a failure cannot spill into the next
        return httpx.Client(base_url=server.url, timeout=120)

    with client() as c:
        created = c.post("/Patient", content=_patient(gender="female"), headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    for case in _cases(pid):
        with client() as c:
            try:
                response = _send(c, case)
            except httpx.TransportError as exc:
                failures.append(f"{case.name}: {case.method} {case.path or '/'} {case.params or ''}: "
                                f"no response ({exc!r})")
                continue
            problems = _problems(case, response)
            if problems:
                failures.append(f"{case.name}: {case.method} {case.path or '/'} {case.params or ''} -> "
                                f"{response.status_code}: {'; '.join(problems)}\n    body: {response.text[:500]}")
        # whatever was accepted can be read back
        if response.status_code == 201 and "location" in response.headers:
            with client() as c:
                again = c.get(response.headers["location"])
            if again.status_code != 200:
                failures.append(f"{case.name}: reading back {response.headers['location']} -> "
                                f"{again.status_code}: {again.text[:300]}")
    # ... and listed
    for path in ("/_history", "/Patient", "/Observation/_history"):
        with client() as c:
            listed = c.get(path, params={"_count": "1000"})
        if listed.status_code != 200:
            failures.append(f"listing {path} afterwards -> {listed.status_code}: {listed.text[:300]}")
    log = stderr()
    if "Traceback" in log:
        failures.append("the server logged exceptions (stderr follows)")
    assert not failures, (f"{len(failures)} problem(s) on {backend}:\n" + "\n".join(failures)
                          + _server_log(log))
