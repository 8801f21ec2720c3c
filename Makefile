# The two set-up commands of the README.
#   make demo   create .venv, install glean-jax with the converter/test extras and the mmagic oracle, and run the
#               tiny demo training job (configs/demo.py: synthetic data, no downloads)
#   make test   run the test suite (the default run; `make test-slow` adds the full-size 1024 parity cases)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_DIR ?= runs/demo

.PHONY: install demo test test-slow lint

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q -c requirements/constraints.txt -e '.[convert,test]'
	$(PIP) install -q --no-deps -c requirements/constraints.txt -r requirements/oracle.txt

demo: install
	$(PY) -m glean_jax.train --config configs/demo.py --workdir $(DEMO_DIR)

test:
	GLEAN_REQUIRE_ORACLE=1 $(PY) -m pytest -q
	$(VENV)/bin/ruff check glean_jax convert configs tests

test-slow:
	GLEAN_REQUIRE_ORACLE=1 $(PY) -m pytest -q -m slow

lint:
	$(VENV)/bin/ruff check glean_jax convert configs tests
