"""briggsbwtaper over chunks against whole-cube serial tclean, on NGC5921 (imaging/cube_weights.py).

It tapers every channel's Briggs weights by the whole cube's fractional bandwidth; the driver makes
the cube's imaging weights once and hands each chunk its channels' share, so chunks of any size
(one channel included, which alone has no bandwidth) equal serial in every product.
"""

from __future__ import annotations

import json

from conftest import assert_same_cube, read_cube, run_cli, write_cube_toml
from test_iteration import (AUTOMASK_CUBE, PRODUCTS, SMALL, _data_channel_frequencies, assert_same_return,  # noqa: F401
                            clean_in_chunks, serial_tclean)  # serial_tclean: a fixture

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


def test_the_seeds_recipe_at_small_size_equals_serial_through_the_cli(tmp_path, ngc5921_ms, serial_tclean):
    """The seed's reference job in miniature, in the default mode: hogbom, briggsbwtaper, auto-multithresh
    (with ALMA's minpercentchange=1: channels whose mask stops changing stop automasking), a threshold,
    one data channel per plane on a frequency grid, one channel per task, cleaned over several cycles by
    the cube's one controller on real workers; every product (the mask exactly) and the controller's
    stop equal serial tclean's."""
    data = _data_channel_frequencies(ngc5921_ms)
    keywords = dict(AUTOMASK_CUBE, **BWTAPER, start=f"{data[16]!r}Hz", width=f"{data[1] - data[0]!r}Hz", nchan=12,
                    niter=1000, cycleniter=20, threshold="0.8mJy", minpercentchange=1.0)  # ALMA pipeline's
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"workers": 2, "channels_per_task": 1})
    run_cli("submit", "--site", "local", cube, cwd=tmp_path, timeout=1200)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    serial, returned = serial_tclean(**keywords)
    assert report["mode"] == "cube" and report["chunks"] == 12
    assert returned["nmajordone"] >= 3 and returned["stopcode"] == 2, "the case must stop at the threshold after cycles"
    assert_same_cube(str(tmp_path / "cube"), serial, PRODUCTS)
    assert_same_return(report["iteration_summary"], returned)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cube.hpcrun" / "journal.jsonl").read_text().splitlines()
             if '"iteration step"' in line and '"kind": "cycle"' in line]
    assert any(steps[-1]["automask_stopped"].values()), "the case must stop automasking some channels"
    got, want = read_cube(str(tmp_path / "cube.mask"))["pixels"], read_cube(f"{serial}.mask")["pixels"]
    assert want.sum() > 0 and (got != want).sum() == 0, f"{(got != want).sum()} mask pixels off"
