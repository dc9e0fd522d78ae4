"""Several cubes in one submission (``submit a.toml b.toml``): one set of workers, each cube its own
run directory, journal, report and --resume, each equal to its own serial tclean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_same_cube, run_cli, submit_killed_with_sigkill, write_cube_toml

pytestmark = pytest.mark.casa

PRODUCTS = ("image", "residual", "model", "psf", "pb")
NITER_ZERO = {"nchan": 16, "imsize": [128, 128]}
# whole-cube iteration whose niter runs out part-way through its third cycle (test_iteration's case)
CLEANED = {"imsize": [128, 128], "start": 16, "width": 1, "nchan": 6, "niter": 420, "cycleniter": 40}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def times(run_dir: Path, *kinds: str) -> list[float]:
    return [e["time"] for e in events(run_dir) if e["event"] in kinds]


def test_two_cubes_of_different_modes_share_the_workers_and_each_equals_its_serial_run(tmp_path, ngc5921_ms,
                                                                                        serial_reference):
    a = write_cube_toml(tmp_path / "a", ngc5921_ms, NITER_ZERO, {"channels_per_task": 2, "workers": 2})
    b = write_cube_toml(tmp_path / "b", ngc5921_ms, CLEANED, {"channels_per_task": 2, "workers": 2})

    result = run_cli("submit", "--site", "local", a, b)

    assert "2 of 2 cubes complete" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("waiting for workers") <= 1 and result.stderr.count("hpc_imager: site local") == 1
    reports = [json.loads((d / "cube.hpcrun" / "report.json").read_text()) for d in (tmp_path / "a", tmp_path / "b")]
    assert [r["status"] for r in reports] == ["complete", "complete"]
    assert [r["mode"] for r in reports] == ["none", "cube"]
    assert reports[0]["plan"] == reports[1]["plan"] and reports[0]["plan"]["chunks"] == 8 + 3, "one plan for both"
    assert_same_cube(str(tmp_path / "a" / "cube"), serial_reference(**NITER_ZERO), PRODUCTS)
    assert_same_cube(str(tmp_path / "b" / "cube"), serial_reference(**CLEANED), PRODUCTS)
    # interleaved on the same workers: the second cube's tasks went out while the first's were finishing
    # (not the converse: the first cube's 8 one-step chunks may all be out before the second's first step
    # is done, as in the fresh-clone CI run of 2026-12-03)
    a_run, b_run = tmp_path / "a" / "cube.hpcrun", tmp_path / "b" / "cube.hpcrun"
    a_done = times(a_run, "done")
    assert any(min(a_done) < t < max(a_done) for t in times(b_run, "submitted"))
    assert {m["worker"] for m in reports[0]["chunk_metrics"]} == {m["worker"] for m in reports[1]["chunk_metrics"]}
    status = json.loads(run_cli("status", a_run, b_run, "--json").stdout)
    assert [s["status"] for s in status] == ["complete", "complete"]
    assert status[0]["shared_with"] == [str(b_run)] and status[1]["shared_with"] == [str(a_run)]


def test_a_submission_killed_with_sigkill_resumes_every_cube_without_reimaging_what_was_done(tmp_path, ngc5921_ms,
                                                                                             serial_reference):
    small, whole = {"nchan": 8}, {"nchan": -1}
    a = write_cube_toml(tmp_path / "a", ngc5921_ms, small, {"channels_per_task": 2, "workers": 2})
    b = write_cube_toml(tmp_path / "b", ngc5921_ms, whole, {"channels_per_task": 2, "workers": 2})
    a_run, b_run = tmp_path / "a" / "cube.hpcrun", tmp_path / "b" / "cube.hpcrun"
    submit_killed_with_sigkill([a, b], lambda: (a_run / "report.json").exists() and len(times(b_run, "done")) >= 6)
    done_before_kill = {e["chunk"] for e in events(b_run) if e["event"] == "done"}
    assert done_before_kill and len(done_before_kill) < 32, "killed mid-run"
    before = {run: len(events(run)) for run in (a_run, b_run)}

    result = run_cli("submit", a, b, "--resume")

    assert "is already complete" in result.stderr and "2 of 2 cubes complete" in result.stderr
    assert not [e for e in events(a_run)[before[a_run]:] if e["event"] == "submitted"], "the finished cube is not re-imaged"
    resubmitted = {e["chunk"] for e in events(b_run)[before[b_run]:] if e["event"] == "submitted"}
    assert resubmitted and not resubmitted & done_before_kill
    assert resubmitted | done_before_kill == set(range(32))
    assert json.loads((b_run / "report.json").read_text())["plan"]["chunks"] == 32, "sized for the cube left alone"
    assert_same_cube(str(tmp_path / "a" / "cube"), serial_reference(**small))
    assert_same_cube(str(tmp_path / "b" / "cube"), serial_reference(**whole))


def test_a_cube_that_fails_ends_alone_and_the_exit_status_says_so(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 8, "imsize": [128, 128]}
    a = write_cube_toml(tmp_path / "a", ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2, "retries": 0})
    b = write_cube_toml(tmp_path / "b", ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})

    # chunk 1 fails in both cubes; only a gives up on it (no retries), b retries it and finishes
    failed = run_cli("submit", a, b, env={"HPC_IMAGER_FAIL_CHUNKS": "1:1"}, check=False)

    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"error: {a}: channels 2-3 failed every try" in failed.stderr and "1 of 2 cubes complete" in failed.stderr
    assert json.loads((tmp_path / "a" / "cube.hpcrun" / "report.json").read_text())["status"] == "incomplete"
    assert_same_cube(str(tmp_path / "b" / "cube"), serial_reference(**tclean))


def test_a_submission_with_a_cube_that_cannot_run_is_refused_before_anything_is_written(tmp_path, ngc5921_ms):
    a = write_cube_toml(tmp_path / "a", ngc5921_ms, NITER_ZERO, {})
    refused = run_cli("submit", a, a, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"hpc_imager: error: {a} and {a} have the same run directory {tmp_path / 'a' / 'cube.hpcrun'}: give each cube its own"]
    assert not (tmp_path / "a" / "cube.hpcrun").exists()

    b = write_cube_toml(tmp_path / "b", ngc5921_ms, NITER_ZERO, {})
    (tmp_path / "b" / "cube.hpcrun").mkdir()
    (tmp_path / "b" / "cube.hpcrun" / "run.json").write_text("{}")  # an earlier run's
    refused = run_cli("submit", a, b, check=False)
    assert refused.returncode == 2 and "holds a run: pass --resume to continue it" in refused.stderr
    assert not (tmp_path / "a" / "cube.hpcrun").exists(), "the first cube's run was not begun"


