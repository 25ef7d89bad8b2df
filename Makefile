# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the demo job
#   make test   creates .venv if missing, installs, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[demo,test,notebook]'
	touch $@

demo: $(STAMP)
	$(BIN)/dask-batchinfer demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) batchinfer-demo-output .pytest_cache
