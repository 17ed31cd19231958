# Everything runs from a project-local virtualenv that `make` creates on first use, so a fresh
# machine needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

# The image's name; for a release, your registry's: make image IMAGE=registry.example.com/keruta-harvester:0.1.0
IMAGE  ?= keruta-harvester:latest
# podman, else docker: whichever is installed.
ENGINE ?= $(shell command -v podman || command -v docker)

.PHONY: demo test test-fast cluster lint pytest fmt bench clean image image-test lock

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

## image: build the image from the Dockerfile on debian:bookworm-slim (pulled from the registry)
image:
	@test -n "$(ENGINE)" || { echo "image: neither podman nor docker is installed"; exit 2; }
	$(ENGINE) build --tag $(IMAGE) .

## image-test: build the Dockerfile on a bookworm made here with mmdebstrap, run it as a cluster does, check it
# (tests/image/check.sh; needs podman and mmdebstrap, which .ci/run installs). That base and the
# image built on it carry this machine's CA store: they stay in a podman storage under
# ~/.cache/keruta-harvester/image, named localhost/...; never tag them for a registry or push them.
image-test: $(STAMP)
	tests/image/check.sh

## lock: pin pyproject.toml's runtime dependencies, with hashes, into requirements.lock (the image installs those; LOCK_ARGS=--upgrade for the newest)
lock: $(STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
		--strip-extras --no-emit-find-links --no-emit-index-url $(LOCK_ARGS) \
		--output-file=requirements.lock pyproject.toml

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
