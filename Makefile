# make demo: set up and image the NGC5921 demo cube on --site local
# make test: set up, start Slurm/SGE on localhost (as root), run the whole test suite (what CI runs)
# make bench: parallel vs serial tclean on NGC5921 at 1024², measured in one run
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
	$(PY) benchmarks/parallel_vs_serial.py
