# Developer loop. `make` alone runs lint and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ADAPTERS_STAMP := $(VENV)/.installed-adapters
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache

.PHONY: all install tools constraints lint format test proto bench bench-deps demo evals clean

all: lint test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster,trainer]'
	$(BIN)/mps warmup  # compile the kernels into NUMBA_CACHE_DIR now, not at each start
	touch $(STAMP)

# The framework adapters' extras: `make test` runs their tests, `make demo` needs none.
# The extra admits any torch 2.x; the tests run on the CPU build of TORCH_TEST_VERSION (a
# newer release would resolve to a CUDA build of several GB).
TORCH_TEST_VERSION ?= 2.13.0
$(ADAPTERS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,cluster,trainer,torch]' 'torch==$(TORCH_TEST_VERSION)'
	touch $(ADAPTERS_STAMP)

install: $(STAMP)

# Command-line tools some tests run that pip cannot install: promtool (Debian's
# `prometheus` package) checks the /metrics pages and the alert rules. Installed here when
# missing and run as root (CI, `make test`); the tests that use it fail without it.
tools:
ifeq ($(shell which promtool 2>/dev/null),)
ifeq ($(shell id -u),0)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
else
	@echo "promtool not found: 'sudo apt-get install prometheus' to run the tests that use it"
endif
endif

# Re-pin constraints.txt (the image's runtime dependencies) from a fresh resolution.
constraints: $(STAMP)
	$(BIN)/python deploy/pin_constraints.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: tools $(STAMP) $(ADAPTERS_STAMP)
	$(BIN)/python -m pytest

# The long fuzz run (not in `make test`): 100,000 raw-bytes requests, 50,000 a server role,
# on top of the structured cases. Figures in docs/reliability.md.
fuzz: $(STAMP)
	MPS_FUZZ_RAW_CASES=50000 $(BIN)/python -m pytest -q -s --timeout=3600 tests/ps_server/test_fuzz.py

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/monolith_ps/v1/ps.proto

# Each writes results/NAME.json and a Markdown table beside it (a test keeps the list whole).
BENCHMARKS := table_bench service_bench sync_bench snapshot_bench load_test reshard_bench \
	hostile_bench client_dedup_bench eviction_bench tier_bench start_bench rollout_bench \
	export_rss_bench

bench: $(STAMP)
	set -e; for name in $(BENCHMARKS); do \
		$(BIN)/python benchmarks/$$name.py --json results/$$name.json; \
	done
	$(BIN)/python benchmarks/scale_sim.py --json results/scale_sim.json --markdown results/scale_sim.md

# System packages the benchmarks compare against (Redis for service_bench.py).
bench-deps:
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y redis-server

# Real-time training on MovieLens through a local cluster: results/demo.json, .md, _auc.png
demo: $(STAMP)
	$(BIN)/python -m examples.movielens.demo --results results

# The Monolith paper's experiments on a local cluster: results/<eval>.json, .md, .png and
# the tables in evals/README.md
evals: $(STAMP)
	$(BIN)/python -m evals.run_all --results results --update-readme

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .ruff_cache build dist *.egg-info
