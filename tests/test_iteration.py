"""Whole-cube iteration control (niter > 0) against whole-cube serial tclean, on NGC5921.

The chunks' steps run in this process (``run_in_process``) so a case costs about two tcleans of a
small cube; one test runs the real CLI with dask workers, is SIGKILLed between cycles and resumed.
Every plane of image, residual and model must be within 1e-5 of its peak, the beams equal, and the
iteration count, major cycles and stop reason equal to what serial tclean returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BASE_TCLEAN, PLANE_TOLERANCE, assert_close, assert_same_cube, run_cli, write_cube_toml

from hpc_imager.imaging import cycle_tasks
from hpc_imager.imaging.channel_grid import Chunk, resolve_grid
from hpc_imager.imaging.imager_records import imager_records
from hpc_imager.imaging.imaging_task import image_chunk_with_tools
from hpc_imager.imaging.iteration import (
    IterationRefused,
    clean_cube,
    cube_iteration_refusal,
    merge_exec,
    merge_init,
    run_in_process,
    weighting_refusal,
)
from hpc_imager.inputs.cube_spec import parse_cube_spec
from hpc_imager.run.concat import CubeAssembly
from hpc_imager.run.journal import Journal

# Six channels at 128² (chunks of 4 and 2): small enough for a few tcleans; their peaks differ
# (1.0-1.3 mJy), so the cube-wide cycle threshold and budget decide where each plane stops.
SMALL = {"imsize": [128, 128], "start": 16, "width": 1, "nchan": 6}
PRODUCTS = ("image", "residual", "model", "psf", "pb")
RETURNED = ("iterdone", "nmajordone", "stopcode", "stopDescription", "cyclethreshold")


@pytest.fixture(scope="module")
def serial_tclean(tmp_path_factory, ngc5921_ms):
    """serial(**keywords) -> (imagename, tclean's return value), one tclean per distinct keywords."""
    from casatasks import tclean

    root = tmp_path_factory.mktemp("serial-iteration")
    made: dict[str, tuple[str, dict]] = {}

    def serial(**keywords):
        params = dict(BASE_TCLEAN, vis=str(ngc5921_ms), **keywords)
        key = json.dumps(params, sort_keys=True)
        if key not in made:
            imagename = str(root / f"serial-{len(made)}")
            with contextlib.chdir(root):
                returned = tclean(imagename=imagename, **params)
            made[key] = (imagename, returned)
        return made[key]

    return serial


def assemble(run_dir: Path, chunks, params: dict) -> None:
    """The chunks' parts into the final cube, as the driver's assembly does after the last chunk."""
    assembly = CubeAssembly(run_dir, chunks, params, None, placed=set())
    for chunk in chunks:
        assembly.arrived(chunk)
    assembly.finish(lambda index: None)


def clean_in_chunks(directory: Path, ms: Path, channels_per_task: int, run_step=run_in_process,
                    **keywords) -> tuple[str, dict]:
    """Whole-cube iteration over chunks in this process; the assembled cube and tclean's summary."""
    imagename = str(directory / "chunked")
    spec = parse_cube_spec({"tclean": dict(BASE_TCLEAN, vis=str(ms), imagename=imagename, **keywords),
                            "parallel": {"channels_per_task": channels_per_task}}, directory)
    params = spec.tclean.model_dump()
    grid = resolve_grid(spec.tclean)
    chunks = grid.chunks(channels_per_task)
    run_dir = directory / "run"
    journal = Journal.create(run_dir, {"fingerprint": spec.fingerprint()})
    with contextlib.chdir(directory):
        summary = clean_cube(params, chunks, grid.nchan, run_dir, journal, run_step)
        assemble(run_dir, chunks, params)
    return imagename, summary


def assert_same_return(got: dict, want: dict):
    for key in RETURNED:
        assert got[key] == pytest.approx(want[key], rel=1e-6) if isinstance(want[key], float) else got[key] == want[key], key


CASES = {
    # niter spent part-way through the cube's third cycle (cycleniter caps each plane per cycle)
    "hogbom, niter budget runs out": dict(niter=420, cycleniter=40),
    # the line channels need more cycles than the edge channels to reach the threshold
    "threshold reached in some channels first": dict(niter=5000, cycleniter=100, threshold="0.75mJy"),
    "multiscale": dict(niter=300, cycleniter=30, deconvolver="multiscale", scales=[0, 3, 8]),
    "nsigma": dict(niter=5000, nsigma=4.0, cycleniter=200),
    "briggs, perchanweightdensity=False": dict(niter=240, cycleniter=30, weighting="briggs", robust=0.5,
                                               perchanweightdensity=False, fullsummary=True),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_cube_iteration_equals_serial_tclean(case, tmp_path, ngc5921_ms, serial_tclean):
    keywords = dict(SMALL, **CASES[case])
    serial, returned = serial_tclean(**keywords)
    chunked, summary = clean_in_chunks(tmp_path, ngc5921_ms, 4, **keywords)  # chunks of 4 and 2
    assert returned["nmajordone"] >= 2 and returned["iterdone"] > 0, "the case must clean"
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)
    # per plane and cycle: iterations exactly, peaks and fluxes to the pixels' own tolerance
    assert_close(summary["summaryminor"], returned["summaryminor"], PLANE_TOLERANCE, "summaryminor")


def test_briggs_weights_are_computed_once_per_chunk_and_the_cube_equals_serial(tmp_path, ngc5921_ms,
                                                                              serial_tclean):
    """Briggs per channel (tclean's default perchanweightdensity): CASA keeps the imaging weights in a
    table in the working directory that its imager deletes on closing; the start step keeps a copy
    beside each chunk's images for the cycles' imagers to read, as serial's one imager reads its own."""
    keywords = dict(SMALL, niter=240, cycleniter=30, weighting="briggs", robust=0.5)
    kept = {}

    def run_step(function, arguments, **step_keywords):
        results = run_in_process(function, arguments, **step_keywords)
        if function is cycle_tasks.start_chunk:
            for _, chunk, run_dir in arguments:
                kept[chunk.index] = list(cycle_tasks.cycle_dir(run_dir, chunk, 0).glob("kept-*/IMAGING_WEIGHT_*"))
        return results

    chunked, summary = clean_in_chunks(tmp_path, ngc5921_ms, 4, run_step=run_step, **keywords)
    assert sorted(kept) == [0, 1] and all(len(tables) == 1 for tables in kept.values()), kept
    serial, returned = serial_tclean(**keywords)
    assert returned["nmajordone"] >= 3, "the case must run cycles after the start"
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)


def test_a_run_killed_between_cycles_resumes_from_its_last_cycle(tmp_path, ngc5921_ms, serial_tclean):
    keywords = dict(SMALL, niter=600, cycleniter=20)  # 120 iterations a cycle: 5 cycles
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"channels_per_task": 4, "workers": 2})
    journal = tmp_path / "cube.hpcrun" / "journal.jsonl"
    driver = subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", "--site", "local", str(cube)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (journal.exists() and journal.read_text().count('"kind": "cycle"') >= 2):
            assert driver.poll() is None and time.time() < deadline, "the driver ended before its second cycle"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    steps_before = [json.loads(line)["step"] for line in journal.read_text().splitlines()
                    if '"iteration step"' in line]
    assert not (tmp_path / "cube.image").exists()

    run_cli("submit", "--site", "local", cube, "--resume", cwd=tmp_path)

    steps = [json.loads(line)["step"] for line in journal.read_text().splitlines() if '"iteration step"' in line]
    assert [s["kind"] for s in steps].count("start") == 1, "--resume started the cleaning over"
    assert steps[:len(steps_before)] == steps_before
    serial, returned = serial_tclean(**keywords)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert_same_return(report["iteration_summary"], returned)
    assert_same_cube(str(tmp_path / "cube"), serial, PRODUCTS)
    # every chunk's peak over the steps the resumed driver ran, against the estimate it was planned with
    assert sorted(m["chunk"] for m in report["chunk_metrics"]) == [0, 1]
    assert all(0.1 * 2**30 < m["peak_rss_bytes"] < 4 * 2**30 and m["estimated_peak_bytes"] > 0
               for m in report["chunk_metrics"])


def _data_channel_frequencies(ms: Path) -> tuple[float, ...]:
    spec = parse_cube_spec({"tclean": dict(BASE_TCLEAN, vis=str(ms), imagename="grid", nchan=-1)}, ms.parent)
    return resolve_grid(spec.tclean).frequencies


def test_default_chunks_of_a_frequency_grid_leave_no_one_channel_chunk(tmp_path, ngc5921_ms, serial_tclean):
    """41 channels given by frequency (on the data's channels) at 64²: the fastest default size (5)
    would leave a last chunk of one channel, which needs a guard channel and which whole-cube
    iteration refuses; the default chooses a size that leaves none, and the cube is cleaned as one."""
    data = _data_channel_frequencies(ngc5921_ms)
    keywords = {"imsize": [64, 64], "start": f"{data[6]!r}Hz", "width": f"{data[1] - data[0]!r}Hz", "nchan": 41,
                "niter": 40, "cycleniter": 10}
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"workers": 2})
    run_cli("submit", "--site", "local", cube, cwd=tmp_path)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["iteration"] == "cube" and report["channels_per_task"] == 3
    serial, returned = serial_tclean(**keywords)
    assert_same_cube(str(tmp_path / "cube"), serial, ("psf", "image", "residual", "model"))
    assert_same_return(report["iteration_summary"], returned)


@pytest.mark.parametrize("keywords, products", [
    ({"restoringbeam": "common"}, ("image", "residual", "model")),
    ({"pbcor": True}, ("image", "image.pbcor", "residual", "model")),
], ids=["restoringbeam common", "pbcor"])
def test_cube_iteration_through_the_cli_restores_as_serial(keywords, products, tmp_path, ngc5921_ms, serial_tclean):
    """Restoration after the cube's last cycle: one common beam chosen over all channels (restored
    again over the assembled cube), or the primary-beam-corrected image, equal to serial's."""
    keywords = dict(SMALL, niter=200, cycleniter=40, **keywords)
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"workers": 2, "channels_per_task": 2})
    run_cli("submit", "--site", "local", cube, cwd=tmp_path)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    serial, returned = serial_tclean(**keywords)
    assert report["iteration"] == "cube" and returned["iterdone"] > 0
    assert_same_cube(str(tmp_path / "cube"), serial, products)
    assert_same_return(report["iteration_summary"], returned)


def test_channels_between_the_datas_are_refused_in_whole_cube_iteration(tmp_path, ngc5921_ms):
    """1.4128 GHz lies between two data channels: serial's major cycle predicts each data channel from
    the model planes on both sides of it (measured with the refusal lifted, 12 channels in chunks of 3:
    image 6 %, residual 9 % of the plane peak from serial, models equal)."""
    keywords = {"imsize": [64, 64], "start": "1.4128GHz", "width": "24.4140625kHz", "nchan": 12, "niter": 40}
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"workers": 2, "channels_per_task": 3})
    result = run_cli("submit", "--site", "local", cube, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not one data channel each" in result.stderr and "iteration = 'per-chunk'" in result.stderr
    assert not (tmp_path / "cube.hpcrun").exists()


def test_perchanweightdensity_false_chunks_equal_serial_at_niter_0(tmp_path, ngc5921_ms, serial_tclean):
    """One density over all selected data: tclean weights before narrowing the selection to the image's
    channels, so every chunk (one of them a single channel) gets the whole cube's weights."""
    keywords = dict(SMALL, nchan=9, weighting="briggs", robust=0.5, perchanweightdensity=False)
    spec = parse_cube_spec({"tclean": dict(BASE_TCLEAN, vis=str(ngc5921_ms), imagename=str(tmp_path / "chunked"),
                                           **keywords)}, tmp_path)
    params = spec.tclean.model_dump()
    chunks = resolve_grid(spec.tclean).chunks(4)
    assert [c.nchan for c in chunks] == [4, 4, 1]
    for chunk in chunks:  # as the driver images chunks at niter 0: casatools alone, from its records
        image_chunk_with_tools(imager_records(params, chunk), chunk, str(tmp_path / "run"), 1)
    assemble(tmp_path / "run", chunks, params)
    serial, _ = serial_tclean(**keywords)
    assert_same_cube(str(tmp_path / "chunked"), serial, ("image", "residual", "psf", "pb", "sumwt"))


# --- merging the chunks' records into serial's one record (pure logic) --------------------------

def _init(peak, sidelobe=0.2, nsigma=0.0, masksum=-1.0, mask_total=0.0):
    return {"peakresidual": peak, "maxpsfsidelobe": sidelobe, "peakresidualnomask": peak, "madrms": 0.0,
            "nsigmathreshold": nsigma, "masksum": masksum, "mask_total": mask_total, "summaryminor": [[]] * 6}


def test_init_records_merge_as_the_whole_cubes():
    merged = merge_init([_init(1.0, 0.3, nsigma=0.4), _init(2.0, 0.2, nsigma=0.1)])
    assert (merged["peakresidual"], merged["maxpsfsidelobe"], merged["nsigmathreshold"]) == (2.0, 0.3, 0.4)
    assert merged["masksum"] == -1.0, "no chunk's mask changed"
    # one chunk's mask changed to empty, another's is unchanged and not empty: the cube's is not empty
    assert merge_init([_init(1.0, masksum=0.0), _init(1.0, masksum=-1.0, mask_total=50.0)])["masksum"] == 50.0
    assert merge_init([_init(1.0, masksum=0.0), _init(1.0, masksum=0.0)])["masksum"] == 0.0
    without = {k: v for k, v in _init(1.0).items() if k != "summaryminor"}  # CASA 6.6.5's initminorcycle
    assert "summaryminor" not in merge_init([without, without])


def test_exec_records_merge_with_cube_channel_numbers():
    def executed(iterations, channels):
        summary = [[float(n) for n in iterations], [0.1] * len(channels), [0.2] * len(channels),
                   [0.05] * len(channels), [0.0] * len(channels), [float(c) for c in channels]]
        return {"iterdone": sum(iterations), "maxcycleiterdone": max(iterations), "peakresidual": 0.1,
                "updatedmodelflag": True, "summaryminor": summary}

    chunks = _chunks(2, 2)
    merged = merge_exec([executed([5, 7], [0, 1]), executed([0, 3], [0, 1])], chunks, block=4)
    assert (merged["iterdone"], merged["maxcycleiterdone"]) == (15, 7)
    assert merged["summaryminor"][5].tolist() == [0, 1, 2, 3]
    assert merged["summaryminor"][0].tolist() == [5, 7, 0, 3]


# --- what cannot be made equal is refused before imaging ----------------------------------------

def _chunks(*sizes: int, guard: int = 0) -> list[Chunk]:
    firsts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [Chunk(i, first, n, first, 1, guard if n == 1 else 0) for i, (first, n) in enumerate(zip(firsts, sizes))]


def test_refusals_say_why_and_what_to_use_instead():
    tclean = {"usemask": "user", "weighting": "natural", "gridder": "mosaic", "psfphasecenter": ""}
    cube_iteration_refusal(tclean, _chunks(4, 4))
    with pytest.raises(IterationRefused, match="psfphasecenter.*per-chunk"):
        cube_iteration_refusal(dict(tclean, psfphasecenter="J2000 12h00m00s +40d00m00s"), _chunks(4, 4))
    with pytest.raises(IterationRefused, match="'awproject'.*per-chunk"):
        cube_iteration_refusal(dict(tclean, gridder="awproject"), _chunks(4, 4))
    weighting_refusal(tclean, _chunks(4, 4))
    with pytest.raises(IterationRefused, match="auto-multithresh.*per-chunk"):
        cube_iteration_refusal(dict(tclean, usemask="auto-multithresh"), _chunks(4, 4))
    with pytest.raises(IterationRefused, match="guard channel.*channels_per_task >= 2"):
        cube_iteration_refusal(tclean, _chunks(4, 1, guard=1))
    with pytest.raises(IterationRefused, match="fractional bandwidth.*weighting='briggs'"):
        weighting_refusal(dict(tclean, weighting="briggsbwtaper"), _chunks(4, 1))
    weighting_refusal(dict(tclean, weighting="briggsbwtaper"), _chunks(9))  # one task: serial's own bandwidth


def test_briggsbwtaper_over_chunks_is_refused_before_anything_runs(tmp_path, ngc5921_ms):
    cube = write_cube_toml(tmp_path, ngc5921_ms, dict(SMALL, nchan=9, weighting="briggsbwtaper", robust=0.5),
                           {"channels_per_task": 4})
    result = run_cli("submit", "--site", "local", cube, cwd=tmp_path, check=False, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("hpc_imager: error: weighting='briggsbwtaper'")
    assert not (tmp_path / "cube.hpcrun").exists()
