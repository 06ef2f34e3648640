VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/usage demo

test: $(STAMP)
	bash .ci/need-chromium
	bash .ci/need "the metrics tests" "prometheus prometheus-pushgateway promtool" "prometheus prometheus-pushgateway"
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check etl api tests
	$(VENV)/bin/ruff format --check etl api tests
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix etl api tests
	$(VENV)/bin/ruff format etl api tests

bench: $(STAMP)
	bash .ci/need "the benchmark" wrk wrk
	$(PY) -m tests.bench.bench --size $(or $(SIZE),standard)
