# stockstreamer — `make run` runs the stack, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test lint format typecheck migrate psql bench capacity clean

help:
	@echo "make run      create .venv, install, run the whole stack (embedded PostgreSQL unless DATABASE_URL)"
	@echo "make test     install, lint, and run every test"
	@echo "make lint     ruff + mypy"
	@echo "make migrate  apply database migrations"
	@echo "make psql     a psql shell on the database in use"
	@echo "make bench    run the benchmarks (see BENCHMARKS.md; SCALE=full for the big data set)"
	@echo "make capacity the API under load: 10,000 streams, REST beside 1,000 streams, a ramp;"
	@echo "              CPU per process (about 12 minutes; CAPACITY_ARGS='--steps rest' or '--quick')"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs from the pinned lock file; re-runs when the pins or the project metadata change.
$(STAMP): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[local,dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m services.runner run

migrate: install
	$(BIN)/python -m services.runner migrate

psql: install
	$(BIN)/python -m services.runner psql

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

SCALE ?= default
bench: install
	$(BIN)/python -m bench --scale $(SCALE)

capacity: install
	$(BIN)/python -m bench.capacity $(CAPACITY_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Deployment linters that cannot share the project's pins (checkov) get a venv of their own.
TOOLS := $(VENV)/tools

$(TOOLS)/.installed: deploy/tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/tools.lock
	@touch $@

.PHONY: tools
tools: $(TOOLS)/.installed
