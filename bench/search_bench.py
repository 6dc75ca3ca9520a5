"""The search benchmark: latency and throughput of FHIR searches on a loaded CTMS database.

The database is loaded beforehand with ``bench/generate_ctms.py`` and ``fhir-ctms import``
(the server's real write path: index rows, Provenance and AuditEvent for every resource);
``--data`` is the generator's output directory (its ``samples.json`` holds values that
exist in the data, so every request asks for something real and the values vary from
request to request).

For each scenario (``SCENARIOS``, one search each, the values rotating over up to
``--values`` samples) it

1. checks the requests (200, a searchset, no parameter ignored: every request carries
   ``Prefer: handling=strict``, so an unsupported parameter is a 400, never a quietly
   ignored one) and counts the matches of the first values (``_summary=count``);
2. warms up, then runs ``--runs`` rounds (scenario order rotated every round); in each
   round, wrk with ONE connection for ``--duration`` seconds (the latency of a request on
   an idle server: p50, p99 and req/s, against the targets), then wrk with
   ``--connections`` connections (the throughput of the server's core, with its queueing
   latency). A slow scenario runs longer, up to ``--max-duration``, to get at least
   ``--min-requests`` requests per run;
3. reports medians over the rounds (``statistics.median``), the server's CPU time per
   request (/proc), and the targets: every first page p50 < 20 ms and p99 < 100 ms (one
   connection), ``_total=accurate`` on ~200,000 matches p50 < 500 ms;
4. with the server stopped, prints each scenario's SQL query plan: the SQL built exactly
   as the server builds it (``fhir_ctms.search.parse.parse`` then
   ``fhir_ctms.storage.search_sql.search_sql``, plus ``count_sql`` for ``_total`` and
   ``include_sql`` for ``_include``/``_revinclude``), as SQLite's ``EXPLAIN QUERY PLAN``
   (and the statement's own time in-process, with ``sqlite3``) or PostgreSQL's
   ``EXPLAIN (ANALYZE, BUFFERS)``.

The server is ``uvicorn fhir_ctms.api.asgi:app``, one worker, pinned with ``taskset -c
BENCH_SERVER_CPU`` (0); wrk is pinned to ``BENCH_CLIENT_CPU`` (1) (``bench/bench.py``'s
``start_server`` and conventions). The deep page: ``next`` links followed 100 times
(httpx) on large results (``DEEP_BASES``, ``_count=20``), then wrk requests those
page-101 URLs (a keyset cursor: it should cost what a first page does).

Results: ``bench/results/search-<UTC timestamp>.json`` (and ``search-latest.json``,
``search-latest.md``); the Markdown table and the plans on stdout.

Usage::

    .venv/bin/python bench/search_bench.py --database-url sqlite+aiosqlite:////data/ctms.db --data /data/ctms
    .venv/bin/python bench/search_bench.py --report bench/results/search-latest.json
    .venv/bin/python bench/search_bench.py --database-url ... --data ... --plans-only
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402  (bench/bench.py: start_server, proc_stats, machine, source_fingerprint, ...)

LUA = BENCH / "lua"
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", BENCH / "results"))
PARTITION = os.environ.get("FHIR_CTMS_PARTITION", "default")
HEADERS = {"Accept": "application/fhir+json", "Prefer": "handling=strict"}

# targets (issue 4)
FIRST_PAGE_P50_MS = 20.0
FIRST_PAGE_P99_MS = 100.0
TOTAL_P50_MS = 500.0

DEEP_PAGES = 100  #: next links followed
DEEP_COUNT = 20
#: large results to page through (those with enough matches at the data's scale are used)
DEEP_BASES = (("Encounter", ("status", "completed")), ("Encounter", ("class", "AMB")),
              ("ResearchSubject", ("status", "active")), ("Patient", ("active", "true")), ("Encounter",))


def log(msg: str) -> None:
    print(f"[search {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def q(rtype: str, *pairs: tuple[str, str]) -> str:
    """A request path: /fhir/<type>?<pairs>, encoded as a client would (':' and ',' kept)."""
    return f"/fhir/{rtype}" + ("?" + urlencode(pairs, quote_via=quote, safe=":/,") if pairs else "")


def escape(value: str) -> str:
    """A search value with FHIR's escapes (search.html#escaping): ``,`` would separate OR values."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")


@dataclass(frozen=True)
class Scenario:
    name: str
    describe: str
    target: str  #: first-page | total | deep | none
    paths: tuple[str, ...]


def scenarios(samples: dict[str, Any], values: int) -> list[Scenario]:
    """Every scenario with its list of request paths (values from the generated data)."""
    sy = samples["systems"]
    sites = [s["id"] for s in samples["sites"]][:values]
    studies = samples["studies"][:values]
    patients = samples["patients"][:values]
    months = samples["months"]
    if "2025-01" in months:  # the brief's example first (the plans are of the first value)
        k = months.index("2025-01")
        months = months[k:] + months[:k]

    def month_range(m: str) -> tuple[str, str]:
        y, mo = map(int, m.split("-"))
        nxt = date(y + mo // 12, mo % 12 + 1, 1)
        return f"{y}-{mo:02d}-01", nxt.isoformat()
    titles = []
    for s in studies:
        titles += [s["title_prefix"], s["protocol"]]  # a study's title (few matches); its sites' (~20)
    out = [
        Scenario("token", "token, first page of a large result (status, state, class, gender, phase; "
                 "values rotate)", "first-page",
                 (q("ResearchSubject", ("status", "active")), q("Encounter", ("status", "completed")),
                  q("Appointment", ("status", "booked")), q("ResearchSubject", ("subject_state", "on-study")),
                  q("Encounter", ("class", "AMB")), q("Patient", ("gender", "female")),
                  q("ResearchStudy", ("phase", "phase-3")))),
        Scenario("token-identifier", "token: ResearchSubject?identifier=system|value (one match)", "first-page",
                 tuple(q("ResearchSubject", ("identifier", f"{sy['subject_id']}|{p['subject_id']}"))
                       for p in patients)),
        Scenario("string", "string: ResearchStudy?title=<prefix> (a study title up to the drug name, or a "
                 "protocol acronym: its sites' titles)", "first-page",
                 tuple(q("ResearchStudy", ("title", escape(t))) for t in titles[:values])),
        Scenario("date", "date range: Encounter?date=ge<month start>&date=lt<next month> (the months of 2024-01 "
                 "to 2026-10 rotate)",
                 "first-page",
                 tuple(q("Encounter", ("date", "ge" + a), ("date", "lt" + b)) for a, b in map(month_range, months))),
        Scenario("reference", "reference: ResearchSubject?study=ResearchStudy/<site>", "first-page",
                 tuple(q("ResearchSubject", ("study", f"ResearchStudy/{s}")) for s in sites)),
        Scenario("chain", "two-level chain: ResearchSubject?study.part-of.identifier=<NCT system>|<NCT> "
                 "(every subject of a study)", "first-page",
                 tuple(q("ResearchSubject", ("study.part-of.identifier", f"{sy['nct']}|{s['nct']}"))
                       for s in studies)),
        Scenario("chain-1", "one-level chain: Encounter?patient.identifier=<MRN system>|<MRN> "
                 "(a patient's visits by MRN)", "first-page",
                 tuple(q("Encounter", ("patient.identifier", f"{p['mrn_system']}|{p['mrn']}")) for p in patients)),
        Scenario("has", "_has: Patient?_has:ResearchSubject:patient:study=ResearchStudy/<site>", "first-page",
                 tuple(q("Patient", ("_has:ResearchSubject:patient:study", f"ResearchStudy/{s}")) for s in sites)),
        Scenario("include", "_include: ResearchSubject?study=ResearchStudy/<site>&_include=ResearchSubject:study",
                 "first-page",
                 tuple(q("ResearchSubject", ("study", f"ResearchStudy/{s}"), ("_include", "ResearchSubject:study"))
                       for s in sites)),
        Scenario("include-patient", "_include: ResearchSubject?study=ResearchStudy/<site>"
                 "&_include=ResearchSubject:patient (a Patient per match)", "first-page",
                 tuple(q("ResearchSubject", ("study", f"ResearchStudy/{s}"), ("_include", "ResearchSubject:patient"))
                       for s in sites)),
        Scenario("revinclude", "_revinclude: ResearchStudy?_id=<site>&_revinclude=ResearchSubject:study",
                 "first-page",
                 tuple(q("ResearchStudy", ("_id", s), ("_revinclude", "ResearchSubject:study")) for s in sites)),
        Scenario("sort", "_sort on a date: Encounter?_sort=-date&_count=20 (one request, the newest visits)",
                 "first-page", (q("Encounter", ("_sort", "-date"), ("_count", "20")),)),
        Scenario("sort-patient", "_sort on a date within a patient: Encounter?patient=Patient/<id>&_sort=-date",
                 "first-page",
                 tuple(q("Encounter", ("patient", f"Patient/{p['id']}"), ("_sort", "-date")) for p in patients)),
        Scenario("total", "_total=accurate: ResearchSubject?status=active&_total=accurate (~98% of the subjects: "
                 "~196,000 at scale 1)", "total",
                 (q("ResearchSubject", ("status", "active"), ("_total", "accurate")),)),
        Scenario("deep-page", f"deep page: the page after {DEEP_PAGES} next links (_count={DEEP_COUNT}; keyset "
                 "cursor) of large results (DEEP_BASES)", "deep", ()),
    ]
    return out


# -- HTTP checks and the deep page walk ----------------------------------------------------------------

def get(client: httpx.Client, path: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = client.get(path, headers=HEADERS)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:500]}")
    body = r.json()
    if body.get("resourceType") != "Bundle" or body.get("type") != "searchset":
        raise RuntimeError(f"GET {path}: not a searchset Bundle")
    outcomes = [e for e in body.get("entry", []) if e.get("search", {}).get("mode") == "outcome"]
    if outcomes:
        raise RuntimeError(f"GET {path}: the server ignored something: {json.dumps(outcomes)[:500]}")
    return ms, body


def with_param(path: str, name: str, value: str) -> str:
    return path + ("&" if "?" in path else "?") + f"{name}={value}"


def check(client: httpx.Client, sc: Scenario, count_values: int) -> dict[str, Any]:
    """Every path once: status, matches on the first page, included resources, latency
    (httpx, sequential); and the number of matches of the first values (_summary=count)."""
    page_matches, included, lat = [], [], []
    for path in sc.paths:
        ms, body = get(client, path)
        lat.append(ms)
        modes = [e.get("search", {}).get("mode") for e in body.get("entry", [])]
        page_matches.append(modes.count("match"))
        included.append(modes.count("include"))
    totals = []
    for path in sc.paths[:count_values]:
        base = path.split("&_include")[0].split("&_revinclude")[0].replace("&_total=accurate", "")
        _, body = get(client, with_param(base, "_summary", "count"))
        totals.append(body.get("total"))
    return {"paths": len(sc.paths), "page_matches_median": statistics.median(page_matches),
            "page_matches_min": min(page_matches), "page_matches_max": max(page_matches),
            "included_median": statistics.median(included),
            "matches_of_first_values": totals, "httpx_ms_median": round(statistics.median(lat), 2),
            "httpx_ms_max": round(max(lat), 2)}


def deep_walks(client: httpx.Client, manifest: dict[str, Any], walks: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Follow ``next`` DEEP_PAGES times from page 1 of each base with enough matches; the
    page-101 URLs, and every walk's page latencies (httpx)."""
    need = (DEEP_PAGES + 1) * DEEP_COUNT + 1
    urls, info = [], []
    for rtype, *pairs in DEEP_BASES:
        if len(urls) >= walks:
            break
        base = q(rtype, *pairs)
        _, body = get(client, with_param(base, "_summary", "count"))
        matches = body.get("total") or 0
        if matches < need:
            log(f"deep page: {base} has {body.get('total')} matches, fewer than {need}: skipped")
            continue
        path = with_param(base, "_count", str(DEEP_COUNT))
        lat = []
        ms, body = get(client, path)
        lat.append(ms)
        for _ in range(DEEP_PAGES):
            nxt = next((ln["url"] for ln in body.get("link", []) if ln["relation"] == "next"), None)
            if nxt is None:
                raise RuntimeError(f"deep page: {base} ended before page {DEEP_PAGES + 1}")
            parts = urlsplit(nxt)
            path = parts.path + "?" + parts.query
            ms, body = get(client, path)
            lat.append(ms)
        urls.append(path)
        info.append({"base": base, "matches": matches, "page_ms": [round(x, 2) for x in lat],
                     "page1_ms": round(lat[0], 2), "page101_ms": round(lat[-1], 2), "url": path})
        log(f"deep page: {base}: page 1 {lat[0]:.1f} ms, page {DEEP_PAGES + 1} {lat[-1]:.1f} ms (httpx)")
    if not urls:
        raise RuntimeError(f"deep page: no base has {need} matches")
    return urls, info


# -- wrk ----------------------------------------------------------------------------------------

def wait_idle(server: bench.Server, limit: float = 600) -> float:
    """Wait until the server has worked off what earlier runs left queued (requests whose client
    went away are still answered): its CPU time stops growing. Returns the seconds waited."""
    t0 = time.monotonic()
    last = bench.proc_stats(server.proc.pid)["cpu"]
    while time.monotonic() - t0 < limit:
        time.sleep(0.2)
        now = bench.proc_stats(server.proc.pid)["cpu"]
        if now - last < 0.01:  # under 5% of a core over 200 ms
            break
        last = now
    return time.monotonic() - t0


def wrk(server: bench.Server, paths_file: Path, connections: int, seconds: float, timeout: float) -> dict[str, Any]:
    waited = wait_idle(server)
    env = dict(os.environ, BENCH_LUA_DIR=str(LUA), SEARCH_PATHS_FILE=str(paths_file))
    cmd = ["taskset", "-c", bench.CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", f"{max(2, round(timeout))}s", "--latency", "-s", str(LUA / "search.lua"), server.base]
    before = bench.proc_stats(server.proc.pid)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + timeout + 120)
    after = bench.proc_stats(server.proc.pid)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    res = json.loads(line.removeprefix("BENCH_JSON "))
    res["connections"] = connections
    res["waited_for_idle_s"] = round(waited, 1)
    res["wrk_output"] = out.stdout.split("BENCH_JSON")[0].rstrip()
    cpu = after["cpu"] - before["cpu"]
    res["server_cpu_pct"] = round(100 * cpu / (res["duration_us"] / 1e6), 1)
    res["server_cpu_ms_per_request"] = round(1000 * cpu / max(res["requests"], 1), 3)
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    return {"rps_median": statistics.median(r["rps"] for r in runs),
            "rps_min": min(r["rps"] for r in runs), "rps_max": max(r["rps"] for r in runs),
            "p50_ms_median": statistics.median(r["p50_us"] for r in runs) / 1000,
            "p99_ms_median": statistics.median(r["p99_us"] for r in runs) / 1000,
            "max_ms": max(r["max_us"] for r in runs) / 1000,
            "server_cpu_ms_per_request_median": statistics.median(r["server_cpu_ms_per_request"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(sum(r["errors"].values()) for r in runs)}


# -- plans ----------------------------------------------------------------------------------------

def split_path(path: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(path)
    rtype = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return rtype, parse_qsl(parts.query, keep_blank_values=True)


def _query(path: str) -> tuple[Any, int, list[Any] | None, bool]:
    from fhir_ctms.config import get_settings
    from fhir_ctms.search.parse import parse
    settings = get_settings()
    rtype, params = split_path(path)
    cursor = next((v for k, v in params if k == "_cursor"), None)
    params = [(k, v) for k, v in params if k not in ("_cursor", "_format", "_pretty")]
    query = parse((rtype,), params, strict=True, max_count=settings.max_page_size)
    count = query.count if query.count is not None else settings.default_page_size
    after, backwards = decode_cursor(cursor)
    return query, count, after, backwards


def probe_statements(path: str, sqlite: bool) -> list[tuple[int, Any]]:
    """The counts the server runs before choosing a plan (``search_sql.probes``)."""
    from fhir_ctms.storage.search_sql import probes
    return probes(_query(path)[0], PARTITION, sqlite)


def statements(path: str, counts: dict[int, int], sqlite: bool,
               page_keys: list[tuple[str, str]] | None = None) -> list[tuple[str, Any]]:
    """The SQL the server runs for ``path``, given the probes' ``counts`` (as the server stops at
    the first small one, so must the caller): (label, F) for the page (its first phase), the
    count (``_total``), and each include (on ``page_keys``, the page's (type, id))."""
    from fhir_ctms.storage.search_sql import count_sql, include_sql, phases, plan, search_sql
    query, count, after, backwards = _query(path)
    p = plan(query, counts)
    phase, cursor = phases(query, p, after, backwards)[0]
    how = (f"driven by clause {p.driver + 1}" if p.driver is not None
           else "walking the sort key's index" if p.walk else "walking type and id")
    out: list[tuple[str, Any]] = [(f"page ({how})", search_sql(query, PARTITION, limit=count + 1,
                                                              after=after if cursor else None, backwards=backwards,
                                                              p=p, phase=phase, sqlite=sqlite))]
    if query.total in ("accurate", "estimate"):
        out.append(("count (_total)", count_sql(query, PARTITION, p, sqlite=sqlite)))
    for inc in (*query.includes, *query.revincludes):
        if page_keys:  # the page's rows (the SQL reads one more, to know whether a next page exists)
            out.append((("_revinclude " if inc.reverse else "_include ") + f"{inc.source_type}:{inc.param}",
                        include_sql(inc, PARTITION, page_keys[:count], sqlite=sqlite)))
    return out


def decode_cursor(cursor: str | None) -> tuple[list[Any] | None, bool]:
    """The sort keys of a ``_cursor`` and whether it pages backwards, decoded by the server's own
    function when it has one (``fhir_ctms.interactions.search._cursor``), else as base64 JSON."""
    if not cursor:
        return None, False
    try:
        from fhir_ctms.interactions.search import _cursor
        value = _cursor(cursor)
    except ImportError:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("a", "b", None):  # (direction, keys)
        return list(value[1]) if value[1] is not None else None, value[0] == "b"
    value = list(value)
    if value and value[0] in ("a", "b"):  # [direction, *keys]
        return value[1:], value[0] == "b"
    return value, False


def sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def _indent(rows: list[tuple]) -> list[str]:
    depth = {0: -1}
    out = []
    for rid, parent, _, detail in rows:
        depth[rid] = depth.get(parent, -1) + 1
        out.append("  " * depth[rid] + detail)
    return out


def sqlite_plan_lines(db: sqlite3.Connection, sql: str, params: list[Any]) -> list[str]:
    return _indent(list(db.execute("EXPLAIN QUERY PLAN " + sql, params)))


def pg_plans(url: str, scs: list[Scenario], deep_urls: list[str]) -> dict[str, Any]:
    import asyncpg

    from fhir_ctms.storage.search_sql import SMALL

    def dollar(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))

    async def run() -> dict[str, Any]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        out: dict[str, Any] = {}
        try:
            for sc in scs:
                path = (deep_urls[0] if deep_urls else None) if sc.name == "deep-page" else sc.paths[0]
                if path is None:
                    continue
                entry: dict[str, Any] = {"path": path, "statements": []}
                counts: dict[int, int] = {}
                probes = []
                for n, f in probe_statements(path, sqlite=False):
                    counts[n] = await conn.fetchval(dollar(f.sql), *f.params)
                    probes.append((f"probe clause {n + 1}: {counts[n]}", f))
                    if counts[n] < SMALL:
                        break
                page = statements(path, counts, False)[0][1]
                rows = await conn.fetch(dollar(page.sql), *page.params)
                keys = [(r[0], r[1]) for r in rows]
                for label, f in probes + statements(path, counts, False, keys):
                    plan = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + dollar(f.sql), *f.params)]
                    ms = next((float(ln.split(":")[1].split()[0]) for ln in plan if ln.startswith("Execution Time")),
                              None)
                    entry["statements"].append({"label": label, "sql": f.sql, "params": [str(p) for p in f.params],
                                                "plan": plan, "ms_median": ms})
                out[sc.name] = entry
        finally:
            await conn.close()
        return out
    return asyncio.run(run())


def plans(url: str, scs: list[Scenario], deep_urls: list[str], reps: int = 5) -> dict[str, Any]:
    from fhir_ctms.storage.search_sql import SMALL
    if url.startswith("sqlite"):
        db = sqlite3.connect(f"file:{sqlite_path(url)}?mode=ro", uri=True)
        out: dict[str, Any] = {}
        try:
            for sc in scs:
                path = (deep_urls[0] if deep_urls else None) if sc.name == "deep-page" else sc.paths[0]
                if path is None:
                    continue
                counts: dict[int, int] = {}
                probes = []
                for n, f in probe_statements(path, sqlite=True):
                    counts[n] = db.execute(f.sql, f.params).fetchone()[0]
                    probes.append((f"probe clause {n + 1}: {counts[n]}", f))
                    if counts[n] < SMALL:
                        break
                page = statements(path, counts, True)[0][1]
                keys = [(r[0], r[1]) for r in db.execute(page.sql, page.params).fetchall()]
                entry: dict[str, Any] = {"path": path, "statements": []}
                for label, f in probes + statements(path, counts, True, keys):
                    times, rows = [], []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        rows = db.execute(f.sql, f.params).fetchall()
                        times.append((time.perf_counter() - t0) * 1000)
                    entry["statements"].append({"label": label, "sql": f.sql, "params": [str(p) for p in f.params],
                                                "plan": sqlite_plan_lines(db, f.sql, f.params), "rows": len(rows),
                                                "ms_median": round(statistics.median(times), 3)})
                out[sc.name] = entry
        finally:
            db.close()
        return out
    return pg_plans(url, scs, deep_urls)


# -- the database ---------------------------------------------------------------------------------

def database_facts(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            types = dict(db.execute("SELECT res_type, COUNT(*) FROM resources GROUP BY res_type").fetchall())
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name LIKE 'search\\_%' ESCAPE '\\' ORDER BY name")]
            index = {t.removeprefix("search_"): db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
            stat1 = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()[0] > 0
            analyzed = db.execute("SELECT COUNT(*) FROM sqlite_stat1").fetchone()[0] if stat1 else 0
        finally:
            db.close()
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        return {"engine": f"SQLite {sqlite3.sqlite_version}", "bytes": size, "resources_by_type": types,
                "index_rows": index, "sqlite_stat1_rows": analyzed}

    async def pg() -> dict[str, Any]:
        import asyncpg
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            types = {r[0]: r[1] for r in await conn.fetch("SELECT res_type, COUNT(*) FROM resources GROUP BY 1")}
            tables = [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename LIKE 'search\\_%' ORDER BY 1")]
            index = {t.removeprefix("search_"): await conn.fetchval(f"SELECT COUNT(*) FROM {t}") for t in tables}
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            version = await conn.fetchval("SHOW server_version")
            analyzed = {r[0]: str(r[1]) for r in await conn.fetch(
                "SELECT relname, GREATEST(last_analyze, last_autoanalyze) FROM pg_stat_user_tables")}
        finally:
            await conn.close()
        return {"engine": f"PostgreSQL {version}", "bytes": size, "resources_by_type": types, "index_rows": index,
                "last_analyzed": analyzed}
    return asyncio.run(pg())


def analyze(url: str) -> None:
    if url.startswith("sqlite"):
        db = sqlite3.connect(sqlite_path(url))
        try:
            db.execute("ANALYZE")
            db.commit()
        finally:
            db.close()
        return

    async def pg() -> None:
        import asyncpg
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    asyncio.run(pg())


# -- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    samples = json.loads((data / "samples.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    wanted = set(args.scenarios.split(",")) if args.scenarios else None
    scs = [s for s in scenarios(samples, args.values) if wanted is None or s.name in wanted]
    if args.analyze:
        log("ANALYZE (planner statistics) before the run")
        analyze(args.database_url)
    facts = database_facts(args.database_url)
    log(f"database: {facts['engine']}, {facts['bytes'] / 1e6:,.0f} MB, "
        f"{sum(facts['resources_by_type'].values()):,} resources")
    result: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": bench.machine(),
        "source": bench.source_fingerprint(),
        "config": {"runs": args.runs, "duration_s": args.duration, "max_duration_s": args.max_duration,
                   "min_requests": args.min_requests, "connections": args.connections, "values": args.values,
                   "warmup_s": args.warmup, "server_cpu": bench.SERVER_CPU, "client_cpu": bench.CLIENT_CPU,
                   "analyze": args.analyze, "uvicorn": bench.uvicorn_options()[1]},
        "data": {"seed": manifest["seed"], "scale": manifest["scale"], "total": manifest["total"],
                 "counts": manifest["counts"]},
        "database": {**facts, "url": args.database_url.split("@")[-1]},
        "targets": {"first_page_p50_ms": FIRST_PAGE_P50_MS, "first_page_p99_ms": FIRST_PAGE_P99_MS,
                    "total_p50_ms": TOTAL_P50_MS},
        "scenarios": {},
    }
    deep_urls: list[str] = []
    deep_info: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fhir-ctms-search.") as tmp:
        workdir = Path(tmp)
        if not args.plans_only:
            bench.pin_database(args.database_url)
            server = bench.start_server("search-app", "fhir_ctms.api.asgi:app", args.database_url, workdir)
            try:
                client = httpx.Client(base_url=server.base, timeout=600)
                checks: dict[str, Any] = {}
                for sc in scs:
                    if sc.name == "deep-page":
                        deep_urls, deep_info = deep_walks(client, manifest, args.deep_walks)
                        continue
                    checks[sc.name] = check(client, sc, args.count_values)
                    c = checks[sc.name]
                    log(f"{sc.name}: {len(sc.paths)} paths ok; matches {c['matches_of_first_values']}, first page "
                        f"{c['page_matches_median']} matches (median) + {c['included_median']} included; "
                        f"httpx median {c['httpx_ms_median']} ms, max {c['httpx_ms_max']} ms")
                scs = [replace_paths(sc, deep_urls) if sc.name == "deep-page" else sc for sc in scs]
                checks["deep-page"] = {"walks": deep_info, "paths": len(deep_urls)} if deep_urls else {}
                files = {}
                for sc in scs:
                    files[sc.name] = workdir / f"{sc.name}.paths"
                    files[sc.name].write_text("\n".join(sc.paths) + "\n")
                # warm-up; the duration of each scenario's runs from its latency
                durations: dict[str, float] = {}
                for sc in scs:
                    w = wrk(server, files[sc.name], 1, args.warmup, 600)
                    est_ms = max(w["mean_us"] / 1000, 0.1) if w["requests"] else 10_000
                    durations[sc.name] = min(args.max_duration, max(args.duration, args.min_requests * est_ms / 1000))
                    log(f"warm-up {sc.name}: {w['requests']} requests, mean {est_ms:.1f} ms -> runs of "
                        f"{durations[sc.name]:.0f} s")
                runs: dict[str, dict[str, list[dict[str, Any]]]] = {sc.name: {"one": [], "many": []} for sc in scs}
                for rnd in range(args.runs):
                    order = scs[rnd % len(scs):] + scs[:rnd % len(scs)]
                    for sc in order:
                        secs = durations[sc.name]
                        one = wrk(server, files[sc.name], 1, secs, 600)
                        many = wrk(server, files[sc.name], args.connections, secs, 600)
                        one["round"] = many["round"] = rnd + 1
                        runs[sc.name]["one"].append(one)
                        runs[sc.name]["many"].append(many)
                        errs = sum(one["errors"].values()) + sum(many["errors"].values())
                        log(f"round {rnd + 1}/{args.runs} {sc.name:17s} 1 conn: p50 {one['p50_us'] / 1000:8.2f} ms "
                            f"p99 {one['p99_us'] / 1000:8.2f} ms {one['rps']:8.1f} req/s | {args.connections} conn: "
                            f"{many['rps']:8.1f} req/s p50 {many['p50_us'] / 1000:8.2f} ms"
                            + (f"  ERRORS {errs}" if errs else ""))
                if server.proc.poll() is not None:
                    raise RuntimeError(f"the server died during the run:\n{server.logfile.read_text()}")
                for sc in scs:
                    result["scenarios"][sc.name] = {
                        "describe": sc.describe, "target": sc.target, "example": sc.paths[0] if sc.paths else None,
                        "values": len(sc.paths), "check": checks.get(sc.name, {}),
                        "one_connection": summarise(runs[sc.name]["one"]),
                        "connections": summarise(runs[sc.name]["many"]), "runs": runs[sc.name]}
            finally:
                server.stop()
                log_tail = server.logfile.read_text()[-3000:]
                if log_tail.strip():
                    result["server_log_tail"] = log_tail
        else:
            scs = [sc for sc in scs if sc.name != "deep-page"]
            for sc in scs:
                result["scenarios"][sc.name] = {"describe": sc.describe, "target": sc.target,
                                                "example": sc.paths[0] if sc.paths else None}
    log("query plans (server stopped)")
    result["plans"] = plans(args.database_url, scs, deep_urls)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    return result


def replace_paths(sc: Scenario, paths: list[str]) -> Scenario:
    return Scenario(sc.name, sc.describe, sc.target, tuple(paths))


# -- the report ------------------------------------------------------------------------------------

def verdict(sc: dict[str, Any]) -> str:
    one = sc.get("one_connection") or {}
    if not one:
        return ""
    p50, p99 = one["p50_ms_median"], one["p99_ms_median"]
    if sc["target"] == "total":
        return f"< {TOTAL_P50_MS:.0f} ms: " + ("met" if p50 < TOTAL_P50_MS else f"MISSED ({p50 / TOTAL_P50_MS:.1f}x)")
    if sc["target"] in ("first-page", "deep"):
        ok50, ok99 = p50 < FIRST_PAGE_P50_MS, p99 < FIRST_PAGE_P99_MS
        txt = "met" if ok50 and ok99 else "MISSED (" + ", ".join(
            x for x in (None if ok50 else f"p50 {p50 / FIRST_PAGE_P50_MS:.1f}x",
                        None if ok99 else f"p99 {p99 / FIRST_PAGE_P99_MS:.1f}x") if x) + ")"
        return f"p50 < {FIRST_PAGE_P50_MS:.0f}, p99 < {FIRST_PAGE_P99_MS:.0f} ms: {txt}"
    return ""


def markdown(result: dict[str, Any]) -> str:
    cfg, db, mach = result["config"], result["database"], result["machine"]
    src = result.get("source", {})
    lines = [f"## fhir-ctms search benchmark, {result['started']}", "",
             f"Data: `bench/generate_ctms.py --scale {result['data']['scale']} --seed {result['data']['seed']}` "
             f"({result['data']['total']:,} resources loaded with `fhir-ctms import`); database {db['engine']}, "
             f"{db['bytes'] / 1e6:,.0f} MB, {sum(db['resources_by_type'].values()):,} rows in `resources` "
             f"(audit records included), index rows "
             + ", ".join(f"{k} {v:,}" for k, v in db["index_rows"].items() if v) + "; planner statistics: "
             + (f"{db['sqlite_stat1_rows']} sqlite_stat1 rows" if "sqlite_stat1_rows" in db else "see last_analyzed")
             + (" (ANALYZE run before)" if cfg["analyze"] else "") + ".", "",
             f"Server code: commit {src.get('commit')}"
             + (" with uncommitted changes in fhir_ctms/" if src.get("fhir_ctms_modified") else "")
             + f" (sources sha256 {src.get('fhir_ctms_sha256')}). {mach['cpu']}, {mach['nproc']} CPUs; server on CPU "
             f"{cfg['server_cpu']} (uvicorn, 1 worker, {cfg['uvicorn']}), wrk on CPU {cfg['client_cpu']}; "
             f"{cfg['runs']} runs of >= {cfg['duration_s']} s per scenario and concurrency (at least "
             f"{cfg['min_requests']} requests, at most {cfg['max_duration_s']} s), medians; load average "
             f"{mach['loadavg_at_start'][0]:.1f} at the start, {mach.get('loadavg_at_end', [0])[0]:.1f} at the end.",
             "",
             "p50, p99, req/s: wrk with one connection (a request on an idle server: the targets are judged on these); "
             f"'{cfg['connections']} conn': wrk with {cfg['connections']} connections (throughput; latency includes "
             "queueing). CPU ms/req: the server's CPU time per request. SQL ms: the page's SQL alone, in-process "
             "(median of 5; SQLite: sqlite3, PostgreSQL: EXPLAIN ANALYZE). Matches: `_summary=count` of the first "
             "values.", "",
             "| scenario | example | matches | p50 ms | p99 ms | req/s | req/s, p50 ms at "
             f"{cfg['connections']} conn | CPU ms/req | SQL ms | errors | target |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, sc in result["scenarios"].items():
        one, many = sc.get("one_connection") or {}, sc.get("connections") or {}
        chk = sc.get("check") or {}
        matches = chk.get("matches_of_first_values")
        if name == "deep-page":
            matches = ", ".join(w["base"] for w in chk.get("walks", []))
        elif matches:
            matches = "/".join(f"{m:,}" for m in matches if m is not None)
        plan = result.get("plans", {}).get(name, {})
        sql_ms = next((s["ms_median"] for s in plan.get("statements", []) if s["label"] == "page"), None)
        extra = [s for s in plan.get("statements", []) if s["label"] != "page" and s.get("ms_median") is not None]
        sql = (f"{sql_ms:,.1f}" if sql_ms is not None else "-") + "".join(
            f" + {s['ms_median']:,.1f}" for s in extra)
        example = (sc.get("example") or "").replace("|", "%7C")
        if len(example) > 90:
            example = example[:87] + "..."
        if one:
            lines.append(f"| {name} | `{example}` | {matches or '-'} | {one['p50_ms_median']:,.2f} | "
                         f"{one['p99_ms_median']:,.2f} | {one['rps_median']:,.1f} | {many['rps_median']:,.1f}, "
                         f"{many['p50_ms_median']:,.1f} | {one['server_cpu_ms_per_request_median']:,.2f} | {sql} | "
                         f"{one['errors'] + many['errors']} | {verdict(sc)} |")
        else:
            lines.append(f"| {name} | `{example}` | - | - | - | - | - | - | {sql} | - | - |")
    lines.append("")
    deep = (result["scenarios"].get("deep-page") or {}).get("check", {}).get("walks")
    if deep:
        lines.append("Deep page walks (httpx, sequential): " + "; ".join(
            f"{w['base']}: page 1 {w['page1_ms']} ms, page {DEEP_PAGES + 1} {w['page101_ms']} ms, median of all pages "
            f"{statistics.median(w['page_ms']):.1f} ms" for w in deep) + ".")
        lines.append("")
    if result.get("plans"):
        lines += [f"### Query plans ({db['engine']})", ""]
        for name, p in result["plans"].items():
            lines.append(f"#### {name}: `{p['path']}`")
            lines.append("")
            for s in p["statements"]:
                lines.append(f"{s['label']} ({s.get('rows', '-')} rows, {s['ms_median']} ms):")
                lines.append("")
                lines.append("```")
                lines += s["plan"]
                lines.append("```")
                lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("FHIR_CTMS_DATABASE_URL"),
                    help="the loaded database (default: $FHIR_CTMS_DATABASE_URL)")
    ap.add_argument("--data", help="bench/generate_ctms.py's output directory (samples.json, manifest.json)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", 5)),
                    help="seconds per run (default 5)")
    ap.add_argument("--max-duration", type=float, default=60, help="at most this many seconds per run (default 60)")
    ap.add_argument("--min-requests", type=int, default=50, help="per run, if --max-duration allows (default 50)")
    ap.add_argument("--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP", 2)))
    ap.add_argument("--connections", type=int, default=8, help="connections of the throughput runs (default 8)")
    ap.add_argument("--values", type=int, default=200, help="parameter values per scenario (default 200)")
    ap.add_argument("--count-values", type=int, default=3, help="values whose matches are counted (default 3)")
    ap.add_argument("--deep-walks", type=int, default=4, help="large results walked for the deep page (default 4)")
    ap.add_argument("--scenarios", help="comma-separated subset of: " + ", ".join(
        s.name for s in scenarios({"systems": {"subject_id": "", "nct": ""}, "sites": [], "studies": [],
                                   "patients": [], "months": []}, 0)))
    ap.add_argument("--analyze", action="store_true", help="run ANALYZE on the database first (changes it)")
    ap.add_argument("--plans-only", action="store_true", help="no server, no load: the query plans only")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="print the Markdown report of a results file")
    args = ap.parse_args()
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return
    if not args.database_url or not args.data:
        ap.error("--database-url (or FHIR_CTMS_DATABASE_URL) and --data are required")
    if not args.plans_only and subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        raise SystemExit("wrk is not installed (bench/run-all.sh installs it: Debian's 'wrk' package)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result = run(args)
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    stamp = datetime.fromisoformat(result["started"]).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=1, default=str)
    path = RESULTS_DIR / f"search-{stamp}.json"
    path.write_text(text)
    (RESULTS_DIR / "search-latest.json").write_text(text)
    md = markdown(result)
    (RESULTS_DIR / "search-latest.md").write_text(md + "\n")
    log(f"results written to {path} ({result['elapsed_s']} s)")
    print(md)


if __name__ == "__main__":
    main()
