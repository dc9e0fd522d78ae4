"""Shared fixtures: the real NGC5921 MS, serial tclean references, the real CLI, cube comparison."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hpc_imager.imaging import casa_setup

casa_setup.configure_offline()

BASE_TCLEAN = {
    "field": "2",
    "specmode": "cube",
    "imsize": [256, 256],
    "cell": ["15arcsec"],
    "weighting": "natural",
    "niter": 0,
}
PLANE_TOLERANCE = 1e-5  # of each plane's peak


@pytest.fixture(scope="session")
def ngc5921_ms(tmp_path_factory) -> Path:
    from hpc_imager.demo import make_ngc5921_ms

    return make_ngc5921_ms(tmp_path_factory.mktemp("data") / "ngc5921.ms")


@pytest.fixture(scope="session")
def serial_reference(tmp_path_factory, ngc5921_ms):
    """serial(**tclean_keywords) -> imagename of serial tclean with those keywords (cached per session)."""
    from casatasks import tclean

    root = tmp_path_factory.mktemp("serial")
    made: dict[str, str] = {}

    def serial(**keywords) -> str:
        params = dict(BASE_TCLEAN, vis=str(ngc5921_ms), **keywords)
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
        if key not in made:
            imagename = str(root / key)
            with contextlib.chdir(root):
                tclean(imagename=imagename, **params)
            made[key] = imagename
        return made[key]

    return serial


def write_cube_toml(directory: Path, ms: Path, tclean: dict, parallel: dict) -> Path:
    """A cube.toml as a user writes it: paths relative to the file."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "ngc5921.ms"
    if not link.exists():
        link.symlink_to(ms)

    def value(v):
        return json.dumps(v)  # TOML's strings, numbers and arrays read like JSON's

    lines = ["[tclean]", 'vis = "ngc5921.ms"', 'imagename = "cube"']
    lines += [f"{k} = {value(v)}" for k, v in dict(BASE_TCLEAN, **tclean).items()]
    lines += ["", "[parallel]"] + [f"{k} = {value(v)}" for k, v in parallel.items()]
    path = directory / "cube.toml"
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    return path


def run_cli(*args, env: dict | None = None, cwd: Path | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m hpc_imager ARGS`` in a fresh process, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "hpc_imager", *map(str, args)], capture_output=True,
                            text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def submit_killed_with_sigkill(args: list, when: Callable[[], bool], timeout: float = 300) -> None:
    """``python -m hpc_imager submit ARGS`` as a user starts it, SIGKILLed once ``when()`` holds, with
    its local workers (its session: they outlive the driver briefly and must not reach the next test)."""
    driver = subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", *map(str, args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not when():
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.time() < deadline, "no progress in the journal"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def read_cube(imagename: str) -> dict:
    """Pixels, spectral axis and beams of a CASA image."""
    from casatools import image

    ia = image()
    ia.open(imagename)
    try:
        spectral = ia.coordsys().torecord()
        spec = next(v for k, v in spectral.items() if k.startswith("spectral"))
        return {
            "pixels": ia.getchunk(),
            "spectral": spec.get("wcs") or {"tabular": list(spec["tabular"]["worldvalues"])},
            "frame": spec["system"],
            "beams": ia.restoringbeam(),
        }
    finally:
        ia.done()


def assert_same_cube(parallel: str, serial: str, products=("image", "residual", "psf", "pb", "sumwt")):
    """Every plane within PLANE_TOLERANCE of its peak; same spectral axis; same beams."""
    for product in products:
        got, want = read_cube(f"{parallel}.{product}"), read_cube(f"{serial}.{product}")
        assert got["pixels"].shape == want["pixels"].shape, product
        axes = tuple(range(want["pixels"].ndim - 1))
        peak = np.abs(want["pixels"]).max(axis=axes)
        diff = np.abs(got["pixels"] - want["pixels"]).max(axis=axes)
        bad = [i for i, (d, p) in enumerate(zip(diff, peak)) if d > PLANE_TOLERANCE * max(p, 1e-30)]
        assert not bad, f".{product}: planes {bad} differ from serial (max {diff.max()} vs peak {peak.max()})"
        assert_close(got["spectral"], want["spectral"], 1e-12, f".{product} spectral axis")
        assert got["frame"] == want["frame"], product
        if product == "image":
            assert_close(got["beams"], want["beams"], 1e-6, "restoring beams")


def _flatten(record, path=""):
    if isinstance(record, dict):
        for key in sorted(record):
            yield from _flatten(record[key], f"{path}/{key}")
    elif isinstance(record, (list, tuple, np.ndarray)):
        for i, item in enumerate(record):
            yield from _flatten(item, f"{path}[{i}]")
    else:
        yield path, record


def assert_close(got, want, rel: float, what: str):
    """Nested CASA records equal: numbers to ``rel``, everything else exactly."""
    got_items, want_items = dict(_flatten(got)), dict(_flatten(want))
    assert got_items.keys() == want_items.keys(), f"{what}: different fields"
    for key, value in want_items.items():
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            assert got_items[key] == pytest.approx(value, rel=rel, abs=1e-300), f"{what}{key}"
        else:
            assert got_items[key] == value, f"{what}{key}"


def assert_workers_ran_with_speed_environ(report: dict) -> None:
    """Every chunk ran in a worker with one OpenMP thread and without dask's MALLOC_TRIM_THRESHOLD_
    (it makes CASA's image-sized buffers fresh mmaps: the run 12 % slower, see backends/base.py), and
    at niter 0 without loading casatasks."""
    environs = [m["worker_environ"] for m in report["chunk_metrics"]]
    assert environs and all(e == {"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None} for e in environs), environs
    if report["cube"]["niter"] == 0:  # casatools alone (imaging/imager_records.py): casatasks costs a worker seconds
        assert not any(m["casatasks_loaded"] for m in report["chunk_metrics"])
