# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv when it is missing and install the package (editable, with dev extras), every dependency
# at the version of constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test base install lock clean-venv

# A half-made virtualenv (e.g. `python3 -m venv` without ensurepip: it leaves bin/python, then fails) is
# removed, so the next `make` makes it again instead of finding bin/python and no pip.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip || { rm -rf $(VENV); exit 1; }

# constraints.txt pins every installed package to the versions the tests last passed with (`make lock`
# refreshes it from .venv); CONSTRAINTS= installs the ranges of pyproject.toml instead.
CONSTRAINTS ?= constraints.txt

$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --progress-bar off $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	touch $(STAMP)

lock: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ruff=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)  # .venv is what the new file says: no reinstall (with the old pins) on the next make

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python recipes/synthetic/run.py

# The shared base model of the benchmarks (about 45 minutes on 2 CPU cores; cached in runs/base/).
base: $(STAMP)
	$(BIN)/python benchmarks/base.py

test: $(STAMP)
	$(BIN)/python -m pytest -q tests lightning_amortized --doctest-modules

clean-venv:
	rm -rf $(VENV)
