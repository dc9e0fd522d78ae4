"""The driver: cube.toml → chunks → a bounded stream of worker tasks → one cube.

At most ``max_in_flight`` chunks are submitted at once and the window is refilled as each one
finishes (``as_completed``), so CASA's memory per worker stays bounded however large the cube. Every
submission, success and failure goes to the journal first, so a killed driver can be resumed
without re-imaging what was done.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..backends import backend_for
from ..backends.base import Backend
from ..errors import RunFailed
from ..imaging import casa_setup
from ..imaging.channel_grid import ChannelGrid, Chunk
from ..imaging.cycle_tasks import restore_chunk
from ..imaging.casa_imager import chunking_caveats
from ..imaging.cube_weights import CUBE_WEIGHTS, make_cube_weights, wants_cube_weights
from ..imaging.imaging_task import part_path, whole_chunk_task
from ..imaging.iteration import clean_cube, cube_iteration_refusal, iteration_report, weighting_refusal
from ..imaging.worker_plugin import PrepareWorker
from ..inputs.cube_spec import CubeSpec
from ..inputs.preflight import check_cube
from ..inputs.site_profile import SiteProfile, walltime_seconds
from ..sizing.chunk_size import with_channels_per_task
from ..sizing.estimate import (
    GIB,
    TaskEstimate,
    cube_facts,
    estimate_task,
    memory_surprise,
    probe_wanted,
    probed_estimate,
)
from ..sizing.plan import Plan, PlanRefused, make_plan
from .concat import CubeAssembly, final_products, wants_common_beam
from .decisions import Next, after_failure, ran_out_of_memory
from .journal import Journal, RunDirectoryError
from .logs import send_dask_logs_to
from .security import dashboard_hint


class RunIncomplete(RunFailed):
    """Some chunks failed every try; what finished is kept for --resume."""


class WorkersUnavailable(RunFailed):
    """No worker came up within the site's worker_wait."""


@dataclass
class RunContext:
    """Everything one run's steps share: what to image, where, and where its record is kept."""

    spec: CubeSpec
    site: SiteProfile
    backend: Backend
    run_dir: Path
    journal: Journal
    console: Console
    grid: ChannelGrid
    chunks: list[Chunk]
    assembly: CubeAssembly
    cube_weights: str = ""  # the whole cube's imaging weights every chunk is handed (briggsbwtaper)

    @property
    def tclean_params(self) -> dict:
        """tclean's keywords as every chunk gets them (start/width/nchan are added per chunk)."""
        params = self.spec.tclean.model_dump()
        if wants_common_beam(params):
            params["restoringbeam"] = []  # per plane now; the common beam is chosen over all channels at concat
        return params

    def chunk_task(self) -> tuple[Callable, Callable[[Chunk], object]]:
        """The task that images a whole chunk of this run, and what it is given for each chunk."""
        return whole_chunk_task(self.tclean_params, self.cube_weights)

    def log_texts(self) -> Iterator[str]:
        """The run's worker and job logs, where distributed's nanny and the batch system write kills."""
        logs = self.run_dir / "logs"
        for path in [*logs.glob("worker-*.log"), *(logs / "jobs").glob("*")]:
            if path.is_file():
                yield path.read_text(errors="replace")


def _channel_ranges(chunks: list[Chunk]) -> str:
    return ", ".join(f"{c.first}-{c.channels[-1]}" if c.nchan > 1 else str(c.first) for c in chunks)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("ch {task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("failed {task.fields[failures]} {task.fields[workers]}"),
        console=console,
    )


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
    existing = final_products(imagename)
    if existing and not resume:
        raise RunDirectoryError(f"will not overwrite {', '.join(map(str, existing))}: remove it or choose another imagename")

    grid = check_cube(spec)  # before any worker starts: every mistake tclean would make is one line now
    facts = cube_facts(spec)
    spec = with_channels_per_task(spec, site, grid, facts, previous=_started_with(run_dir, resume))
    chunks = grid.chunks(spec.parallel.channels_per_task)
    weighting_refusal(spec.tclean.model_dump(), chunks, spec.iteration)
    if spec.iteration == "cube":
        cube_iteration_refusal(spec.tclean.model_dump(), chunks, grid)
    estimate = estimate_task(spec, site, facts)
    plan = make_plan(spec, site, estimate, len(chunks))
    identity = {
        "fingerprint": spec.fingerprint(),
        "imagename": imagename,
        "nchan": grid.nchan,
        "channels_per_task": spec.parallel.channels_per_task,
        "plan": {"workers": plan.workers, "jobs": plan.jobs, "site": site.name},  # for `status` while it runs
    }
    journal = Journal.resume(run_dir, identity) if resume else Journal.create(run_dir, identity)
    journal.driver_started()
    if resume and (run_dir / "report.json").exists():
        previous = json.loads((run_dir / "report.json").read_text())
        if previous.get("status") == "complete":
            console.print(f"hpc_imager: {imagename} is already complete ({run_dir / 'report.json'})")
            return previous
    from casatasks import casalog

    (run_dir / "logs").mkdir(exist_ok=True)
    casalog.setlogfile(str(run_dir / "logs" / "driver.casa.log"))
    casalog.showconsole(False)
    send_dask_logs_to(open(run_dir / "logs" / "driver.dask.log", "a", buffering=1))

    cube_iteration = spec.iteration == "cube"
    # Whole-cube iteration makes every chunk's part at its last step (restore); per chunk, each part
    # is placed into the final cube as soon as it arrives.
    todo = chunks if cube_iteration else [c for c in chunks if not (journal.record(c.index).done and part_path(run_dir, c).is_dir())]
    assembly = CubeAssembly(run_dir, chunks, spec.tclean.model_dump(), grid.tabular_axis,
                            placed={c.index for c in chunks if journal.record(c.index).placed})
    try:  # the placing thread stops before the interpreter does, whatever ends the run
        for chunk in set(chunks) - set(todo):
            assembly.arrived(chunk)
        assembly.wait_placed(journal.placed)
        run = RunContext(spec, site, backend_for(site), run_dir, journal, console, grid, chunks, assembly)
        cube_weights_seconds = _hand_cube_weights(run)
        caveats = grid.caveats() + chunking_caveats(spec.tclean.model_dump(), chunks)
        for caveat in caveats:
            console.print(f"hpc_imager: warning: {caveat}")
        console.print(
            f"hpc_imager: {grid.nchan} channels in {len(chunks)} chunks of {spec.parallel.channels_per_task}"
            f" ({len(chunks) - len(todo)} already done); run directory {run_dir}"
        )
        started = time.time()
        # A probe images a chunk whole; a cube cleaned as one (iteration "cube") images every chunk in
        # step with the others, so it is planned from the model (or the site's calibration).
        probe = (_probe(run, estimate, todo)
                 if probe_wanted(spec, site, plan) and len(todo) > 1 and not cube_iteration else None)
        if probe and probe.passes:  # the probe's chunk has had its tries (and its more memory)
            todo = [c for c in todo if c != probe.chunk]
        if probe and probe.estimate:
            plan = make_plan(spec, site, probe.estimate, max(1, len(todo)))
        if cube_iteration:
            passes, iteration, cube_metrics = _clean_cube(run, plan)
            for chunk in chunks if not passes.lost else []:  # placed as each restored (or restored before a resume)
                assembly.arrived(chunk)
        else:
            passes, iteration = _image_chunks(run, plan, todo), None
        if probe and probe.passes:
            passes.lost += probe.passes.lost
            passes.failures = probe.passes.failures + passes.failures
        lost = sorted(passes.lost, key=lambda chunk: chunk.index)  # tasks finish in any order; say them in order
        chunk_metrics = (cube_metrics if cube_iteration else
                         [record.done for record in (journal.record(c.index) for c in chunks) if record.done])
        surprises = _memory_surprises(chunk_metrics)
        if surprises:
            console.print(f"hpc_imager: warning: {len(surprises)} chunk(s) far from their memory estimate; "
                          f"{surprises[0]} (all in report.json)")
        report = {
            "status": "incomplete" if lost else "complete",
            "imagename": imagename,
            "nchan": grid.nchan,
            "grid": {"kind": grid.kind, "start": grid.start, "width": grid.width, "unit": grid.unit, "frame": grid.frame},
            "caveats": caveats,
            "chunks": len(chunks),
            "channels_per_task": spec.parallel.channels_per_task,
            "workers": plan.workers,
            "plan": plan.as_dict(),
            "memory_retries": [p.as_dict() for p in passes.plans[1:]],
            "estimate": estimate.as_dict(),
            "probe": probe.as_dict() if probe else None,
            "cube": {k: spec.tclean.model_dump()[k] for k in ("gridder", "deconvolver", "imsize", "stokes", "wprojplanes",
                                                              "facets", "weighting", "usemask", "niter", "scales")},
            "imaging_seconds": time.time() - started,
            "chunk_metrics": chunk_metrics,
            "memory_warnings": surprises,
            "failures": passes.failures,
            "iteration": spec.iteration,
            "cube_weights_seconds": cube_weights_seconds,
        }
        if iteration is not None:
            report["iteration_summary"] = iteration
        if lost:
            assembly.wait_placed(journal.placed)  # what arrived is placed and recorded before the run ends
            report["missing_channels"] = [ch for c in lost for ch in c.channels]
            _write_report(run_dir, report)
            _draw_report(run_dir, console)
            last_error = next((f["error"] for f in reversed(passes.failures) if f["chunk"] == lost[0].index), "")
            raise RunIncomplete(
                f"channels {_channel_ranges(lost)} failed every try ({len(lost)} chunks); finished chunks are kept"
                f" in {run_dir / 'parts'}: fix the cause and run again with --resume"
                + passes.memory_note
                + (f"; {lost[0].name} (channels {_channel_ranges(lost[:1])}) last failed with {last_error}" if last_error else "")
            )
        report["concat"] = assembly.finish(journal.placed)
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
        console.print(f"hpc_imager: wrote {', '.join(imagename + '.' + p for p in report['concat']['products'])}")
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


def _wait_for_first_worker(run: RunContext, client) -> None:
    """Wait as long as the site allows, showing the batch queue; say why when giving up."""
    site = run.site
    deadline = time.time() + walltime_seconds(site.worker_wait)
    with run.console.status("waiting for workers") as status:
        while not client.scheduler_info()["workers"]:
            counts = run.backend.job_counts(client)
            if time.time() > deadline:
                queued = f": {counts['pending']} job(s) still pending in the queue" if counts else ""
                raise WorkersUnavailable(f"no worker started within {site.name}'s worker_wait {site.worker_wait}{queued}; "
                                         "the jobs were cancelled; try again later or another site")
            if counts:
                status.update(f"waiting for workers: {counts['pending']} job(s) pending, {counts['running']} running")
            time.sleep(1)


# The probe's one worker asks this many times the model's figure, so that a model that is short
# (it cannot know every cube) does not get the measurement itself killed.
PROBE_ALLOWANCE = 2.0


@dataclass
class Probe:
    """One chunk imaged alone first (or measured by an earlier run of this cube) to size the rest."""

    chunk: Chunk | None
    estimate: TaskEstimate | None  # from the measured peak; None when the probe did not finish
    passes: "Passes | None" = None  # the probe's own passes (None: measured before)

    def as_dict(self) -> dict:
        return {"chunk": self.chunk.index if self.chunk else None,
                "measured_by_this_run": self.passes is not None,
                "plans": [p.as_dict() for p in self.passes.plans] if self.passes else [],
                "estimate": self.estimate.as_dict() if self.estimate else None}


def _probe(run: RunContext, estimate: TaskEstimate, todo: list[Chunk]) -> Probe | None:
    """Measure one whole chunk on one worker (the run's first job on a batch site) and estimate
    the others from it; a resumed run uses the chunks it already measured instead."""
    whole = run.spec.parallel.channels_per_task
    measured = [r.done for r in (run.journal.record(c.index) for c in run.chunks)
                if r.done and r.done.get("channels") == whole]
    if measured:
        return Probe(None, probed_estimate(run.spec, max(measured, key=lambda m: m["peak_rss_bytes"])))
    first = next((c for c in todo if c.nchan == whole), None)
    if first is None:
        return None
    plan = make_plan(run.spec, run.site, estimate, chunks=1)
    try:
        plan = plan.with_more_memory(factor=PROBE_ALLOWANCE)
    except PlanRefused:
        pass  # a node cannot hold twice the model's figure: probe with the model's own
    run.console.print(f"hpc_imager: probe: imaging {first.name} alone to measure what one task needs")
    # the chunk is recorded with the model's estimate (not the allowance), to show how far off it was
    passes = _image_chunks(run, plan, [first], estimated_peak_bytes=int(estimate.task_peak_gib * GIB))
    done = run.journal.record(first.index).done
    probed = probed_estimate(run.spec, done) if done else None
    if probed:
        run.console.print(f"hpc_imager: probe: one task took {done['peak_rss_bytes'] / GIB:.2f} GiB "
                          f"(the {estimate.model} model said {estimate.task_peak_gib:.2f} GiB)")
    return Probe(first, probed, passes)


def probe_cube(spec: CubeSpec, site: SiteProfile, estimate: TaskEstimate,
               console: Console | None = None) -> TaskEstimate:
    """``estimate --probe``: image the cube's first whole chunk on one worker of ``site`` in a scratch
    run directory beside the run's (removed afterwards) and return the estimate measured from it."""
    console = console or Console(stderr=True, soft_wrap=True)
    run_dir = spec.run_directory.resolve().with_name(spec.run_directory.name + ".probe")
    shutil.rmtree(run_dir, ignore_errors=True)  # our own, from an interrupted probe
    grid = check_cube(spec)
    chunks = grid.chunks(spec.parallel.channels_per_task)
    journal = Journal.create(run_dir, {"fingerprint": spec.fingerprint(), "probe": True})
    assembly = CubeAssembly(run_dir, chunks, spec.tclean.model_dump(), grid.tabular_axis, placed=set())
    run = RunContext(spec, site, backend_for(site), run_dir, journal, console, grid, chunks, assembly)
    try:
        _hand_cube_weights(run)
        probe = _probe(run, estimate, chunks)
        assembly.wait_placed(journal.placed)  # its copy of the part, before the folder goes
    finally:
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


@dataclass
class Passes:
    """What the passes over the chunks came to: the first plan's, then each with more memory."""

    plans: list[Plan]
    lost: list[Chunk] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    memory_note: str = ""


def _image_chunks(run: RunContext, plan: Plan, todo: list[Chunk], estimated_peak_bytes: int | None = None) -> Passes:
    """Image ``todo`` in a cluster made from ``plan``; chunks killed for memory go round again in a
    cluster whose workers have twice the memory, until they fit or a node cannot hold one worker."""
    passes = Passes(plans=[plan])
    while todo:
        run.console.print(f"hpc_imager: {plan.summary()}")
        with run.backend.cluster(plan, run.site, run.run_dir) as client:
            client.register_plugin(PrepareWorker(str(run.run_dir)))
            run.console.print(f"hpc_imager: {dashboard_hint(client.dashboard_link, run.site.dashboard_address)}")
            _wait_for_first_worker(run, client)
            outcome = _run_chunks(run, client, plan, todo, estimated_peak_bytes=estimated_peak_bytes)
        passes.lost += outcome.lost
        passes.failures += outcome.failures
        todo = outcome.out_of_memory
        if not todo:
            break
        try:
            plan = plan.with_more_memory(chunks=len(todo))
        except PlanRefused as refusal:
            passes.lost += todo
            passes.memory_note = f"; channels {_channel_ranges(todo)} ran out of memory and cannot have more: {refusal}"
            break
        passes.plans.append(plan)
        run.console.print(f"hpc_imager: {len(todo)} chunk(s) ran out of memory: imaging them again with twice the"
                          " memory per worker")
    return passes


class _StepUnfinished(Exception):
    """A step of whole-cube iteration could not finish in every chunk (recorded in the Passes)."""


@dataclass
class Step:
    """One step of whole-cube iteration: ``function`` run for every chunk, results kept by chunk."""

    function: Callable
    inputs: dict[int, object]  # by chunk: what ``function`` is given first (the chunk's records)
    keywords: dict
    description: str
    results: dict = field(default_factory=dict)
    on_done: Callable[[Chunk], None] = lambda chunk: None  # as each chunk's task finishes


def _clean_cube(run: RunContext, plan: Plan) -> tuple[Passes, dict | None, list[dict]]:
    """Whole-cube iteration (:mod:`hpc_imager.imaging.iteration` holds the controller and decides the steps):
    each step runs in every chunk through the same bounded, retrying loop as per-chunk imaging, in one
    cluster kept for the run (replaced by one with more memory after a memory kill). A step that
    cannot finish ends the run; ``--resume`` continues after the last step every chunk finished."""
    passes = Passes(plans=[plan])
    latest = {"cycle": 0, "iterdone": 0, "peakresidual": 0.0}
    chunk_metrics: dict[int, dict] = {}  # by chunk, over the steps this driver ran
    timings: list[dict] = []  # per step: its wall time and its tasks' (the rest is waiting at the barrier)
    with contextlib.ExitStack() as clusters:
        client = None

        def run_step(function: Callable, arguments: list[tuple], **keywords) -> list:
            # ``arguments`` are each chunk's (records, chunk, run directory): _run_chunks submits those.
            nonlocal client, plan
            what = {"start_chunk": "PSF, residual", "restore_chunk": "restoring"}.get(
                function.__name__, f"cycle {keywords.get('cycle')}")
            step = Step(function, {chunk.index: records for records, chunk, _ in arguments}, keywords,
                        f"{what} (iterations {latest['iterdone']}, peak residual {latest['peakresidual']:.3g})")
            if function is restore_chunk:  # its part is final: placed while the other chunks restore
                step.on_done = run.assembly.arrived
            todo = list(run.chunks)
            step_started = time.time()
            while todo:
                if client is None:
                    run.console.print(f"hpc_imager: {plan.summary()}")
                    client = clusters.enter_context(run.backend.cluster(plan, run.site, run.run_dir))
                    client.register_plugin(PrepareWorker(str(run.run_dir)))
                    run.console.print(f"hpc_imager: dashboard {client.dashboard_link}")
                    _wait_for_first_worker(run, client)
                outcome = _run_chunks(run, client, plan, todo, step)
                passes.failures += outcome.failures
                passes.lost += outcome.lost
                if outcome.lost:
                    raise _StepUnfinished
                todo = outcome.out_of_memory
                if todo:
                    try:
                        plan = plan.with_more_memory(chunks=len(run.chunks))
                    except PlanRefused as refusal:
                        passes.lost += todo
                        passes.memory_note = (f"; channels {_channel_ranges(todo)} ran out of memory and cannot"
                                              f" have more: {refusal}")
                        raise _StepUnfinished from None
                    passes.plans.append(plan)
                    run.console.print(f"hpc_imager: {len(todo)} chunk(s) ran out of memory: going on with twice"
                                      " the memory per worker")
                    clusters.close()
                    client = None
            results = [step.results[c.index] for c in run.chunks]
            for chunk, result in zip(run.chunks, results):  # a chunk's peak over its steps, its time in them
                metrics = chunk_metrics.setdefault(chunk.index, {
                    "chunk": chunk.index, "channels": chunk.nchan, "wall_seconds": 0.0, "peak_rss_bytes": 0,
                    "estimated_peak_bytes": plan.basis.task_peak_bytes})
                metrics["wall_seconds"] += result["seconds"]
                metrics["peak_rss_bytes"] = max(metrics["peak_rss_bytes"], result["peak_rss_bytes"])
            task_seconds = [r["seconds"] for r in results]
            timings.append({"step": what, "wall_seconds": time.time() - step_started,
                            "task_seconds_max": max(task_seconds), "task_seconds_sum": sum(task_seconds)})
            return results

        try:
            summary = clean_cube(run.tclean_params, run.chunks, run.grid.nchan, run.run_dir, run.journal, run_step,
                                 on_cycle=latest.update, cube_weights=run.cube_weights)
        except _StepUnfinished:
            return passes, None, list(chunk_metrics.values())
    return passes, dict(iteration_report(summary), steps=timings), list(chunk_metrics.values())


@dataclass
class Outcome:
    lost: list[Chunk] = field(default_factory=list)  # failed every try
    out_of_memory: list[Chunk] = field(default_factory=list)  # killed for memory: worth more memory
    failures: list[dict] = field(default_factory=list)


def _run_chunks(run: RunContext, client, plan: Plan, todo: list[Chunk], step: Step | None = None,
                estimated_peak_bytes: int | None = None) -> Outcome:
    """Keep at most max_in_flight chunks submitted; retry failures; say which chunks were given up on.
    Without ``step`` each chunk is imaged whole (``RunContext.chunk_task``) and recorded with the peak it was
    planned for (``estimated_peak_bytes``, default the plan's); with one, ``step.function`` runs and
    its results go to ``step.results``."""
    from distributed import as_completed

    function, inputs = run.chunk_task() if step is None else (step.function, lambda c: step.inputs[c.index])
    keywords = {} if step is None else step.keywords
    journal = run.journal
    # One task running and one waiting per worker: a worker never idles while the driver records a
    # result or places a part (measured: ~0.1 s per task round trip on a loaded 2-core machine).
    max_in_flight = run.spec.parallel.max_in_flight or 2 * plan.workers
    queue = deque(todo)
    tries: dict[int, int] = {}
    in_flight: dict[str, tuple[Chunk, int]] = {}
    outcome = Outcome()
    pending = as_completed(with_results=True, raise_errors=False)  # results gathered in the background
    total_channels = run.grid.nchan
    done_channels = total_channels - sum(c.nchan for c in todo)

    def submit(chunk: Chunk) -> None:
        attempt = journal.record(chunk.index).attempts + 1
        journal.submitted(chunk.index, attempt)
        tries[chunk.index] = tries.get(chunk.index, 0) + 1
        name = chunk.name if step is None else f"{chunk.name}-{function.__name__}"
        future = client.submit(function, inputs(chunk), chunk, str(run.run_dir),
                               attempt=attempt, **keywords, key=f"{name}-attempt-{attempt}", pure=False)
        in_flight[future.key] = (chunk, attempt)
        pending.add(future)

    def refill() -> None:
        while queue and len(in_flight) < max_in_flight:
            submit(queue.popleft())

    started = time.time()
    shown = 0.0
    with _progress(run.console) as progress:
        bar = progress.add_task("imaging" if step is None else step.description, total=total_channels,
                                completed=done_channels, rate="", failures=0, workers="")
        refill()
        for future, metrics in pending:
            chunk, attempt = in_flight.pop(future.key)
            try:
                if future.status != "finished":
                    future.result()  # raises the task's (or its worker's) error
            except Exception as error:  # any failure of the task or its worker: decide what next
                message = f"{type(error).__name__}: {error}"
                journal.failed(chunk.index, attempt, message)
                outcome.failures.append({"chunk": chunk.index, "channels": _channel_ranges([chunk]), "attempt": attempt,
                                         "error": message})
                progress.console.print(f"hpc_imager: {chunk.name} (channels {_channel_ranges([chunk])}) failed"
                                       f" on attempt {attempt}: {message}")
                out_of_memory = ran_out_of_memory(type(error).__name__, str(error), run.log_texts(),
                                                  run.backend.memory_signs)
                decision = after_failure(out_of_memory=out_of_memory, tries=tries[chunk.index],
                                         retries=run.spec.parallel.retries)
                if decision is Next.MORE_MEMORY:
                    outcome.out_of_memory.append(chunk)
                elif decision is Next.RETRY:
                    queue.appendleft(chunk)
                else:
                    outcome.lost.append(chunk)
            else:
                if step is None:
                    journal.done(chunk.index, dict(metrics, estimated_peak_bytes=estimated_peak_bytes
                                                   or plan.basis.task_peak_bytes))
                    run.assembly.arrived(chunk)
                else:
                    step.results[chunk.index] = metrics
                    step.on_done(chunk)
                progress.advance(bar, chunk.nchan)
            future.release()
            refill()
            if time.time() - shown > 1.0 or not in_flight:  # asking the scheduler costs a round trip
                shown = time.time()
                done = progress.tasks[0].completed - done_channels
                counts = run.backend.job_counts(client)
                jobs = f" jobs {counts['running']}+{counts['pending']} queued" if counts else ""
                progress.update(bar, failures=len(outcome.failures),
                                rate=f"{done / max(time.time() - started, 1e-9):.2f}/s",
                                workers=f"workers {len(client.scheduler_info()['workers'])}{jobs}")
            run.assembly.place_waiting(journal.placed)  # while the workers image the next chunks
    return outcome


def _draw_report(run_dir: Path, console: Console) -> None:
    """report.png beside report.json; a picture that cannot be drawn must not fail the run."""
    from .report_plot import write_report_png

    try:
        write_report_png(run_dir)
    except Exception as error:  # noqa: BLE001 — the cube is made; say why the picture is not
        console.print(f"hpc_imager: warning: could not draw report.png: {type(error).__name__}: {error}")


def _write_report(run_dir: Path, report: dict) -> None:
    path = Path(run_dir) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
