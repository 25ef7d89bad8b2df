# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the demo job
#   make test   creates .venv if missing, installs, runs lint, types and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean docs gpu-bundle gpu-check bench bench-smoke

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[demo,test,notebook]'
	touch $@

demo: $(STAMP)
	$(BIN)/dask-batchinfer demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check dask_batchinfer tests
	$(BIN)/ruff format --check dask_batchinfer tests
	$(BIN)/mypy dask_batchinfer

# docs/reference.md from the option declarations, the parser and batchinfer.yaml
docs: $(STAMP)
	$(BIN)/python -m dask_batchinfer.cli.reference > docs/reference.md

clean:
	rm -rf $(VENV) batchinfer-demo-output .pytest_cache

# GPU check: prepare .gpu/ here (wheels + fp16 MiniLM), run gpu-check on the GPU machine.
gpu-bundle: $(STAMP)
	PY=$(BIN)/python scripts/gpu_bundle.sh

gpu-check:
	scripts/gpu_check.sh

# Benchmarks (not part of make test): ratios against the in-memory limit, a
# hand-written loop and Ray Data, measured side by side in one run.
$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks.run

bench-smoke: $(VENV)/.bench
	$(BIN)/python -m benchmarks.run --smoke
