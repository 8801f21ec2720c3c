# The two set-up commands of the README.
#   make demo   create .venv, install glean-jax with the converter/test/faces/app extras, the mmagic oracle, the
#               ONNX exporter and the system Chromium (apt-get), and run the tiny demo training job
#               (configs/demo.py: synthetic data, no downloads)
#   make test   run the test suite (the default run; `make test-slow` adds the full-size 1024 parity cases)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_DIR ?= runs/demo

.PHONY: install chromium demo test test-slow lint

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY) chromium
	$(PIP) install -q -c requirements/constraints.txt -e '.[convert,test,faces,app]'
	$(PIP) install -q --no-deps -c requirements/constraints.txt -r requirements/oracle.txt
	$(PIP) install -q --no-deps -c requirements/constraints.txt -r requirements/export.txt

# The system Chromium that the web page's browser test drives (Playwright, no browser download): apt-get, as root
# or through sudo. Skipped when /usr/bin/chromium is there.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

demo: install
	$(PY) -m glean_jax.train --config configs/demo.py --workdir $(DEMO_DIR)

test:
	GLEAN_REQUIRE_ORACLE=1 $(PY) -m pytest -q
	$(VENV)/bin/ruff check glean_jax convert configs tests

test-slow:
	GLEAN_REQUIRE_ORACLE=1 $(PY) -m pytest -q -m slow

lint:
	$(VENV)/bin/ruff check glean_jax convert configs tests
