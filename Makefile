# Everything runs from a project-local virtualenv that `make` creates on first use, so a fresh
# machine needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test test-fast cluster lint pytest fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## demo: start dev-api on loopback, harvest examples/doc, show what the server received
demo: $(STAMP)
	$(BIN)/harvester demo

## test: lint, type-check, build the real control plane when Go is here, run every test (CI)
test: lint cluster pytest

## test-fast: the same without the real control plane (kmock only)
test-fast: lint
	KERUTA_SKIP_CLUSTER=1 $(BIN)/pytest

## cluster: build kube-apiserver, kube-controller-manager, kubectl and etcd (first time ~8 min; then under a second)
cluster:
	@if command -v go >/dev/null 2>&1; then \
		tests/cluster/build.sh; \
	else \
		echo "cluster: no Go toolchain; the real control-plane and kubectl tests are skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

## bench: harvester vs wrk/curl vs the old agent (BENCH_ARGS="--quick" for a short run)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
