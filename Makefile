# The two commands: `make demo` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
CORES ?= all
DEMO_CONFIG := config/demo.yaml
STUDY_CONFIG := config/demo_study.yaml
# Extra Snakemake options for demo, dryrun and reproduce, e.g. make demo ARGS="-n --config 'dc2anet={steps: 4000}'"
ARGS ?=

.PHONY: demo study test bench lint dryrun lock config-docs clean-demo system-deps slurm-profile reproduce

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) --cores $(CORES) $(ARGS)
	@echo "demo finished: open results/report.html (outputs: README.md, section Outputs)"

# The demo cohort with what the 30-minute demo leaves out (config/demo_study.yaml over config/demo.yaml): three
# CT -> DWI training seeds for the main, unguided and ablation tables. Reuses a finished demo's results.
study: $(STAMP)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) $(STUDY_CONFIG) --cores $(CORES) $(ARGS)
	@echo "study finished: open results/report.html (the CT -> DWI tables now give mean ± SD over seeds)"

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# Debian packages the tests drive: chromium renders the report (installed when missing; needs root).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# Every benchmark, on the finished demo run in results/, then one table (times per bench: docs/benchmarks.md).
bench: $(BENCH_STAMP)
	@test -d results/models || { echo "make bench measures a finished demo run: run make demo first" >&2; exit 1; }
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/brain_masking.py
	$(BIN)/python bench/conversion.py
	$(BIN)/python bench/adc.py
	$(BIN)/python bench/heldout_b_truth.py
	$(BIN)/python bench/synthesis.py
	$(BIN)/python bench/quality.py --organ abdomen --long & pid=$$!; $(BIN)/python bench/quality.py --organ brain --long && wait $$pid
	$(BIN)/python bench/quality.py --summary
	$(BIN)/python bench/ct2dwi_lesion.py --lesion-weights 0,0.3,1 --oversample 0,0.5
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/summary.py

# Snakemake's lints, less the one the workflow accepts: no rule names a conda env (every job runs in .venv).
lint: $(STAMP)
	$(BIN)/python -m pytest -q workflow_tests/workflow/test_workflow.py -k lint

dryrun: $(STAMP)
	$(BIN)/snakemake --configfile $(DEMO_CONFIG) -n $(ARGS)

# config/README.md from the schema (a test fails when it is stale).
config-docs: $(STAMP)
	$(BIN)/python -m dwisynth.config_reference config/README.md

# Regenerate the full pin list from pyproject.toml's direct pins.
lock:
	rm -rf /tmp/dwisynth-lock && $(PYTHON) -m venv /tmp/dwisynth-lock
	/tmp/dwisynth-lock/bin/pip install --quiet '.[test,bench]'
	/tmp/dwisynth-lock/bin/pip freeze --exclude dwisynth > requirements.lock

# `snakemake --profile slurm` looks in ./slurm, $XDG_CONFIG_HOME/snakemake/slurm (~/.config/...), then
# /etc/xdg/snakemake/slurm. A link, not a copy: the partition and account edited in profiles/slurm and
# every `git pull` reach `--profile slurm`, which can never disagree with `--profile profiles/slurm`.
SLURM_PROFILE := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake/slurm
slurm-profile:
	@if [ -e "$(SLURM_PROFILE)" ] && [ ! -L "$(SLURM_PROFILE)" ]; then \
	  echo "$(SLURM_PROFILE) exists and is not a link (another Slurm profile?): move it away, or run" \
	    "snakemake --profile $(CURDIR)/profiles/slurm" >&2; exit 1; fi
	mkdir -p "$(dir $(SLURM_PROFILE))"
	ln -sfn "$(CURDIR)/profiles/slurm" "$(SLURM_PROFILE)"
	@echo "snakemake --profile slurm now uses $(CURDIR)/profiles/slurm. It runs as is on a cluster with a" \
	  "default partition and account; its EDIT lines set a partition, an account, the GPU partition or" \
	  "gpu_model, and squeue for a cluster without accounting. Every job runs in $(CURDIR)/$(VENV):" \
	  "it must be on storage the compute nodes see"

# A reviewer's check: rerun the whole study from scratch (a clone of the committed code in a fresh folder; the
# demo regenerates its data) and compare every table and model with results/ here. Bit-identical on the same
# CPU type; elsewhere give a tolerance: make reproduce RTOL=1e-4.
REPRODUCE_DIR ?= $(CURDIR)/reproduce
RTOL ?= 0
reproduce: $(STAMP)
	@test -d results/tables || { echo "make reproduce: no results/tables to compare with; run make demo first" >&2; exit 1; }
	@git diff --quiet HEAD || echo "make reproduce: uncommitted changes here; the rerun uses the committed code (HEAD)" >&2
	rm -rf "$(REPRODUCE_DIR)" && git clone --quiet "$(CURDIR)" "$(REPRODUCE_DIR)"
	cd "$(REPRODUCE_DIR)" && PYTHONPATH="$(REPRODUCE_DIR)" "$(CURDIR)/$(BIN)/snakemake" --configfile $(DEMO_CONFIG) \
	  --cores $(CORES) $(ARGS)
	$(BIN)/dwisynth compare-runs results "$(REPRODUCE_DIR)/results" --rtol $(RTOL)

clean-demo:
	rm -rf results logs benchmarks data/demo .snakemake
