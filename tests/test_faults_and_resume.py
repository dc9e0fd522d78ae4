"""Never losing work: retries, runs that cannot finish, a driver killed with SIGKILL, --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_same_cube, run_cli, submit_killed_with_sigkill, write_cube_toml

pytestmark = pytest.mark.casa


def journal_events(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_a_chunk_that_fails_once_is_retried(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 16}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2, "retries": 1})

    result = run_cli("submit", cube, env={"HPC_IMAGER_FAIL_CHUNKS": "3:1"})

    assert "chunk-00003 (channels 12-15) failed on attempt 1" in result.stderr
    report = json.loads((tmp_path / "cube.hpcrun" / "report.json").read_text())
    assert [(f["chunk"], f["attempt"]) for f in report["failures"]] == [(3, 1)]
    assert sorted(m["chunk"] for m in report["chunk_metrics"]) == [0, 1, 2, 3]
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))


def test_a_chunk_that_always_fails_ends_the_run_and_resume_finishes_it(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 16}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2, "retries": 1})
    run_dir = tmp_path / "cube.hpcrun"

    failed = run_cli("submit", cube, env={"HPC_IMAGER_FAIL_CHUNKS": "2:always"}, check=False)

    assert failed.returncode == 1
    assert "error: channels 8-11 failed every try" in failed.stderr and "Traceback" not in failed.stderr
    assert not list(tmp_path.glob("cube.image*")), "no final cube from an incomplete run"
    assert sorted(p.name for p in (run_dir / "parts").iterdir()) == ["chunk-00000", "chunk-00001", "chunk-00003"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "incomplete" and report["missing_channels"] == [8, 9, 10, 11]
    assert [e["attempt"] for e in journal_events(run_dir) if e["event"] == "failed" and e["chunk"] == 2] == [1, 2]

    before = len(journal_events(run_dir))
    run_cli("submit", cube, "--resume")

    resubmitted = {e["chunk"] for e in journal_events(run_dir)[before:] if e["event"] == "submitted"}
    assert resubmitted == {2}, "only the missing chunk is imaged again"
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))


def test_driver_killed_with_sigkill_is_resumed_without_redoing_finished_chunks(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": -1}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})
    run_dir = tmp_path / "cube.hpcrun"
    submit_killed_with_sigkill([cube], lambda: sum(e["event"] == "done" for e in journal_events(run_dir)) >= 6)
    done_before_kill = {e["chunk"] for e in journal_events(run_dir) if e["event"] == "done"}
    assert done_before_kill and len(done_before_kill) < 32
    assert not list(tmp_path.glob("cube.image*"))
    before = len(journal_events(run_dir))
    stopped = json.loads(run_cli("status", run_dir, "--json").stdout)  # the driver is gone: not "running"
    assert (stopped["mode"], stopped["status"], stopped["done"]) == ("none", "stopped", len(done_before_kill))

    run_cli("submit", cube, "--resume")

    resubmitted = {e["chunk"] for e in journal_events(run_dir)[before:] if e["event"] == "submitted"}
    assert resubmitted and not resubmitted & done_before_kill
    assert resubmitted | done_before_kill == set(range(32))
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean))
    finished = json.loads(run_cli("status", run_dir, "--json").stdout)
    assert (finished["status"], finished["done"], finished["placed"]) == ("complete", 32, 32)


