"""A run people can look at: `status` on a running and on a finished run, and report.png."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import run_cli, write_cube_toml

pytestmark = pytest.mark.casa


def _status(run_dir) -> dict:
    return json.loads(run_cli("status", run_dir, "--json").stdout)


def test_status_while_running_and_after_and_report_png_shows_every_chunk(tmp_path, ngc5921_ms):
    from hpc_imager.run.report_plot import timeline

    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": 24, "imsize": [128, 128]},
                           {"channels_per_task": 3, "workers": 2, "retries": 1})
    run_dir = tmp_path / "cube.hpcrun"
    driver = subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", str(cube)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**__import__("os").environ, "HPC_IMAGER_FAIL_CHUNKS": "5:1"})
    try:
        deadline = time.time() + 300
        while True:
            assert time.time() < deadline, "no chunk finished"
            assert driver.poll() is None, "the run ended before status could see it running"
            if (run_dir / "journal.jsonl").exists() and '"done"' in (run_dir / "journal.jsonl").read_text():
                running = _status(run_dir)
                # after the probe's chunk the next pass starts its workers: running, nothing in flight yet
                assert running["status"] == "running"
                if running["running"]:
                    break
            time.sleep(0.2)
        assert driver.wait(timeout=300) == 0
    finally:
        if driver.poll() is None:
            driver.kill()

    assert running["chunks"] == 8 and running["status"] == "running"
    assert running["done"] >= 1 and running["done"] + running["running"] + running["failed"] + running["pending"] == 8
    assert running["running"] >= 1 and running["eta_seconds"] > 0

    finished = _status(run_dir)
    assert (finished["status"], finished["done"], finished["pending"], finished["eta_seconds"]) == ("complete", 8, 0, 0)
    assert finished["failed_attempts"] == 1 and finished["placed"] == 8  # chunk 5's first attempt failed
    text = run_cli("status", run_dir).stdout
    assert "8 done, 0 running (or waiting on a worker), 0 failed, 0 pending (1 failed attempts in all); 8 placed in the cube" in text

    png = run_dir / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bars = timeline(run_dir)
    assert sorted(b.chunk for b in bars if b.kind == "done") == list(range(8))
    assert [(b.chunk, b.attempt) for b in bars if b.kind == "failed"] == [(5, 1)]
    assert all(b.submitted <= b.start <= b.end for b in bars)


def test_status_of_a_directory_without_a_run_is_one_line(tmp_path):
    result = run_cli("status", tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpc_imager: error: {tmp_path} holds no run (no run.json)"
