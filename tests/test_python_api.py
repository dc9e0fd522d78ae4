"""``from hpc_imager import tclean`` in a CASA script: serial tclean's return value, its errors as
exceptions, and ``fits=True`` read back."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import BASE_TCLEAN, assert_same_cube

pytestmark = pytest.mark.casa

SMALL = dict(BASE_TCLEAN, imsize=[128, 128], start=16, width=1, nchan=6)
SCRIPT = """\
import json, sys
from hpc_imager import tclean  # the one line a pipeline script changes
returned = tclean(site="local", channels_per_task=2, workers=2, **json.loads(sys.argv[1]))
print(json.dumps({k: v for k, v in returned.items() if k != "summaryminor"}))
print(json.dumps(sorted(returned.get("summaryminor", {}))))
"""


def _script(tmp_path, keywords: dict) -> tuple[dict, list]:
    """Run the script as a user runs a CASA script, in the directory its relative paths are taken from."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "script.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "script.py", json.dumps(keywords)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-2]), json.loads(lines[-1])


def _serial(tmp_path, keywords: dict) -> dict:
    from casatasks import tclean

    with contextlib.chdir(tmp_path):
        return tclean(**keywords)


def test_tclean_returns_serial_tcleans_iterations_and_stop_and_writes_fits(tmp_path, ngc5921_ms):
    keywords = dict(SMALL, vis=str(ngc5921_ms), niter=300, cycleniter=40, imagename="api")
    returned, fields = _script(tmp_path / "ours", dict(keywords, fits=True))
    serial = _serial(tmp_path, dict(keywords, imagename=str(tmp_path / "serial")))
    for key in ("iterdone", "nmajordone", "stopcode", "stopDescription", "niter", "cycleniter"):
        assert returned[key] == serial[key], key
    assert returned["cyclethreshold"] == pytest.approx(serial["cyclethreshold"], rel=1e-6)
    assert fields == sorted(str(k) for k in serial["summaryminor"])
    assert_same_cube(str(tmp_path / "ours" / "api"), str(tmp_path / "serial"), ("image", "residual", "model"))
    # report.json: one record per output channel, as the serial cube's planes and serial's return say
    channels = json.loads((tmp_path / "ours" / "api.hpcrun" / "report.json").read_text())["channels"]
    residual, valid = _pixels(tmp_path / "serial.residual")  # statistics over the unmasked pixels, as CASA's
    mask, _ = _pixels(tmp_path / "serial.mask")
    assert [c["channel"] for c in channels] == list(range(6)) and [c["chunk"] for c in channels] == [0, 0, 1, 1, 2, 2]
    for c in channels:
        plane = residual[:, :, 0, c["channel"]][valid[:, :, 0, c["channel"]]]
        assert c["peak_residual"] == pytest.approx(np.abs(plane).max(), rel=1e-5)
        assert c["rms_residual"] == pytest.approx(np.sqrt(np.mean(plane.astype(float) ** 2)), rel=1e-4)
        assert c["mask_pixels"] == int(mask[:, :, 0, c["channel"]].sum())
        assert c["iterations"] == sum(serial["summaryminor"][0][c["channel"]][0]["iterDone"])
    assert sum(c["iterations"] for c in channels) == serial["iterdone"]
    beams = _serial_beams(tmp_path / "serial.image")
    assert [c["beam"]["major_arcsec"] for c in channels] == pytest.approx(beams, rel=1e-6)
    # the FITS file holds the CASA image's pixels, its masked ones blank (exportfits puts Stokes last)
    fits, casa = _pixels(tmp_path / "ours" / "api.image.fits"), _pixels(tmp_path / "ours" / "api.image")
    fits = fits[0].transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(np.isfinite(fits), casa[1])
    np.testing.assert_array_equal(fits[casa[1]], casa[0][casa[1]])
    assert casa[1].sum() > 0.5 * casa[1].size


def _pixels(path) -> tuple[np.ndarray, np.ndarray]:
    from casatools import image

    ia = image()
    ia.open(str(path))
    try:
        return ia.getchunk(), ia.getchunk(getmask=True)
    finally:
        ia.done()


def test_tclean_at_niter_0_returns_what_serial_returns(tmp_path, ngc5921_ms):
    keywords = dict(SMALL, vis=str(ngc5921_ms), imagename="api")
    returned, fields = _script(tmp_path / "ours", keywords)
    serial = _serial(tmp_path, dict(keywords, imagename=str(tmp_path / "serial")))
    scalars = {k: v for k, v in serial.items() if k != "summaryminor"}
    assert set(returned) == set(scalars)
    for key, want in scalars.items():
        assert returned[key] == pytest.approx(want, rel=1e-6) if isinstance(want, float) else returned[key] == want, key
    assert fields == sorted(str(k) for k in serial["summaryminor"])
    # every plane's summary, which hpc_imager reads a block of planes at a time (run/modes/niter_zero_return.py)
    ours = json.loads((tmp_path / "ours" / "api.hpcrun" / "report.json").read_text())["tclean_return"]["summaryminor"]
    planes = [(f, c, s) for f in serial["summaryminor"] for c in serial["summaryminor"][f]
              for s in serial["summaryminor"][f][c]]
    assert len(planes) == 6
    for f, c, s in planes:
        want = serial["summaryminor"][f][c][s]
        assert {k: pytest.approx(v, rel=1e-6) for k, v in want.items()} == ours[str(f)][str(c)][str(s)], (f, c, s)
    assert serial["summaryminor"][0][5][0]["peakRes"][0] > 0


def test_tclean_raises_the_clis_one_line_errors(tmp_path):
    from hpc_imager import tclean
    from hpc_imager.errors import UserError

    with pytest.raises(UserError, match=r"^unknown keyword 'nitr' in \[tclean\] \(did you mean 'niter'\?\)$"):
        tclean(vis=str(tmp_path / "x.ms"), imagename=str(tmp_path / "x"), nitr=5)
    with pytest.raises(UserError, match="^parallel.workers: Input should be greater than or equal to 1"):
        tclean(vis=str(tmp_path / "x.ms"), imagename=str(tmp_path / "x"), workers=0)


def _serial_beams(path) -> list[float]:
    from casatools import image

    ia = image()
    ia.open(str(path))
    try:
        beams = ia.restoringbeam()["beams"]
    finally:
        ia.done()
    return [beams[f"*{ch}"]["*0"]["major"]["value"] for ch in range(len(beams))]
