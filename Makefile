# One command to set up and run the main job, one to set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Python writes each module's bytecode (.pyc) the first time a process imports it, and every
# later process reuses it. An environment with PYTHONDONTWRITEBYTECODE set (this machine's and
# CI's) would make every process of the suite compile torch, Prefect and SQLAlchemy from source
# again: seconds each, minutes in all (measured: the parallel part 655 s with it, 436 s
# without, on the same 2 cores).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test test-fast test-extended lint typecheck-tree reliability bench soak setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=68'

# --no-compile: modules are byte-compiled when first imported (see PYTHONDONTWRITEBYTECODE
# above), not all of torch up front.
# setuptools>=68 (pyproject's build requirement) lets tests build the wheel without isolation.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[test]'
	touch $@

# The fused cross-entropy kernel of large classifiers (training/fused_cross_entropy.py) is built
# into its cache here (about a second, no network), not by the first run or test that needs it;
# without a C compiler this says so and classifiers train on the torch ops.
$(VENV)/.kernel: $(VENV)/.installed training/cross_entropy_kernel.c training/cross_entropy_rows.h \
		training/comoment.h
	$(BIN)/python -c 'from gdflow.training.fused_cross_entropy import kernel_problem as why; \
		print("fused cross-entropy kernel:", why() or "built")'
	touch $@

setup: $(VENV)/.installed $(VENV)/.kernel  ## create .venv with gdflow and its test tools

run: setup  ## train once on the defaults (the seed's toy data) and show the run
	$(BIN)/gdflow run
	$(BIN)/gdflow runs --limit 5

# Two parts: the suite on two pytest-xdist workers (whole files per worker), then the tests
# marked `alone` (they time something or load the machine themselves) in one process, so that
# no other test's load makes them fail. Both parts run; either failing fails the target.
# Tests marked `extended` (minutes of CPU for what other tests cover in part: two process
# workers on one pool, the GPU deployment, Dask on local worker processes, SIGHUP to gdflow
# server, concurrent runs each with its own temporary Prefect server, a sweep's concurrent runs,
# the orchestration and loading benchmarks end to end, and end-to-end paths a cheaper test covers
# in CI, named beside each marker) run under `make test-extended`, not in
# `make test`, which CI runs (target: under 15 minutes on 2 cores; docs/development.md).
# The parallel part gives torch one thread a process (OMP_NUM_THREADS=1, inherited by the runs
# the tests start): two workers with torch's default of one thread a core oversubscribe two
# cores, and small ops then wait on spinning threads (a 600 x 32 tanh: 0.3 ms on one thread,
# 1.5-5 ms on two beside other work; an MLP test took 70 s, 24 s on one thread).
# Lint runs beside tests/warm.py (bytecode and the migrated Prefect database that the first test
# processes would otherwise each make at once; mypy takes one core for about 40 s).
test: setup typecheck-tree  ## lint (beside the suite's warm-up), then run the test suite
	$(BIN)/python -m tests.warm & warm=$$!; \
	$(MAKE) --no-print-directory lint; lint=$$?; wait $$warm; warmed=$$?; \
	[ $$lint -eq 0 ] && [ $$warmed -eq 0 ]
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile -m 'not alone and not extended'; parallel=$$?; \
	$(BIN)/python -m pytest -m 'alone and not extended'; alone=$$?; \
	[ $$parallel -eq 0 ] && [ $$alone -eq 0 ]

test-extended: setup  ## the tests marked extended (several minutes on two cores)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m extended

test-fast: setup  ## the pure tests: no Prefect server, no subprocess, no PostgreSQL (seconds)
	$(BIN)/python -m pytest -q -m 'not process'

typecheck-tree: setup  ## build/typecheck/gdflow/X -> X, the package layout mypy reads
	$(BIN)/python .ci/typecheck_tree.py build/typecheck

lint: setup typecheck-tree  ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

RELIABILITY_TESTS := tests/flows/test_concurrency.py tests/flows/test_faults.py \
	tests/storage/test_retry.py tests/runs/test_recording.py tests/runs/test_signals.py \
	tests/storage/test_repository.py tests/storage/test_migrate.py tests/storage/test_database.py \
	tests/flows/test_postgres.py tests/data/test_hostile_input.py tests/storage/test_secrets.py \
	tests/cli/test_hostile_cli.py tests/flows/test_network_exposure.py

# RECORD=1 (e.g. `make bench RECORD=1`): after a successful run, write the figures the command
# printed into the marked block of RELIABILITY.md / BENCHMARKS.md, with machine, date and
# versions (benchmarks/record.py), so the documents never hold a hand-typed figure.
RECORD ?=

reliability: setup  ## the fault-injection tests of RELIABILITY.md, printing what they observe
	GDFLOW_CONCURRENT_RUNS=8 $(BIN)/python -m pytest -q -s $(RELIABILITY_TESTS) > reliability.log 2>&1; \
	status=$$?; grep -E '^observed|^FAILED|^[0-9]+ (passed|failed)' reliability.log; \
	if [ $$status -eq 0 ] && [ -n "$(RECORD)" ]; then \
		$(BIN)/python -m benchmarks.record reliability --log reliability.log \
			--document RELIABILITY.md --hostile test-artifacts/hostile-input.json || status=1; \
	fi; exit $$status

bench: setup  ## run the four benchmarks (minutes; see BENCHMARKS.md); RECORD=1 records them
	$(BIN)/python -m benchmarks > bench.log; status=$$?; cat bench.log; \
	if [ $$status -eq 0 ] && [ -n "$(RECORD)" ]; then \
		$(BIN)/python -m benchmarks.record bench --log bench.log --document BENCHMARKS.md \
			|| status=1; \
	fi; exit $$status

# The soak (RELIABILITY.md, "The soak"): a real Prefect server, SOAK_RUNS scheduled runs of
# `gdflow serve` and of a process pool with two workers (SOAK_VARIANT=serve|workers|both),
# faults at moments drawn from SOAK_SEED; one summary line, exit 1 naming any invariant missed.
# Report, databases and logs in test-artifacts/soak/. About two hours a variant at 500 runs on 2 cores.
SOAK_RUNS ?= 500
SOAK_SEED ?= 0
SOAK_VARIANT ?= both

soak: setup  ## hundreds of scheduled runs under injected faults, then every invariant checked
	$(BIN)/python -m benchmarks.soak --runs $(SOAK_RUNS) --seed $(SOAK_SEED) \
		--variant $(SOAK_VARIANT); status=$$?; \
	if [ $$status -eq 0 ] && [ -n "$(RECORD)" ]; then \
		$(BIN)/python -m benchmarks.record soak --log test-artifacts/soak/soak.json \
			--document RELIABILITY.md || status=1; \
	fi; exit $$status

clean:
	rm -rf $(VENV)
