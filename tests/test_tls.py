"""TLS on the real CI Slurm: the run completes over tls://, its key is owner-only in the run directory
and gone afterwards (also after Ctrl-C), clients without the run's certificate (or on plain tcp) are
refused, and the dashboard listens on loopback only."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import assert_same_cube, write_cube_toml
from test_batch import journal_done, slurm, start_driver  # noqa: F401  (slurm is a fixture)

pytestmark = [pytest.mark.casa, pytest.mark.slurm]


def scheduler_address(run_dir: Path) -> str:
    """From the worker jobs' logs: the address every worker connected to."""
    logs = "".join(p.read_text() for p in (run_dir / "logs" / "jobs").glob("*.err"))
    found = set(re.findall(r"Waiting to connect to:\s+(\S+)", logs))
    assert len(found) == 1, f"the workers name one scheduler: {found}"
    return found.pop()


def wait_for_chunks(driver: subprocess.Popen, run_dir: Path, chunks: int) -> None:
    deadline = time.time() + 240
    while journal_done(run_dir) < chunks:
        assert driver.poll() is None and time.time() < deadline, "the run did not get going"
        time.sleep(0.2)


def refused(address: str, **kwargs) -> str:
    """Connect a client as someone else on the login node would; return why it failed."""
    from distributed import Client

    try:
        with Client(address, timeout=5, **kwargs):
            return ""
    except Exception as error:  # distributed raises several types for a failed handshake
        return f"{type(error).__name__}: {error}"


def our_jobs_in_queue(run_dir: Path) -> list[str]:
    ids = {p.stem.removeprefix("hpc-imager-") for p in (run_dir / "logs" / "jobs").glob("hpc-imager-*.err")}
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return sorted(ids & set(queued))


def test_slurm_run_over_tls_refuses_clients_without_the_runs_certificate(slurm, tmp_path, ngc5921_ms,
                                                                          serial_reference):
    from distributed.security import Security

    tclean = {"nchan": 8}
    # no probe: the scheduler met after the first chunk is the run's own, not the probe's (closed by then)
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 1, "workers": 1, "probe": False})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(slurm, cube, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_chunks(driver, run_dir, 1)
        tls = run_dir / "tls"
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700
        files = sorted(p.name.split(".")[3] for p in tls.iterdir())
        assert files == ["ca_file", "cert", "key"], files
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls.iterdir())

        address = scheduler_address(run_dir)
        assert address.startswith("tls://")
        no_certificate = refused(address)
        another_run = refused(address, security=Security.temporary())
        plain_tcp = refused(address.replace("tls://", "tcp://"))
        listening = [c.laddr for c in psutil.Process(driver.pid).net_connections("tcp") if c.status == "LISTEN"]
        _, stderr = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)
            driver.wait(60)
    assert driver.returncode == 0, stderr
    assert no_certificate and another_run and plain_tcp, (no_certificate, another_run, plain_tcp)
    assert "TLS certificate does not match" in another_run
    hint = re.search(r"dashboard http://127\.0\.0\.1:(\d+)/status .*ssh -L (\d+):127\.0\.0\.1:\2 \S+@\S+", stderr)
    assert hint and hint[1] == hint[2], stderr
    dashboard = {a.ip for a in listening if a.port == int(hint[1])}
    assert dashboard == {"127.0.0.1"}, f"the dashboard listens on loopback only: {dashboard}"
    workers = "".join(p.read_text() for p in [*(run_dir / "logs" / "jobs").glob("*.err"), *(run_dir / "logs").glob("worker-*.log")])
    assert "Start worker at:      tls://" in workers and "tcp://" not in workers
    assert not (run_dir / "tls").exists(), "the run's certificates are gone when it ends"
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    assert not our_jobs_in_queue(run_dir)


def test_slurm_certificates_are_removed_on_ctrl_c(slurm, tmp_path, ngc5921_ms):
    # no probe: Ctrl-C lands while the run's own cluster (and its certificates) is up
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": -1}, {"channels_per_task": 1, "workers": 1, "probe": False})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(slurm, cube, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_chunks(driver, run_dir, 1)
        assert list((run_dir / "tls").iterdir())
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr
    assert not (run_dir / "tls").exists()
    deadline = time.time() + 15
    while our_jobs_in_queue(run_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert not our_jobs_in_queue(run_dir)
