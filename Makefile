# Two commands do all the set-up on a fresh Debian machine with Python 3.11+:
#   make run   - virtual environment, install, SQLite database, example study, serve on 127.0.0.1:8080
#                (serve --dev: no authorization, so no token is needed)
#   make test  - test dependencies, Debian's chromium (browser tests), a throwaway PostgreSQL server,
#                the whole suite on SQLite AND PostgreSQL
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test install install-test serve bench clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/fhir-ctms db upgrade
	$(BIN)/fhir-ctms import --quiet --skip-existing examples/*.json
	$(BIN)/fhir-ctms serve --dev --host $(HOST) --port $(PORT)

test: install-test
	scripts/ensure-chromium
	scripts/ensure-fhirclient-js
	scripts/with-postgres $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	bench/run-all.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache fhir-ctms.db fhir-ctms.db-wal fhir-ctms.db-shm
