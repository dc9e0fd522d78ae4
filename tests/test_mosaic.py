"""A wide mosaic (simulated 4 pointings, 24 × 1 MHz, crossing the mosaic gridder's 0.5 % beam steps)
in the default mode through the CLI: CASA makes each chunk's primary beams from its own channels, so
no chunking short of the whole cube equals serial tclean (mosaic_beams). The run must pick the
chunking no further off than mpicasa's 2 sub-cubes (issue 19: image 28 % of the plane peak, pb 21 %,
psf 1.4 %, 13 of 24 planes), say which planes in the terminal and report.json, and be right about them."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.casa
KEYWORDS = {"gridder": "mosaic", "imsize": [96, 96], "cell": ["30arcsec"], "specmode": "cube",
            "phasecenter": "J2000 12h00m00s +40d00m00s", "datacolumn": "data"}
# mpicasa with 2 servers (sub-cubes of 12) on the same cube, make bench's mosaic part (2026-12-03,
# results/bench-2026-12-03T0738.json): at niter 0 its products and ours are alike to 6 digits (the
# issue's 28 % was another run)
MPICASA = {"image": 0.150, "residual": 0.150, "pb": 0.2105, "psf": 0.01286}
# niter 100 stopped by nmajor after one clean cycle (49 iterations, 2 major cycles, stop code 9 in
# serial, mpicasa and ours): mpicasa's image and residual are off in planes 0-22, ours only in 0-12.
# (niter 100 run to its end, 4 major cycles, is twice the time and stays in make bench: there our
# residual is further off than mpicasa's, docs/correctness.md)
CLEANED = {"niter": 100, "nmajor": 1}
MPICASA_CLEANED = {"image": 0.4976, "residual": 0.6827, "model": 0.004366, "pb": 0.2105, "psf": 0.01286}


@pytest.fixture(scope="module")
def wide_mosaic(tmp_path_factory):
    from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms

    return make_simulated_ms(tmp_path_factory.mktemp("wide") / "wide.ms", SimulatedObservation(
        nchan=24, channel_width_khz=1000, pointings=4, integration_seconds=60, seconds_per_pointing=120))


def _submit(tmp_path, wide_mosaic, **cleaning):
    keywords = dict(KEYWORDS, vis=str(wide_mosaic), imagename="wide", **cleaning)
    (tmp_path / "cube.toml").write_text("[tclean]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keywords.items())
                                        + "[parallel]\nworkers = 2\n")
    result = run_cli("submit", "--site", "local", "--compare-serial", tmp_path / "cube.toml", timeout=1800)
    report = json.loads((tmp_path / "wide.hpcrun" / "report.json").read_text())
    # a mosaic task the memory matrix measured the like of: 1.25 × the model's 2.95 GiB still fits
    # both workers, so no chunk is imaged alone first (it made this cube 102.8 s instead of 55.9 s)
    assert report["probe"] is None and report["plan"]["workers"] == 2
    return result, report


def test_wide_mosaic_is_no_further_off_than_mpicasa_and_says_which_planes(tmp_path, wide_mosaic):
    """475 s at load 10-20 (2 chunks of 12 and serial tclean, 96²); at load 30 it took over 900 s."""
    result, report = _submit(tmp_path, wide_mosaic, niter=0)

    assert report["channels_per_task"] == 12  # the chooser alone picks 3 here: at least 18 planes off
    predicted = report["mosaic_beams"]["planes_off_serial"]
    assert predicted == list(range(13))
    assert "planes 0-12 (13 of 24) at least get other beams than serial tclean" in result.stderr
    compared = report["serial_comparison"]
    for product, worst in MPICASA.items():
        assert compared[product]["max"] <= worst * 1.025, (product, compared[product]["max"])
    for product in ("image", "pb", "psf"):  # here exactly the predicted planes are off
        off = [i for i, d in enumerate(compared[product]["per_plane"]) if d > 1e-5]
        assert off == predicted, (product, off)


def test_wide_mosaic_cleaned_is_no_further_off_than_mpicasa_and_stops_as_serial(tmp_path, wide_mosaic):
    """niter 100, one clean cycle, in whole-cube iteration: the planes with other beams (0-12) are off
    serial in every product, the others equal it, and the run stops where serial tclean does."""
    result, report = _submit(tmp_path, wide_mosaic, **CLEANED)

    assert report["channels_per_task"] == 12 and report["mosaic_beams"]["planes_off_serial"] == list(range(13))
    compared = report["serial_comparison"]
    for product in ("image", "residual", "model", "pb", "psf"):
        assert [i for i, d in enumerate(compared[product]["per_plane"]) if d > 1e-5] == list(range(13)), product
    for product, worst in MPICASA_CLEANED.items():
        assert compared[product]["max"] <= worst * 1.025, (product, compared[product]["max"])
    stop = report["serial_stop"]
    assert stop["iterdone"]["serial"] > 0 and stop["iterdone"]["this run"] == report["tclean_return"]["iterdone"]
    for field in ("iterdone", "nmajordone", "stopcode"):
        assert stop[field]["this run"] == stop[field]["serial"], (field, stop[field])
    assert "largest per-plane difference from serial tclean" in result.stderr
    assert "stopped unlike serial tclean" not in result.stderr
