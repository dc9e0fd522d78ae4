"""briggsbwtaper over chunks against whole-cube serial tclean, on NGC5921 (imaging/cube_weights.py).

It tapers every channel's Briggs weights by the whole cube's fractional bandwidth; the driver makes
the cube's imaging weights once and hands each chunk its channels' share, so chunks of any size
(one channel included, which alone has no bandwidth) equal serial in every product.
"""

from __future__ import annotations

import json

from conftest import assert_same_cube, run_cli, write_cube_toml
from test_iteration import PRODUCTS, SMALL, assert_same_return, clean_in_chunks, serial_tclean  # noqa: F401 (a fixture)

BWTAPER = {"weighting": "briggsbwtaper", "robust": 0.5}


def test_one_channel_chunks_of_the_whole_cube_equal_serial_through_the_cli(tmp_path, ngc5921_ms, serial_reference):
    """All 63 channels, one per task, niter 0 (casatools alone on the workers)."""
    keywords = dict(BWTAPER, nchan=-1)
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"channels_per_task": 1, "workers": 2})
    run_cli("submit", "--site", "local", cube, cwd=tmp_path, timeout=1200)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["chunks"] == 63 and report["cube_weights_seconds"] > 0
    assert all(m["tclean_steps"]["cube_weights"] > 0 for m in report["chunk_metrics"])
    assert not (tmp_path / "cube.hpcrun" / "cube-weights").exists(), "the cube's weights outlived the run"
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**keywords), ("image", "residual", "psf", "pb", "sumwt"))


def test_whole_cube_iteration_equals_serial(tmp_path, ngc5921_ms, serial_tclean):
    """9 channels in chunks of 4, 4 and 1, cleaned as one cube; the weights handed in the start step
    are kept for every later major cycle (cycle_tasks)."""
    keywords = dict(SMALL, **BWTAPER, nchan=9, niter=120, cycleniter=10)
    serial, returned = serial_tclean(**keywords)
    chunked, summary = clean_in_chunks(tmp_path / "chunked", ngc5921_ms, 4, **keywords)
    assert returned["nmajordone"] >= 3 and returned["iterdone"] > 0, "the case must run cycles after the start"
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)
