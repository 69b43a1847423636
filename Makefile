# The two commands of the README: `make demo` and `make test`.
# Both create .venv if it is missing and install trackflow into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,slurm]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/trackflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# config/README.md's key tables, made from workflow/schemas (a test fails when stale)
docs: $(STAMP)
	$(BIN)/trackflow config-keys --update config/README.md

clean:
	rm -rf results .snakemake demo
