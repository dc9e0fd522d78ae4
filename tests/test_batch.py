"""Through real batch systems on localhost: Slurm, SGE, and PBS syntax over Slurm's Torque wrappers.

.ci/run starts them (shared/ci/start-*.sh). Where one is absent a test skips with the reason,
except under CI, where an absent scheduler fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import assert_same_cube, assert_workers_ran_with_speed_environ, run_cli, write_cube_toml

SITES = Path(__file__).with_name("sites")
PBS_WRAPPERS = Path(os.environ.get("PBS_SHIM_DIR", "/tmp/local-hpc/pbs/bin"))
pytestmark = pytest.mark.casa


def _answers(command: list[str]) -> bool:
    try:
        return shutil.which(command[0]) is not None and subprocess.run(
            command, capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def need(scheduler: str, available: bool):
    if not available:
        reason = f"{scheduler} is not running on this machine (.ci/run starts it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {scheduler} tests: {reason}")
        pytest.skip(reason)


@pytest.fixture
def slurm():
    need("slurm", _answers(["sinfo", "-h"]))
    return SITES / "ci-slurm.toml"


@pytest.fixture
def sge():
    need("sge", _answers(["qstat"]) and shutil.which("qconf") is not None)
    return SITES / "ci-sge.toml"


@pytest.fixture
def pbs():
    need("pbs wrappers", (PBS_WRAPPERS / "qsub").exists() and _answers(["sinfo", "-h"]))
    return SITES / "ci-pbs.toml"


def our_slurm_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "hpc-imager", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def journal_done(run_dir: Path) -> int:
    path = run_dir / "journal.jsonl"
    return sum('"done"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def start_driver(site: Path, cube: Path, **popen) -> subprocess.Popen:
    """`submit` in the background, as a user's terminal or a batch job runs it."""
    return subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", "--site", str(site), str(cube)],
                            cwd=cube.parent, **popen)


def wait_until_done(driver: subprocess.Popen, run_dir: Path, chunks: int) -> None:
    deadline = time.time() + 180
    while journal_done(run_dir) < chunks:
        assert driver.poll() is None and time.time() < deadline, "the run did not get going"
        time.sleep(0.2)


def cancel_jobs_mid_run(driver: subprocess.Popen, wait: Callable[[], None], jobs: int, timeout: float,
                        cancel: int = 1) -> list[str]:
    """After ``wait()``, scancel ``cancel`` of the run's ``jobs`` Slurm jobs and let the driver finish
    (it must succeed, having said it replaced each); the cancelled jobs' ids."""
    try:
        wait()
        running = our_slurm_jobs()
        assert len(running) == jobs
        subprocess.run(["scancel", *running[:cancel]], check=True)
        _, stderr = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    for job in running[:cancel]:
        assert f"batch job {job} has had no worker" in stderr, stderr
    return running[:cancel]


def single_worker_jobs(site: Path, tmp_path: Path) -> Path:
    """The same site with one worker per job, so a run has several jobs to lose."""
    copy = tmp_path / f"{site.stem}-1.toml"
    copy.write_text(site.read_text().replace("node_cores = 8", "node_cores = 1"))
    return copy


def jobs_in_queue(scheduler: str) -> bool:
    if scheduler == "slurm":
        return bool(our_slurm_jobs())
    return "hpc-imager" in subprocess.run(["qstat"], capture_output=True, text=True).stdout


def assert_no_job_left(scheduler: str = "slurm", within: float = 15) -> None:
    """scancel/qdel are asynchronous: a job may show as completing or being deleted for a moment."""
    deadline = time.time() + within
    while jobs_in_queue(scheduler) and time.time() < deadline:
        time.sleep(0.5)
    assert not jobs_in_queue(scheduler), f"none of the run's jobs may be left in the {scheduler} queue"


@pytest.mark.parametrize("scheduler", [pytest.param("slurm", marks=pytest.mark.slurm),
                                       pytest.param("sge", marks=pytest.mark.sge)])
def test_cube_equals_serial(scheduler, request, tmp_path, ngc5921_ms, serial_reference):
    site = request.getfixturevalue(scheduler)
    tclean = {"nchan": 16}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    result = run_cli("submit", "--site", site, cube, cwd=tmp_path)
    assert f"site ci-{scheduler} ({scheduler}, shared)" in result.stderr
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    assert list((tmp_path / "cube.hpcrun" / "logs" / "jobs").iterdir()), "job logs in the run directory"
    assert_workers_ran_with_speed_environ(json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text()))
    assert_no_job_left(scheduler)


@pytest.mark.sge
def test_sge_whole_cube_iteration_equals_serial(sge, tmp_path, ngc5921_ms, serial_reference):
    """niter > 0 through SGE jobs: the controller in the driver, each cycle's steps as the jobs' tasks."""
    tclean = {"nchan": 8, "niter": 100, "imsize": [128, 128]}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    run_cli("submit", "--site", sge, cube, cwd=tmp_path)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "model", "psf", "pb", "sumwt"))
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["iteration"] == "cube" and report["iteration_summary"]["iterdone"] > 0
    assert_no_job_left("sge")


@pytest.mark.slurm
def test_pbs_syntax_through_torque_wrappers(pbs, tmp_path, ngc5921_ms, serial_reference):
    """Also whole-cube iteration (niter > 0) through batch workers: the controller in the driver, the
    cycles as jobs' tasks."""
    tclean = {"nchan": 8, "niter": 100, "imsize": [128, 128]}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    path = f"{PBS_WRAPPERS}{os.pathsep}{os.environ['PATH']}"
    result = run_cli("submit", "--site", pbs, cube, cwd=tmp_path, env={"PATH": path})
    assert "site ci-pbs (pbs, shared)" in result.stderr
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "model", "psf", "pb", "sumwt"))
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["iteration"] == "cube" and report["iteration_summary"]["iterdone"] > 0


@pytest.mark.slurm
@pytest.mark.parametrize("workers_per_job", [1, 2])
def test_slurm_worker_job_cancelled_mid_run_is_replaced_and_the_cube_completes(workers_per_job, slurm, tmp_path,
                                                                             ngc5921_ms, serial_reference):
    tclean = {"nchan": -1}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})
    run_dir = tmp_path / "cube.hpcrun"
    site = single_worker_jobs(slurm, tmp_path) if workers_per_job == 1 else slurm
    driver = start_driver(site, cube, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cancelled = cancel_jobs_mid_run(driver, lambda: wait_until_done(driver, run_dir, 3), 2 // workers_per_job, 400)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    job_logs = {p.stem for p in (run_dir / "logs" / "jobs").glob("hpc-imager-*.err")}
    assert len(job_logs) > 2 // workers_per_job, f"a replacement job was submitted after scancel {cancelled}: {job_logs}"
    assert_no_job_left()


@pytest.mark.slurm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_slurm_interrupted_driver_leaves_no_job_in_the_queue(signum, slurm, tmp_path, ngc5921_ms):
    # no probe: the run's own two jobs are up from the first finished chunk on
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": -1}, {"channels_per_task": 1, "workers": 2, "probe": False})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(single_worker_jobs(slurm, tmp_path), cube, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        wait_until_done(driver, run_dir, 1)
        assert len(our_slurm_jobs()) == 2
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "interrupted; run again with --resume" in stderr
    assert "Traceback" not in stderr
    assert_no_job_left(within=10)


@pytest.mark.slurm
def test_slurm_driver_sigkill_then_resume_submits_fresh_workers(slurm, tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 24}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(slurm, cube, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_done(driver, run_dir, 3)
        stale_jobs = set(our_slurm_jobs())
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        done_before = {json.loads(line)["chunk"] for line in (run_dir / "journal.jsonl").read_text().splitlines()
                       if '"done"' in line}

        run_cli("submit", "--site", slurm, cube, "--resume", cwd=tmp_path)
    finally:
        if driver.poll() is None:
            driver.kill()
        subprocess.run(["scancel", "-n", "hpc-imager"], capture_output=True)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    resubmitted = {e["chunk"] for e in events if e["event"] == "submitted" and e["attempt"] > 1}
    assert not resubmitted & done_before, "chunks done before the kill were not imaged again"
    job_logs = {p.stem.removeprefix("hpc-imager-") for p in (run_dir / "logs" / "jobs").glob("hpc-imager-*.err")}
    assert job_logs - stale_jobs, "resume submitted fresh worker jobs"


@pytest.mark.slurm
def test_driver_as_a_slurm_job_from_the_script_command(slurm, tmp_path, ngc5921_ms, serial_reference):
    """`hpc_imager script` prints an sbatch file; the driver runs as a job and submits its workers."""
    tclean = {"nchan": 8}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    wrapper = tmp_path / "driver.sbatch"
    wrapper.write_text(run_cli("script", "--site", slurm, cube).stdout)
    assert "#SBATCH --partition=debug" in wrapper.read_text()

    job = subprocess.run(["sbatch", "--parsable", str(wrapper)], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.strip()
    deadline = time.time() + 300
    while job in our_driver_jobs():
        assert time.time() < deadline, "the driver job did not finish"
        time.sleep(1)
    log = (tmp_path / f"cube.hpcrun.driver-{job}.log").read_text()
    assert "hpc_imager: wrote" in log, log[-2000:]
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    assert_no_job_left()


def our_driver_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", "hpc-imager-driver", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def _underestimating_site(site: Path, tmp_path: Path, node_memory: str = "16GiB") -> Path:
    """The CI site with a calibration far below what a 1024² task needs, so its first workers are too small."""
    copy = tmp_path / f"{site.stem}-tight.toml"
    copy.write_text(site.read_text().replace("node_cores = 8", "node_cores = 1").replace('"16GiB"', f'"{node_memory}"')
                    + '\n[[calibration]]\ngridder = "standard"\ndeconvolver = "hogbom"\nbase_gib = 0.05\n'
                      'bytes_per_pixel_channel = 1.0\nfitted_on = "deliberately wrong"\n')
    return copy


# The deliberately wrong calibration gives the first workers about 400 MiB (mostly the site's worker
# base). A casatools-only worker imaging 4 channels at 1024² peaked at 395 MiB, which the nanny did
# not always catch; 8 channels (about 0.55 GiB) or 16 (about 0.9 GiB) outgrow it for certain.
MEMORY_RETRIES = {
    # each chunk imaged whole: the killed chunks are imaged again
    "per-chunk": ({"nchan": 16, "imsize": [1024, 1024]}, 16, "imaging them again with twice the memory per worker"),
    # niter > 0, one iteration controller: the step's killed tasks run again and the cycles go on from that step
    "whole-cube iteration": ({"nchan": 16, "imsize": [1024, 1024], "niter": 60, "cycleniter": 20}, 8,
                             "going on with twice the memory per worker"),
}


@pytest.mark.slurm
@pytest.mark.parametrize("mode", MEMORY_RETRIES)
def test_slurm_chunk_killed_for_memory_is_retried_with_more_memory(mode, slurm, tmp_path, ngc5921_ms,
                                                                   serial_reference):
    tclean, channels_per_task, message = MEMORY_RETRIES[mode]
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": channels_per_task, "workers": 1})
    result = run_cli("submit", "--site", _underestimating_site(slurm, tmp_path), cube, cwd=tmp_path)
    first_limit = re.search(r"worker memory limit ([\d.]+) MiB", result.stderr)
    assert first_limit and float(first_limit.group(1)) < 512, "the first workers are deliberately too small"
    assert f"ran out of memory: {message}" in result.stderr
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["memory_retries"] and report["memory_retries"][0]["worker_memory_limit_bytes"] > 2**29
    assert report["iteration"] == ("cube" if "niter" in tclean else "none")
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "model", "psf", "pb", "sumwt"))
    assert_no_job_left()


@pytest.mark.slurm
def test_slurm_whole_cube_iteration_worker_job_cancelled_mid_cycles(slurm, tmp_path, ngc5921_ms, serial_reference):
    """niter > 0: worker jobs lost during the cycles are replaced and the step's unfinished chunks run
    again (each step writes a chunk's images by renaming a finished copy into place). Both jobs are
    cancelled, so only the replacements can finish the cube: with one of two cancelled, the other job
    once did the remaining cycles before the lost one was noticed, and nothing was replaced."""
    tclean = {"nchan": 8, "imsize": [128, 128], "niter": 400, "cycleniter": 25}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(single_worker_jobs(slurm, tmp_path), cube, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)

    def an_iteration_step_finished():
        deadline = time.time() + 300
        while '"iteration step"' not in ((run_dir / "journal.jsonl").read_text()
                                         if (run_dir / "journal.jsonl").exists() else ""):
            assert driver.poll() is None and time.time() < deadline, "no iteration step finished"
            time.sleep(0.2)

    cancelled = cancel_jobs_mid_run(driver, an_iteration_step_finished, 2, 600, cancel=2)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["iteration"] == "cube" and report["iteration_summary"]["iterdone"] > 0
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "model", "psf", "pb", "sumwt"))
    job_logs = {p.stem for p in (run_dir / "logs" / "jobs").glob("hpc-imager-*.err")}
    assert len(job_logs) > 2, f"replacement jobs ran after scancel {cancelled}: {job_logs}"
    assert_no_job_left()


@pytest.mark.slurm
def test_slurm_chunk_that_cannot_get_enough_memory_is_named(slurm, tmp_path, ngc5921_ms):
    # about 0.9 GiB a task: its first workers' 400 MiB, doubled, are more than a 1 GiB node offers
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 16, "imsize": [1024, 1024]},
                           {"channels_per_task": 16, "workers": 1})
    site = _underestimating_site(slurm, tmp_path, node_memory="1GiB")
    result = run_cli("submit", "--site", site, cube, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "channels 0-15 ran out of memory and cannot have more: one task needs" in result.stderr
    assert "node offers" in result.stderr and "Traceback" not in result.stderr
    assert_no_job_left()


@pytest.mark.slurm
def test_slurm_gives_up_waiting_for_a_queue_that_never_starts_the_jobs(slurm, tmp_path, ngc5921_ms):
    """Queue-aware waiting: the site's worker_wait, then a one-line reason, and no job left behind."""
    site = tmp_path / "held.toml"
    site.write_text(slurm.read_text().replace('worker_wait = "00:03:00"', 'worker_wait = "00:00:15"')
                    .replace("job_directives = []", "") + 'job_directives = ["--begin=now+2hours"]\n')
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 4}, {"channels_per_task": 2, "workers": 2})
    started = time.time()
    result = run_cli("submit", "--site", site, cube, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "no worker started within held's worker_wait 00:00:15: 1 job(s) still pending" in result.stderr
    assert time.time() - started < 120
    assert_no_job_left()  # the pending jobs were cancelled
    assert (tmp_path / "cube.hpcrun" / "run.json").exists(), "the run can be resumed later"


WALLTIME_CUBES = {
    # each chunk imaged whole, one channel a task (1024²: one-channel chunks without a guard channel
    # finished the cube before any worker retired at 512², and in 26.6 s, as they retired, at 768²)
    "per-chunk": ({"nchan": -1, "imsize": [1024, 1024]}, 1),
    # niter > 0: the cycles' steps go on over the retirements (cycles of 10 iterations a channel: at 20,
    # 38 cycles took 26.2 s on a quiet machine, the fresh-clone CI run, and ended as the workers retired)
    "whole-cube iteration": ({"nchan": 8, "imsize": [256, 256], "niter": 5600, "cycleniter": 10}, 2),
}


@pytest.mark.slurm
@pytest.mark.parametrize("mode", WALLTIME_CUBES)
def test_slurm_cube_longer_than_one_walltime_finishes(mode, slurm, tmp_path, ngc5921_ms, serial_reference):
    """Workers retire before their walltime (30 s here: they go at 24 s ± 3 s) and are replaced; the
    cube, which takes longer than one walltime, is still complete. At 40 s the per-chunk cube (36-52 s
    with casatools-only workers) once finished before any worker retired."""
    site = tmp_path / "short.toml"
    site.write_text(single_worker_jobs(slurm, tmp_path).read_text()
                    .replace('walltime_default = "00:30:00"', 'walltime_default = "00:00:30"'))
    tclean, channels_per_task = WALLTIME_CUBES[mode]
    # no probe: a probe's measured task time would plan a walltime long enough for the whole cube
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean,
                           {"channels_per_task": channels_per_task, "workers": 2, "probe": False})
    result = run_cli("submit", "--site", site, cube, cwd=tmp_path)
    assert "walltime 00:00:30" in result.stderr
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert report["iteration"] == ("cube" if "niter" in tclean else "none")
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "model", "psf", "pb", "sumwt"))
    jobs = list((tmp_path / "cube.hpcrun" / "logs" / "jobs").glob("hpc-imager-*.err"))
    assert len(jobs) >= 3, "retired jobs were replaced"
    assert any("worker-lifetime-reached" in job.read_text() for job in jobs)
    assert_no_job_left()
