"""The benchmark driver: servers pinned to one core, wrk pinned to the other, medians of several runs.

For each database (SQLite in a fresh temporary file; PostgreSQL at
``FHIR_CTMS_TEST_POSTGRES_URL``, as exported by ``scripts/with-postgres``) it

1. starts the fhir-ctms app (which migrates the schema), then the floors the chosen
   scenarios need (``bench/floor_app.py``: ``floor-sqlalchemy``, the engine's pool with the
   statement on the driver connection; ``floor-raw``, the driver alone; ``floor-sqlite3``,
   sqlite3 on the event loop thread; ``floor-sqlalchemy-core``, through SQLAlchemy Core) and,
   for ``read-pool32``, ``bench/app_tuned.py``: every one ``uvicorn`` with one worker and the
   same options, pinned to the server core;
2. preloads through the API: a pool of Patients (``PUT /fhir/Patient/bench-p-NNNNN``,
   update-as-create) and one Patient with several versions for instance history, then
   checks that the floors return byte for byte what the app returns;
3. warms every scenario up, then runs ``BENCH_RUNS`` rounds, each round running every
   scenario once for ``BENCH_DURATION`` seconds (scenario order rotates from round to
   round, so slow drifts of a noisy machine hit every scenario alike);
4. keeps requests/s, p50 and p99 latency of every run (wrk), the server's CPU time per
   request (/proc), for PostgreSQL the cluster's CPU time and the sessions opened
   (pg_stat_database), and reports medians, and ratios against the floors measured in the
   same rounds; then counts database round trips per request (``bench/hops.py``).

Results go to ``bench/results/<timestamp>.json`` (and ``latest.json``); a Markdown
summary goes to stdout.  ``--profile`` instead runs py-spy on the servers during some
scenarios and summarises where the time goes; ``--report FILE`` prints the summary of
a results file again.

Configuration (environment): BENCH_PAIRS (20: paired 1-s bursts of read and its floor, 0: none),
BENCH_DATABASES (sqlite,postgresql), BENCH_DURATION (5),
BENCH_RUNS (5), BENCH_WARMUP (2), BENCH_CONNECTIONS (32), BENCH_THREADS (1),
BENCH_POOL_SIZE (1000), BENCH_HISTORY_VERSIONS (10), BENCH_SCENARIOS (DEFAULT_SCENARIOS),
BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1), BENCH_RESULTS_DIR (bench/results),
BENCH_ACCESS_LOG (0), BENCH_DB_CPU (PostgreSQL not pinned), BENCH_PROFILE_DURATION (15), BENCH_PROFILE_RATE (250),
BENCH_PROFILE_SCENARIOS (floor-sqlalchemy,read,history-type,create).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "lua"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


DURATION = env_int("BENCH_DURATION", 5)
RUNS = env_int("BENCH_RUNS", 5)
PAIRS = env_int("BENCH_PAIRS", 20)  # paired 1-s bursts of read and its floor (paired_bursts)
WARMUP = env_int("BENCH_WARMUP", 2)
CONNECTIONS = env_int("BENCH_CONNECTIONS", 32)
THREADS = env_int("BENCH_THREADS", 1)
POOL_SIZE = env_int("BENCH_POOL_SIZE", 1000)
HISTORY_VERSIONS = env_int("BENCH_HISTORY_VERSIONS", 10)
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
ACCESS_LOG = os.environ.get("BENCH_ACCESS_LOG", "0") == "1"
DB_CPU = os.environ.get("BENCH_DB_CPU", "")  # pin the PostgreSQL cluster to these CPUs (default: not pinned)
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", BENCH / "results"))
PROFILE_DURATION = env_int("BENCH_PROFILE_DURATION", 15)
PROFILE_RATE = env_int("BENCH_PROFILE_RATE", 250)

ID_FORMAT = "bench-p-%05d"
FLOOR_DRIVERS = ("sqlalchemy", "sqlalchemy-core", "raw", "sqlite3")  # bench/floor_app.py
#: measured unless BENCH_SCENARIOS says otherwise (floor-sqlalchemy-core: SQLAlchemy's execution
#: layer, which the server's storage no longer uses since 9c8ab21; opt in to measure it)
DEFAULT_SCENARIOS = ("floor-raw", "floor-sqlite3", "floor-sqlalchemy", "read", "history-instance", "history-type",
                     "create")
HISTORY_ID = "bench-history"

# targets (the brief): read >= 50 % of the SQLAlchemy floor and >= 5,000 req/s; create >= 800 req/s on SQLite
READ_FLOOR_RATIO = 0.5
READ_MIN_RPS = 5000.0
CREATE_MIN_RPS_SQLITE = 800.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the servers ----------------------------------------------------------------------------

def uvicorn_options() -> tuple[list[str], str]:
    opts, names = [], []
    for module, flag, value in (("uvloop", "--loop", "uvloop"), ("httptools", "--http", "httptools")):
        try:
            __import__(module)
        except ImportError:
            names.append(f"{flag} default ({module} not installed)")
        else:
            opts += [flag, value]
            names.append(f"{flag} {value}")
    return opts, ", ".join(names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    app: str
    port: int
    proc: subprocess.Popen
    logfile: Path
    url: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(name: str, app: str, url: str, workdir: Path, extra_env: dict[str, str] | None = None,
                 ready_path: str = "/fhir/metadata") -> Server:
    port = free_port()
    opts, _ = uvicorn_options()
    env = dict(os.environ, FHIR_CTMS_DATABASE_URL=url, PYTHONPATH=str(ROOT), **(extra_env or {}))
    cmd = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", *opts, "--log-level", "warning"]
    if not ACCESS_LOG:
        cmd.append("--no-access-log")
    logfile = workdir / f"{name}.log"
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logfile.open("wb"), stderr=subprocess.STDOUT)
    server = Server(name, app, port, proc, logfile, url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{logfile.read_text()}")
        try:
            r = httpx.get(server.base + ready_path, timeout=2)
            if r.status_code < 500:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not answer within 120 s:\n{logfile.read_text()}")


# -- the data -------------------------------------------------------------------------------

GIVEN = ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
FAMILY = ["Smith", "Martin", "Okafor", "Novak", "Garcia", "Jensen", "Rossi", "Tanaka", "Dubois", "Khan"]


def patient(i: int, rid: str | None = None) -> dict[str, Any]:
    """A Patient of about 700 bytes, like a trial participant's record."""
    p: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"use": "official", "system": "urn:oid:2.16.840.1.113883.2.4.6.3",
                        "value": f"{900000000 + i}"},
                       {"system": "https://example.org/ctms/subject", "value": f"SUBJ-{i:06d}"}],
        "active": True,
        "name": [{"use": "official", "family": FAMILY[i % 10], "given": [GIVEN[(i // 10) % 10], "Marie"]}],
        "telecom": [{"system": "phone", "value": f"+31 20 555 {i % 10000:04d}", "use": "home"},
                    {"system": "email", "value": f"participant{i}@example.org"}],
        "gender": ("female", "male", "other", "unknown")[i % 4],
        "birthDate": f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "address": [{"use": "home", "line": [f"{1 + i % 300} Keizersgracht"], "city": "Amsterdam",
                     "postalCode": f"{1000 + i % 9000}AB", "country": "NL"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl-NL"}]},
                           "preferred": True}],
    }
    if rid is not None:
        p["id"] = rid
    return p


async def preload(base: str) -> dict[str, Any]:
    t0 = time.monotonic()
    headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        sem = asyncio.Semaphore(8)

        async def put(i: int) -> None:
            rid = ID_FORMAT % i
            async with sem:
                r = await client.put(f"/fhir/Patient/{rid}", json=patient(i, rid), headers=headers)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"preload PUT {rid}: {r.status_code} {r.text[:300]}")

        await asyncio.gather(*(put(i) for i in range(1, POOL_SIZE + 1)))
        for v in range(1, HISTORY_VERSIONS + 1):
            body = patient(v, HISTORY_ID)
            body["name"][0]["text"] = f"version {v}"
            r = await client.put(f"/fhir/Patient/{HISTORY_ID}", json=body, headers=headers)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"preload history v{v}: {r.status_code} {r.text[:300]}")
        r = await client.get(f"/fhir/Patient/{HISTORY_ID}/_history")
        n = len(r.json().get("entry", []))
        if n != HISTORY_VERSIONS:
            raise RuntimeError(f"{HISTORY_ID} has {n} versions, expected {HISTORY_VERSIONS}")
        sizes = [len((await client.get(f"/fhir/Patient/{ID_FORMAT % i}")).content) for i in (1, 2, 3)]
    return {"patients": POOL_SIZE, "history_versions": HISTORY_VERSIONS, "seconds": round(time.monotonic() - t0, 1),
            "patient_bytes": sizes[0]}


def check_floors(app: Server, floors: list[Server]) -> None:
    """The floors must return the very bytes the app returns (else the comparison means nothing)."""
    for i in (1, POOL_SIZE // 2, POOL_SIZE):
        path = f"/fhir/Patient/{ID_FORMAT % i}"
        want = httpx.get(app.base + path).content
        for f in floors:
            r = httpx.get(f.base + path)
            if r.status_code != 200 or r.content != want:
                raise RuntimeError(f"{f.name} answers {path} with {r.status_code} and different bytes")


# -- wrk ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # app | floor-sqlalchemy | floor-sqlalchemy-core | floor-raw
    script: str
    path: str
    describe: str


SCENARIOS = [
    Scenario("floor-raw", "floor-raw", "read.lua", "/", "floor, raw driver: GET /fhir/Patient/<id> over the pool"),
    Scenario("floor-sqlalchemy-core", "floor-sqlalchemy-core", "read.lua", "/",
             "reference: SQLAlchemy engine, SELECT through its execution layer (Core)"),
    Scenario("floor-sqlite3", "floor-sqlite3", "read.lua", "/",
             "reference (SQLite): sqlite3 on the event loop thread, as the server's read sessions"),
    Scenario("floor-sqlalchemy", "floor-sqlalchemy", "read.lua", "/",
             "the floor: SQLAlchemy engine's pool, SELECT on the driver connection"),
    Scenario("read", "app", "read.lua", "/", "fhir-ctms read: GET /fhir/Patient/<id> over the pool"),
    Scenario("read-pool32", "app-pool32", "read.lua", "/",
             "experiment (bench/app_tuned.py): read with the engine's pool fixed at 32 connections, no overflow"),
    Scenario("history-instance", "app", "get.lua", f"/fhir/Patient/{HISTORY_ID}/_history",
             f"GET /fhir/Patient/<id>/_history ({HISTORY_VERSIONS} versions)"),
    Scenario("history-type", "app", "get.lua", "/fhir/Patient/_history?_count=50",
             "GET /fhir/Patient/_history?_count=50"),
    Scenario("create", "app", "create.lua", "/fhir/Patient",
             "POST /fhir/Patient (+ Provenance + AuditEvent in the same transaction)"),
]


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat_text: str) -> float:
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime and stime (fields 14 and 15 of proc(5))


def proc_stats(pid: int) -> dict[str, Any]:
    """CPU seconds of the process (its exited threads included) and of its main thread, and the
    context switches of its live threads."""
    out = {"cpu": _cpu_seconds(Path(f"/proc/{pid}/stat").read_text()),
           "main_cpu": _cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat").read_text()), "ctx": 0, "threads": 0,
           "tids": set()}
    for t in Path(f"/proc/{pid}/task").iterdir():
        out["tids"].add(t.name)
        try:
            status = (t / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        out["threads"] += 1
        for ln in status.splitlines():
            if ln.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                out["ctx"] += int(ln.split()[1])
    return out


def core_busy() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of every CPU, from /proc/stat."""
    out = {}
    for ln in Path("/proc/stat").read_text().splitlines():
        if ln.startswith("cpu") and ln[3:4].isdigit():
            name, *vals = ln.split()
            v = [int(x) for x in vals]
            idle = v[3] + v[4]  # idle + iowait
            out[name[3:]] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def pg_counters(url: str) -> dict[str, int] | None:
    """PostgreSQL's own counters for the database: sessions opened and transactions ended
    (the statistics are flushed at most once a second: good enough over a run of several)."""
    if not url.startswith("postgresql"):
        return None

    async def get() -> dict[str, int]:
        import asyncpg
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            row = await conn.fetchrow("SELECT sessions, xact_commit + xact_rollback AS xacts FROM pg_stat_database "
                                      "WHERE datname = current_database()")
            return dict(row)
        finally:
            await conn.close()
    try:
        return asyncio.run(get())
    except Exception:  # noqa: BLE001 - a missing figure, not a failed run
        return None


def postmaster(url: str) -> int | None:
    """The pid of the PostgreSQL postmaster listening on the URL's port (None for SQLite)."""
    if not url.startswith("postgresql"):
        return None
    port = url.rsplit(":", 1)[1].split("/")[0].encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"postgres") and b"-p" in cmd and port in cmd:
                return int(d.name)
    return None


def postgres_pids_of(master: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def db_stats(master: int | None) -> dict[str, Any]:
    """CPU seconds of a PostgreSQL cluster: the postmaster, its live children, and (cutime, cstime)
    the children it has reaped, so backends that end during a run are still counted."""
    try:
        fields = Path(f"/proc/{master}/stat").read_text().rsplit(")", 1)[1].split() if master else None
    except OSError:  # the cluster is gone: the run fails on its own (wrk errors), report no figure here
        fields = None
    if fields is None:
        return {"cpu": None, "pids": set()}
    cpu = sum(int(x) for x in fields[11:15]) / TICK  # utime, stime, cutime, cstime
    pids = set(postgres_pids_of(master))
    for pid in pids:
        try:
            cpu += _cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            pass
    return {"cpu": cpu, "pids": pids}


def wrk(base: str, sc: Scenario, seconds: int, body_file: Path, server: Server | None = None) -> dict[str, Any]:
    env = dict(os.environ, BENCH_LUA_DIR=str(LUA), BENCH_ID_FORMAT=ID_FORMAT, BENCH_ID_COUNT=str(POOL_SIZE),
               BENCH_BODY_FILE=str(body_file))
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s",
           "--timeout", "10s", "--latency", "-s", str(LUA / sc.script), base + sc.path]
    master = postmaster(server.url) if server else None
    pg0 = pg_counters(server.url) if server else None
    before, cores0, db0 = (proc_stats(server.proc.pid), core_busy(), db_stats(master)) if server else (None,) * 3
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    after, cores1, db1 = (proc_stats(server.proc.pid), core_busy(), db_stats(master)) if server else (None,) * 3
    if pg0 is not None:
        time.sleep(1.1)  # let the backends flush their statistics
    pg1 = pg_counters(server.url) if server else None
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    res = json.loads(line.removeprefix("BENCH_JSON "))
    res["wrk_output"] = out.stdout.split("BENCH_JSON")[0].rstrip()
    if before and after:
        wall = res["duration_us"] / 1e6
        cpu, main = after["cpu"] - before["cpu"], after["main_cpu"] - before["main_cpu"]
        n = max(res["requests"], 1)

        def busy(core: str) -> float:
            b, t = cores1[core][0] - cores0[core][0], cores1[core][1] - cores0[core][1]
            return round(100 * b / t, 1) if t else 0.0
        res["server"] = {"cpu_pct": 100 * cpu / wall, "main_thread_cpu_pct": 100 * main / wall,
                         "other_threads_cpu_pct": 100 * (cpu - main) / wall, "threads": after["threads"],
                         "cpu_us_per_request": 1e6 * cpu / n,
                         "ctx_switches_per_request": (after["ctx"] - before["ctx"]) / n,
                         "server_core_busy_pct": busy(SERVER_CPU), "client_core_busy_pct": busy(CLIENT_CPU)}
        # SQLite: every aiosqlite connection has a thread of its own; PostgreSQL: a backend process
        res["server"]["new_threads"] = len(after["tids"] - before["tids"])
        if master is not None and db0["cpu"] is not None and db1["cpu"] is not None:
            res["server"]["db_cpu_pct"] = 100 * (db1["cpu"] - db0["cpu"]) / wall
            res["server"]["db_cpu_us_per_request"] = 1e6 * (db1["cpu"] - db0["cpu"]) / n
            res["server"]["new_db_backends"] = len(db1["pids"] - db0["pids"])
        if pg0 and pg1:
            # minus the monitoring connection itself
            res["server"]["db_sessions_opened"] = pg1["sessions"] - pg0["sessions"] - 1
            res["server"]["db_transactions_per_request"] = (pg1["xacts"] - pg0["xacts"] - 1) / n
    return res


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    return {
        "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
        "p50_ms_median": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99_ms_median": statistics.median(r["p99_us"] for r in runs) / 1000,
        "errors": sum(sum(r["errors"].values()) for r in runs),
        **{f"server_{k}_median": statistics.median(r["server"][k] for r in runs if k in r.get("server", {}))
           for k in ("cpu_pct", "main_thread_cpu_pct", "other_threads_cpu_pct", "cpu_us_per_request",
                     "ctx_switches_per_request", "server_core_busy_pct", "client_core_busy_pct",
                     "db_cpu_pct", "db_cpu_us_per_request", "new_threads", "new_db_backends",
                     "db_sessions_opened", "db_transactions_per_request")
           if any(k in r.get("server", {}) for r in runs)},
        "requests": sum(r["requests"] for r in runs),
    }


def pin_database(url: str) -> None:
    master = postmaster(url)
    if DB_CPU and master is not None:
        # backends forked later inherit the postmaster's affinity
        subprocess.run(["taskset", "-a", "-c", "-p", DB_CPU, str(master)], check=True, capture_output=True)
        for pid in postgres_pids_of(master):
            subprocess.run(["taskset", "-a", "-c", "-p", DB_CPU, str(pid)], capture_output=True)
        log(f"PostgreSQL pinned to CPU {DB_CPU}")


def run_database(db: str, url: str, workdir: Path, scenarios: list[Scenario]) -> dict[str, Any]:
    log(f"{db}: starting the servers on CPU {SERVER_CPU} ({url})")
    pin_database(url)
    servers: dict[str, Server] = {}
    source = source_fingerprint()
    try:
        servers["app"] = start_server(f"{db}-app", "fhir_ctms.api.asgi:app", url, workdir)
        log(f"{db}: preloading {POOL_SIZE} Patients and {HISTORY_VERSIONS} versions of {HISTORY_ID}")
        data = asyncio.run(preload(servers["app"].base))
        log(f"{db}: preloaded in {data['seconds']} s")
        ready = f"/fhir/Patient/{ID_FORMAT % 1}"
        scenarios = [sc for sc in scenarios if sc.name != "floor-sqlite3" or db == "sqlite"]
        for driver in FLOOR_DRIVERS:
            if any(sc.server == f"floor-{driver}" for sc in scenarios):
                servers[f"floor-{driver}"] = start_server(f"{db}-floor-{driver}", "bench.floor_app:app", url,
                                                          workdir, {"BENCH_FLOOR_DRIVER": driver}, ready)
        if any(sc.server == "app-pool32" for sc in scenarios):
            servers["app-pool32"] = start_server(f"{db}-app-pool32", "bench.app_tuned:app", url, workdir)
        check_floors(servers["app"], [s for name, s in servers.items() if name != "app"])
        body_file = workdir / "create-body.json"
        body_file.write_text(json.dumps(patient(424242)))
        runs: dict[str, list[dict[str, Any]]] = {sc.name: [] for sc in scenarios}
        if WARMUP > 0:
            log(f"{db}: warm-up, {WARMUP} s per scenario")
            for sc in scenarios:
                wrk(servers[sc.server].base, sc, WARMUP, body_file, servers[sc.server])
        for rnd in range(RUNS):
            order = scenarios[rnd % len(scenarios):] + scenarios[:rnd % len(scenarios)]
            for sc in order:
                res = wrk(servers[sc.server].base, sc, DURATION, body_file, servers[sc.server])
                res["round"] = rnd + 1
                runs[sc.name].append(res)
                log(f"{db}: round {rnd + 1}/{RUNS} {sc.name:21s} {res['rps']:9.1f} req/s  "
                    f"p50 {res['p50_us'] / 1000:7.2f} ms  p99 {res['p99_us'] / 1000:7.2f} ms"
                    + (f"  ERRORS {res['errors']}" if any(res["errors"].values()) else ""))
        paired = paired_bursts(db, scenarios, servers, body_file)
        for s in servers.values():
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} died during the run:\n{s.logfile.read_text()}")
        if source_fingerprint()["fhir_ctms_sha256"] != source["fhir_ctms_sha256"]:
            log(f"{db}: note: fhir_ctms/ changed during the run (the servers run the code they started with)")
        return {"url": url.split("@")[-1], "data": data, "version": database_version(url), "source": source,
                "scenarios": {name: {"describe": next(s.describe for s in scenarios if s.name == name),
                                     "summary": summarise(rs), "runs": rs}
                              for name, rs in runs.items()},
                "ratios": ratios(runs), "paired": paired}
    finally:
        for s in servers.values():
            s.stop()


def paired_bursts(db: str, scenarios: list[Scenario], servers: dict[str, Server], body_file: Path) -> dict[str, Any]:
    """read against its floor in ``BENCH_PAIRS`` back-to-back pairs of 1-s bursts (floor, then read),
    the ratio of each pair and their median and quartiles. On a shared machine the speed drifts
    by tens of percent within the seconds between two rounds' scenarios (per-round ratios of one
    build spread from 36% to 89%); two bursts a second apart see nearly the same machine."""
    floor = "floor-sqlite3" if db == "sqlite" else "floor-raw"
    by_name = {sc.name: sc for sc in scenarios}
    if PAIRS <= 0 or "read" not in by_name or floor not in by_name:
        return {}
    ratios_ = []
    for _ in range(PAIRS):
        f = wrk(servers[by_name[floor].server].base, by_name[floor], 1, body_file, servers[by_name[floor].server])
        r = wrk(servers["app"].base, by_name["read"], 1, body_file, servers["app"])
        ratios_.append(r["rps"] / f["rps"])
    q1, med, q3 = statistics.quantiles(ratios_, n=4)
    log(f"{db}: read/{floor} in {PAIRS} pairs of 1-s bursts: median {med:.1%} (quartiles {q1:.1%} - {q3:.1%})")
    return {f"read/{floor}": {"pairs": PAIRS, "median": med, "quartiles": [q1, q3], "ratios": ratios_}}


def ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Ratio of medians, and the median of the per-round ratios (pairs measured seconds apart)."""
    out = {}
    for num, den in (("read", "floor-sqlalchemy"), ("read", "floor-sqlite3"), ("read", "floor-raw"),
                     ("read-pool32", "read"),
                     ("read", "floor-sqlalchemy-core"), ("floor-sqlalchemy", "floor-raw"),
                     ("floor-sqlalchemy-core", "floor-raw")):
        if num in runs and den in runs and runs[num] and runs[den]:
            a, b = runs[num], runs[den]
            per_round = [x["rps"] / y["rps"] for x, y in zip(a, b)]
            out[f"{num}/{den}"] = {
                "ratio_of_medians": statistics.median(x["rps"] for x in a) / statistics.median(y["rps"] for y in b),
                "median_of_round_ratios": statistics.median(per_round),
                "round_ratios": per_round}
    return out


def source_fingerprint() -> dict[str, Any]:
    """Which server code ran: the commit, whether fhir_ctms/ differs from it, and a hash of its sources
    (taken when the servers start: they import everything then)."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted((ROOT / "fhir_ctms").rglob("*.py")):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True)
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("diff", "--quiet", "HEAD", "--", "fhir_ctms")
    return {"commit": head.stdout.strip() if head.returncode == 0 else None,
            "fhir_ctms_modified": dirty.returncode == 1 if head.returncode == 0 else None,
            "fhir_ctms_sha256": h.hexdigest()[:16]}


def round_trips(db: str, url: str) -> dict[str, Any]:
    """bench/hops.py: statements and driver round trips of one request per scenario (in-process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_HOPS_URL="" if db == "sqlite" else url)
    out = subprocess.run([sys.executable, str(BENCH / "hops.py")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        log(f"{db}: bench/hops.py failed: {out.stderr[-2000:]}")
        return {}
    return json.loads(out.stdout)


def database_version(url: str) -> str:
    if url.startswith("sqlite"):
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"

    async def pg() -> str:
        import asyncpg
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            return (await conn.fetchval("SHOW server_version")).split()[0]
        finally:
            await conn.close()
    return f"PostgreSQL {asyncio.run(pg())}"


# -- the machine ----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy", "aiosqlite", "asyncpg",
                 "orjson", "pydantic", "fhir.resources", "fhir-ctms"):
        try:
            libs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libs[name] = None
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)), "cpu": cpu,
            "kernel": platform.release(), "python": platform.python_version(), "libraries": libs,
            "sqlite": sqlite3.sqlite_version, "wrk": wrk_version.strip(), "loadavg_at_start": os.getloadavg()}


def database_urls(workdir: Path) -> list[tuple[str, str]]:
    wanted = [d.strip() for d in os.environ.get("BENCH_DATABASES", "sqlite,postgresql").split(",") if d.strip()]
    out = []
    for db in wanted:
        if db == "sqlite":
            out.append((db, f"sqlite+aiosqlite:///{workdir / 'bench.db'}"))
        elif db == "postgresql":
            url = os.environ.get("FHIR_CTMS_TEST_POSTGRES_URL")
            if not url:
                raise SystemExit("PostgreSQL: FHIR_CTMS_TEST_POSTGRES_URL is not set (run under scripts/with-postgres)")
            out.append((db, url))
        else:
            raise SystemExit(f"BENCH_DATABASES: unknown database {db!r}")
    return out


# -- the report -----------------------------------------------------------------------------

def markdown(result: dict[str, Any]) -> str:
    cfg, mach = result["config"], result["machine"]
    lines = [f"## fhir-ctms benchmark, {result['started']}", "",
             f"{mach['cpu']}, {mach['nproc']} CPUs, Python {mach['python']}; server on CPU {cfg['server_cpu']} "
             f"(uvicorn, 1 worker, {cfg['uvicorn']}, access log {'on' if cfg['access_log'] else 'off'}), "
             f"wrk on CPU {cfg['client_cpu']} (-t{cfg['threads']} -c{cfg['connections']}); {cfg['runs']} runs x "
             f"{cfg['duration_s']} s per scenario after {cfg['warmup_s']} s warm-up; medians. "
             f"Load average {mach['loadavg_at_start'][0]:.1f} at the start, "
             f"{mach.get('loadavg_at_end', [0])[0]:.1f} at the end. PostgreSQL CPUs: {cfg.get('db_cpu')}.", "",
             "req/s, p50, p99: wrk. server CPU: CPU time of the server process / wall time (100% = the whole core). "
             "CPU us/req: server CPU time per request; 'req/s per core' = 1e6 / that: what the server would do "
             "with its core to itself (less sensitive to the machine's other load than req/s).", ""]
    for db, r in result["databases"].items():
        sc = r["scenarios"]
        pg = any("server_db_cpu_us_per_request_median" in s["summary"] for s in sc.values())
        src = r.get("source", {})
        lines += [f"### {db} ({r['version']})", "",
                  f"Server code: commit {src.get('commit')}"
                  + (" with uncommitted changes in fhir_ctms/" if src.get("fhir_ctms_modified") else "")
                  + f" (sources sha256 {src.get('fhir_ctms_sha256')}); preload {r['data']['patients']} Patients, "
                  f"{r['data']['history_versions']} versions of one, {r['data']['patient_bytes']} bytes each.", "",
                  "| scenario | req/s (median) | min - max | p50 ms | p99 ms | server CPU | CPU us/req | req/s per core |"
                  + (" DB CPU us/req |" if pg else "") + " new DB connections per run | errors | vs. target |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if pg else "") + "---:|---:|---|"]
        for name, s in sc.items():
            m = s["summary"]
            cpu_us = m.get("server_cpu_us_per_request_median", 0)
            lines.append(f"| {name} | {m['rps_median']:,.0f} | {m['rps_min']:,.0f} - {m['rps_max']:,.0f} | "
                         f"{m['p50_ms_median']:.2f} | {m['p99_ms_median']:.2f} | "
                         f"{m.get('server_cpu_pct_median', 0):.0f}% | {cpu_us:,.0f} | "
                         f"{1e6 / cpu_us if cpu_us else 0:,.0f} | "
                         + (f"{m.get('server_db_cpu_us_per_request_median', 0):,.0f} | " if pg else "")
                         + f"{connections(db, name, m)} | {m['errors']} | {verdict(db, name, r)} |")
        lines.append("")
        rt = r.get("round_trips") or {}
        if rt:
            def trips(v: dict[str, Any]) -> str:
                if db == "sqlite":
                    inline = v.get("sqlite3_inline_statements", 0)
                    return (f"{v.get('aiosqlite_hops', 0)} aiosqlite thread hops"
                            + (f" + {inline} sqlite3 statements on the loop thread" if inline else ""))
                return f"{v.get('asyncpg_round_trips', 0)} asyncpg round trips"
            lines.append("Database round trips per request (bench/hops.py, one request in-process): "
                         + "; ".join(f"{name} {trips(v)}" for name, v in rt.items()
                                     if isinstance(v, dict) and name not in ("source",)) + ".")
            lines.append("")
        for key, v in r["ratios"].items():
            num, den = key.split("/")
            cn = sc[num]["summary"].get("server_cpu_us_per_request_median")
            cd = sc[den]["summary"].get("server_cpu_us_per_request_median")
            cpu = f"; by server CPU per request {cd / cn:.1%}" if cn and cd else ""
            lines.append(f"- {key}: {v['ratio_of_medians']:.1%} of the req/s (ratio of medians; per-round "
                         f"ratios {min(v['round_ratios']):.1%} - {max(v['round_ratios']):.1%}){cpu}")
        for key, v in (r.get("paired") or {}).items():
            lines.append(f"- {key} in {v['pairs']} pairs of 1-s bursts a second apart: median {v['median']:.1%} "
                         f"(quartiles {v['quartiles'][0]:.1%} - {v['quartiles'][1]:.1%})")
        lines.append("")
    return "\n".join(lines)


def connections(db: str, name: str, m: dict[str, Any]) -> str:
    """Connections opened during a run (median): PostgreSQL sessions (pg_stat_database, approximate),
    SQLite aiosqlite connections (each has a thread of its own: new threads of the server)."""
    key = "server_db_sessions_opened_median" if db == "postgresql" else "server_new_threads_median"
    return f"{m[key]:,.0f}" if key in m else "-"


def verdict(db: str, name: str, r: dict[str, Any]) -> str:
    rps = r["scenarios"][name]["summary"]["rps_median"]
    if name == "read":
        parts = []
        # the floor on the driver the read path uses: sqlite3 inline on SQLite, asyncpg on PostgreSQL
        floor = "floor-sqlite3" if db == "sqlite" else "floor-raw"
        ratio = r["ratios"].get(f"read/{floor}")
        paired = (r.get("paired") or {}).get(f"read/{floor}")
        if paired:  # the pairs a second apart: the measure the machine's drift moves least
            x = paired["median"]
            parts.append(f"{x:.0%} of {floor} (paired bursts): >= 50% {'met' if x >= READ_FLOOR_RATIO else 'MISSED'}")
        elif ratio:
            x = ratio["ratio_of_medians"]
            parts.append(f"{x:.0%} of {floor}: >= 50% {'met' if x >= READ_FLOOR_RATIO else 'MISSED'}")
        parts.append(f">= 5,000 req/s {'met' if rps >= READ_MIN_RPS else f'MISSED by {1 - rps / READ_MIN_RPS:.0%}'}")
        return "; ".join(parts)
    if name == "create" and db == "sqlite":
        return (f">= 800 req/s "
                f"{'met' if rps >= CREATE_MIN_RPS_SQLITE else f'MISSED by {1 - rps / CREATE_MIN_RPS_SQLITE:.0%}'}")
    return ""


# -- profiling ------------------------------------------------------------------------------

CATEGORIES = {  # by the first component of the frame's file path (py-spy prints paths relative to sys.path)
    "uvicorn": "uvicorn (HTTP protocol, Python side)", "h11": "uvicorn (HTTP protocol, Python side)",
    "fastapi": "FastAPI / Starlette", "starlette": "FastAPI / Starlette",
    "sqlalchemy": "SQLAlchemy", "greenlet": "SQLAlchemy",
    "aiosqlite": "aiosqlite (queueing to / waking its thread)", "asyncpg": "asyncpg",
    "pydantic": "validation (pydantic / fhir.resources)", "pydantic_core": "validation (pydantic / fhir.resources)",
    "fhir": "validation (pydantic / fhir.resources)", "fhir_core": "validation (pydantic / fhir.resources)",
    "fhir_ctms": "fhir_ctms (own code)", "floor_app.py": "bench floor app", "bench": "bench floor app",
    "asyncio": "asyncio / threading / stdlib", "threading.py": "asyncio / threading / stdlib",
    "queue.py": "asyncio / threading / stdlib", "contextlib.py": "asyncio / threading / stdlib",
    "typing.py": "asyncio / threading / stdlib", "functools.py": "asyncio / threading / stdlib",
}
# the innermost Python frame when uvloop/httptools C code runs (callbacks, socket I/O, HTTP parsing)
LOOP_C = "uvloop / httptools (C: event loop, sockets, HTTP parsing)"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m.group('func')} ({m.group('file')})" if m else frame


def category(frame: str, leaf: bool = False) -> str:
    m = _FRAME.match(frame)
    path = m.group("file") if m else frame
    if leaf and m and m.group("func") == "Runner.run" and path == "asyncio/runners.py":
        return LOOP_C
    return CATEGORIES.get(path.split("/")[0], "other: " + path.split("/")[0])


# functions whose inclusive share tells the story of a request
KEY_FUNCTIONS = [
    "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py)",
    "FhirRest.handle (fhir_ctms/api/rest.py)",
    "incoming (fhir_ctms/api/http.py)",
    "context (fhir_ctms/api/http.py)",
    "fhir_request (fhir_ctms/api/http.py)",
    "perform (fhir_ctms/interactions/table.py)",
    "InlineWriter.session (fhir_ctms/storage/sqlite_inline.py)",
    "SqlSession.current (fhir_ctms/storage/sql.py)",
    "read (fhir_ctms/interactions/read.py)",
    "create (fhir_ctms/interactions/create.py)",
    "validate_resource (fhir_ctms/resources/validate.py)",
    "check_required_bindings (fhir_ctms/resources/bindings.py)",
    "write (fhir_ctms/interactions/persist.py)",
    "_audit (fhir_ctms/interactions/persist.py)",
    "SqlSession.put (fhir_ctms/storage/sql.py)",
    "SqlSession.set_index (fhir_ctms/storage/sql.py)",
    "index_rows (fhir_ctms/search/index.py)",
    "append (fhir_ctms/audit/chain.py)",
    "render (fhir_ctms/api/http.py)",
    "app (floor_app.py)",
    "_sqlalchemy.<locals>.fetch (floor_app.py)",
    "AsyncConnection.execute (sqlalchemy/ext/asyncio/engine.py)",
    "AsyncConnection.start (sqlalchemy/ext/asyncio/engine.py)",
    "AsyncConnection.close (sqlalchemy/ext/asyncio/engine.py)",
    "AsyncConnection.__aexit__ (sqlalchemy/ext/asyncio/engine.py)",
    "AsyncTransaction.__aexit__ (sqlalchemy/ext/asyncio/engine.py)",
    "greenlet_spawn (sqlalchemy/util/concurrency.py)",
    "Connection._execute (aiosqlite/core.py)",
]


def analyse_profile(raw: Path, duration: float, rate: int) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks, sampled with --gil (only the thread holding the GIL):
    the share of samples by category of the innermost Python frame ("self"), by category
    anywhere on the stack ("inclusive"), by function, and the inclusive share of KEY_FUNCTIONS."""
    self_cat: collections.Counter[str] = collections.Counter()
    incl_cat: collections.Counter[str] = collections.Counter()
    self_func: collections.Counter[str] = collections.Counter()
    incl_func: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "main thread (event loop)"
        if frames[0].startswith("thread ("):
            if "MainThread" not in frames[0]:
                thread = "other threads (database driver workers)"
            frames = frames[1:]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        total += n
        threads[thread] += n
        self_cat[category(frames[-1], leaf=True)] += n
        self_func[_function(frames[-1])] += n
        for c in {category(f) for f in frames}:
            incl_cat[c] += n
        for f in {_function(f) for f in frames}:
            incl_func[f] += n

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1) if total else 0.0
    return {
        "samples": total,
        "gil_held_share": round(total / (duration * rate), 2),
        "threads_pct": {k: pct(v) for k, v in threads.most_common()},
        "self_by_category_pct": {k: pct(v) for k, v in self_cat.most_common()},
        "inclusive_by_category_pct": {k: pct(v) for k, v in incl_cat.most_common()},
        "self_top_functions_pct": [[k, pct(v)] for k, v in self_func.most_common(30)],
        "key_functions_inclusive_pct": {k: pct(incl_func[k]) for k in KEY_FUNCTIONS if incl_func.get(k)},
    }


def profile_database(db: str, url: str, workdir: Path) -> dict[str, Any]:
    """py-spy on each server during a wrk run: --gil (Python CPU time: the thread holding the GIL)
    and --nonblocking (the process is never stopped, so the profiler hardly slows it)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        raise SystemExit(f"py-spy is not installed: {Path(sys.executable).parent}/pip install py-spy")
    out: dict[str, Any] = {}
    servers: dict[str, Server] = {}
    pin_database(url)
    out["source"] = source_fingerprint()
    try:
        servers["app"] = start_server(f"{db}-app", "fhir_ctms.api.asgi:app", url, workdir)
        asyncio.run(preload(servers["app"].base))
        ready = f"/fhir/Patient/{ID_FORMAT % 1}"
        for driver in FLOOR_DRIVERS:
            if driver != "sqlite3" or db == "sqlite":
                servers[f"floor-{driver}"] = start_server(f"{db}-floor-{driver}", "bench.floor_app:app", url,
                                                          workdir, {"BENCH_FLOOR_DRIVER": driver}, ready)
        body_file = workdir / "create-body.json"
        body_file.write_text(json.dumps(patient(424242)))
        wanted = os.environ.get("BENCH_PROFILE_SCENARIOS", "floor-sqlalchemy,read,history-type,create")
        for sc in [s for s in SCENARIOS if s.name in wanted.split(",") and s.server in servers]:
            server = servers[sc.server]
            wrk(server.base, sc, WARMUP, body_file, server)
            plain = wrk(server.base, sc, PROFILE_DURATION, body_file, server)
            raw = RESULTS_DIR / f"profile-{db}-{sc.name}.txt"
            log(f"{db}: profiling {sc.name} for {PROFILE_DURATION} s (py-spy --gil --nonblocking, {PROFILE_RATE} Hz)")
            spy = subprocess.Popen([str(pyspy), "record", "--pid", str(server.proc.pid), "--rate", str(PROFILE_RATE),
                                    "--duration", str(PROFILE_DURATION), "--gil", "--nonblocking", "--threads",
                                    "--format", "raw", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.3)
            res = wrk(server.base, sc, PROFILE_DURATION, body_file, server)
            _, err = spy.communicate(timeout=PROFILE_DURATION + 60)
            if spy.returncode != 0 or not raw.exists():
                raise RuntimeError(f"py-spy failed: {err}")
            summary = analyse_profile(raw, PROFILE_DURATION, PROFILE_RATE)
            summary["without_profiler"] = {k: plain[k] for k in ("rps", "p50_us", "p99_us", "server")}
            summary["under_profiler"] = {k: res[k] for k in ("rps", "p50_us", "p99_us", "server")}
            out[sc.name] = summary
            log(f"{db}: {sc.name}: {plain['rps']:.0f} req/s plain, {res['rps']:.0f} under py-spy; "
                f"self by category {summary['self_by_category_pct']}")
        return out
    finally:
        for s in servers.values():
            s.stop()


def profile_markdown(profiles: dict[str, Any]) -> str:
    lines = []
    for db, scs in profiles.items():
        src = scs.get("source", {})
        lines += [f"## {db}: server code at commit {src.get('commit')}"
                  + (" with uncommitted changes in fhir_ctms/" if src.get("fhir_ctms_modified") else "")
                  + f" (sources sha256 {src.get('fhir_ctms_sha256')})", ""]
        for name, p in scs.items():
            if name == "source":
                continue
            srv = p["without_profiler"]["server"]
            lines += [f"### {db} / {name}: {p['without_profiler']['rps']:,.0f} req/s without the profiler, "
                      f"{p['under_profiler']['rps']:,.0f} under it",
                      "",
                      f"Server process CPU (from /proc, without the profiler): {srv['cpu_pct']:.0f}% of a core, "
                      f"main thread {srv['main_thread_cpu_pct']:.0f}%, other threads "
                      f"{srv['other_threads_cpu_pct']:.0f}%; {srv['cpu_us_per_request']:.0f} us CPU and "
                      f"{srv['ctx_switches_per_request']:.1f} context switches per request; "
                      f"the GIL was held {p['gil_held_share']:.0%} of the time.",
                      "", "| where (innermost Python frame, GIL held) | % |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in p["self_by_category_pct"].items() if v >= 0.5]
            lines += ["", "| inclusive: samples with this function on the stack (a lower bound: code run "
                      "inside SQLAlchemy's greenlet loses its outer frames) | % |", "|---|---:|"]
            lines += [f"| `{k}` | {v} |" for k, v in p["key_functions_inclusive_pct"].items()]
            lines.append("")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="store_true", help="profile the app with py-spy instead of measuring")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="print the Markdown report of a results file")
    args = ap.parse_args()
    if args.report:
        data = json.loads(Path(args.report).read_text())
        print(profile_markdown(data["profiles"]) if "profiles" in data else markdown(data))
        return
    if shutil.which("wrk") is None and not args.profile:
        raise SystemExit("wrk is not installed (bench/run-all.sh installs it)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    wanted = os.environ.get("BENCH_SCENARIOS")
    scenarios = [s for s in SCENARIOS if s.name in (wanted.split(",") if wanted else DEFAULT_SCENARIOS)]
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    _, loop_desc = uvicorn_options()
    with tempfile.TemporaryDirectory(prefix="fhir-ctms-bench.") as tmp:
        workdir = Path(tmp)
        if args.profile:
            result = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
                      "uvicorn": loop_desc, "profiles": {}}
            for db, url in database_urls(workdir):
                result["profiles"][db] = profile_database(db, url, workdir)
            path = RESULTS_DIR / f"profile-{stamp}.json"
            path.write_text(json.dumps(result, indent=2))
            (RESULTS_DIR / "profile-latest.json").write_text(json.dumps(result, indent=2))
            log(f"profile summary written to {path}")
            print(profile_markdown(result["profiles"]))
            return
        result = {
            "started": started.isoformat(timespec="seconds"), "machine": machine(),
            "config": {"duration_s": DURATION, "runs": RUNS, "warmup_s": WARMUP, "connections": CONNECTIONS,
                       "threads": THREADS, "pool_size": POOL_SIZE, "history_versions": HISTORY_VERSIONS,
                       "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU, "uvicorn": loop_desc,
                       "access_log": ACCESS_LOG, "db_cpu": DB_CPU or "not pinned"},
            "databases": {},
        }
        t0 = time.monotonic()
        for db, url in database_urls(workdir):
            result["databases"][db] = run_database(db, url, workdir, scenarios)
            result["databases"][db]["round_trips"] = round_trips(db, url)
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    (RESULTS_DIR / "latest.json").write_text(json.dumps(result, indent=2))
    log(f"results written to {path} ({result['elapsed_s']} s)")
    print(markdown(result))


if __name__ == "__main__":
    main()
