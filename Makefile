# Two commands on a fresh machine with only Python 3.10+:
#   make demo   -> creates .venv on first use, installs the package, runs the demo
#   make test   -> creates .venv on first use, installs the package with test extras, runs the whole suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m dalle demo

test: $(VENV)/.installed
	$(PY) -m pytest
