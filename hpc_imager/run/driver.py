"""The driver: cube.toml → chunks → the imaging mode's tasks on the site's workers → one cube.

The mode (:mod:`hpc_imager.run.modes`) decides what the tasks are; every mode runs them through one
bounded, retrying task loop (:mod:`.task_loop`) on one cluster session (:mod:`.cluster_session`), and
journals every submission, success and failure first, so a killed driver can be resumed without
re-imaging what was done.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from rich.console import Console

from ..backends import backend_for
from ..errors import RunFailed
from ..imaging import casa_setup
from ..imaging import mosaic_beams
from ..imaging.casa_imager import chunking_caveats
from ..imaging.cube_weights import CUBE_WEIGHTS, make_cube_weights, wants_cube_weights
from ..imaging.iteration import weighting_refusal
from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import SiteProfile
from ..sizing.cube_sizing import SizedCube, size_cube
from ..sizing.disk import check_disk, read_amplification, read_warning
from ..sizing.estimate import GIB, TaskEstimate, memory_surprise
from .channel_records import channel_records
from .concat import CubeAssembly, export_fits, final_products
from .context import RunContext
from .journal import Journal, RunDirectoryError
from ..logs import casa_messages_to, send_dask_logs_to, send_module_logs_to
from .modes import ImagingMode, mode_for
from .modes.whole_chunks import WholeChunks
from .task_loop import channel_ranges

log = logging.getLogger(__name__)


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
    run_dir = spec.run_directory.resolve()
    imagename = spec.tclean.imagename
    backend_for(site).check_site(site)
    existing = final_products(imagename)
    if existing and not resume:
        raise RunDirectoryError(f"will not overwrite {', '.join(map(str, existing))}: remove it or choose another imagename")

    sized = size_cube(spec, site, _started_with(run_dir, resume))
    spec, grid, chunks, plan = sized.spec, sized.grid, sized.chunks, sized.plan
    check_disk(sized.disk, spec, site)  # before anything is written
    mode = mode_for(spec.iteration)()
    weighting_refusal(spec.tclean.model_dump(), chunks, spec.iteration)
    mode.refuse(spec.tclean.model_dump(), chunks, grid)
    identity = {
        "fingerprint": spec.fingerprint(),
        "imagename": imagename,
        "nchan": grid.nchan,
        "channels_per_task": spec.parallel.channels_per_task,
        "mode": mode.key,
        "plan": {"workers": plan.workers, "jobs": plan.jobs, "site": site.name},  # for `status` while it runs
    }
    journal = Journal.resume(run_dir, identity) if resume else Journal.create(run_dir, identity)
    journal.driver_started()
    if resume and (run_dir / "report.json").exists():
        previous = json.loads((run_dir / "report.json").read_text())
        if previous.get("status") == "complete":
            console.print(f"hpc_imager: {imagename} is already complete ({run_dir / 'report.json'})")
            return previous
    (run_dir / "logs").mkdir(exist_ok=True)
    send_dask_logs_to(open(run_dir / "logs" / "driver.dask.log", "a", buffering=1))
    send_module_logs_to(run_dir / "logs" / "driver.log")
    log.info("%s: %d channels in %d chunks of %d, mode %s, site %s", imagename, grid.nchan, len(chunks),
             spec.parallel.channels_per_task, mode.key, site.name)
    with casa_messages_to(run_dir / "logs" / "driver.casa.log"):
        run = RunContext(spec, site, backend_for(site), run_dir, journal, console, grid, chunks, None)
        return _image(run, mode, sized, compare_serial)


def _image(run: RunContext, mode: ImagingMode, sized: SizedCube, compare_serial: bool) -> dict:
    """Image the run's chunks in ``mode``, assemble the cube, write report.json and report.png."""
    spec, grid, chunks, plan, journal, run_dir, console = (run.spec, run.grid, run.chunks, sized.plan, run.journal,
                                                           run.run_dir, run.console)
    imagename = spec.tclean.imagename
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
            f" ({len(chunks) - len(todo)} already done; {mode.title}); run directory {run_dir}; {sized.disk.summary()}"
        )
        started = time.time()
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
            from ..imaging.serial_check import compare_with_serial

            report["serial_comparison"] = compare_with_serial(spec.tclean.model_dump(), run_dir)
            worst = {p: f"{v['max']:.2g}" for p, v in report["serial_comparison"].items()}
            console.print(f"hpc_imager: largest per-plane difference from serial tclean (of the plane peak): {worst}")
        _write_report(run_dir, report)
        _draw_report(run_dir, console)
        if not spec.run.keep_parts:
            shutil.rmtree(run_dir / "parts")
        shutil.rmtree(run_dir / "scratch", ignore_errors=True)
        shutil.rmtree(run_dir / CUBE_WEIGHTS, ignore_errors=True)
        if read_warning(reads):
            console.print(f"hpc_imager: {read_warning(reads)}")
        console.print(f"hpc_imager: wrote {', '.join(imagename + '.' + p for p in report['concat']['products'])}"
                      + "".join(f", {fits}" for fits in report.get("fits", [])))
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
