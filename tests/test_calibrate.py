"""`calibrate` for real on this machine: the fitted model predicts tasks it was not fitted on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, write_cube_toml

from hpc_imager.inputs.site_profile import load_site

pytestmark = pytest.mark.casa


def test_calibration_predicts_unfitted_tasks_within_minus_5_plus_20_percent(tmp_path, ngc5921_ms):
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 16}, {"channels_per_task": 4})
    site = tmp_path / "here.toml"
    shutil.copyfile(Path(__file__).parents[1] / "site_profiles" / "local.toml", site)

    result = run_cli("calibrate", "--site", site, cube, "--sizes", "256x4,1024x4", "--json")
    assert result.stderr == "", "the workers' restarts between samples stay in the calibration's logs"
    fitted = json.loads(result.stdout)

    assert fitted["stored_in"] == str(site)
    assert all(-0.001 <= e <= 0.05 for e in fitted["error_after"]), fitted["error_after"]
    calibration = load_site(str(site)).calibration_for("standard", "hogbom")
    # a worker imaging with casatools alone (niter 0) holds about 0.19 GiB before its task
    assert calibration and 20 < calibration.bytes_per_pixel_channel < 120 and 0.15 < calibration.base_gib < 0.6
    assert "# This machine" in site.read_text(), "the sysadmin's comments are kept"

    unfitted = json.loads(run_cli("calibrate", "--site", site, cube, "--sizes", "512x8,768x4,1024x8",
                                  "--no-write", "--json").stdout)
    # "error before" is the stored calibration's (predicted - measured) / measured on these new tasks
    assert all(-0.05 <= e <= 0.20 for e in unfitted["error_before"]), unfitted["error_before"]
    assert load_site(str(site)).calibration == [calibration], "--no-write leaves the site alone"


def test_calibrate_refuses_to_write_into_a_built_in_site(tmp_path):
    (tmp_path / "cube.toml").write_text('[tclean]\nvis = "x.ms"\nimagename = "c"\n')
    result = run_cli("calibrate", "--site", "local", tmp_path / "cube.toml", check=False)
    assert result.returncode == 2 and "built-in site" in result.stderr
