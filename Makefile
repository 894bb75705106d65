# The one entry point. Every target installs what it needs from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check
export PYTHONDONTWRITEBYTECODE := 1
CODE := $(wildcard src tests benchmarks)

.PHONY: help install test lint typecheck unit property integration demo bench bench-quick fmt clean

help:
	@echo "make test    lint, type check, unit, property and integration tests"
	@echo "make demo    the seeds' scenario end to end on a local mesh"
	@echo "make bench   side-by-side benchmarks (meshlet, Envoy, HAProxy, direct)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip 2>/dev/null
	$(BIN)/pip install $(PIP_QUIET) -e '.[test,bench,torch]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import meshlet, cryptography, uvloop, httptools, pydantic, pytest"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

property: $(STAMP)
	$(BIN)/pytest -q tests/property

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test: lint typecheck
	$(BIN)/pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m meshlet.mesh.demo

bench: $(STAMP)
	$(BIN)/meshlet bench --out bench-results

bench-quick: $(STAMP)
	$(BIN)/meshlet bench --quick --out bench-results/quick

fmt: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
