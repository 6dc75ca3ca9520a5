#!/usr/bin/env bash
# The whole benchmark: SQLite (a fresh file in a temporary directory) and PostgreSQL
# (a throwaway server from scripts/with-postgres), each scenario pinned as
#   server: taskset -c $BENCH_SERVER_CPU (default 0), uvicorn, 1 worker
#   client: taskset -c $BENCH_CLIENT_CPU (default 1), wrk
# Results: bench/results/<UTC timestamp>.json (and latest.json); a Markdown table on stdout.
# Knobs (environment): BENCH_DATABASES=sqlite,postgresql BENCH_DURATION=5 BENCH_RUNS=5
#   BENCH_WARMUP=2 BENCH_CONNECTIONS=32 BENCH_THREADS=1 BENCH_POOL_SIZE=1000
#   BENCH_HISTORY_VERSIONS=10 BENCH_SCENARIOS=<comma list> BENCH_ACCESS_LOG=0 BENCH_DB_CPU=<cpus>
#   BENCH_PAIRS=20 (read and its floor in paired 1-s bursts, after the rounds)
# Profiling instead of measuring: bench/run-all.sh --profile (installs py-spy into the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "wrk is missing: install Debian's 'wrk' package (needs root)" >&2
    exit 1
  fi
  echo "installing wrk (Debian package 'wrk')..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is missing" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
  echo "warning: $(nproc) CPU(s): the server and wrk will share a core" >&2
fi
"$PY" -c 'import httpx' 2>/dev/null || { echo "httpx is missing: run 'make install-test' first" >&2; exit 1; }

if [ "${1:-}" = "--profile" ] && [ ! -x "$(dirname "$PY")/py-spy" ]; then
  "$(dirname "$PY")/pip" install -q py-spy
fi

case ",${BENCH_DATABASES:-sqlite,postgresql}," in
  *,postgresql,*) exec scripts/with-postgres "$PY" bench/bench.py "$@" ;;
  *)              exec "$PY" bench/bench.py "$@" ;;
esac
