"""Memory truth for real: the probe through the CLI, a mosaic cube on a shared site with limits sized
from the probe (and equal to serial), and a site calibrated from finished runs' reports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import assert_same_cube, assert_workers_ran_with_speed_environ, run_cli, write_cube_toml

from hpc_imager.inputs.site_profile import load_site

pytestmark = pytest.mark.casa
GIB = 2**30


def test_estimate_probe_prints_the_measured_peak(tmp_path, ngc5921_ms):
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 8}, {"channels_per_task": 4})
    result = run_cli("estimate", "--probe", cube)
    measured = re.search(r"probe: one task took ([0-9.]+) GiB \(the default model said ([0-9.]+) GiB\)", result.stderr)
    assert measured, result.stderr
    assert 0.2 < float(measured[1]) < 2.0
    assert "(probe model for local)" in result.stdout
    estimated = float(re.search(r": ([0-9.]+) GiB peak", result.stdout)[1])
    assert estimated == pytest.approx(float(measured[1]) * 1.05, abs=0.011)
    assert not (tmp_path / "cube.hpcrun.probe").exists() and not (tmp_path / "cube.hpcrun").exists()


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, ngc5921_ms):
    directory = tmp_path_factory.mktemp("probed")
    cube = write_cube_toml(directory, ngc5921_ms, {"nchan": 12}, {"channels_per_task": 4, "workers": 2})
    run_cli("submit", "--site", "local", "--probe", cube)
    return directory / "cube.hpcrun"


def test_submit_with_probe_records_it_and_plans_from_it(probed_run):
    report = json.loads((probed_run / "report.json").read_text())
    probe = report["probe"]
    assert probe["chunk"] == 0 and probe["measured_by_this_run"]
    assert len(probe["plans"]) == 1 and probe["plans"][0]["workers"] == 1  # the probe ran alone
    probe_metrics = next(m for m in report["chunk_metrics"] if m["chunk"] == 0)
    assert probe["estimate"]["task_peak_gib"] == pytest.approx(probe_metrics["peak_rss_bytes"] * 1.05 / GIB)
    assert report["plan"]["estimate_model"] == "probe"
    assert report["plan"]["task_peak_gib"] == pytest.approx(probe["estimate"]["task_peak_gib"])
    assert report["plan"]["chunks"] == 2  # the rest
    assert sorted(m["chunk"] for m in report["chunk_metrics"]) == [0, 1, 2]
    for m in report["chunk_metrics"]:
        assert m["estimated_peak_bytes"] > 0 and m["channels"] == 4
    assert report["estimate"]["model"] == "default" and report["cube"]["gridder"] == "standard"


def test_calibrate_from_a_finished_runs_report(tmp_path, probed_run):
    site = tmp_path / "here.toml"
    shutil.copyfile(Path(__file__).parents[1] / "hpc_imager" / "site_profiles" / "local.toml", site)
    fitted = json.loads(run_cli("calibrate", "--site", site, "--from-reports", probed_run, "--json").stdout)
    (calibration,) = fitted["calibrations"]
    assert (calibration["gridder"], calibration["deconvolver"]) == ("standard", "hogbom")
    report = json.loads((probed_run / "report.json").read_text())
    peaks = [m["peak_rss_bytes"] / GIB for m in report["chunk_metrics"]]
    predicted = calibration["base_gib"] + calibration["bytes_per_pixel_channel"] * 256 * 256 * 4 / GIB
    assert max(peaks) - 1e-6 <= predicted <= 1.2 * max(peaks)  # covers every chunk, not far over
    assert load_site(str(site)).calibration_for("standard", "hogbom").base_gib == calibration["base_gib"]


def test_calibrate_from_reports_refuses_what_is_not_a_report(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    result = run_cli("calibrate", "--site", "local", "--no-write", "--from-reports", tmp_path, check=False)
    assert result.returncode == 2 and "not a run report" in result.stderr


def test_mosaic_cube_on_a_shared_site_sized_by_its_probe_equals_serial_as_predicted(tmp_path):
    """The mosaic gridder's convolution-function caches are what the default model knows least: the
    probe measures them, and no task goes over its worker's limit, nothing is retried for memory, and
    the limits are within 20 % of what the tasks took. It picks its primary beams' frequencies from
    each image's own data channels: on 9 channels of 100 kHz one beam serves the cube and every chunk
    of 3 or more (an image of 1 or 2 channels gets one per channel), so mosaic_beams predicts no plane
    off, the run warns of none, and the cube equals serial tclean's. (One test for both: every mosaic
    step costs ~20 s of convolution functions at any image size at 15 arcsec, an FFT of ~3600², perf; at
    30 arcsec a 3-channel tclean took 45.5 s against 69.4 s, one thread.)"""
    import contextlib

    from casatasks import tclean

    from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms

    ms = make_simulated_ms(tmp_path / "mosaic.ms", SimulatedObservation(
        nchan=9, pointings=4, integration_seconds=60, seconds_per_pointing=120))
    keywords = {"vis": str(ms), "gridder": "mosaic", "imsize": [96, 96], "cell": ["30arcsec"],
                "phasecenter": "J2000 12h00m00s +40d00m00s", "datacolumn": "data", "specmode": "cube"}
    with contextlib.chdir(tmp_path):
        tclean(imagename=str(tmp_path / "serial"), **keywords)
    (tmp_path / "shared.toml").write_text(
        'description = "this machine, limits as on a shared node"\nscheduler = "local"\nnode_cores = 2\n'
        'node_memory = "auto"\nmemory_policy = "shared"\nwalltime_default = "01:00:00"\nwalltime_max = "02:00:00"\n')
    (tmp_path / "cube.toml").write_text("[tclean]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keywords.items())
                                        + 'imagename = "mosaic"\n[parallel]\nchannels_per_task = 3\n')
    result = run_cli("submit", "--site", tmp_path / "shared.toml", tmp_path / "cube.toml", timeout=1200)

    report = json.loads((tmp_path / "mosaic.hpcrun" / "report.json").read_text())
    assert report["status"] == "complete" and report["probe"]["measured_by_this_run"]
    assert "mosaic gridder" not in result.stderr and report["caveats"] == []
    assert report["mosaic_beams"]["planes_off_serial"] == []
    assert_same_cube(str(tmp_path / "mosaic"), str(tmp_path / "serial"),
                     ("image", "residual", "psf", "pb", "sumwt", "weight"))
    assert_workers_ran_with_speed_environ(report)
    assert report["memory_retries"] == [] and report["failures"] == []
    assert len(report["probe"]["plans"]) == 1, "the probe itself was not retried with more memory"
    limit = report["plan"]["worker_memory_limit_bytes"]
    rest = [m for m in report["chunk_metrics"] if m["chunk"] != report["probe"]["chunk"]]
    assert len(rest) == 2
    for m in rest:
        assert m["peak_rss_bytes"] < 0.95 * limit  # under the nanny's terminate threshold
        assert limit <= 1.2 * m["peak_rss_bytes"], (limit, m["peak_rss_bytes"])
    probe_limit = report["probe"]["plans"][0]["worker_memory_limit_bytes"]
    probe_metrics = next(m for m in report["chunk_metrics"] if m["chunk"] == report["probe"]["chunk"])
    assert probe_metrics["peak_rss_bytes"] < 0.95 * probe_limit
