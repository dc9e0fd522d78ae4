"""The cube is assembled while the chunks are imaged; a failure half-way and --resume lose nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_same_cube, run_cli, submit_killed_with_sigkill, write_cube_toml

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



def _virtual_products(imagename: Path, run_dir: Path) -> None:
    for product in ("image", "residual", "psf", "pb", "sumwt", "model"):
        made = Path(f"{imagename}.{product}") / "imageconcat.json"
        assert made.is_file() and str(run_dir / "parts") in made.read_text(), f"{product} is not virtual"


def test_a_site_may_force_the_virtual_assembly_and_the_cube_equals_serial(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 20}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    site = tmp_path / "local-virtual.toml"
    site.write_text((Path(__file__).parents[1] / "hpc_imager/site_profiles/local.toml").read_text() + 'assembly = "virtual"\n')
    run_dir = tmp_path / "cube.hpcrun"

    done = run_cli("submit", cube, "--site", site)

    assert "virtual assembly" in done.stderr and "which are kept" in done.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["assembly"]["kind"] == report["concat"]["assembly"] == "virtual"
    assert json.loads((run_dir / "run.json").read_text())["assembly"] == "virtual"
    assert report["concat"]["concat_bytes_written"] < 100_000, "nothing is copied, nothing zero-filled"
    assert not any(e["event"] == "placed" for e in _events(run_dir))
    assert "the cube is CASA's virtual concatenation of the parts" in run_cli("status", run_dir).stdout
    _virtual_products(tmp_path / "cube", run_dir)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "psf", "pb", "sumwt", "model"))


def test_a_virtual_assembly_run_killed_with_sigkill_resumes_to_the_serial_cube(tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 20}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 2, "workers": 2})
    cube.write_text(cube.read_text() + '\n[run]\nassembly = "virtual"\n')
    run_dir = tmp_path / "cube.hpcrun"
    submit_killed_with_sigkill([cube], lambda: (run_dir / "journal.jsonl").exists() and sum(
        e["event"] == "done" for e in _events(run_dir)) >= 3)
    done_before_kill = {e["chunk"] for e in _events(run_dir) if e["event"] == "done"}
    assert 3 <= len(done_before_kill) < 10 and not list(tmp_path.glob("cube.image*"))
    before = len(_events(run_dir))

    resumed = run_cli("submit", cube, "--resume")

    resubmitted = {e["chunk"] for e in _events(run_dir)[before:] if e["event"] == "submitted"}
    assert resubmitted and not resubmitted & done_before_kill and resubmitted | done_before_kill == set(range(10))
    assert "virtual assembly" in resumed.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["concat"]["assembly"] == "virtual" and sorted(p.name for p in (run_dir / "parts").iterdir()) == [
        f"chunk-{i:05d}" for i in range(10)], "the parts are the cube's pixels: kept"
    _virtual_products(tmp_path / "cube", run_dir)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "psf", "pb", "sumwt", "model"))


def test_a_virtual_finish_interrupted_after_some_products_were_moved_into_place_is_finished_by_resume(
        tmp_path, ngc5921_ms, serial_reference):
    tclean = {"nchan": 20}
    cube = write_cube_toml(tmp_path, ngc5921_ms, tclean, {"channels_per_task": 4, "workers": 2})
    cube.write_text(cube.read_text() + '\n[run]\nassembly = "virtual"\n')
    run_dir = tmp_path / "cube.hpcrun"
    run_cli("submit", cube)
    # what a driver killed while moving the products into place leaves: some moved, no report
    (run_dir / "report.json").unlink()
    shutil.rmtree(tmp_path / "cube.psf")
    shutil.rmtree(tmp_path / "cube.residual")
    kept = (tmp_path / "cube.image" / "imageconcat.json").stat().st_mtime_ns
    before = len(_events(run_dir))

    run_cli("submit", cube, "--resume")

    assert not any(e["event"] == "submitted" for e in _events(run_dir)[before:]), "nothing is imaged again"
    assert (tmp_path / "cube.image" / "imageconcat.json").stat().st_mtime_ns == kept, "a product in place is kept"
    assert json.loads((run_dir / "report.json").read_text())["status"] == "complete"
    _virtual_products(tmp_path / "cube", run_dir)
    assert_same_cube(str(tmp_path / "cube"), serial_reference(**tclean),
                     products=("image", "residual", "psf", "pb", "sumwt", "model"))
