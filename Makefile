# Headwater: the two commands (`make demo`, `make test`) work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := ci/constraints.txt

.PHONY: demo test proto lint bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/headwater demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

proto: $(VENV)/.installed
	$(PY) proto/generate.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy producers stream_processors query_service headwater

bench: $(VENV)/.installed
	$(PY) benchmarks/ingest.py

clean:
	rm -rf $(VENV) .headwater demo-output
