# Headwater: the two commands (`make demo`, `make test`) work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := ci/constraints.txt

.PHONY: demo test proto lint bench clean tools mutate

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/headwater demo

# Two workers, whole files each (module fixtures such as the demo's run once): most tests
# wait on brokers and servers they start, so two cores carry two at a time.
TEST_WORKERS ?= 2

test: $(VENV)/.installed tools
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Programs the page and manifest tests need (tests/support/tools.py): Chromium from Debian
# when root; kubectl has no registry package that renders deploy/k8s, its tests say so.
tools:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make tools: could not install chromium (the page tests will fail and say so)"
	@command -v kubectl >/dev/null || echo "make tools: kubectl is missing (the kubectl kustomize \
	comparisons will fail and say so; docs/testing.md)"

# Mutation testing of the core pure modules (docs/testing.md); not part of `make test`.
# MUTATE_ARGS: e.g. --ref HEAD (committed files) or --only rowmap validate.
mutate: $(VENV)/.installed
	$(PY) tests/mutation/mutate.py $(MUTATE_ARGS)

proto: $(VENV)/.installed
	$(PY) proto/generate.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy producers stream_processors query_service headwater

bench: $(VENV)/.installed
	$(PY) benchmarks/ingest.py

clean:
	rm -rf $(VENV) .headwater demo-output
