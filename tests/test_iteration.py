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
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (BASE_TCLEAN, PLANE_TOLERANCE, assert_close, assert_same_cube, read_cube, run_cli,
                      write_cube_toml)

from hpc_imager.imaging import cycle_tasks
from hpc_imager.imaging.channel_grid import Chunk, resolve_grid
from hpc_imager.imaging.cube_weights import make_cube_weights, wants_cube_weights
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
from hpc_imager.inputs.preflight import check_cube
from hpc_imager.run.concat import CubeAssembly
from hpc_imager.run.journal import Journal

# Six channels at 128² (chunks of 4 and 2): small enough for a few tcleans; their peaks differ
# (1.0-1.3 mJy), so the cube-wide cycle threshold and budget decide where each plane stops.
SMALL = {"imsize": [128, 128], "start": 16, "width": 1, "nchan": 6}
PRODUCTS = ("image", "residual", "model", "psf", "pb")
# cyclefactor 5 and maxpsffraction 0.95 put the cycle threshold near the cube's peak residual, so
# some chunks clean nothing in a cycle while others do (chunk 12-15 in its 7th of 8 cycles).
AUTOMASK_CUBE = dict(imsize=[96, 96], start=16, width=1, nchan=20, niter=1200, cycleniter=20, cyclefactor=5.0,
                     maxpsffraction=0.95, usemask="auto-multithresh", noisethreshold=3.0, sidelobethreshold=1.5,
                     lownoisethreshold=1.0, minbeamfrac=0.1)
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


def clean_in_chunks(directory: Path, ms: Path, channels_per_task: int, run_step=run_in_process, resume=False,
                    **keywords) -> tuple[str, dict]:
    """Whole-cube iteration over chunks in this process (or the rest of it, ``resume``); the assembled
    cube and tclean's summary."""
    imagename = str(directory / "chunked")
    spec = parse_cube_spec({"tclean": dict(BASE_TCLEAN, vis=str(ms), imagename=imagename, **keywords),
                            "parallel": {"channels_per_task": channels_per_task}}, directory)
    params = spec.tclean.model_dump()
    grid = check_cube(spec)  # as the driver: the data's channels decide which chunks need a guard
    chunks = grid.chunks(channels_per_task)
    assert not any(c.guard for c in chunks), "whole-cube iteration cleans no guard channel"
    run_dir = directory / "run"
    journal = (Journal.resume if resume else Journal.create)(run_dir, {"fingerprint": spec.fingerprint()})
    # briggsbwtaper: the whole cube's weights, made as the driver makes them
    cube_weights = str(make_cube_weights(params, run_dir)[0]) if wants_cube_weights(params, chunks) else ""
    with contextlib.chdir(directory):
        summary = clean_cube(params, chunks, grid.nchan, run_dir, journal, run_step, cube_weights=cube_weights)
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


def test_automask_over_many_cycles_equals_serial_tclean_and_resumes(tmp_path, ngc5921_ms, serial_tclean):
    """auto-multithresh, 20 channels in chunks of 4 over 8 cycles, interrupted after its first and
    resumed: every chunk automasks with the cube's PSF sidelobe level and serial's block beam
    (cycle_tasks.AutomaskShare; a resumed run reads them from the journal), and a chunk that cleaned
    nothing in a cycle automasks as after iterations (cycle_tasks._count_iterations). Measured on this
    cube without the count: 21 of its 184 320 mask pixels off; on the same cube at cyclefactor 1
    without the shares 4 (at 160², 15 of 512 000 and one plane's model 12 % of its peak); with both,
    none in every case measured (docs/correctness.md), so the mask must equal serial's."""
    keywords = dict(AUTOMASK_CUBE)

    class Interrupted(Exception):
        pass

    def until_second_cycle(function, arguments, **step_keywords):
        if step_keywords.get("cycle") == 2 and function is cycle_tasks.cycle_chunk:
            raise Interrupted
        return run_in_process(function, arguments, **step_keywords)

    with pytest.raises(Interrupted):
        clean_in_chunks(tmp_path, ngc5921_ms, 4, run_step=until_second_cycle, **keywords)
    chunked, summary = clean_in_chunks(tmp_path, ngc5921_ms, 4, resume=True, **keywords)
    cycles = [json.loads(line)["step"] for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()
              if '"kind": "cycle"' in line]
    assert any(0 in [e["iterdone"] for e in c["records"]["exec"]] for c in cycles[:-1]), \
        "the case must have a chunk that cleans nothing in a cycle before the last"
    serial, returned = serial_tclean(**keywords)
    assert returned["nmajordone"] >= 4 and returned["iterdone"] > 0, "the case must clean over several cycles"
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)
    got, want = read_cube(f"{chunked}.mask")["pixels"], read_cube(f"{serial}.mask")["pixels"]
    assert want.sum() > 0 and (got != want).sum() == 0, f"{(got != want).sum()} mask pixels off"


def test_channels_whose_automasking_stopped_keep_their_mask_as_in_serial(tmp_path, ngc5921_ms, serial_tclean):
    """minpercentchange >= 0: once the cycle threshold is the threshold, serial's deconvolver stops
    automasking a channel whose mask changed by less than that, and skips it in every later automask.
    Each step reads the flags it set from its CASA log; the driver hands them to the chunk's later steps,
    which put those planes' masks back. Measured on this cube (11 major cycles): serial stops all 20
    channels over the cycles; with the flags ignored the chunks' masks were 10 871 pixels off, the model
    62 % of a plane's peak, 3347 iterations in 13 cycles against 3143 in 11; handed on, exact."""
    keywords = dict(AUTOMASK_CUBE, minpercentchange=20.0, threshold="0.5mJy", niter=5000, cyclefactor=1.0)
    chunked, summary = clean_in_chunks(tmp_path, ngc5921_ms, 4, **keywords)
    serial, returned = serial_tclean(**keywords)
    stopped = [json.loads(line)["step"]["automask_stopped"] for line in
               (tmp_path / "run" / "journal.jsonl").read_text().splitlines() if '"kind": "cycle"' in line][-1]
    assert all(channels == [0, 1, 2, 3] for channels in stopped.values()) and len(stopped) == 5, stopped
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)
    got, want = read_cube(f"{chunked}.mask")["pixels"], read_cube(f"{serial}.mask")["pixels"]
    assert want.sum() > 0 and (got != want).sum() == 0, f"{(got != want).sum()} mask pixels off"


def test_one_channel_chunks_of_the_default_frequency_grid_equal_serial_tclean(tmp_path, ngc5921_ms, serial_tclean):
    """All 63 channels (nchan=-1: a frequency grid on the data's channels), one chunk each, as the
    seed's reference job images them: a one-channel cube there is the cube's channel, with no guard
    channel (channel_grid), so every chunk is a plane of serial's cube under the cube's controller."""
    keywords = {"imsize": [64, 64], "cell": ["30arcsec"], "nchan": -1, "niter": 300, "cycleniter": 20}
    serial, returned = serial_tclean(**keywords)
    chunked, summary = clean_in_chunks(tmp_path, ngc5921_ms, 1, **keywords)
    assert returned["nmajordone"] >= 2 and returned["iterdone"] > 0, "the case must clean"
    assert_same_cube(chunked, serial, PRODUCTS)
    assert_same_return(summary, returned)
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
        running = json.loads(run_cli("status", tmp_path / "cube.hpcrun", "--json").stdout)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    # status of a whole-cube run while it cleans: no chunk done before its restore, every chunk in its
    # steps, no step counted as a retry, the cleaning's own progress
    assert (running["mode"], running["status"], running["chunks"], running["done"]) == ("cube", "running", 2, 0)
    assert running["running"] == 2 and running["failed_attempts"] == 0 and running["retried_chunks"] == []
    assert running["progress"]["cycles_done"] >= 2 and running["progress"]["iterdone"] >= 240
    assert running["eta_seconds"] is None and len(running["workers_seen"]) >= 1
    stopped = run_cli("status", tmp_path / "cube.hpcrun").stdout
    assert "): stopped" in stopped.splitlines()[0] and "cleaning: " in stopped
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
    assert all(m["hosts"] == [socket.gethostname()] for m in report["chunk_metrics"]), "where its steps ran"
    finished = json.loads(run_cli("status", tmp_path / "cube.hpcrun", "--json").stdout)
    assert (finished["status"], finished["done"], finished["running"], finished["placed"]) == ("complete", 2, 0, 2)
    assert finished["failed_attempts"] == 0 and finished["progress"]["restored"]
    assert finished["progress"]["iterdone"] == returned["iterdone"]
    text = run_cli("status", tmp_path / "cube.hpcrun").stdout
    assert f"{returned['iterdone']} iterations" in text and "2 done, 0 running" in text
    from hpc_imager.run.report_plot import timeline

    bars = timeline(tmp_path / "cube.hpcrun")  # every chunk's steps, the cycles and the restore among them
    assert {(b.chunk, b.step) for b in bars if b.step in ("restore", "cycle 3")} == {
        (0, "restore"), (1, "restore"), (0, "cycle 3"), (1, "cycle 3")}
    assert all(b.kind == "step" and b.row.startswith(("0", "1")) for b in bars)
    assert (tmp_path / "cube.hpcrun" / "report.png").read_bytes()[:4] == b"\x89PNG"


def _data_channel_frequencies(ms: Path) -> tuple[float, ...]:
    spec = parse_cube_spec({"tclean": dict(BASE_TCLEAN, vis=str(ms), imagename="grid", nchan=-1)}, ms.parent)
    return resolve_grid(spec.tclean).frequencies


def test_a_frequency_grid_on_the_datas_channels_cleans_a_last_chunk_of_one_channel(tmp_path, ngc5921_ms,
                                                                                   serial_tclean):
    """13 channels given by frequency (on the data's channels) at 64², through the CLI with workers:
    the fastest default size (4: two tasks a worker, a short share) leaves a last chunk of one channel,
    which needs no guard channel on such a grid (channel_grid), and whole-cube iteration cleans it with
    the rest, equal to serial."""
    data = _data_channel_frequencies(ngc5921_ms)
    keywords = {"imsize": [64, 64], "start": f"{data[6]!r}Hz", "width": f"{data[1] - data[0]!r}Hz", "nchan": 13,
                "niter": 40, "cycleniter": 10}
    cube = write_cube_toml(tmp_path, ngc5921_ms, keywords, {"workers": 2})
    run_cli("submit", "--site", "local", cube, cwd=tmp_path)
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["iteration"] == "cube" and report["channels_per_task"] == 4 and report["chunks"] == 4
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

def _chunks(*sizes: int) -> list[Chunk]:
    firsts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [Chunk(i, first, n, first, 1) for i, (first, n) in enumerate(zip(firsts, sizes))]


def test_refusals_say_why_and_what_to_use_instead():
    tclean = {"usemask": "user", "weighting": "natural", "gridder": "mosaic", "psfphasecenter": "",
              "perchanweightdensity": True}
    cube_iteration_refusal(tclean, _chunks(4, 4))
    with pytest.raises(IterationRefused, match="psfphasecenter.*per-chunk"):
        cube_iteration_refusal(dict(tclean, psfphasecenter="J2000 12h00m00s +40d00m00s"), _chunks(4, 4))
    with pytest.raises(IterationRefused, match="'awproject'.*per-chunk"):
        cube_iteration_refusal(dict(tclean, gridder="awproject"), _chunks(4, 4))
    weighting_refusal(tclean, _chunks(4, 4), "cube")
    automask = dict(tclean, usemask="auto-multithresh", imsize=[1024, 1024], minpercentchange=-1.0, nsigma=0.0)
    cube_iteration_refusal(automask, _chunks(5, 5, 5, 5))  # serial automasks blocks of 10 channels at 1024²
    with pytest.raises(IterationRefused, match="blocks of 10 channels.*channels 8-11.*divides 10"):
        cube_iteration_refusal(automask, _chunks(4, 4, 4, 4))
    cube_iteration_refusal(dict(automask, imsize=[128, 128]), _chunks(4, 4, 4, 4))  # one block of 488 at 128²
    cube_iteration_refusal(dict(automask, minpercentchange=1.0), _chunks(5, 5))  # the stop flags are handed on
    with pytest.raises(IterationRefused, match="minpercentchange >= 0 and nsigma > 0.*per-chunk"):
        cube_iteration_refusal(dict(automask, minpercentchange=1.0, nsigma=3.0), _chunks(5, 5))
    cube_iteration_refusal(tclean, _chunks(4, 1))  # a one-channel chunk (no guard: channel_grid)
    bwtaper = dict(tclean, weighting="briggsbwtaper")
    for iteration in ("none", "cube"):  # the whole cube's weights are handed to casatools' steps
        weighting_refusal(bwtaper, _chunks(4, 1), iteration)
    with pytest.raises(IterationRefused, match="fractional bandwidth.*own tclean call.*per-chunk iteration"):
        weighting_refusal(bwtaper, _chunks(4, 1), "per-chunk")
    with pytest.raises(IterationRefused, match="fractional bandwidth.*own tclean call.*'awproject'"):
        weighting_refusal(dict(bwtaper, gridder="awproject"), _chunks(4, 1), "none")
    with pytest.raises(IterationRefused, match="perchanweightdensity=True"):
        weighting_refusal(dict(bwtaper, perchanweightdensity=False), _chunks(4, 1), "none")
    weighting_refusal(bwtaper, _chunks(9), "per-chunk")  # one task: serial's own bandwidth


def test_briggsbwtaper_in_per_chunk_iteration_is_refused_before_anything_runs(tmp_path, ngc5921_ms):
    """Each chunk's own tclean call cannot be handed the cube's weights (only casatools' steps are)."""
    cube = write_cube_toml(tmp_path, ngc5921_ms, dict(SMALL, nchan=9, niter=50, weighting="briggsbwtaper", robust=0.5),
                           {"channels_per_task": 4, "iteration": "per-chunk"})
    result = run_cli("submit", "--site", "local", cube, cwd=tmp_path, check=False, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("hpc_imager: error: weighting='briggsbwtaper'")
    assert "per-chunk iteration" in result.stderr
    assert not (tmp_path / "cube.hpcrun").exists()
