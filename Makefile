# The two commands of the README: `make demo` and `make test`.
# Both create .venv if it is missing and install trackflow into it: every
# package from requirements.lock (pinned, with hashes), then trackflow itself
# without dependencies, and record the lock's hash in the environment (every
# output's provenance carries it as environment_lock_sha256).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# what the lock holds: trackflow's dependencies with these extras, for every
# platform, resolved for the oldest Python trackflow supports
LOCK_EXTRAS := --extra test --extra slurm --extra view --extra learn
LOCK_OPTIONS := --universal --python-version 3.11 --generate-hashes --overrides requirements-overrides.txt

.PHONY: demo test docs install lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(LOCK) Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pipeline.io.provenance record $(LOCK)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/trackflow demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# config/README.md's key tables, made from workflow/schemas (a test fails when stale)
docs: $(STAMP)
	$(BIN)/trackflow config-keys --update config/README.md

# requirements.lock again from pyproject.toml (after changing a dependency;
# tests/test_environment.py fails while the lock lags behind)
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml $(LOCK_EXTRAS) $(LOCK_OPTIONS) \
	    --custom-compile-command "make lock" -o $(LOCK)

clean:
	rm -rf results .snakemake demo
