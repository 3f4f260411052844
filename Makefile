# opsflow: the two commands are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test install system-deps lint unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c 'from deployments.up import make_db_template; make_db_template()'
	touch $@

install: $(BIN)/.installed

## make up: start (or reuse) a Prefect server and serve every deployment of prefect.yaml
up: install
	$(BIN)/opsflow up

## make test: install what the tests need, lint, and run the whole suite
test: install system-deps lint
	$(BIN)/pytest --durations=25 tests

system-deps:
	bash scripts/install-system-deps.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest tests/unit

## make bench: run every benchmark and print ratios against the shell baselines
bench: install system-deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .opsflow .mypy_cache .ruff_cache
