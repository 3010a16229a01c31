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

.PHONY: install dev run test lint format bench clean

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

run: install
	$(BIN)/scoreboard serve

test: dev
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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
