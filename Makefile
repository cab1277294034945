# Two commands do all set-up on a fresh machine:
#   make reproduce   # Table I on the embedded default (creates/reuses .venv, installs the stack)
#   make test        # the test suite, including one end-to-end workflow run on the micro profile
# and `make reproduce-all` builds every table of the profile (Tables I, III and IV).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
PROFILE ?=

.PHONY: env reproduce reproduce-all test dry-run clean-results

env:
	@bash tools/setup_env.sh

reproduce: env
	$(VENV)/bin/snakemake --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),) ablation

reproduce-all: env
	$(VENV)/bin/snakemake --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)

test: env
	$(PY) -m pytest -q -p no:cacheprovider

dry-run: env
	$(VENV)/bin/snakemake -n --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)
