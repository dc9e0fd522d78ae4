"""The README's first command on a machine where CASA has never started: ``hpc_imager demo``."""

from __future__ import annotations

import pytest
from conftest import assert_same_cube, run_cli

pytestmark = pytest.mark.casa


def test_first_demo_prints_only_our_lines_and_equals_serial(tmp_path, serial_reference):
    # a new HOME and a new temporary directory: no ~/.casa, no casasiteconfig written before
    fresh = {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    for path in fresh.values():
        (tmp_path / path).mkdir(parents=True, exist_ok=True)
    result = run_cli("demo", tmp_path / "demo", env=fresh, cwd=tmp_path)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    strangers = [line for line in lines if not line.startswith(("hpc_imager: ", "imaging "))]
    assert not strangers, f"lines not hpc_imager's on the terminal: {strangers[:5]}"
    assert lines[-1].startswith("hpc_imager: wrote ")
    assert_same_cube(str(tmp_path / "demo" / "ngc5921_cube"), serial_reference(nchan=-1))
    # CASA's own messages are kept: the MS import's and the driver's in the run's logs
    logs = tmp_path / "demo" / "ngc5921_cube.hpcrun" / "logs"
    assert "importuvfits" in (logs / "import.casa.log").read_text()
    assert (logs / "driver.log").read_text().count("mode none") == 1
