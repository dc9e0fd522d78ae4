"""The local engine end to end: `python -m hpc_imager submit --site local` on NGC5921, 2 workers,
against serial tclean on the whole cube with the same keywords."""

from __future__ import annotations

import json

import pytest
from conftest import (
    assert_close,
    assert_same_cube,
    assert_workers_ran_with_speed_environ,
    read_cube,
    run_cli,
    write_cube_toml,
)

pytestmark = pytest.mark.casa

# niter=0: every plane must equal serial tclean on the whole cube.
EQUAL_TO_SERIAL = {
    # 63 channels in chunks of 4: the last chunk has 3.
    "all-channels-short-last-chunk": ({"nchan": -1}, 4),
    "channel-index-start-width": ({"start": 5, "width": 2, "nchan": 20}, 1),
    "frequency-start": ({"start": "1.4131GHz", "width": "48.828125kHz", "nchan": 15}, 4),
    # one-channel chunks two data channels wide need a guard channel (see channel_grid's docstring)
    "frequency-start-chunks-of-1": ({"start": "1.4131GHz", "width": "48.828125kHz", "nchan": 7}, 1),
    # ... but a cube of one channel is serial's own one-channel cube (a guard put it 10 % apart)
    "one-channel-cube": ({"start": "1.4131GHz", "width": "48.828125kHz", "nchan": 1}, 1),
    "radio-velocity-start": (
        {"start": "1550km/s", "width": "-10.3km/s", "nchan": 16, "restfreq": ["1420.405752MHz"], "veltype": "radio"},
        5),  # 5, 5, 5 and a last chunk of 1
    "common-beam": ({"restoringbeam": "common"}, 4),
    # w-projection's planes and its PB made apart from the PSF (casa_imager.ImagerTools.make_psf_and_pb)
    "wproject": ({"gridder": "wproject", "wprojplanes": 16, "start": 20, "nchan": 12}, 4),
}


@pytest.mark.parametrize("case", EQUAL_TO_SERIAL)
def test_cube_equals_serial_tclean(case, tmp_path, ngc5921_ms, serial_reference):
    tclean, channels_per_task = EQUAL_TO_SERIAL[case]
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": channels_per_task, "workers": 2})

    result = run_cli("submit", "--site", "local", cube)

    assert "dashboard http://127.0.0.1:" in result.stderr
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    nchan = report["nchan"]
    assert report["chunks"] == -(-nchan // channels_per_task)
    assert report["status"] == "complete" and report["workers"] == min(2, report["chunks"])
    assert_workers_ran_with_speed_environ(report)
    assert not (tmp_path / "cube.hpcrun" / "parts").exists(), "parts are removed once the cube is assembled"


def test_common_beam_is_one_beam_over_all_channels(tmp_path, ngc5921_ms, serial_reference):
    """Serial's common beam is one beam for the cube, wider than any single channel's."""
    per_plane = read_cube(serial_reference() + ".image")["beams"]
    common = read_cube(serial_reference(restoringbeam="common") + ".image")["beams"]
    assert "beams" in per_plane and "major" in common
    majors = [b["*0"]["major"]["value"] for b in per_plane["beams"].values()]
    assert len(set(majors)) > 1, "NGC5921's channels have different beams, or this test proves nothing"
    assert common["major"]["value"] >= max(majors) * (1 - 1e-6)


def test_assembly_writes_the_pixels_a_bounded_number_of_times(tmp_path, ngc5921_ms):
    """Parts are placed into zero-filled staged images whose tiles span several channels: what the
    placing thread hands to write() is 3.07-3.10 × the product bytes here in every run, also with
    19 GiB of the machine's memory held elsewhere, where the whole process's figure was 5.60 ×.
    imageconcat after the last chunk wrote them once, but on the critical path (docs/benchmarks.md)."""
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 24}, {"channels_per_task": 6, "workers": 2})
    run_cli("submit", "--site", "local", cube)
    concat = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())["concat"]
    cube_bytes = 256 * 256 * 24 * 4  # float32 pixels of one product
    assert concat["product_bytes"] > 5 * cube_bytes  # image, residual, model, psf, pb (+ the small sumwt)
    assert concat["concat_bytes_written"] <= 3.2 * concat["product_bytes"]
    assert 0 < concat["placing_cpu_seconds"] <= concat["placing_seconds"]


def test_refuses_to_overwrite_and_to_reuse_a_run_directory(tmp_path, ngc5921_ms):
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 4}, {"channels_per_task": 2, "workers": 2})
    run_cli("submit", cube)
    image_before = (tmp_path / "cube.image" / "table.f0").stat().st_mtime_ns

    again = run_cli("submit", cube, check=False)
    assert again.returncode == 2
    assert "will not overwrite" in again.stderr and "Traceback" not in again.stderr
    resumed = run_cli("submit", cube, "--resume")
    assert "already complete" in resumed.stderr
    assert (tmp_path / "cube.image" / "table.f0").stat().st_mtime_ns == image_before

    other = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 6}, {"channels_per_task": 2, "workers": 2})
    mismatch = run_cli("submit", other, "--resume", check=False)
    assert mismatch.returncode == 2 and "different cube.toml" in mismatch.stderr


def test_optical_velocity_difference_is_reported_not_hidden(tmp_path, ngc5921_ms, serial_reference):
    """Optical velocities make a tabular axis on which CASA's results depend on the whole axis: the run
    says so, the spectral axis is still serial's, and the difference is measured in report.json."""
    tclean = {"start": "1550km/s", "width": "-10.3km/s", "nchan": 12, "restfreq": ["1420.405752MHz"],
              "veltype": "optical", "outframe": "BARY"}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 6, "workers": 2})
    result = run_cli("submit", cube, "--compare-serial")
    assert "warning: optical-velocity channels" in result.stderr
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["caveats"]
    assert 0 < report["serial_comparison"]["residual"]["max"] < 2e-2
    serial = serial_reference(**tclean)
    for product in ("image", "pb"):
        assert_close(read_cube(f"{tmp_path / 'cube'}.{product}")["spectral"], read_cube(f"{serial}.{product}")["spectral"],
                     1e-12, f"{product} spectral axis")


def test_per_chunk_iteration_each_chunk_equals_serial_on_its_channels(tmp_path, ngc5921_ms, serial_reference):
    """iteration = "per-chunk": each chunk is its own tclean (whole-cube iteration is tests/test_iteration.py);
    the difference from a whole-cube serial run is measured plane by plane in report.json."""
    tclean = {"start": 0, "width": 1, "nchan": 16, "niter": 200, "threshold": "1mJy"}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 8, "workers": 2, "iteration": "per-chunk"})

    run_cli("submit", cube, "--compare-serial")

    whole = read_cube(f"{tmp_path / 'cube'}.image")["pixels"]
    model = read_cube(f"{tmp_path / 'cube'}.model")["pixels"]
    assert abs(model).max() > 0, "the cube was cleaned"
    for first in (0, 8):
        alone = serial_reference(**dict(tclean, start=first, nchan=8))
        want = read_cube(f"{alone}.image")["pixels"]
        got = whole[..., first:first + 8]
        peak = abs(want).max(axis=(0, 1, 2))
        assert (abs(got - want).max(axis=(0, 1, 2)) <= 1e-5 * peak).all(), f"chunk at channel {first}"
    comparison = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())["serial_comparison"]
    assert set(comparison) >= {"image", "residual", "model", "psf", "pb"}
    assert len(comparison["image"]["per_plane"]) == 16
    assert comparison["psf"]["max"] <= 1e-5, "the PSF does not depend on cleaning"
    # status, report.json and report.png of a per-chunk run: each chunk one task, its own tclean's iterations
    status = json.loads(run_cli("status", tmp_path / "cube.hpcrun", "--json").stdout)
    assert (status["mode"], status["status"], status["done"], status["chunks"], status["retried_chunks"]) == (
        "per-chunk", "complete", 2, 2, [])
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    channels = report["channels"]
    assert [c["chunk"] for c in channels] == [0] * 8 + [1] * 8
    assert sum(c["iterations"] for c in channels) == report["tclean_return"]["iterdone"] > 0
    assert len(report["tclean_return"]["stopcodes"]) == 2
    from hpc_imager.run.report_plot import timeline

    assert sorted(b.chunk for b in timeline(tmp_path / "cube.hpcrun") if b.kind == "done") == [0, 1]


