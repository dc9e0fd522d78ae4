"""The cube is checked the way tclean would check it before any worker starts (real CASA, real NGC5921);
an error inside CASA during a task names the chunk, its channels and CASA's own message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_cube_toml

from hpc_imager.inputs.cube_spec import CubeSpecError, parse_cube_spec
from hpc_imager.inputs.preflight import check_cube

SMALL = {"field": "2", "imsize": [64, 64], "cell": ["30arcsec"]}


def spec_for(ms: Path, **tclean):
    return parse_cube_spec({"tclean": {"vis": str(ms), "imagename": "/nonexistent/cube", **SMALL, **tclean}}, ms.parent)


@pytest.mark.casa
@pytest.mark.parametrize("tclean, message", [
    ({"vis": "missing.ms"}, "vis: {dir}/missing.ms: no such MeasurementSet"),
    ({"vis": "cube.toml"}, "vis: {dir}/cube.toml is not a MeasurementSet"),
    ({"vis": "broken.ms"}, "vis: {dir}/broken.ms cannot be opened: "),
    ({"vis": "image.im"}, "vis: {dir}/image.im is a CASA table of type 'Image', not a MeasurementSet"),
    ({"field": "7"}, "field='7': Field Expression: Partial or no match for Field ID list [7]"),
    ({"field": "NGC9999"}, 'field=\'NGC9999\': Field Expression: No match found for name "NGC9999"'),
    ({"spw": "3"}, "spw='3': Spw Expression: No match found for 3"),
    ({"timerange": "2099/01/01~2099/01/02"}, "timerange='2099/01/01~2099/01/02' selects no data in"),
    ({"timerange": "yesterday"}, "timerange='yesterday': MSSelection time error"),
    ({"uvrange": ">1e9m"}, "uvrange='>1e9m' selects no data in"),
    ({"antenna": "VA99"}, 'antenna=\'VA99\': Antenna Expression: No match found for token(s) "VA99"'),
    ({"scan": "99"}, "scan='99' selects no data in"),
    ({"intent": "CALIBRATE_BANDPASS*"}, "intent='CALIBRATE_BANDPASS*' selects no data in"),
    ({"observation": 5}, "observation='5' selects no data in"),
    ({"field": "0", "scan": "7"}, "field='0', scan='7': each selects data in"),
    ({"weighting": "briggs2"}, "weighting: 'briggs2' is not one of tclean's values: briggs, briggsabs, briggsbwtaper,"),
    ({"gridder": "mosiac"}, "gridder: 'mosiac' is not one of tclean's values:"),
    ({"robust": 3.0}, "robust: 3.0 is outside tclean's range -2.0 to 2.0"),
    ({"imsize": [-64, 64]}, "imsize: image sizes must be positive numbers of pixels, got [-64, 64]"),
    ({"imsize": [0]}, "imsize: image sizes must be positive"),
    ({"cell": ["15arcsex"]}, "cell: '15arcsex' is not an angle like '15arcsec'"),
    ({"cell": "15GHz"}, "cell: '15GHz' is not an angle"),
    ({"cell": [0.0]}, "cell: cell sizes must be positive"),
    ({"phasecenter": "J2000 nonsense"}, "phasecenter: 'J2000 nonsense' is not a field id or a direction"),
    ({"phasecenter": "B1850 15h22m00 +05d04m00"}, "phasecenter: unknown direction frame 'B1850'"),
    ({"phasecenter": 9}, "phasecenter: field 9 is not in"),
    ({"start": 60, "nchan": 10}, "start=60, width='', nchan=10: output channel(s) 3-9 of 10 lie outside the selected data (63 channels"),
    ({"nchan": 100, "start": 0, "width": 1}, "output channel(s) 63-99 of 100 lie outside the selected data"),
    ({"spw": "0:10~20", "start": 5, "nchan": 20}, "output channel(s) 0-4, 16-19 of 20 lie outside the selected data (11 channels"),
    ({"start": "1500km/s", "width": "10km/s", "nchan": 20}, "output channel(s) 14-19 of 20 lie outside"),
    ({"start": 80, "nchan": 10}, "start=80: the selected data have channels 0-62"),
    ({"start": "3000km/s", "width": "10km/s", "nchan": 10}, "start='3000km/s' lies outside the selected data: CASA would silently start the cube at 1.412866 GHz"),
    ({"start": "1.3GHz", "nchan": 10}, "start='1.3GHz' lies outside the selected data: CASA would silently start the cube at 1.412665 GHz"),
])
def test_a_cube_tclean_would_reject_is_one_line_naming_the_keyword(ngc5921_ms, tmp_path, tclean, message):
    data = tmp_path / "data"
    data.mkdir()
    ms = data / "ngc5921.ms"
    ms.symlink_to(ngc5921_ms)
    (data / "cube.toml").write_text("[tclean]\n")
    (data / "broken.ms").mkdir()
    (data / "broken.ms" / "table.dat").write_text("not a table")
    if tclean.get("vis") == "image.im":
        from casatools import image

        ia = image()
        ia.fromshape(str(data / "image.im"), [4, 4, 1, 1])
        ia.done()
    with pytest.raises(CubeSpecError) as refused:
        check_cube(spec_for(ms, **tclean))
    assert message.format(dir=data) in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.casa
def test_blank_channels_are_imaged_when_asked_and_the_grid_is_handed_on(ngc5921_ms):
    asked = spec_for(ngc5921_ms, start=60, nchan=10)
    allowed = asked.model_copy(update={"run": asked.run.model_copy(update={"allow_blank_channels": True})})
    grid = check_cube(allowed)
    assert (grid.nchan, grid.kind, grid.start) == (10, "channel", 60)
    assert len(grid.frequencies) == 10 and grid.frequencies[1] - grid.frequencies[0] == pytest.approx(24414.0625)
    whole = check_cube(spec_for(ngc5921_ms))
    assert whole.nchan == 63 and whole.kind == "frequency"
    optical = check_cube(spec_for(ngc5921_ms, start="1550km/s", width="-10.3km/s", nchan=12, veltype="optical",
                                  restfreq=["1420.405752MHz"], outframe="BARY"))
    assert (optical.nchan, optical.kind, optical.linear) == (12, "velocity", False)


@pytest.mark.casa
def test_an_error_inside_casa_names_the_chunk_its_channels_and_casas_message(ngc5921_ms, tmp_path):
    """uvtaper is read by tclean only while imaging: the chunk fails with CASA's own first line, the run
    exits 1 and report.json keeps the same message."""
    cube = write_cube_toml(tmp_path, ngc5921_ms, {**SMALL, "uvtaper": ["bogus"], "nchan": 4, "start": 10},
                           {"channels_per_task": 2, "workers": 1, "retries": 0})
    result = run_cli("submit", "--site", "local", cube, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    # at niter 0 a chunk is tclean's own steps on casatools (imaging/casa_imager.py): 'imaging failed'
    casa_says = 'imaging failed: Error in QuantumHolder::fromString with input string "bogus"'
    failed = [line for line in result.stderr.splitlines() if "chunk-00000 (channels 0-1) failed on attempt 1" in line]
    assert failed and casa_says in failed[0], result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hpc_imager: error: channels 0-1, 2-3 failed every try") and casa_says in last, last
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    failures = {f["chunk"]: f for f in report["failures"]}
    assert failures[1]["channels"] == "2-3" and casa_says in failures[1]["error"]
    assert report["status"] == "incomplete" and report["missing_channels"] == [0, 1, 2, 3]


@pytest.mark.casa
@pytest.mark.parametrize("command", ["submit", "plan", "estimate"])
@pytest.mark.parametrize("tclean, named", [
    ({"vis": "nowhere.ms"}, "nowhere.ms: no such MeasurementSet"),
    ({"field": "NGC9999"}, "field='NGC9999': "),
    ({"cell": ["15arcsex"]}, "cell: '15arcsex' is not an angle"),
    ({"start": 60, "nchan": 10}, "[run] allow_blank_channels = true"),
])
def test_preflight_runs_before_any_worker_through_the_cli(ngc5921_ms, tmp_path, command, tclean, named):
    tclean = dict(tclean)
    vis = tclean.pop("vis", None)
    cube = write_cube_toml(tmp_path, ngc5921_ms, {**SMALL, **tclean}, {"channels_per_task": 2})
    if vis:
        cube.write_text(cube.read_text().replace('vis = "ngc5921.ms"', f'vis = "{vis}"'))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(command, "--site", "local", cube, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc_imager: error: ") and named in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no run directory, no output"
