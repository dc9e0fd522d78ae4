"""Reading tclean's own step timings (INFO3 lines of a chunk's casalog) into the chunk metrics."""

import pytest

from hpc_imager.imaging.task_timings import tclean_step_seconds, with_other

# As tclean 6.7 writes them (from a chunk log of a niter=0 run, plus the lines niter > 0 adds).
LOG = "\n".join([
    "2026-11-23 17:34:01\tINFO3\ttclean::task_tclean::casa\t***Time for initializing imager and normalizers: 0.04 sec",
    "2026-11-23 17:34:01\tINFO3\ttclean::task_tclean::casa\t***Time for initializing deconvolver(s): 0.00 sec",
    "2026-11-23 17:34:03\tINFO3\ttclean::task_tclean::casa\t***Time for making PSF and PB: 1.64 sec",
    "2026-11-23 17:34:06\tINFO3\ttclean::task_tclean::casa\t***Time for major cycle (calcres=T): 2.91 sec",
    "2026-11-23 17:34:06\tINFO3\ttclean::task_tclean::casa\t***Time for minor cycle: 0.20 sec",
    "2026-11-23 17:34:08\tINFO3\ttclean::task_tclean::casa\t***Time for major cycle: 1.50 sec",
    "2026-11-23 17:34:08\tINFO3\ttclean::task_tclean::casa\t***Time for minor cycle: 0.30 sec",
    "2026-11-23 17:34:10\tINFO3\ttclean::task_tclean::casa\t***Time for major cycle: 1.00 sec",
    "2026-11-23 17:34:11\tINFO3\ttclean::task_tclean::casa\t***Time to update mask: 0.05 sec",
    "2026-11-23 17:34:12\tINFO3\ttclean::task_tclean::casa\t***Time for restoring images: 0.47 sec",
    "2026-11-23 17:34:12\tINFO\ttclean::::casa\tTask tclean complete.",
])


def test_steps_are_named_and_repeated_cycles_summed():
    steps = tclean_step_seconds(LOG)
    assert steps == {"init_imager_and_weighting": 0.04, "init_deconvolver": 0.0, "psf_and_pb": 1.64,
                     "dirty_major_cycle": 2.91, "minor_cycles": 0.5, "major_cycles": 2.5, "mask": 0.05,
                     "restore": 0.47}


def test_what_tcleans_clock_does_not_cover_is_other():
    steps = with_other(tclean_step_seconds(LOG), 10.0)
    assert steps["other"] == pytest.approx(10.0 - (0.04 + 1.64 + 2.91 + 0.5 + 2.5 + 0.05 + 0.47), abs=1e-3)


def test_a_log_without_timings_is_all_other():
    assert with_other(tclean_step_seconds("INFO\ttclean::::casa\tnothing timed\n"), 3.0) == {"other": 3.0}
