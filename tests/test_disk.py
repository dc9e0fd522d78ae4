"""Disk: the plan's figures against ``du`` of real runs, the refusal of a cube a file system cannot
hold (a small tmpfs of our own), and each chunk's reads and writes in report.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli, write_cube_toml

from hpc_imager.sizing.disk import READ_WARNING_BYTES, read_warning

SMALL_FS = "4m"


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cube(directory: Path, ms: Path, channels_per_task: int, imagename: str = "cube", run: str | None = None) -> Path:
    toml = write_cube_toml(directory, ms, {}, {"channels_per_task": channels_per_task, "workers": 2})
    text = toml.read_text().replace('imagename = "cube"', f"imagename = {json.dumps(imagename)}")
    toml.write_text(text + "\n[run]\nkeep_parts = true\n" + (f"directory = {json.dumps(run)}\n" if run else ""))
    return toml


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ngc5921_ms) -> dict[int, Path]:
    """NGC5921 256²×63 imaged in 1-channel and in 9-channel chunks, parts kept: channels → cube.toml."""
    made = {}
    for channels in (1, 9):
        toml = _cube(tmp_path_factory.mktemp(f"disk-{channels}"), ngc5921_ms, channels)
        made[channels] = (toml, run_cli("submit", toml))
    return made


@pytest.mark.parametrize("channels", [1, 9])
def test_plan_says_what_the_run_wrote(runs, channels):
    toml, _ = runs[channels]
    shown = run_cli("plan", toml).stdout
    assert "disk: final products" in shown and "run directory up to" in shown, shown
    disk = json.loads(run_cli("plan", "--json", toml).stdout)["disk"]
    products = sum(_du(p) for p in toml.parent.glob("cube.*") if p.is_dir() and p.suffix != ".hpcrun")
    parts = _du(toml.parent / "cube.hpcrun" / "parts")
    # measured: 84.91 MB planned against 84.91 MB; parts 129.5 MB against 129.9 MB in 1-channel chunks,
    # 89.2 MB against 86.5 MB in 9-channel ones
    assert disk["products_bytes"] == pytest.approx(products, rel=0.1)
    assert disk["parts_bytes"] == pytest.approx(parts, rel=0.1)
    assert disk["run_directory_bytes"] >= disk["products_bytes"] + disk["parts_bytes"]


def test_each_chunk_reports_its_reads_and_writes(runs):
    amplification = {}
    for channels, (toml, result) in runs.items():
        report = json.loads((toml.parent / "cube.hpcrun" / "report.json").read_text())
        metrics = report["chunk_metrics"]
        assert all(m["read_chars"] > 0 and m["write_chars"] > 0 for m in metrics)
        for m in metrics:  # the part's images as they are in parts/ (kept)
            part = toml.parent / "cube.hpcrun" / "parts" / f"chunk-{m['chunk']:05d}"
            assert m["part_bytes"] == {p: _file_bytes(part / f"part.{p}") for p in m["part_bytes"]}
            assert set(m["part_bytes"]) == set(report["concat"]["products"])
            assert m["write_chars"] >= sum(m["part_bytes"].values())  # CASA writes each image at least once
        whole = [m["read_amplification"] for m in metrics if m["channels"] == channels]
        amplification[channels] = sum(whole) / len(whole)
        assert report["reads"]["read_bytes"] == sum(m["read_chars"] for m in metrics)
        # measured: the run read the 36.5 MB MS 75 times over in 1-channel chunks, 18 times in 9-channel
        # ones, from the page cache: under READ_WARNING_BYTES, so nothing is said on the terminal
        assert read_warning(report["reads"]) is None and "× the MS's" not in result.stderr
    # measured: a 1-channel chunk read 43.6 MB (75 × its share of the MS), a 9-channel one 92.4 MB (18 ×)
    assert amplification[1] > 2 * amplification[9], amplification


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of SMALL_FS mounted for the test (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS}", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must run the disk refusal tests: {reason}")
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _refused(result, mount: Path) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc_imager: error: the file system on "), result.stderr
    assert f"on {mount} has 4.00 MiB free" in lines[0], lines[0]
    return lines[0]


def test_a_cube_too_big_for_its_file_system_is_refused(tmp_path, small_fs, ngc5921_ms):
    toml = _cube(tmp_path / "everything", ngc5921_ms, 9, imagename=str(small_fs / "cube"))
    for command in ("plan", "submit"):
        line = _refused(run_cli(command, toml, check=False), small_fs)
        assert "needs 163.43 MiB" in line, line  # parts (9-channel, 51 KB tables), staged cube and products on one file system
    assert not list(small_fs.iterdir())  # refused before anything was written


def test_products_too_big_for_theirs_are_refused(tmp_path, small_fs, ngc5921_ms):
    toml = _cube(tmp_path / "products", ngc5921_ms, 9, imagename=str(small_fs / "cube"),
                 run=str(tmp_path / "products" / "cube.hpcrun"))
    line = _refused(run_cli("submit", toml, check=False), small_fs)
    assert f"but {small_fs} needs 80.98 MiB" in line, line  # the products alone: the run directory has room
    assert not (tmp_path / "products" / "cube.hpcrun").exists()


def test_a_virtual_assembly_needs_room_for_the_parts_alone(tmp_path, small_fs, ngc5921_ms):
    toml = _cube(tmp_path / "virtual", ngc5921_ms, 9, imagename=str(small_fs / "cube"))
    toml.write_text(toml.read_text().replace("keep_parts = true\n", 'keep_parts = true\nassembly = "virtual"\n'))
    line = _refused(run_cli("plan", toml, check=False), small_fs)
    # the placed assembly's 163.43 MiB less the staged cube: the products only name the parts
    assert "needs 82.45 MiB" in line and "kept: the virtual cube reads them" in line, line


def test_a_site_quota_below_the_free_space_refuses(tmp_path, ngc5921_ms):
    toml = _cube(tmp_path / "quota", ngc5921_ms, 9)
    site = tmp_path / "quota-site.toml"
    local = Path(__file__).parents[1] / "hpc_imager" / "site_profiles" / "local.toml"
    site.write_text(local.read_text() + 'disk_quota = "100MiB"\n')
    result = run_cli("plan", "--site", site, toml, check=False)
    assert result.returncode == 2 and "has 100.00 MiB free (the site's disk_quota)" in result.stderr, result.stderr


def test_cubes_of_one_submission_that_fit_alone_but_not_together_are_refused(tmp_path, ngc5921_ms):
    """The cubes of one submission interleave on the workers, so their peaks can coincide: each needs
    163.43 MiB here (parts, staged cube and products on one file system), 326.85 MiB together."""
    a, b = (_cube(tmp_path / name, ngc5921_ms, 9) for name in ("a", "b"))
    site = tmp_path / "quota-site.toml"
    local = Path(__file__).parents[1] / "hpc_imager" / "site_profiles" / "local.toml"
    site.write_text(local.read_text() + 'disk_quota = "250MiB"\n')
    for toml in (a, b):
        assert run_cli("plan", "--site", site, toml).returncode == 0
    result = run_cli("submit", "--site", site, a, b, check=False)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert ("has 250.00 MiB free (the site's disk_quota) but the 2 cubes of this submission writing there "
            "need 326.85 MiB") in line, line
    assert f"{tmp_path / 'a' / 'cube.hpcrun'}: disk: final products" in line, line
    assert not (tmp_path / "a" / "cube.hpcrun").exists() and not (tmp_path / "b" / "cube.hpcrun").exists()


def test_reads_many_times_the_ms_and_over_10_gib_are_said_in_one_line():
    big = {"read_amplification": 12.0, "read_bytes": 40 * 2**30, "ms_bytes": 3 * 2**30}
    assert read_warning(big).startswith("the chunks read 40.00 GiB, 12 × the MS's 3.00 GiB")
    assert read_warning(dict(big, read_amplification=3.0)) is None  # under READ_WARNING times the MS
    assert read_warning(dict(big, read_bytes=READ_WARNING_BYTES - 1)) is None
