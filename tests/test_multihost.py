"""Across hosts: the driver and its scheduler on this machine, the workers on two Slurm compute nodes,
each in its own network namespace with its own address and hostname (.ci/start-multihost-slurm:
nodeA 10.77.0.2, nodeB 10.77.0.3, the driver's host 10.77.0.1 on a bridge). Every other batch test
runs everything on one host through 127.0.0.1, where a scheduler listening on the wrong address, or a
worker advertising one the driver cannot reach, still works.

Where the nodes are not up a test skips with the reason, except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import assert_same_cube, run_cli, write_cube_toml
from test_batch import SITES, assert_no_job_left, journal_done, need, start_driver

from hpc_imager.backends.network import scheduler_interface
from hpc_imager.inputs.site_profile import SiteError, load_site

START_NODES = Path(__file__).parents[1] / ".ci" / "start-multihost-slurm"
NODES = {"nodeA": "10.77.0.2", "nodeB": "10.77.0.3"}
DRIVER_ADDRESS = "10.77.0.1"


def _nodes_up() -> bool:
    """Slurm calls a node idle for minutes after its slurmd is gone: the namespaces and the bridge must be there too."""
    if "mhbr0" not in psutil.net_if_addrs() or not all(Path(f"/run/netns/{node}").exists() for node in NODES):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %t"], capture_output=True, text=True,
                             timeout=15).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    states = dict(line.split() for line in out.splitlines())
    return states.keys() == NODES.keys() and all(s in ("idle", "mix", "alloc") for s in states.values())


@pytest.fixture
def multi():
    need("multi-host Slurm (nodeA, nodeB in partition multi)", _nodes_up())
    return SITES / "ci-multi.toml"


def run_jobs() -> dict[str, str]:
    """The run's worker jobs in the queue and the node each runs on."""
    out = subprocess.run(["squeue", "-h", "-n", "hpc-imager", "-t", "R", "-o", "%i %N"], capture_output=True,
                         text=True).stdout
    return dict(line.split() for line in out.splitlines())


def worker_addresses(run_dir: Path) -> dict[str, tuple[str, str]]:
    """Each job's worker log: the address its worker listened on and the scheduler it connected to."""
    found = {}
    for log in (run_dir / "logs" / "jobs").glob("hpc-imager-*.err"):
        text = log.read_text(errors="replace")
        listen = re.search(r"Start worker at:\s+(\S+)", text)
        scheduler = re.search(r"Waiting to connect to:\s+(\S+)", text)
        if listen and scheduler:
            found[log.stem.removeprefix("hpc-imager-")] = (listen.group(1), scheduler.group(1))
    return found


@pytest.mark.casa
@pytest.mark.slurm
def test_cube_with_workers_on_two_hosts_equals_serial(multi, tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 16}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2, "probe": False})
    run_cli("submit", "--site", multi, cube, cwd=tmp_path)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    run_dir = tmp_path / "cube.hpcrun"
    report = json.loads((run_dir / "report.json").read_text())
    assert {m["host"] for m in report["chunk_metrics"]} == set(NODES), "chunks ran on both nodes"
    addresses = worker_addresses(run_dir)
    listened = {listen.removeprefix("tls://").rsplit(":", 1)[0] for listen, _ in addresses.values()}
    assert listened == set(NODES.values()), f"each worker listened on its own node's address (TLS): {addresses}"
    assert all(s.startswith(f"tls://{DRIVER_ADDRESS}:") for _, s in addresses.values()), addresses
    assert_no_job_left()


@pytest.mark.casa
@pytest.mark.slurm
def test_node_lost_mid_run_its_jobs_are_replaced_on_the_other_node(multi, tmp_path, ngc5921_ms, serial_reference):
    """nodeA's slurmd, job steps and workers are SIGKILLed: nothing says goodbye, and Slurm only marks
    the node down after SlurmdTimeout (300 s by default). Its job, cancelled by the driver before the
    replacement is submitted, stays COMPLETING there, so Slurm starts the replacement on nodeB."""
    # 24 chunks at 512²: with 12 at 256², 3-5 were still to do when the replacement came up on a loaded
    # machine, and on a quiet one (fresh-clone CI) nodeB's worker finished them all (0.5 s a chunk)
    # before a replacement could start
    tclean = {"nchan": 48, "imsize": [512, 512]}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2, "probe": False})
    run_dir = tmp_path / "cube.hpcrun"
    driver = start_driver(multi, cube, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while journal_done(run_dir) < 3 or len(run_jobs()) < 2:
            assert driver.poll() is None and time.time() < deadline, "the run did not get going on both nodes"
            time.sleep(0.2)
        jobs = run_jobs()
        assert sorted(jobs.values()) == sorted(NODES), f"one job on each node: {jobs}"
        lost = [job for job, node in jobs.items() if node == "nodeA"]
        pids = subprocess.run(["ip", "netns", "pids", "nodeA"], capture_output=True, text=True, check=True).stdout
        subprocess.run(["kill", "-9", *pids.split()], check=True)
        done_at_loss = journal_done(run_dir)
        _, stderr = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
        # nodeA back for what follows: DOWN ends its completing job at once (Slurm itself resends the
        # kill only after about a minute), then the start script restarts its slurmd and resumes it
        subprocess.run(["scontrol", "update", "NodeName=nodeA", "State=DOWN", "Reason=test: node lost"])
        subprocess.run(["bash", str(START_NODES)], capture_output=True, timeout=120)
    assert driver.returncode == 0, stderr
    for job in lost:
        assert f"batch job {job} has had no worker" in stderr, stderr
    assert done_at_loss < 24, "nodeA was lost while chunks were still to do"
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    replacements = {job: listen for job, (listen, _) in worker_addresses(run_dir).items() if job not in jobs}
    assert replacements and all(f"//{NODES['nodeB']}:" in a for a in replacements.values()), \
        f"the lost job was replaced on nodeB: {replacements} (lost {lost})"
    report = json.loads((run_dir / "report.json").read_text())
    assert {m["host"] for m in report["chunk_metrics"]} == set(NODES)
    assert_no_job_left()


@pytest.mark.casa
@pytest.mark.slurm
def test_interface_the_driver_host_lacks_is_refused_before_any_job(multi, tmp_path, ngc5921_ms):
    """One line, exit 2, no run directory, and sbatch never called (a tripwire sbatch first on PATH
    records any call)."""
    site = tmp_path / "wrong-interface.toml"
    site.write_text(multi.read_text().replace('driver_interface = "mhbr0"', 'driver_interface = "ib7"'))
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 4}, {"channels_per_task": 2, "workers": 2})
    tripwire = tmp_path / "bin" / "sbatch"
    tripwire.parent.mkdir()
    tripwire.write_text(f"#!/bin/sh\ntouch {tmp_path / 'sbatch-called'}\nexit 1\n")
    tripwire.chmod(0o755)
    result = run_cli("submit", "--site", site, cube, cwd=tmp_path, check=False,
                     env={"PATH": f"{tripwire.parent}:{os.environ['PATH']}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "hpc_imager: error: site wrong-interface: driver_interface 'ib7' is not a network interface of this host")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sbatch-called").exists(), "no job was submitted"
    assert not (tmp_path / "cube.hpcrun").exists(), "refused before the run directory was made"


def _site(**fields):
    return load_site(str(SITES / "ci-multi.toml")).model_copy(update=fields)


def test_scheduler_listens_on_driver_interface_else_interface():
    up = [name for name, stats in psutil.net_if_stats().items() if stats.isup and name != "lo" and any(
        a.family == socket.AF_INET and not a.address.startswith("127.") for a in psutil.net_if_addrs()[name])]
    if not up:
        pytest.skip("this host has no interface with an IPv4 address besides loopback")
    assert scheduler_interface(_site(driver_interface=up[0], interface="ib7")) == up[0]
    assert scheduler_interface(_site(driver_interface=None, interface=up[0])) == up[0]
    assert scheduler_interface(_site(driver_interface=None, interface=None)) is None


@pytest.mark.parametrize("fields, refusal", [
    ({"driver_interface": "ib7"}, "driver_interface 'ib7' is not a network interface of this host"),
    ({"driver_interface": None, "interface": "ib7"}, "interface 'ib7' is not a network interface of this host"),
    ({"driver_interface": "lo"}, "driver_interface 'lo' is loopback (127.0.0.1): the compute nodes cannot reach"),
])
def test_scheduler_interface_the_nodes_cannot_reach_is_refused(fields, refusal):
    with pytest.raises(SiteError, match=re.escape(f"site ci-multi: {refusal}")) as error:
        scheduler_interface(_site(**fields))
    assert "\n" not in str(error.value)
