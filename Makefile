# One command to set up and run the main job, one to set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed  ## create .venv with gdflow and its test tools

run: setup  ## train once on the defaults (the seed's toy data) and show the run
	$(BIN)/gdflow run
	$(BIN)/gdflow runs --limit 5

test: setup  ## run the test suite
	$(BIN)/python -m pytest

bench: setup  ## run the four benchmarks (minutes; see BENCHMARKS.md)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV)
