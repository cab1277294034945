# Two commands do all set-up on a fresh machine:
#   make reproduce   # Tables I, III, IV and V on the embedded default (creates/reuses .venv, installs the stack)
#   make test        # the test suite, including one end-to-end workflow run on the micro profile
# `make reproduce-ablation` builds Table I (the BCD ablation) and its figures only;
# `make reproduce-table5` Table V (the detectors on the embedded object scenes) only.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
PROFILE ?=

.PHONY: env reproduce reproduce-ablation reproduce-table5 reproduce-all test test-fast dry-run clean-results

env:
	@bash tools/setup_env.sh

# After a kill: run the same command again. It frees a stale lock (tools/unlock_stale.py) and
# reruns the jobs the kill left incomplete; training resumes from its last checkpoint.
SMK_RECOVER = $(PY) tools/unlock_stale.py && $(VENV)/bin/snakemake --rerun-incomplete

reproduce: env
	$(SMK_RECOVER) --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)

reproduce-table5: env
	$(SMK_RECOVER) --cores $(CORES) -- results/tables/table5.csv

reproduce-all: reproduce  # the former name

reproduce-ablation: env
	$(SMK_RECOVER) ablation --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)  # target first: --configfile takes several files

# On TEST_WORKERS pytest-xdist workers, one test file per worker at a time (a module fixture, such
# as a workflow run, is set up once), the slowest files first (tests/conftest.py).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: env
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) --durations=25

# The inner loop: the tests not marked slow (tests/conftest.py, tests/slow_tests.txt)
test-fast: env
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow" --durations=10

dry-run: env
	$(VENV)/bin/snakemake -n --cores $(CORES) $(if $(PROFILE),--configfile $(PROFILE),)
