# The two commands: `make demo` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: demo test bench lint dryrun lock clean-demo system-deps

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	@echo "demo finished: see results/"

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# Debian packages the tests drive: chromium renders the report (installed when missing; needs root).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/synthesis.py
	$(BIN)/python bench/quality.py --organ abdomen --long & pid=$$!; $(BIN)/python bench/quality.py --organ brain --long && wait $$pid
	$(BIN)/python bench/quality.py --summary

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n

# Regenerate the full pin list from pyproject.toml's direct pins.
lock:
	rm -rf /tmp/dwisynth-lock && $(PYTHON) -m venv /tmp/dwisynth-lock
	/tmp/dwisynth-lock/bin/pip install --quiet '.[test]'
	/tmp/dwisynth-lock/bin/pip freeze --exclude dwisynth > requirements.lock

clean-demo:
	rm -rf results logs benchmarks data/demo .snakemake
