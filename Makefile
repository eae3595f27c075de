# Two commands: `make demo` and `make test`. Both run `setup` first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# setuptools >= 77 reads pyproject.toml's SPDX license string; the editable install below
	# builds without isolation, with the venv's own setuptools (a new 3.11 venv has 65).
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(PY) -m pip install --quiet -r requirements.txt
	# betty-ml 0.2.1 declares Python<3.11 and pins old packages; it runs on 3.11 unchanged.
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python betty-ml==0.2.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The scripts find .venv/bin/python themselves; PYTHON is set so that a PYTHON in the caller's
# environment (the interpreter that made the venv) is not taken for the one that runs the demo.
demo: setup
	PYTHON="$(CURDIR)/$(PY)" bash scripts/demo.sh

# The full suite (what CI runs).
test: setup
	$(PY) -m pytest -q tests

# The edit loop: everything but the tests marked slow (training runs, subprocesses, long sweeps).
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .cache weights_demo
