"""Thousands of channels (issue 21): a 2048-channel cube through the CLI equals serial tclean plane by
plane, and `status` on its run directory answers, while the run goes on and when it is done, in little
CPU (the figures, with one- and two-channel tasks up to 4096 channels: docs/benchmarks.md, "The
channel sweep", `make bench`). Here in tasks of 16 channels: in two-channel tasks (1024 tasks of
about 0.9 s each on 2 workers) the test took 651 s under load 3-15, a task's fixed cost, not the
driver's, more than CI's budget allows."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time

import pytest
from conftest import assert_same_cube

pytestmark = pytest.mark.casa

NCHAN = 2048
CHANNELS_PER_TASK = 16
TASKS = NCHAN // CHANNELS_PER_TASK
# `status`'s own CPU (imports included): 0.18-0.27 s on 512- to 4096-task run directories under load
# 20-30; 0.57-0.79 s when it imported dask and distributed through the imaging modes.
STATUS_CPU_SECONDS = 0.5


def _status(run_dir) -> tuple[dict, float]:
    """``status --json`` in a fresh process: its answer and the CPU seconds it took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "hpc_imager", "status", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return json.loads(out), (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def test_thousands_of_one_or_two_channel_tasks_equal_serial_and_status_answers(tmp_path):
    from casatasks import tclean

    from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms

    # one 30 s integration: 36 MB, so the tasks' fixed cost, not the MS, is what grows
    ms = make_simulated_ms(tmp_path / "sim.ms", SimulatedObservation(nchan=NCHAN, integration_seconds=30,
                                                                     seconds_per_pointing=30))
    keywords = {"vis": str(ms), "specmode": "cube", "imsize": [32, 32], "cell": ["15arcsec"],
                "phasecenter": "J2000 12h00m00s +40d00m00s", "datacolumn": "data", "niter": 0}
    with contextlib.chdir(tmp_path):
        tclean(imagename=str(tmp_path / "serial"), **keywords)
    (tmp_path / "cube.toml").write_text("[tclean]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keywords.items())
                                        + f'imagename = "cube"\n[parallel]\nchannels_per_task = {CHANNELS_PER_TASK}\nworkers = 2\n')
    run_dir = tmp_path / "cube.hpcrun"

    log = tmp_path / "driver.log"  # a file, not a pipe: a thousand tasks' messages would fill one
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", "--site", "local",
                                   str(tmp_path / "cube.toml")], stdout=out, stderr=subprocess.STDOUT)
    try:
        while not ((run_dir / "journal.jsonl").exists() and '"done"' in (run_dir / "journal.jsonl").read_text()):
            assert driver.poll() is None, f"the run ended before status could see it running: {log.read_text()}"
            time.sleep(1)
        running, running_cpu = _status(run_dir)
        driver.wait(timeout=3600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, log.read_text()[-2000:]

    assert running["status"] == "running" and running["chunks"] == TASKS
    assert running["done"] >= 1 and running["done"] + running["running"] + running["pending"] == TASKS
    done, done_cpu = _status(run_dir)
    assert (done["status"], done["done"], done["placed"], done["pending"]) == ("complete", TASKS, TASKS, 0)
    assert running_cpu < STATUS_CPU_SECONDS and done_cpu < STATUS_CPU_SECONDS, (running_cpu, done_cpu)
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["channels"]) == NCHAN and report["channels"][-1]["chunk"] == TASKS - 1
    assert_same_cube(str(tmp_path / "cube"), str(tmp_path / "serial"))
