PY ?= python3
LAB ?= .cmglab

.PHONY: install test lint typecheck check lab

install:
	$(PY) -m pip install -e ".[test]"

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .

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
