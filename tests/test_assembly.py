"""The cube is assembled while the chunks are imaged; a failure half-way and --resume lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_same_cube, run_cli, write_cube_toml

pytestmark = pytest.mark.casa


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def test_parts_are_placed_as_they_arrive_and_resume_places_only_the_rest(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 20, "weighting": "briggs", "robust": 0.5}  # niter 0: equal to serial plane by plane
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2, "retries": 1})
    run_dir = tmp_path / "cube.hpcrun"

    failed = run_cli("submit", cube, env={"HPC_IMAGER_FAIL_CHUNKS": "3:always"}, check=False)

    assert failed.returncode == 1 and "channels 12-15 failed every try" in failed.stderr
    events = _events(run_dir)
    placed = {e["chunk"] for e in events if e["event"] == "placed"}
    assert placed == {0, 1, 2, 4}, "every part that arrived was placed during the run"
    for e in (e for e in events if e["event"] == "placed"):
        done_at = next(d["time"] for d in events if d["event"] == "done" and d["chunk"] == e["chunk"])
        assert e["time"] >= done_at
    assert not [p for p in ("image", "residual", "psf", "pb", "sumwt", "model") if (tmp_path / f"cube.{p}").exists()]
    assert sorted(p.name for p in (run_dir / "parts").iterdir()) == [f"chunk-0000{i}" for i in (0, 1, 2, 4)]
    assert (run_dir / "assembled").is_dir()

    before = len(events)
    resumed = run_cli("submit", cube, "--resume")

    new = _events(run_dir)[before:]
    assert {e["chunk"] for e in new if e["event"] == "submitted"} == {3}
    assert {e["chunk"] for e in new if e["event"] == "placed"} == {3}, "placed parts are not copied again"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["concat"]["concat_seconds"] < 0.05 * report["imaging_seconds"] + 1.0
    assert not (run_dir / "assembled").exists() and not (run_dir / "parts").exists()
    assert "Traceback" not in resumed.stderr
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "psf", "pb", "sumwt", "model"))

