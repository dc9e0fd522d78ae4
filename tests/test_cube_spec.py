"""cube.toml validation: one-line errors that name the keyword, exit status 2 from the CLI."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from conftest import run_cli

from hpc_imager.inputs.cube_spec import TCLEAN_KEYWORDS, CubeSpecError, load_cube_spec, parse_cube_spec

MINIMAL = {"vis": "ngc5921.ms", "imagename": "cube"}


def error_for(data: dict) -> str:
    with pytest.raises(CubeSpecError) as caught:
        parse_cube_spec(data, Path("/data"))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_keyword_table_matches_the_installed_tclean():
    import casatasks

    signature = inspect.signature(casatasks.tclean.__call__)
    real = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    assert list(TCLEAN_KEYWORDS) == list(real)
    for name, (_, default) in TCLEAN_KEYWORDS.items():
        if default is not ... and name != "specmode":
            assert default == real[name], name


@pytest.mark.parametrize("data, expected", [
    ({"tclean": dict(MINIMAL, nitre=100)}, "unknown keyword 'nitre' in [tclean] (did you mean 'niter'?)"),
    ({"tclean": dict(MINIMAL), "paralel": {}}, "unknown keyword 'paralel' in cube.toml (did you mean 'parallel'?)"),
    ({"tclean": dict(MINIMAL), "parallel": {"chanels_per_task": 2}}, "did you mean 'channels_per_task'?"),
    ({"tclean": {"imagename": "cube"}}, "tclean.vis: required but not given"),
    ({"tclean": dict(MINIMAL, niter="100")}, "tclean.niter: Input should be a valid integer, got '100'"),
    ({"tclean": dict(MINIMAL, specmode="mfs")}, "tclean.specmode: Input should be 'cube', 'cubedata' or 'cubesource'"),
    ({"tclean": dict(MINIMAL, savemodel="modelcolumn")}, "savemodel must be 'none'"),
    ({"tclean": dict(MINIMAL, interactive=True)}, "interactive=True cannot run on batch workers"),
    ({"tclean": dict(MINIMAL, nchan=0)}, "nchan must be -1"),
    ({"tclean": dict(MINIMAL), "parallel": {"workers": 0}}, "parallel.workers: Input should be greater than or equal to 1"),
])
def test_invalid_cube_is_one_line_naming_the_keyword(data, expected):
    assert expected in error_for(data)


def test_paths_are_relative_to_the_cube_toml_and_defaults_are_tcleans():
    spec = parse_cube_spec({"tclean": dict(MINIMAL, mask="circle[[10pix,10pix],5pix]")}, Path("/data/m51"))
    assert spec.tclean.vis == "/data/m51/ngc5921.ms"
    assert spec.tclean.imagename == "/data/m51/cube"
    assert spec.tclean.mask == "circle[[10pix,10pix],5pix]", "region text is not a path"
    assert spec.tclean.specmode == "cube" and spec.tclean.deconvolver == "hogbom" and spec.tclean.niter == 0
    assert spec.parallel.channels_per_task is None and spec.parallel.retries == 2  # None: chosen at run time
    assert spec.run_directory == Path("/data/m51/cube.hpcrun")


def test_fingerprint_follows_what_decides_the_pixels():
    base = parse_cube_spec({"tclean": dict(MINIMAL)}, Path("/d"))
    assert base.fingerprint() == parse_cube_spec({"tclean": dict(MINIMAL), "parallel": {"workers": 7}}, Path("/d")).fingerprint()
    assert base.fingerprint() != parse_cube_spec({"tclean": dict(MINIMAL, niter=1)}, Path("/d")).fingerprint()


def test_cli_reports_a_bad_cube_in_one_line_with_exit_2(tmp_path):
    cube = tmp_path / "cube.toml"
    cube.write_text('[tclean]\nvis = "x.ms"\nimagename = "c"\ncyclenitre = 3\n')
    result = run_cli("submit", "--site", "local", cube, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hpc_imager: error: unknown keyword 'cyclenitre' in [tclean] (did you mean 'cycleniter'?)")

    cube.write_text('[tclean]\nvis = "x.ms"\nimagename = "c"\nspecmode = "mfs"\n')
    result = run_cli("submit", cube, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tclean.specmode" in result.stderr

    cube.write_text('[tclean]\nvis = "x.ms"\nimagename = "c"\n[parallel]\nworkers = 2\n')
    override = run_cli("estimate", cube, "--workers", "0", check=False)
    assert override.returncode == 2
    assert override.stderr.strip() == "hpc_imager: error: parallel.workers: Input should be greater than or equal to 1"

    missing = run_cli("submit", tmp_path / "nope.toml", check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_loading_a_real_file(tmp_path):
    (tmp_path / "cube.toml").write_text('[tclean]\nvis = "a.ms"\nimagename = "out/c"\n[parallel]\nworkers = 3\n')
    spec = load_cube_spec(tmp_path / "cube.toml")
    assert spec.tclean.imagename == str(tmp_path / "out" / "c") and spec.parallel.workers == 3
    (tmp_path / "bad.toml").write_text("[tclean\n")
    with pytest.raises(CubeSpecError, match="not valid TOML"):
        load_cube_spec(tmp_path / "bad.toml")


def test_reference_docs_are_generated_from_the_schema():
    committed = (Path(__file__).parents[1] / "docs" / "cube-reference.md").read_text()
    generated = run_cli("reference").stdout
    assert committed == generated, "regenerate: python -m hpc_imager reference > docs/cube-reference.md"
    assert "| `channels_per_task` | int | `None` |" in generated and "| `niter` | `0` |" in generated
