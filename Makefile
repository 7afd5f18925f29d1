# `make demo` and `make test` each set up .venv (Python >= 3.12) from scratch if needed.
PYTHON ?= $(shell tools/find-python.sh)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -q

.PHONY: demo test test-all test-portable lint docs dist-check bench bench-scale clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(PIP) -e '.[all]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/nmfre demo --out nmfre-demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.test
	$(BIN)/python -m pytest -q -m 'slow or not slow'

# the suite under other floating point on the same x86-64 machine: OpenBLAS's AVX kernels
# without FMA, numpy's loops without AVX-512, XLA's code at most AVX2 (docs/testing.md, Portability)
test-portable: $(VENV)/.test
	OPENBLAS_CORETYPE=Sandybridge NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" \
	XLA_FLAGS=--xla_cpu_max_isa=AVX2 $(BIN)/python -m pytest -q

lint: $(VENV)/.test
	$(BIN)/ruff check nmfre bayes tests benchmarks examples docs tools
	$(BIN)/lint-imports

docs: $(VENV)/.test
	rm -rf docs/_build docs/generated
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "API reference: docs/_build/html/index.html"

# build wheel + sdist, check them, install the wheel alone in a clean venv and run the demo
dist-check: $(VENV)/.test
	rm -rf dist build/dist-check
	$(BIN)/python -m build -q --outdir dist . >/dev/null
	$(BIN)/twine check --strict dist/*
	$(PYTHON) -m venv build/dist-check
	build/dist-check/bin/python -m pip install -q -q dist/*.whl
	cd build && dist-check/bin/nmfre demo --out dist-check/demo --n-boot 200 > dist-check/demo.log
	test -s build/dist-check/demo/orthodont_theta.png && grep -q "90.5058" build/dist-check/demo.log
	@echo "dist-check: wheel and sdist pass twine; the wheel alone runs nmfre demo"

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_bayes.py

bench-scale: $(VENV)/.test
	$(BIN)/python benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) nmfre-demo dist build docs/_build docs/generated
