# One entry point for people and CI. `make serve` and `make test` are the README's
# two commands: each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast engine lint check bench default-model proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/mlapi serve

# Every tier, the e2e tier on a real Docker engine included (scripts/test-engine.sh
# starts one, and builds the local images it needs, when there is none).
test: $(VENV)/.installed-test engine
	$(BIN)/python -m pytest

# unit, service and process tiers only: no Docker needed.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not e2e"

engine: $(VENV)/.installed-test
	scripts/test-engine.sh $(BIN)/python

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy

check: test lint

# The side-by-side benchmark (not a test): needs wrk; peers' venvs come from
# bench/setup_peers.sh. Writes bench/results/; with a Docker engine running, also
# measures the production image and its start to healthy (bench/deployment.py).
bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q matplotlib
	bench/setup_peers.sh
	$(BIN)/python bench/run.py

# After a change to a .proto in src/mlapi/rpc: their compiled descriptors.
proto: $(VENV)/.installed-test
	$(BIN)/python scripts/make_proto.py

default-model: $(VENV)/.installed-test
	$(BIN)/python scripts/make_default_model.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
