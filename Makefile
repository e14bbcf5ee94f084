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
# The out-of-process provider protocol (protos/callqos/provider/v1): its stubs ship with the client
# stubs, since the server's remote host and the provider kits both build on them.
PY_PROVIDER_GEN_DIR := $(PY_GEN_ROOT)/callqos/provider/v1
# The retry and resume policy of all four clients (clients/README.md), and the copies each client
# ships; `make generate` writes them, `make check-generated` fails when one differs.
POLICY := clients/service_config.json
PY_POLICY := $(PY_GEN_ROOT)/callqos/client/service_config.json
POLICY_COPIES := $(PY_POLICY) clients/go/callqos/service_config.json clients/node/src/service_config.json
# Client sub-projects that have their own Makefile with `generate` and `test` targets.
CLIENT_DIRS := $(sort $(dir $(wildcard clients/*/Makefile)))
# The three Python distributions (one pyproject.toml each, sharing the `callqos` namespace), the
# client first: the other two depend on it.
DISTS := clients/python server conformance
DIST_DIR := dist

.PHONY: help
help:
	@echo "make run        serve on the embedded defaults (127.0.0.1:50051, SQLite under ./callqos-data)"
	@echo "make test       install everything needed and run every test"
	@echo "make bench      benchmarks: each target judged against a bare grpc.aio baseline of the same run; replicas on PostgreSQL"
	@echo "make bench-watch  the WatchEvents benchmark alone (1,000 watchers, 10,000 opened at once)"
	@echo "make profile    where the server's CPU goes under load (py-spy; PROFILE=make_drop|renegotiate|get|watch)"
	@echo "make soak       the ledger's state machine for CALLQOS_SOAK_STEPS steps (default 100000) or CALLQOS_SOAK_SECONDS"
	@echo "make parity     every shipped broken provider certified in and out of process (make test: every fourth)"
	@echo "make generate   regenerate all code from protos/"
	@echo "make lint       buf lint + buf format check, ruff check + ruff format check"
	@echo "make dist       sdists and wheels of callqos, callqos-server and callqos-conformance in dist/"
	@echo "make stamp      write VERSION (and LICENSE) into every distribution and client"

# The virtual environment: the three distributions editable (the suite with its `server` extra)
# and the top-level `dev` dependency group (pip >= 25.1 reads dependency groups); reinstalled
# whenever a pyproject.toml changes.
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(DISTS))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=25.1'
	$(PY) -m pip install --quiet -e clients/python -e 'server[postgresql]' -e 'conformance[server]' --group dev
	touch $@

.PHONY: venv
venv: $(STAMP)

.PHONY: run
run: $(STAMP)
	$(VENV)/bin/callqos serve

.PHONY: generate generate-python
generate: generate-python stamp
	@for d in $(CLIENT_DIRS); do $(MAKE) -C $$d generate; done

# Python stubs for the published API, inside the client package (the server depends on them),
# and the Python client's copy of the retry and resume policy.
generate-python: $(STAMP)
	rm -rf $(PY_GEN_DIR) $(PY_PROVIDER_GEN_DIR)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PY_GEN_ROOT) --pyi_out=$(PY_GEN_ROOT) \
	  --grpc_python_out=$(PY_GEN_ROOT) $(PROTOS)
	cp $(POLICY) $(PY_POLICY)

# Fails when the checked-in Python stubs differ from what protos/ generates now, or a client's
# copy of the policy differs from $(POLICY) (the Go and TypeScript clients' own check-generated
# check their generated code too; Java copies the policy at build time and checks in nothing).
.PHONY: check-generated
check-generated: $(STAMP) check-stamp
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS); \
	diff -r $$tmp/callqos/v1 $(PY_GEN_DIR) || { echo "generated Python code drifted from protos/: run 'make generate'"; exit 1; }; \
	diff -r $$tmp/callqos/provider/v1 $(PY_PROVIDER_GEN_DIR) || { echo "generated Python code drifted from protos/: run 'make generate'"; exit 1; }
	for copy in $(POLICY_COPIES); do \
	  diff $(POLICY) $$copy || { echo "$$copy drifted from $(POLICY): run 'make generate'"; exit 1; }; \
	done

# One version (VERSION) and one LICENSE for every distribution and client: deploy/release/stamp.py lists
# every place they are written.
.PHONY: stamp check-stamp
stamp:
	$(PYTHON) deploy/release/stamp.py

check-stamp:
	$(PYTHON) deploy/release/stamp.py --check

.PHONY: lint breaking
lint: $(STAMP) breaking
	$(BUF) lint protos
	$(BUF) format -d --exit-code protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: typecheck
typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict server/callqos clients/python/callqos/client clients/python/callqos/cli conformance/callqos
	MYPYPATH=deploy/release $(VENV)/bin/mypy --strict deploy/release/stamp.py deploy/release/check_dist.py
	MYPYPATH=server/benchmarks $(VENV)/bin/mypy --strict server/benchmarks/*.py

.PHONY: test test-python test-clients
test: lint check-generated typecheck test-python test-clients check-dist

# The PostgreSQL tests (the store suite on PostgreSQL, three replicas on one database) start their
# own PostgreSQL with initdb and pg_ctl: the distribution's package is installed when they are
# missing. Where it cannot be, those tests are skipped, saying why; where it is, they must run
# (CALLQOS_REQUIRE_POSTGRES turns a PostgreSQL that does not start into a failure, not a skip).
HAVE_POSTGRES := $(PY) -c 'import sys; from callqos.server.testing import postgres_bin_dir; sys.exit(postgres_bin_dir() is None)'

.PHONY: postgres
postgres: $(STAMP)
	@$(HAVE_POSTGRES) || { \
	  echo "installing PostgreSQL (initdb, pg_ctl) for the replica tests"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  { $$sudo apt-get install -y -q --no-install-recommends postgresql >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q --no-install-recommends postgresql >/dev/null; }; } \
	  || echo "could not install PostgreSQL (apt-get install postgresql failed): its tests will be skipped"; }

test-python: $(STAMP) postgres
	if $(HAVE_POSTGRES); then export CALLQOS_REQUIRE_POSTGRES=1; fi; $(PY) -m pytest

# Every shipped broken provider certified in process and out of process (make test runs every fourth).
.PHONY: parity
parity: $(STAMP)
	CALLQOS_PARITY=all $(PY) -m pytest -q conformance/tests/test_remote_parity.py

test-clients: $(STAMP)
	@for d in $(CLIENT_DIRS); do $(MAKE) -C $$d test; done

# No change to protos/ may break what was published before it: buf breaking (the FILE rules of
# protos/buf.yaml) against protos/ as of BUF_BREAKING_AGAINST (default: the previous commit; CI may
# set the branch it merges into). The working tree is compared, so an uncommitted change is checked
# too; a new file or package is never breaking. Skipped, saying so, where there is nothing to compare
# with: outside a git checkout, in a shallow clone without that commit, or before protos/ existed.
BUF_BREAKING_AGAINST ?= HEAD~1
breaking: $(STAMP)
	if ! git rev-parse --verify --quiet '$(BUF_BREAKING_AGAINST)^{commit}' >/dev/null 2>&1; then \
	  echo "buf breaking: skipped (no commit $(BUF_BREAKING_AGAINST) here: not a git checkout, a shallow clone or the first commit)"; \
	  exit 0; \
	fi; \
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	git archive '$(BUF_BREAKING_AGAINST)' protos 2>/dev/null | tar -x -C $$tmp 2>/dev/null || true; \
	if [ ! -f $$tmp/protos/buf.yaml ]; then echo "buf breaking: skipped ($(BUF_BREAKING_AGAINST) has no protos/buf.yaml)"; exit 0; fi; \
	$(BUF) breaking protos --against $$tmp/protos && echo "buf breaking: no breaking change against $(BUF_BREAKING_AGAINST)"

# sdist and wheel of each distribution. `python -m build` builds the wheel from the sdist, in an
# isolated environment, so a file missing from an sdist (or a build requirement) fails here.
.PHONY: dist check-dist
dist: $(STAMP)
	rm -rf $(DIST_DIR)
	for d in $(DISTS); do $(PY) -m build --quiet --outdir $(DIST_DIR) $$d; done
	$(VENV)/bin/twine check --strict $(DIST_DIR)/*

# The packaging enforces the dependency direction: the client wheel alone, in a fresh venv,
# works against a live server and brings no server code or telemetry with it.
check-dist: dist
	$(PY) deploy/release/check_dist.py $(DIST_DIR)

# The benchmarks are scripts in server/benchmarks (not shipped); BENCH_ARGS=--seconds 1 for a quick run.
# Each prints its rows with PASS/FAIL against the targets (server/benchmarks/targets.py) and never
# fails the build for a missed target; the last step prints the whole table of targets.
BENCH_ARGS ?=
.PHONY: bench bench-watch
bench: $(STAMP)
	results=$$(mktemp); trap 'rm -f $$results' EXIT; \
	$(PY) server/benchmarks/bench.py --results $$results $(BENCH_ARGS); \
	$(PY) server/benchmarks/bench_watch.py --results $$results $(BENCH_ARGS); \
	$(PY) server/benchmarks/bench_tracing.py $(BENCH_ARGS); \
	$(PY) server/benchmarks/bench_auth.py $(BENCH_ARGS); \
	$(MAKE) --no-print-directory postgres; \
	$(PY) server/benchmarks/bench_replicas.py $(BENCH_ARGS); \
	echo; $(PY) server/benchmarks/targets.py $$results

# WatchEvents alone: 1,000 watchers' delivery times and memory, 10,000 opened at once.
bench-watch: $(STAMP)
	$(PY) server/benchmarks/bench_watch.py $(BENCH_ARGS)

# Where the server's CPU goes under one workload, sampled with py-spy: make profile PROFILE=watch
# (make_drop, renegotiate, get or watch; PROFILE_ARGS=--native adds the C frames).
PROFILE ?= make_drop
PROFILE_ARGS ?=
.PHONY: profile
profile: $(STAMP)
	$(PY) server/benchmarks/profile_server.py $(PROFILE) $(PROFILE_ARGS)

# The admission ledger's stateful property test (server/tests/test_ledger_state_machine.py), far
# longer than `make test` runs it: round after round against a real server, each round with a
# fresh seed that is printed first, until CALLQOS_SOAK_STEPS steps have run (or, when set,
# CALLQOS_SOAK_SECONDS have passed). CALLQOS_SOAK_SEED=<seed> replays one round and shrinks a
# failure to the shortest sequence of steps that shows it.
CALLQOS_SOAK_STEPS ?= 100000
# Then the remote provider's stateful test, this many runs with fresh seeds (make test: 15, fixed).
CALLQOS_REMOTE_EXAMPLES ?= 300
.PHONY: soak
soak: $(STAMP)
	CALLQOS_SOAK_STEPS=$(if $(CALLQOS_SOAK_SECONDS),0,$(CALLQOS_SOAK_STEPS)) \
	  $(PY) -m pytest server/tests/test_ledger_state_machine.py -k test_soak -s -q -p no:cacheprovider
	CALLQOS_REMOTE_EXAMPLES=$(CALLQOS_REMOTE_EXAMPLES) \
	  $(PY) -m pytest server/tests/test_remote_stateful.py -q -p no:cacheprovider -o timeout=3600

.PHONY: clean
clean:
	rm -rf $(VENV) .pytest_cache $(DIST_DIR)
