# `make demo` and `make test` each set up .venv (Python >= 3.12) from scratch if needed.
PYTHON ?= $(shell tools/find-python.sh)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[all]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/nmfre demo --out nmfre-demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.test
	$(BIN)/python -m pytest -q -m 'slow or not slow'

lint: $(VENV)/.test
	$(BIN)/ruff check nmfre bayes tests benchmarks examples

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_bayes.py

clean:
	rm -rf $(VENV) nmfre-demo
