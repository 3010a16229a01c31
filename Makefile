# Two commands on a fresh machine:
#   make run    installs the server into .venv and runs it on embedded SQLite
#   make test   installs the development tools and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# The PostgreSQL half of the suite runs against this server; set it to an
# empty value to skip those tests on a machine without PostgreSQL.
SCOREBOARD_TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
export SCOREBOARD_TEST_DATABASE_URL

# The live page is tested in a real headless Chromium: Debian's package,
# driven by Playwright, rather than a browser Playwright downloads itself.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install dev browser run test lint format bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# If the install fails the suite still runs, and the browser test fails.
# HAProxy runs the load balancer of deploy/compose.yaml in tests/test_deploy.py
# (its tests skip without it).
browser:
	-@command -v chromium >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1 || { \
		echo "installing Debian's chromium and haproxy for the browser and deploy tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium haproxy >/dev/null; }

run: install
	$(BIN)/scoreboard serve

test: dev browser
	$(BIN)/pytest

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy server
	$(BIN)/hadolint Dockerfile

format: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: dev
	$(BIN)/python -m loadtest.run_all

# A long search for bad input on both stores: the property-based input tests
# and schemathesis against GET /openapi.json, with FUZZ_EXAMPLES examples per
# test or operation (the suite runs a few dozen).
FUZZ_EXAMPLES ?= 2000
fuzz: dev
	SCOREBOARD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_openapi.py tests/test_fuzz_inputs.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
