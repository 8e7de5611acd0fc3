# Two commands: `make demo` (set up, pretrain on the embedded demo data, evaluate) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint setup

# The stamps re-run pip only when a requirements file changed.
$(VENV)/.core-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed requirements-dev.txt requirements-transfer.txt
	$(PY) -m pip install -q -r requirements-dev.txt -r requirements-transfer.txt
	touch $@

setup: $(VENV)/.core-installed

demo: $(VENV)/.core-installed
	PYTHON=$(PY) bash scripts/demo.sh

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .
