"""The driver: cube.toml → chunks → the imaging mode's tasks on the site's workers → one cube.

The mode (:mod:`hpc_imager.run.modes`) decides what the tasks are; every mode runs them through one
bounded, retrying task loop (:mod:`.task_loop`) on one cluster session (:mod:`.cluster_session`), and
journals every submission, success and failure first, so a killed driver can be resumed without
re-imaging what was done.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..backends import backend_for
from ..errors import RunFailed
from ..imaging import casa_setup
from ..imaging import mosaic_beams
from ..imaging.casa_imager import chunking_caveats
from ..imaging.cube_weights import CUBE_WEIGHTS, make_cube_weights, wants_cube_weights
from ..imaging.iteration import weighting_refusal
from ..inputs.cube_spec import CubeSpec, CubeSpecError
from ..inputs.site_profile import SiteProfile
from ..sizing.cube_sizing import SizedCube, size_cube
from ..sizing.disk import DiskNeed, check_disk, read_amplification, read_warning
from ..sizing.estimate import GIB, TaskEstimate, memory_surprise
from ..sizing.plan import Plan, shared_plan
from .cluster_session import SharedWorkers
from ..sizing.plan import AssemblyChoice
from .channel_records import channel_records
from .concat import CubeAssembly, VirtualAssembly, export_fits, final_products
from .context import RunContext
from .journal import Journal, RunDirectoryError
from ..logs import casa_messages_to, send_dask_logs_to, send_module_logs_to
from .modes import ImagingMode, mode_for
from .modes.whole_chunks import WholeChunks
from .task_loop import channel_ranges, in_flight_bound

log = logging.getLogger(__name__)


# casatasks' tclean keeps its imager and CASA's log origin per process: one serial comparison at a time
_SERIAL_TCLEAN = threading.Lock()


class RunIncomplete(RunFailed):
    """Some chunks failed every try; what finished is kept for --resume."""


def image_cube(
    spec: CubeSpec,
    site: SiteProfile,
    *,
    resume: bool = False,
    compare_serial: bool = False,
    console: Console | None = None,
) -> dict:
    """Image the cube described by ``spec`` on ``site``; return the report (also written to report.json)."""
    console = console or Console(stderr=True, soft_wrap=True)
    casa_setup.configure_offline()
    backend_for(site).check_site(site)
    cube = _checked(spec, site, resume)
    check_disk([cube.disk], site)  # before anything is written
    journal = _journal(cube, site, resume, cube.sized.plan, console)
    if isinstance(journal, dict):
        return journal  # complete already
    _send_logs_to(cube.run_dir)
    with casa_messages_to(cube.run_dir / "logs" / "driver.casa.log"):
        return _image(_run_context(cube, site, journal, console), cube.mode, cube.sized, compare_serial, cube.choice)


@dataclass
class _Cube:
    """One cube of a submission, checked, sized and refused (or not) before any worker is asked for."""

    sized: SizedCube
    mode: ImagingMode
    run_dir: Path
    choice: AssemblyChoice  # how its parts become the cube (kept by --resume)

    @property
    def spec(self) -> CubeSpec:
        return self.sized.spec

    @property
    def disk(self) -> tuple[DiskNeed, CubeSpec]:
        """What ``check_disk`` weighs for this cube."""
        return self.sized.disk(self.choice.kind), self.spec


@dataclass
class CubeOutcome:
    """What became of one cube of a submission: its report, or the error that ended it."""

    cube_toml: Path
    report: dict | None = None
    error: Exception | None = None


def image_cubes(cubes: list[tuple[Path, CubeSpec]], site: SiteProfile, *, resume: bool = False,
                compare_serial: bool = False) -> list[CubeOutcome]:
    """Image several cubes on one set of workers (one cluster, one queue wait): each cube runs as
    :func:`image_cube` does (its own run directory, journal, report, ``--resume``) in a thread of its
    own, and their tasks share the workers and one bound on tasks in flight (:class:`SharedWorkers`).

    Every cube is checked before any worker is asked for, and a cube that cannot run refuses the
    submission; once imaging, a cube that fails ends alone (its outcome says why) and the others go on.
    With ``resume``, a run directory that holds a run goes on, a complete one is not imaged again, and
    a cube never started starts. The driver's own logs (dask's, CASA's, its decisions, each line with
    its cube's thread) and the workers' are in the first cube's run directory: one process, one log."""
    casa_setup.configure_offline()
    backend = backend_for(site)
    backend.check_site(site)
    checked = [_checked(spec, site, resume) for _, spec in cubes]
    _refuse_shared_paths(cubes, checked)
    check_disk([c.disk for c in checked], site)  # before anything is written, summed over the cubes
    # sized for the cubes left to image (a resumed submission's complete cubes take no worker)
    left = [c for c in checked if not (resume and _complete_report(c.run_dir))] or checked
    plan = shared_plan([c.sized.plan for c in left])
    bound = in_flight_bound(min((m for c in checked if (m := c.spec.parallel.max_in_flight)), default=None), plan)
    consoles = [_CubeConsole(str(path)) for path, _ in cubes]  # each cube's lines name its cube.toml
    others = [[str(o.run_dir) for o in checked if o is not c] for c in checked]
    journals = [_journal(c, site, resume and (c.run_dir / "run.json").exists(), plan, console, shared_with)
                for c, console, shared_with in zip(checked, consoles, others)]
    outcomes = [CubeOutcome(path, report=j if isinstance(j, dict) else None) for (path, _), j in zip(cubes, journals)]
    first = checked[0].run_dir
    _send_logs_to(first, by_thread=True)
    console = Console(stderr=True, soft_wrap=True)
    with casa_messages_to(first / "logs" / "driver.casa.log"), \
            SharedWorkers(plan, site, backend, first, console, bound) as workers:

        def image(outcome: CubeOutcome, cube: _Cube, journal: Journal, console: Console) -> None:
            try:
                run = _run_context(cube, site, journal, console)
                run.allocation, run.label = workers, console.cube_name
                outcome.report = _image(run, cube.mode, cube.sized, compare_serial, cube.choice)
            except Exception as error:  # noqa: BLE001 — this cube ends; the others go on
                log.exception("%s ended", cube.spec.tclean.imagename)
                outcome.error = error

        threads = [threading.Thread(target=image, args=(o, c, j, k), name=k.cube_name,
                                    daemon=True)  # Ctrl-C ends the driver, not a wait for every cube
                   for o, c, j, k in zip(outcomes, checked, journals, consoles) if not isinstance(j, dict)]
        if threads:  # started here, not in a cube's thread: distributed's Client must be closed in the
            workers.client()  # context it was entered in (a ValueError from its contextvar, seen)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return outcomes


class _CubeConsole(Console):
    """A cube's lines in a submission of several, each naming its cube; never redrawn in place (one
    terminal cannot hold several cubes' live progress bars: they print once, when done)."""

    def __init__(self, name: str):
        # the terminal's width (else 120): rich gives a console that is not a terminal 80 columns, and
        # the progress line printed at the end was cut ("peak residual 0.001… ch 1.6… failed 0 worke…")
        super().__init__(stderr=True, soft_wrap=True, force_terminal=False,
                         width=shutil.get_terminal_size((120, 24)).columns)
        self.cube_name = name

    def print(self, *objects, **kwargs) -> None:
        if objects and isinstance(objects[0], str) and objects[0].startswith("hpc_imager: "):
            objects = (f"hpc_imager: {self.cube_name}: {objects[0].removeprefix('hpc_imager: ')}", *objects[1:])
        super().print(*objects, **kwargs)


def _refuse_shared_paths(cubes: list[tuple[Path, CubeSpec]], checked: list[_Cube]) -> None:
    """Two cubes of a submission writing one run directory or one image would overwrite each other."""
    for what, key in (("run directory", lambda c: c.run_dir),
                      ("imagename", lambda c: Path(c.spec.tclean.imagename).resolve())):
        seen: dict[Path, Path] = {}
        for (path, _), cube in zip(cubes, checked):
            if key(cube) in seen:
                raise CubeSpecError(f"{seen[key(cube)]} and {path} have the same {what} {key(cube)}:"
                                    " give each cube its own")
            seen[key(cube)] = path


def _checked(spec: CubeSpec, site: SiteProfile, resume: bool) -> _Cube:
    """Everything that can refuse a cube before anything is written or any worker asked for."""
    run_dir = spec.run_directory.resolve()
    existing = final_products(spec.tclean.imagename)
    if existing and not resume:
        raise RunDirectoryError(f"will not overwrite {', '.join(map(str, existing))}: remove it or choose another imagename")
    if not resume:
        Journal.refuse_taken(run_dir)  # one cube of several must not leave the others' journals begun
    sized = size_cube(spec, site, _started_with(run_dir, resume))
    choice = sized.assembly(json.loads((run_dir / "run.json").read_text()).get("assembly")
                            if resume and (run_dir / "run.json").exists() else None)
    mode = mode_for(sized.spec.iteration)()
    weighting_refusal(sized.spec.tclean.model_dump(), sized.chunks, sized.spec.iteration)
    mode.refuse(sized.spec.tclean.model_dump(), sized.chunks, sized.grid)
    return _Cube(sized, mode, run_dir, choice)


def _journal(cube: _Cube, site: SiteProfile, resume: bool, plan: Plan, console: Console,
             shared_with: list[str] = ()) -> Journal | dict:
    """The cube's journal, created or resumed; or its report when a resumed run is complete already."""
    spec, grid = cube.spec, cube.sized.grid
    identity = {
        "fingerprint": spec.fingerprint(),
        "imagename": spec.tclean.imagename,
        "nchan": grid.nchan,
        "channels_per_task": spec.parallel.channels_per_task,
        "mode": cube.mode.key,
        # for `status` while it runs; its workers shared with the other cubes of the submission
        "plan": {"workers": plan.workers, "jobs": plan.jobs, "site": site.name,
                 **({"shared_with": list(shared_with)} if shared_with else {})},
        "assembly": cube.choice.kind,  # kept by --resume: a run's parts are assembled one way
    }
    journal = Journal.resume(cube.run_dir, identity) if resume else Journal.create(cube.run_dir, identity)
    journal.driver_started()
    previous = _complete_report(cube.run_dir) if resume else None
    if previous:
        console.print(f"hpc_imager: {spec.tclean.imagename} is already complete ({cube.run_dir / 'report.json'})")
        return previous
    (cube.run_dir / "logs").mkdir(exist_ok=True)
    return journal


def _complete_report(run_dir: Path) -> dict | None:
    """The report of a run that is complete already (``--resume`` images nothing of it)."""
    path = run_dir / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    return report if report.get("status") == "complete" else None


def _send_logs_to(run_dir: Path, by_thread: bool = False) -> None:
    send_dask_logs_to(open(run_dir / "logs" / "driver.dask.log", "a", buffering=1))
    send_module_logs_to(run_dir / "logs" / "driver.log", by_thread=by_thread)


def _run_context(cube: _Cube, site: SiteProfile, journal: Journal, console: Console) -> RunContext:
    sized = cube.sized
    log.info("%s: %d channels in %d chunks of %d, mode %s, site %s; %s assembly: %s", cube.spec.tclean.imagename,
             sized.grid.nchan, len(sized.chunks), cube.spec.parallel.channels_per_task, cube.mode.key, site.name,
             cube.choice.kind, cube.choice.reason)
    return RunContext(cube.spec, site, backend_for(site), cube.run_dir, journal, console, sized.grid, sized.chunks,
                      None)


def _image(run: RunContext, mode: ImagingMode, sized: SizedCube, compare_serial: bool, choice: AssemblyChoice) -> dict:
    """Image the run's chunks in ``mode``, assemble the cube, write report.json and report.png."""
    spec, grid, chunks, plan, journal, run_dir, console = (run.spec, run.grid, run.chunks, sized.plan, run.journal,
                                                           run.run_dir, run.console)
    imagename = spec.tclean.imagename
    if choice.kind == "virtual":
        run.assembly = assembly = VirtualAssembly(run_dir, chunks, spec.tclean.model_dump())
    else:
        run.assembly = assembly = CubeAssembly(run_dir, chunks, spec.tclean.model_dump(), grid.tabular_axis,
                                               placed={c.index for c in chunks if journal.record(c.index).placed})
    try:  # the placing thread stops before the interpreter does, whatever ends the run
        todo = mode.todo(run)
        for chunk in set(chunks) - set(todo):
            assembly.arrived(chunk)
        assembly.wait_placed(journal.placed)
        cube_weights_seconds = _hand_cube_weights(run)
        beams = mosaic_beams.prediction(spec.tclean.model_dump(), grid, chunks)
        caveats = grid.caveats() + chunking_caveats(spec.tclean.model_dump(), chunks, beams)
        for caveat in caveats:
            console.print(f"hpc_imager: warning: {caveat}")
            log.warning(caveat)
        console.print(
            f"hpc_imager: {grid.nchan} channels in {len(chunks)} chunks of {spec.parallel.channels_per_task}"
            f" ({len(chunks) - len(todo)} already done; {mode.title}; {choice.kind} assembly); run directory {run_dir};"
            f" {sized.disk(choice.kind).summary()}"
        )
        started = time.time()
        _import_in_background("matplotlib.figure")  # report.png's, while the workers image
        result = mode.image(run, plan, sized.estimate, todo)
        passes = result.passes
        plan = passes.plans[0]  # what the workers were made from (after a probe, sized by it)
        lost = sorted(passes.lost, key=lambda chunk: chunk.index)  # tasks finish in any order; say them in order
        reads = read_amplification(result.chunk_metrics, spec.tclean.vis, grid.nchan)
        surprises = _memory_surprises(result.chunk_metrics)
        if surprises:
            console.print(f"hpc_imager: warning: {len(surprises)} chunk(s) far from their memory estimate; "
                          f"{surprises[0]} (all in report.json)")
        report = {
            "status": "incomplete" if lost else "complete",
            "imagename": imagename,
            "mode": mode.key,
            "nchan": grid.nchan,
            "grid": {"kind": grid.kind, "start": grid.start, "width": grid.width, "unit": grid.unit, "frame": grid.frame},
            "caveats": caveats,
            "mosaic_beams": beams,
            "chunks": len(chunks),
            "channels_per_task": spec.parallel.channels_per_task,
            "workers": plan.workers,
            "plan": plan.as_dict(),
            "memory_retries": [p.as_dict() for p in passes.plans[1:]],
            "estimate": sized.estimate.as_dict(),
            "probe": result.probe,
            "cube": {k: spec.tclean.model_dump()[k] for k in ("gridder", "deconvolver", "imsize", "stokes", "wprojplanes",
                                                              "facets", "weighting", "usemask", "niter", "scales")},
            "imaging_seconds": time.time() - started,
            "chunk_metrics": result.chunk_metrics,
            "memory_warnings": surprises,
            "reads": reads,
            "failures": passes.failures,
            "iteration": spec.iteration,
            "cube_weights_seconds": cube_weights_seconds,
            "assembly": choice.as_dict(),
            **result.report,
        }
        if lost:
            assembly.wait_placed(journal.placed)  # what arrived is placed and recorded before the run ends
            report["missing_channels"] = [ch for c in lost for ch in c.channels]
            _write_report(run_dir, report)
            _draw_report(run_dir, console)
            last_error = next((f["error"] for f in reversed(passes.failures) if f["chunk"] == lost[0].index), "")
            raise RunIncomplete(
                f"channels {channel_ranges(lost)} failed every try ({len(lost)} chunks); finished chunks are kept"
                f" in {run_dir / 'parts'}: fix the cause and run again with --resume"
                + passes.memory_note
                + (f"; {lost[0].name} (channels {channel_ranges(lost[:1])}) last failed with {last_error}" if last_error else "")
            )
        report["concat"] = assembly.finish(journal.placed)
        if spec.run.fits:
            report["fits"] = export_fits(imagename)
        report["tclean_return"] = json_safe(mode.tclean_return(result, spec.tclean.model_dump()))
        report["channels"] = channel_records(imagename, chunks, report["tclean_return"])
        report["wall_seconds"] = time.time() - started
        if compare_serial:
            from ..imaging.serial_check import compare_with_serial, stop_line

            with _SERIAL_TCLEAN:
                report["serial_comparison"], report["serial_stop"] = compare_with_serial(
                    spec.tclean.model_dump(), run_dir, report["tclean_return"])
            worst = {p: f"{v['max']:.2g}" for p, v in report["serial_comparison"].items()}
            console.print(f"hpc_imager: largest per-plane difference from serial tclean (of the plane peak): {worst}")
            if stop_line(report["serial_stop"]):
                console.print(f"hpc_imager: stopped unlike serial tclean: {stop_line(report['serial_stop'])}")
        _write_report(run_dir, report)
        _draw_report(run_dir, console)
        if not spec.run.keep_parts and assembly.kind == "placed":
            shutil.rmtree(run_dir / "parts")
        shutil.rmtree(run_dir / "scratch", ignore_errors=True)
        shutil.rmtree(run_dir / CUBE_WEIGHTS, ignore_errors=True)
        if read_warning(reads):
            console.print(f"hpc_imager: {read_warning(reads)}")
        console.print(f"hpc_imager: wrote {', '.join(imagename + '.' + p for p in report['concat']['products'])}"
                      + "".join(f", {fits}" for fits in report.get("fits", []))
                      + (f" (virtual: they read the parts in {run_dir / 'parts'}, which are kept; keep the run"
                         " directory where it is)" if assembly.kind == "virtual" else ""))
        log.info("complete: %s", report["concat"]["products"])
        return report
    finally:
        assembly.close()


def _hand_cube_weights(run: RunContext) -> float | None:
    """briggsbwtaper over chunks: the whole cube's imaging weights made here once (the seconds it took),
    for every chunk's task to be handed (imaging/cube_weights.py)."""
    if not wants_cube_weights(run.tclean_params, run.chunks):
        return None
    with run.console.status("weighting the whole cube (briggsbwtaper)"):
        path, seconds = make_cube_weights(run.tclean_params, run.run_dir)
    run.cube_weights = str(path)
    return seconds


def _started_with(run_dir: Path, resume: bool) -> int | None:
    """The channels_per_task a run being resumed was started with (its chunks must stay the same)."""
    identity = run_dir / "run.json"
    if resume and identity.exists():
        return json.loads(identity.read_text()).get("channels_per_task")
    return None


def probe_cube(spec: CubeSpec, site: SiteProfile, estimate: TaskEstimate,
               console: Console | None = None) -> TaskEstimate:
    """``estimate --probe``: image the cube's first whole chunk on one worker of ``site`` in a scratch
    run directory beside the run's (removed afterwards) and return the estimate measured from it."""
    console = console or Console(stderr=True, soft_wrap=True)
    run_dir = spec.run_directory.resolve().with_name(spec.run_directory.name + ".probe")
    shutil.rmtree(run_dir, ignore_errors=True)  # our own, from an interrupted probe
    sized = size_cube(spec, site)
    journal = Journal.create(run_dir, {"fingerprint": spec.fingerprint(), "probe": True})
    assembly = CubeAssembly(run_dir, sized.chunks, spec.tclean.model_dump(), sized.grid.tabular_axis, placed=set())
    run = RunContext(sized.spec, site, backend_for(site), run_dir, journal, console, sized.grid, sized.chunks, assembly)
    try:
        _hand_cube_weights(run)
        probe = WholeChunks().probe(run, estimate, sized.chunks)
        assembly.wait_placed(journal.placed)  # its copy of the part, before the folder goes
    finally:
        assembly.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    if not probe or not probe.estimate:
        raise ProbeFailed(f"the probe chunk did not finish on {site.name}: see the messages above")
    return probe.estimate


class ProbeFailed(RunFailed):
    """``estimate --probe`` could not measure a chunk."""


def _memory_surprises(chunk_metrics: list[dict]) -> list[str]:
    """One line per chunk whose measured peak was far from the estimate it was planned with."""
    lines = []
    for m in chunk_metrics:
        if m.get("estimated_peak_bytes"):
            line = memory_surprise(m["estimated_peak_bytes"] / GIB, m["peak_rss_bytes"] / GIB)
            if line:
                lines.append(f"chunk {m['chunk']} {line}")
    return lines


def _import_in_background(module: str) -> None:
    """Importing matplotlib took 0.3 s of the 1.1 s between the last chunk and the end of a run (512
    channels of 128², quiet machine); the driver mostly waits while the workers image."""
    threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()


def _draw_report(run_dir: Path, console: Console) -> None:
    """report.png beside report.json; a picture that cannot be drawn must not fail the run."""
    from .report_plot import write_report_png

    try:
        write_report_png(run_dir)
    except Exception as error:  # noqa: BLE001 — the cube is made; say why the picture is not
        console.print(f"hpc_imager: warning: could not draw report.png: {type(error).__name__}: {error}")


def json_safe(value):
    """numpy's arrays and scalars (in CASA's records) as JSON's lists and numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _write_report(run_dir: Path, report: dict) -> None:
    path = Path(run_dir) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
