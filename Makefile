PY ?= python3
LAB ?= .cmglab

.PHONY: install test lint typecheck check lab

install:  # the lab alone needs no extra (`pip install .`); this adds the test suite's tools (dev + e2e)
	$(PY) -m pip install -e ".[test]"

.PHONY: dev compose-e2e
dev:  # lint, type checks, unit tests only
	$(PY) -m pip install -e ".[dev]"

compose-e2e:  # the compose lab on a private Docker engine (root; tools/docker-engine/)
	$(PY) -m pytest -q -s -m docker_engine tests/test_compose_engine.py

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

check: lint typecheck test

lab:
	cmglab init --lab $(LAB)

.PHONY: bench
bench:
	$(PY) -m cmglab bench --out bench/results

.PHONY: reliability
reliability:
	$(PY) -m cmglab.tools.reliability --out reliability/results $(if $(BUDGET),--budget $(BUDGET))
	$(PY) -m cmglab.tools.reliability.underload --out reliability/results $(if $(DEVICES),--devices $(DEVICES))
