"""Command line: ``python -m hpc_imager submit --site local cube.toml`` and friends.

Errors a user can fix are one line on stderr and an exit status (2: the input or the request is
wrong; 1: the run did not finish), never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UserError
from .inputs.cube_spec import CubeSpec, CubeSpecError, ParallelParams, load_cube_spec


def _fail(message: str, status: int) -> None:
    click.echo(f"hpc_imager: error: {message}", err=True)
    sys.exit(status)


def _user_errors(function):
    """Turn an error the user can fix into one line and its exit status; then exit without the
    interpreter's last garbage collections (see below)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            _fail(str(error).splitlines()[0] if error.exit_status == EXIT_USAGE else str(error), error.exit_status)
        except KeyboardInterrupt:
            _fail("interrupted; run again with --resume to finish", EXIT_INTERRUPTED)
        finally:
            _exit_without_collecting()

    return wrapper


def _exit_without_collecting() -> None:
    """The command is done: what the process holds (casatasks, scipy, matplotlib, distributed) is
    freed by its exit, so the cyclic collector need not walk it once more while the interpreter tears
    its modules down. perf showed that walk as 0.3 s after `submit` had finished (gc_collect_main,
    visit_decref), a 9 s run of the simulated 512-channel cube; frozen, the process ended 0.07 s after
    the command instead of 0.36 s (3 paired runs). atexit handlers and library destructors still run."""
    import gc

    gc.freeze()


def _click_type(annotation):
    """click's type for a [parallel] field: its choices when it has some (Literal), else int."""
    import typing

    for member in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(member) is typing.Literal:
            return click.Choice(typing.get_args(member))
    return int


def _parallel_overrides(function):
    """One --option per [parallel] field, taken from the schema so the two never drift."""
    for name, field in reversed(ParallelParams.model_fields.items()):
        flag = f"--{name.replace('_', '-')}"
        if name == "probe":  # "auto" | true | false: the command line says on or off
            flag, kind = f"{flag}/--no-{name}", {"is_flag": True}
        else:
            kind = {"type": _click_type(field.annotation)}
        function = click.option(flag, name, default=None, help=f"{field.description} Overrides [parallel] {name}.",
                                **kind)(function)
    return function


site_option = click.option("--site", default="local", show_default=True,
                           help="Site profile: a name (see `sites list`) or a path to a site TOML.")
cube_argument = click.argument("cube_toml", type=click.Path(path_type=Path))
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _load_cube(cube_toml: Path, overrides: dict):
    return load_cube_spec(cube_toml, {k: v for k, v in overrides.items() if v is not None})


def _cube_on_site(function):
    """CUBE_TOML, --site and the [parallel] overrides → the validated cube and site, CASA set up offline."""

    @cube_argument
    @site_option
    @_parallel_overrides
    @functools.wraps(function)
    def wrapper(cube_toml: Path, site: str, **kwargs):
        from .imaging import casa_setup
        from .inputs.site_profile import load_site

        spec = _load_cube(cube_toml, {name: kwargs.pop(name) for name in ParallelParams.model_fields})
        profile = load_site(site)
        casa_setup.configure_offline()
        return function(spec, profile, **kwargs)

    return wrapper


@click.group()
@click.version_option(package_name="hpc_imager")
def main() -> None:
    """Channel-parallel CASA tclean cubes on HPC batch clusters."""


@main.command()
@click.argument("cube_tomls", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="CUBE_TOML...")
@site_option
@_parallel_overrides
@click.option("--resume", is_flag=True, help="Finish the run in each cube's run directory.")
@click.option("--compare-serial", is_flag=True,
              help="Afterwards run serial tclean on the whole cube and report per-plane differences.")
@_user_errors
def submit(cube_tomls: tuple[Path, ...], site: str, resume: bool, compare_serial: bool, **overrides) -> None:
    """Image the cube described by CUBE_TOML; several cube.tomls share one set of workers (one queue
    wait), each cube with its own run directory, report and --resume."""
    import signal

    from .inputs.site_profile import load_site

    specs = [(path, _load_cube(path, overrides)) for path in cube_tomls]
    profile = load_site(site)

    def interrupted(*_):  # a batch system's SIGTERM (scancel, walltime) ends the run like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    if len(specs) == 1:
        from .run.driver import image_cube

        image_cube(specs[0][1], profile, resume=resume, compare_serial=compare_serial)
        return
    from .run.driver import image_cubes

    outcomes = image_cubes(specs, profile, resume=resume, compare_serial=compare_serial)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        error = outcome.error
        message = (str(error) if isinstance(error, UserError) else
                   f"{type(error).__name__}: {error} (the traceback is in the first cube's logs/driver.log)")
        click.echo(f"hpc_imager: error: {outcome.cube_toml}: {message}", err=True)
    click.echo(f"hpc_imager: {len(outcomes) - len(failed)} of {len(outcomes)} cubes complete", err=True)
    if failed:
        sys.exit(max(getattr(o.error, "exit_status", EXIT_FAILED) for o in failed))


@main.command()
@json_option
@_user_errors
@_cube_on_site
def estimate(spec: CubeSpec, profile, as_json: bool) -> None:
    """Estimate the peak memory of ONE task (one chunk of channels_per_task channels).

    With --probe, image the cube's first chunk on one worker of the site and report its measured peak."""
    from .sizing.cube_sizing import size_cube

    sized = size_cube(spec, profile)  # an estimate for a cube tclean would reject is no use
    spec, result = sized.spec, sized.estimate
    if spec.parallel.probe is True:
        from .run.driver import probe_cube

        result = probe_cube(spec, profile, result)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        seconds = f", about {result.task_seconds:.0f} s" if result.task_seconds is not None else ""
        click.echo(f"one task of {result.channels_per_task} channels × {result.pixels} pixels: "
                   f"{result.task_peak_gib:.2f} GiB peak{seconds} ({result.model} model for {profile.name})")


@main.command()
@json_option
@_user_errors
@_cube_on_site
def plan(spec: CubeSpec, profile, as_json: bool) -> None:
    """Show how the cube would run on a site: memory limits, jobs, walltime and the job script."""
    from .backends import backend_for
    from .sizing.cube_sizing import size_cube
    from .sizing.disk import check_disk

    sized = size_cube(spec, profile)
    the_plan = sized.plan
    assembly = sized.assembly()
    disk = sized.disk(assembly.kind)
    check_disk([(disk, sized.spec)], profile)
    script = backend_for(profile).job_script(the_plan, profile, sized.spec.run_directory)
    if as_json:
        click.echo(json.dumps(the_plan.as_dict() | {"disk": disk.as_dict(), "assembly": assembly.as_dict(),
                                                    "job_script": script}, indent=2))
    else:
        click.echo(the_plan.summary())
        click.echo(disk.summary())
        click.echo(f"assembly: {assembly.kind} ({assembly.reason})")
        if script:
            click.echo(script)


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@site_option
@click.option("--from-reports", is_flag=True,
              help="SOURCES are finished runs (run directories or report.json files): fit on their chunks' "
                   "measured peaks instead of running test tasks.")
@click.option("--sizes", default=None, metavar="256x4,512x4,...",
              help="Sample tasks as image side x channels (default: three around the cube's size).")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Store the fit in the site's TOML as a [[calibration]] table.")
@json_option
@_user_errors
def calibrate(sources: tuple[Path, ...], site: str, from_reports: bool, sizes: str | None, write: bool,
              as_json: bool) -> None:
    """Fit the site's memory and time model: on real tclean tasks run on its workers for CUBE_TOML
    (SOURCES = one cube.toml), or on the chunks of finished runs (--from-reports RUN_DIR...)."""
    import shutil

    from .imaging import casa_setup
    from .inputs.site_profile import BUILTIN_SITES, SiteError, load_site, site_path
    from .sizing.calibrate import default_sizes, fit, measure, prediction_errors, samples_from_reports, store

    profile = load_site(site)
    site_file = Path(site) if site.endswith(".toml") else site_path(site)
    if write and (site_file is None or site_file.resolve().parent == BUILTIN_SITES.resolve()):
        raise SiteError(f"'{site}' is a built-in site: copy its TOML into a directory of HPC_IMAGER_SITE_DIRS "
                        "(or pass --site path/to/site.toml) to store a calibration, or use --no-write")
    if from_reports:
        fits = [fit(samples, *pair) for pair, samples in samples_from_reports(list(sources)).items()]
        for fitted in fits if write else []:
            store(fitted, site_file)
        if as_json:
            click.echo(json.dumps({"calibrations": [f.model_dump() for f in fits],
                                   "stored_in": str(site_file) if write else None}, indent=2))
            return
        for fitted in fits:
            click.echo(f"{fitted.gridder}/{fitted.deconvolver} ({fitted.fitted_on}): {fitted.base_gib:.3f} GiB + "
                       f"{fitted.bytes_per_pixel_channel:.1f} B per pixel per channel"
                       + (f"; stored in {site_file}" if write else ""))
        return
    if len(sources) != 1:
        raise CubeSpecError("calibrate takes one cube.toml (or run directories with --from-reports)")
    spec = load_cube_spec(sources[0])
    try:
        samples_wanted = ([tuple(int(v) for v in item.split("x")) for item in sizes.split(",")] if sizes
                          else default_sizes(spec))
    except ValueError:
        raise CubeSpecError(f"--sizes: expected side x channels like 256x4,512x4, got {sizes!r}") from None
    casa_setup.configure_offline()
    from .inputs.preflight import check_cube

    check_cube(spec)  # before the site's workers are asked for
    work_dir = spec.run_directory.with_name(spec.run_directory.name + ".calibration")
    try:
        samples = measure(spec, profile, samples_wanted, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    fitted = fit(samples, spec.tclean.gridder, spec.tclean.deconvolver)
    before = prediction_errors(spec, profile, samples)
    after_site = profile.model_copy(update={"calibration": [
        c for c in profile.calibration if (c.gridder, c.deconvolver) != (fitted.gridder, fitted.deconvolver)] + [fitted]})
    after = prediction_errors(spec, after_site, samples)
    if write:
        store(fitted, site_file)
    if as_json:
        click.echo(json.dumps({"samples": [vars(s) for s in samples], "error_before": before, "error_after": after,
                               "calibration": fitted.model_dump(), "stored_in": str(site_file) if write else None},
                              indent=2))
        return
    click.echo(f"{'task':>12} {'peak GiB':>9} {'seconds':>8} {'error before':>13} {'error after':>12}")
    for sample, b, a in zip(samples, before, after):
        click.echo(f"{sample.imsize:>7}²×{sample.channels:<4} {sample.peak_gib:9.3f} {sample.seconds:8.1f} "
                   f"{b:+13.1%} {a:+12.1%}")
    click.echo(f"fit: {fitted.base_gib:.3f} GiB + {fitted.bytes_per_pixel_channel:.1f} B per pixel per channel; "
               f"{fitted.seconds_base:.1f} s + {fitted.seconds_per_megapixel_channel:.3f} s per megapixel-channel")
    if write:
        click.echo(f"stored in {site_file}")


@main.command()
@cube_argument
@site_option
@_user_errors
def script(cube_toml: Path, site: str) -> None:
    """Print a batch script that runs the driver itself as a job on SITE (sbatch/qsub it)."""
    from .backends import backend_for
    from .inputs.site_profile import load_site

    profile = load_site(site)
    click.echo(backend_for(profile).driver_script(load_cube_spec(cube_toml), profile, site, cube_toml), nl=False)


@main.group()
def sites() -> None:
    """Site profiles: list, show and validate them."""


@sites.command("list")
@_user_errors
def sites_list() -> None:
    """Every site --site can name, and where its profile comes from."""
    from .inputs.site_profile import available_sites, load_site

    for name, path in available_sites().items():
        click.echo(f"{name:<20} {load_site(name).description}  [{path}]")


@sites.command("show")
@click.argument("name")
@_user_errors
def sites_show(name: str) -> None:
    """Print a site's profile with every default filled in."""
    from .inputs.site_profile import load_site

    click.echo(json.dumps(load_site(name).model_dump(), indent=2))


@sites.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@_user_errors
def sites_validate(file: Path) -> None:
    """Check a site TOML; errors name the field and what is wrong with it."""
    from .inputs.site_profile import load_site

    profile = load_site(str(file) if str(file).endswith(".toml") else f"{file}.toml")
    click.echo(f"{file}: valid {profile.scheduler} site '{profile.name}'")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--plot", is_flag=True, help="Also (re)draw each RUN_DIR/report.png.")
@json_option
@_user_errors
def status(run_dirs: tuple[Path, ...], plot: bool, as_json: bool) -> None:
    """What a run (running or finished) has done: chunks done, running, failed, pending; workers; ETA.
    Several RUN_DIRs (the cubes of one submission): each in turn (--json: a list)."""
    from .run.status import format_status, read_status

    states = [read_status(run_dir) for run_dir in run_dirs]
    if as_json:
        found = [state.as_dict() for state in states]
        click.echo(json.dumps(found[0] if len(found) == 1 else found, indent=2))
    else:
        click.echo("\n\n".join(format_status(state) for state in states))
    if plot:
        from .run.report_plot import write_report_png

        for run_dir in run_dirs:
            click.echo(f"wrote {write_report_png(run_dir)}", err=True)


@main.command()
@click.argument("which", type=click.Choice(["cube", "site"]), default="cube")
def reference(which: str) -> None:
    """Print the cube.toml or site profile reference (docs/), generated from the schema."""
    from .inputs.reference_docs import cube_reference, site_reference

    click.echo(cube_reference() if which == "cube" else site_reference(), nl=False)


@main.command()
@click.argument("directory", type=click.Path(path_type=Path), default=Path("demo"))
@click.option("--run/--no-run", default=True, show_default=True, help="Image the demo cube after setting it up.")
@_user_errors
def demo(directory: Path, run: bool) -> None:
    """Set up the NGC5921 demo (MS and cube.toml) in DIRECTORY and image it on --site local."""
    from .demo import prepare_demo
    from .inputs.site_profile import load_site
    from .run.concat import final_products
    from .run.driver import image_cube

    cube_toml = prepare_demo(directory)
    click.echo(f"hpc_imager: demo cube {cube_toml}", err=True)
    spec = load_cube_spec(cube_toml)
    if not run:
        return
    started = (spec.run_directory / "run.json").exists()
    if final_products(spec.tclean.imagename) and not started:
        raise UserError(f"{spec.tclean.imagename}.* exist but were not made by this demo: move them away")
    image_cube(spec, load_site("local"), resume=started)
