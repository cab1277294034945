# Two commands do all set-up on a fresh machine:
#   make reproduce   # Tables I, III and IV on the embedded default (creates/reuses .venv, installs the stack)
#   make test        # the test suite, including one end-to-end workflow run on the micro profile
# `make reproduce-ablation` builds Table I (the BCD ablation) and its figures only.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
PROFILE ?=

.PHONY: env reproduce reproduce-ablation reproduce-all test dry-run clean-results

env:
	@bash tools/setup_env.sh

reproduce: env
	$(VENV)/bin/snakemake --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)

reproduce-all: reproduce  # the former name

reproduce-ablation: env
	$(VENV)/bin/snakemake ablation --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)  # target first: --configfile takes several files

test: env
	$(PY) -m pytest -q -p no:cacheprovider

dry-run: env
	$(VENV)/bin/snakemake -n --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)
