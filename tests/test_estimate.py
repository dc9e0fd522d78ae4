"""The memory model's arithmetic (pure logic: no CASA). Its constants are measured by
benchmarks/memory_matrix.py; here: the terms CASA's own code decides, the fit, the probe's figure."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from hpc_imager.sizing.estimate import (
    FIT_FLOOR,
    GIB,
    MEMORY_TERMS,
    MsFacts,
    TaskShape,
    fit_memory_terms,
    leave_one_out,
    memory_features,
    memory_surprise,
    task_peak_bytes,
)

CELL_15 = math.radians(15 / 3600)


def test_automatic_w_planes_follow_wpconvfunc_rule():
    # NGC5921: max |w| 591.5 m at 1.4133 GHz = 2788.6 wavelengths; 4096 × 15": sin(8.53°) = 0.1484
    facts = MsFacts(max_w_wavelengths=2788.6)
    shape = TaskShape(nx=4096, ny=4096, stokes_planes=1, channels=1, cell_rad=CELL_15, gridder="wproject",
                      wprojplanes=-1, ms=facts)
    assert shape.w_planes == int(1.05 * 2788.6 * math.sin(CELL_15 * 2048))
    assert TaskShape(nx=4096, ny=4096, stokes_planes=1, channels=1, wprojplanes=64).w_planes == 64


def test_w_projection_cache_is_capped_at_a_quarter_of_the_memory_casa_sees():
    big = TaskShape(nx=4096, ny=4096, stokes_planes=1, channels=1, cell_rad=CELL_15, gridder="wproject",
                    wprojplanes=-1, ms=MsFacts(max_w_wavelengths=2788.6))
    uncapped = 8 * (1.2 * 4096 / 2) ** 2 * big.w_planes
    node = 24 * GIB
    capped = replace(big, casa_memory_bytes=node)
    assert big.w_cf_bytes() == pytest.approx(uncapped)
    assert capped.w_cf_bytes() == pytest.approx(node / 4)
    assert TaskShape(nx=1024, ny=1024, stokes_planes=1, channels=4, wprojplanes=1).w_cf_bytes() == 0


def test_terms_apply_only_where_tclean_allocates_them():
    plain = memory_features(TaskShape(nx=512, ny=512, stokes_planes=1, channels=4))
    assert plain["image_cube"] == 512 * 512 * 4
    assert plain["minor_cycle"] == plain["weight_density"] == plain["wproject_cf"] == 0
    cleaned = memory_features(TaskShape(nx=512, ny=512, stokes_planes=4, channels=4, niter=100,
                                        deconvolver="multiscale", scales=3, weighting="briggs"))
    assert cleaned["minor_cycle"] == 512 * 512 * 4  # one channel at a time, every Stokes plane
    assert cleaned["multiscale_scale"] == 3 * 512 * 512 * 4
    assert cleaned["weight_density"] == 512 * 512 * 4
    mosaic = memory_features(TaskShape(nx=512, ny=512, stokes_planes=1, channels=4, gridder="mosaic"))
    assert mosaic["mosaic_screens"] == 1 and plain["mosaic_screens"] == 0


def test_fit_recovers_known_terms_and_puts_the_lowest_row_at_the_floor():
    truth = dict.fromkeys(MEMORY_TERMS, 0.0) | {"base": 0.4 * GIB, "image_cube": 50.0, "minor_cycle": 30.0}
    shapes = [TaskShape(nx=n, ny=n, stokes_planes=1, channels=c, niter=k)
              for n in (256, 1024, 2048) for c in (1, 4, 16) for k in (0, 100)]
    samples = [(s, task_peak_bytes(s, truth)) for s in shapes]
    fitted = fit_memory_terms(samples)
    assert fitted["image_cube"] == pytest.approx(50.0 * FIT_FLOOR, rel=1e-3)
    assert fitted["minor_cycle"] == pytest.approx(30.0 * FIT_FLOOR, rel=1e-3)
    assert all(r == pytest.approx(FIT_FLOOR, rel=1e-3) for r in leave_one_out(samples))
    noisy = [(s, p * (1.1 if i == 3 else 1.0)) for i, (s, p) in enumerate(samples)]
    assert min(task_peak_bytes(s, fit_memory_terms(noisy)) / p for s, p in noisy) == pytest.approx(FIT_FLOOR)


def test_memory_surprise_warns_over_20_percent_or_under_half():
    assert memory_surprise(2.0, 2.39) is None and memory_surprise(2.0, 1.01) is None
    assert "over its estimate" in memory_surprise(2.0, 2.5)
    assert "under half" in memory_surprise(2.0, 0.9)
