# make demo: set up and image the NGC5921 demo cube on --site local
# make test: set up, start Slurm/SGE on localhost (as root), run the whole test suite (what CI runs)
# make test-casa-other: the CASA-touching tests on the other tested CASA releases (docs/batch-systems.md)
# make bench: serial tclean, mpicasa, pclean 0.2.3 and hpc_imager in one run (docs/benchmarks.md); long: an hour or more
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup schedulers demo test test-casa-other bench

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
	$(PY) -m pytest -ra --durations=25
	$(MAKE) test-casa-other

# The other tested CASA releases (pyproject.toml's range), each in its venv with CASA installed first,
# as a site has it: installing hpc_imager must keep that CASA (checked), and the tests must pass on it.
CASA_OTHER := .venv-casa665 .venv-casa675
.venv-casa665/.installed: PYTHON_OTHER := python3.11
.venv-casa665/.installed: CASA_RELEASE := 6.6.5.31
.venv-casa675/.installed: PYTHON_OTHER := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
.venv-casa675/.installed: CASA_RELEASE := 6.7.5.18
# The CASA-touching tests: the cube checked as tclean checks it, its channel grid, and the cube equal
# to serial tclean at niter 0 (every grid kind) and niter > 0 (every iteration case); 6.7.5.18 on
# Python 3.12 takes one case of each (CI's 90 minutes: each full list took ~10 min of CPU).
CASA_TESTS := tests/test_cube_spec.py tests/test_preflight.py tests/test_channel_grid.py \
	tests/test_local_engine.py::test_cube_equals_serial_tclean tests/test_iteration.py::test_cube_iteration_equals_serial_tclean \
	tests/test_iteration.py::test_init_records_merge_as_the_whole_cubes tests/test_iteration.py::test_exec_records_merge_with_cube_channel_numbers

.venv-casa%/.installed: pyproject.toml
	$(PYTHON_OTHER) -m venv $(@D)
	$(@D)/bin/pip install -q --upgrade pip
	$(@D)/bin/pip install -q casatools==$(CASA_RELEASE) casatasks==$(CASA_RELEASE)
	$(@D)/bin/pip install -q -e '.[test]'
	$(@D)/bin/python -c 'import importlib.metadata as m, sys; v = [m.version(p) for p in ("casatools", "casatasks")]; \
		sys.exit(None if v == ["$(CASA_RELEASE)"] * 2 else f"installing hpc_imager replaced CASA $(CASA_RELEASE): now {v}")'
	touch $@

test-casa-other: $(CASA_OTHER:%=%/.installed)
	.venv-casa665/bin/python -m pytest -ra $(CASA_TESTS)
	.venv-casa675/bin/python -m pytest -ra $(CASA_TESTS) -k "not equals_serial or all-channels-short-last-chunk or hogbom"

# mpicasa: casampi recognises only Open MPI, and mpi4py builds against its mpicc (Debian's packages;
# apt-get needs root, as this machine's CI has)
bench: setup
	command -v mpirun >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin libopenmpi-dev)
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/bench.py
