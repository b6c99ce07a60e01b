# Two entry points (see README): `make demo` runs an analysis on the embedded defaults, `make test` runs the tests.
# Both create a local virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench

setup: $(VENV)/.installed

# torch first, from the CPU build on disk, so arc-stack's `torch` requirement does not pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[inference,dev]'
	touch $@

demo: setup
	$(PY) -m deployments.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)
