# One entry point for people and CI. `make serve` and `make test` are the README's
# two commands: each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast engine lint check bench default-model proto clean fuzz fuzz-ci mutate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@ $(VENV)/.installed

# checkov and kubernetes-validate (the Kubernetes manifests' tests) pin dependencies
# of their own: a venv of their own.
K8S_TOOLS ?= .venv-k8s
$(K8S_TOOLS)/.installed:
	$(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/python -m pip install -q "checkov==3.3.30" "kubernetes-validate==1.37.0"
	touch $@

serve: $(VENV)/.installed
	$(BIN)/mlapi serve

# Every tier, the e2e tier on a real Docker engine included (scripts/test-engine.sh
# starts one, and builds the local images it needs, when there is none).
test: $(VENV)/.installed-test $(K8S_TOOLS)/.installed engine
	$(BIN)/python -m pytest

# unit, service and process tiers only: no Docker needed.
test-fast: $(VENV)/.installed-test $(K8S_TOOLS)/.installed
	$(BIN)/python -m pytest -m "not e2e"

engine: $(VENV)/.installed-test
	scripts/test-engine.sh $(BIN)/python

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests scripts bench fuzz
	$(BIN)/ruff format --check src tests scripts bench fuzz
	$(BIN)/mypy

check: test lint

# Mutation testing (mutmut) of the modules that hold the README's rules, each against
# its tests, with a score per module (scripts/mutate.py; not part of CI: minutes).
mutate: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q "mutmut>=3.3"
	$(BIN)/python scripts/mutate.py

# Coverage-guided fuzzing (atheris) of the binary tensor framing, the V2 JSON codec,
# the gRPC message decoder and the tar publish reader, each for FUZZ_S seconds from
# its committed seed corpus, a new random seed each run (new finds go to a scratch
# folder, not the corpus). A crash leaves its input as crash-* here and fails the
# run: make it a seed in fuzz/corpus/<target>/ and a unit test.
# fuzz-ci is what CI runs: the same targets for 60 s each on a fixed seed (FUZZ_SEED),
# so that CI tries the same inputs in the same order every time (how far it gets
# depends on the machine's speed) and a change fails it for what the change did, not
# for what a random seed happened to find that day.
FUZZ_S ?= 60
FUZZ_SEED ?= 20261206
FUZZ_OPTIONS = -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
define fuzz_one
	work=$$(mktemp -d); \
	echo "fuzz: $$target $(1)"; \
	PYTHONHASHSEED=0 $(BIN)/python fuzz/targets.py $$target $(1) $(FUZZ_OPTIONS) \
		$$work fuzz/corpus/$$target > $$work.log 2>&1 \
		|| { tail -40 $$work.log; rm -rf $$work $$work.log; exit 1; }; \
	grep -E "^stat::number_of_executed_units|^Done" $$work.log | tail -1; \
	rm -rf $$work $$work.log
endef
fuzz: $(VENV)/.installed-test
	@for target in binary json grpc tar; do \
		$(call fuzz_one,-max_total_time=$(FUZZ_S)); \
	done
# Two targets at a time, one core each (each is one process): 2 minutes, not 4.
fuzz-ci: $(VENV)/.installed-test
	@for pair in "binary json" "grpc tar"; do \
		pids=""; \
		for target in $$pair; do \
			( $(call fuzz_one,-seed=$(FUZZ_SEED) -max_total_time=60) ) & pids="$$pids $$!"; \
		done; \
		for pid in $$pids; do wait $$pid || exit 1; done; \
	done

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
