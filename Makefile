# callqos — every set-up step lives here, so a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := $(VENV)/bin/buf
PROTOS := $(shell find protos -name '*.proto' | sort)
PY_GEN_ROOT := clients/python
PY_GEN_DIR := $(PY_GEN_ROOT)/callqos/v1
# The retry and resume policy of all four clients (clients/README.md), and the copies each client
# ships; `make generate` writes them, `make check-generated` fails when one differs.
POLICY := clients/service_config.json
PY_POLICY := $(PY_GEN_ROOT)/callqos/client/service_config.json
POLICY_COPIES := $(PY_POLICY) clients/go/callqos/service_config.json clients/node/src/service_config.json
# Client sub-projects that have their own Makefile with `generate` and `test` targets.
CLIENT_DIRS := $(sort $(dir $(wildcard clients/*/Makefile)))

.PHONY: help
help:
	@echo "make run        serve on the embedded defaults (127.0.0.1:50051, SQLite under ./callqos-data)"
	@echo "make test       install everything needed and run every test"
	@echo "make bench      benchmarks, with ratios against a bare grpc.aio baseline measured in the same run"
	@echo "make generate   regenerate all code from protos/"
	@echo "make lint       buf lint + buf format check, ruff check + ruff format check"

# The virtual environment; reinstalled whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(STAMP)

.PHONY: run
run: $(STAMP)
	$(VENV)/bin/callqos serve

.PHONY: generate generate-python
generate: generate-python
	@for d in $(CLIENT_DIRS); do $(MAKE) -C $$d generate; done

# Python stubs for the published API, inside the client package (the server depends on them),
# and the Python client's copy of the retry and resume policy.
generate-python: $(STAMP)
	rm -rf $(PY_GEN_DIR)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PY_GEN_ROOT) --pyi_out=$(PY_GEN_ROOT) \
	  --grpc_python_out=$(PY_GEN_ROOT) $(PROTOS)
	cp $(POLICY) $(PY_POLICY)

# Fails when the checked-in Python stubs differ from what protos/ generates now, or a client's
# copy of the policy differs from $(POLICY) (the Go and TypeScript clients' own check-generated
# check their generated code too; Java copies the policy at build time and checks in nothing).
.PHONY: check-generated
check-generated: $(STAMP)
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS); \
	diff -r $$tmp/callqos/v1 $(PY_GEN_DIR) || { echo "generated Python code drifted from protos/: run 'make generate'"; exit 1; }
	for copy in $(POLICY_COPIES); do \
	  diff $(POLICY) $$copy || { echo "$$copy drifted from $(POLICY): run 'make generate'"; exit 1; }; \
	done

.PHONY: lint
lint: $(STAMP)
	$(BUF) lint protos
	$(BUF) format -d --exit-code protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: typecheck
typecheck: $(STAMP)
	$(VENV)/bin/mypy server/callqos clients/python/callqos/client clients/python/callqos/cli conformance/callqos
	$(VENV)/bin/mypy --strict clients/python/callqos/client

.PHONY: test test-python test-clients
test: lint check-generated typecheck test-python test-clients

test-python: $(STAMP)
	$(PY) -m pytest

test-clients: $(STAMP)
	@for d in $(CLIENT_DIRS); do $(MAKE) -C $$d test; done

.PHONY: bench
bench: $(STAMP)
	$(PY) -m callqos.server.bench

.PHONY: clean
clean:
	rm -rf $(VENV) .pytest_cache
