"""Command line: ``python -m hpc_imager submit --site local cube.toml``.

Errors a user can fix are one line on stderr and an exit status (2: the input is wrong; 1: the run
did not finish), never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cube_spec import CubeSpecError, ParallelParams, load_cube_spec

EXIT_FAILED = 1
EXIT_USAGE = 2


def _fail(message: str, status: int) -> None:
    click.echo(f"hpc_imager: error: {message}", err=True)
    sys.exit(status)


def _parallel_overrides(function):
    """One --option per [parallel] field, taken from the schema so the two never drift."""
    for name, field in reversed(ParallelParams.model_fields.items()):
        function = click.option(f"--{name.replace('_', '-')}", name, type=int, default=None,
                                help=f"{field.description} Overrides [parallel] {name}.")(function)
    return function


@click.group()
@click.version_option(package_name="hpc_imager")
def main() -> None:
    """Channel-parallel CASA tclean cubes on HPC batch clusters."""


@main.command()
@click.argument("cube_toml", type=click.Path(path_type=Path))
@click.option("--site", default="local", show_default=True, help="Site profile name or path.")
@click.option("--resume", is_flag=True, help="Finish the run in the cube's run directory.")
@click.option("--compare-serial", is_flag=True,
              help="Afterwards run serial tclean on the whole cube and report per-plane differences.")
@_parallel_overrides
def submit(cube_toml: Path, site: str, resume: bool, compare_serial: bool, **overrides) -> None:
    """Image the cube described by CUBE_TOML."""
    from .cluster import local_cluster
    from .concat import ConcatError
    from .driver import RunIncomplete, image_cube
    from .journal import RunDirectoryError

    try:
        spec = load_cube_spec(cube_toml)
        changed = {k: v for k, v in overrides.items() if v is not None}
        if changed:
            spec = spec.model_copy(update={"parallel": ParallelParams.model_validate(
                spec.parallel.model_dump() | changed)})
    except (CubeSpecError, ValueError) as error:
        _fail(str(error).splitlines()[0], EXIT_USAGE)
    if site != "local":
        _fail(f"unknown site '{site}'", EXIT_USAGE)
    try:
        image_cube(spec, local_cluster, resume=resume, compare_serial=compare_serial)
    except RunDirectoryError as error:
        _fail(str(error), EXIT_USAGE)
    except (RunIncomplete, ConcatError) as error:
        _fail(str(error), EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted; run again with --resume to finish", 130)


@main.command()
def reference() -> None:
    """Print the cube.toml reference (docs/cube-reference.md), generated from the schema."""
    from .reference_docs import cube_reference

    click.echo(cube_reference(), nl=False)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=Path("demo"))
@click.option("--run/--no-run", default=True, show_default=True, help="Image the demo cube after setting it up.")
def demo(directory: Path, run: bool) -> None:
    """Set up the NGC5921 demo (MS and cube.toml) in DIRECTORY and image it on --site local."""
    from .demo import prepare_demo

    cube_toml = prepare_demo(directory)
    click.echo(f"hpc_imager: demo cube {cube_toml}", err=True)
    if run:
        submit.main([str(cube_toml), "--site", "local"] + (["--resume"] if _demo_started(cube_toml) else []),
                    standalone_mode=True)


def _demo_started(cube_toml: Path) -> bool:
    return load_cube_spec(cube_toml).run_directory.exists()
