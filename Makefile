# make demo: set up and image the NGC5921 demo cube on --site local
# make test: set up, start Slurm/SGE on localhost (as root), run the whole test suite (what CI runs)
# make bench: serial tclean, pclean 0.2.3 and hpc_imager in one run (docs/benchmarks.md); long: an hour or more
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup schedulers demo test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m hpc_imager demo demo

schedulers:
	bash .ci/start-schedulers

test: setup schedulers
	$(PY) -m pytest -ra

bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/bench.py
