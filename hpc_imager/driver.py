"""The driver: cube.toml → chunks → a bounded stream of worker tasks → one cube.

At most ``max_in_flight`` chunks are submitted at once and the window is refilled as each one
finishes (``as_completed``), so CASA's memory per worker stays bounded however large the cube. Every
submission, success and failure goes to the journal first, so a killed driver can be resumed
without re-imaging what was done.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from dask.utils import parse_bytes
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import casa_setup
from .channel_grid import Chunk, resolve_grid
from .concat import assemble, final_products, wants_common_beam
from .cube_spec import CubeSpec
from .imaging_task import image_chunk, part_path
from .cluster import job_counts, start_cluster
from .estimate import GIB, estimate_task, mosaic_fields
from .journal import Journal, RunDirectoryError
from .logs import send_dask_logs_to
from .plan import Plan, PlanRefused, make_plan
from .site_profile import SiteProfile, walltime_seconds
from .worker_plugin import PrepareWorker


class RunIncomplete(RuntimeError):
    """Some chunks failed every try; what finished is kept for --resume."""


def _channel_ranges(chunks: list[Chunk]) -> str:
    return ", ".join(f"{c.first}-{c.channels[-1]}" if c.nchan > 1 else str(c.first) for c in chunks)


def chunk_tclean_params(spec: CubeSpec) -> dict:
    """tclean's keywords as every chunk gets them (start/width/nchan are added per chunk)."""
    params = spec.tclean.model_dump()
    if wants_common_beam(params):
        params["restoringbeam"] = []  # per plane now; the common beam is chosen over all channels at concat
    return params


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

    grid = resolve_grid(spec.tclean)
    chunks = grid.chunks(spec.parallel.channels_per_task)
    estimate = estimate_task(spec, site, mosaic_fields(spec))
    plan = make_plan(spec, site, estimate, len(chunks))
    identity = {
        "fingerprint": spec.fingerprint(),
        "imagename": imagename,
        "nchan": grid.nchan,
        "channels_per_task": spec.parallel.channels_per_task,
    }
    journal = Journal.resume(run_dir, identity) if resume else Journal.create(run_dir, identity)
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

    todo = [c for c in chunks if not (journal.record(c.index).done and part_path(run_dir, c).is_dir())]
    for caveat in grid.caveats():
        console.print(f"hpc_imager: warning: {caveat}")
    console.print(
        f"hpc_imager: {grid.nchan} channels in {len(chunks)} chunks of {spec.parallel.channels_per_task}"
        f" ({len(chunks) - len(todo)} already done); run directory {run_dir}"
    )
    started = time.time()
    passes = _image_chunks(spec, site, estimate, plan, todo, journal, run_dir, console, grid.nchan)
    lost = passes.lost
    report = {
        "status": "incomplete" if lost else "complete",
        "imagename": imagename,
        "nchan": grid.nchan,
        "grid": {"kind": grid.kind, "start": grid.start, "width": grid.width, "unit": grid.unit, "frame": grid.frame},
        "caveats": grid.caveats(),
        "chunks": len(chunks),
        "channels_per_task": spec.parallel.channels_per_task,
        "workers": plan.workers,
        "plan": plan.as_dict(),
        "memory_retries": [p.as_dict() for p in passes.plans[1:]],
        "imaging_seconds": time.time() - started,
        "chunk_metrics": [record.done for record in (journal.record(c.index) for c in chunks) if record.done],
        "failures": passes.failures,
    }
    if lost:
        report["missing_channels"] = [ch for c in lost for ch in c.channels]
        _write_report(run_dir, report)
        raise RunIncomplete(
            f"channels {_channel_ranges(lost)} failed every try ({len(lost)} chunks); finished chunks are kept"
            f" in {run_dir / 'parts'}: fix the cause and run again with --resume"
            + passes.memory_note
        )
    report["concat"] = assemble(run_dir, chunks, spec.tclean.model_dump(), grid.tabular_axis)
    report["wall_seconds"] = time.time() - started
    if compare_serial:
        from .serial_check import compare_with_serial

        report["serial_comparison"] = compare_with_serial(spec.tclean.model_dump(), run_dir)
        worst = {p: f"{v['max']:.2g}" for p, v in report["serial_comparison"].items()}
        console.print(f"hpc_imager: largest per-plane difference from serial tclean (of the plane peak): {worst}")
    _write_report(run_dir, report)
    if not spec.run.keep_parts:
        shutil.rmtree(run_dir / "parts")
    shutil.rmtree(run_dir / "scratch", ignore_errors=True)
    console.print(f"hpc_imager: wrote {', '.join(imagename + '.' + p for p in report['concat']['products'])}")
    return report


class WorkersUnavailable(RuntimeError):
    """No worker came up within the site's worker_wait."""


def _wait_for_first_worker(client, site: SiteProfile, console: Console) -> None:
    """Wait as long as the site allows, showing the batch queue; say why when giving up."""
    deadline = time.time() + walltime_seconds(site.worker_wait)
    with console.status("waiting for workers") as status:
        while not client.scheduler_info()["workers"]:
            counts = job_counts(client)
            if time.time() > deadline:
                queued = f": {counts['pending']} job(s) still pending in the queue" if counts else ""
                raise WorkersUnavailable(f"no worker started within {site.name}'s worker_wait {site.worker_wait}{queued}; "
                                         "the jobs were cancelled; try again later or another site")
            if counts:
                status.update(f"waiting for workers: {counts['pending']} job(s) pending, {counts['running']} running")
            time.sleep(1)


@dataclass
class Passes:
    """What the passes over the chunks came to: the first plan's, then each with more memory."""

    plans: list[Plan]
    lost: list[Chunk] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    memory_note: str = ""


def _image_chunks(spec: CubeSpec, site: SiteProfile, estimate, plan: Plan, todo: list[Chunk], journal: Journal,
                  run_dir: Path, console: Console, nchan: int) -> Passes:
    """Image ``todo`` in a cluster made from ``plan``; chunks killed for memory go round again in a
    cluster whose workers have twice the memory, until they fit or a node cannot hold one worker."""
    passes = Passes(plans=[plan])
    while todo:
        console.print(f"hpc_imager: {plan.summary()}")
        with start_cluster(plan, site, run_dir) as client:
            client.register_plugin(PrepareWorker(str(run_dir)))
            console.print(f"hpc_imager: dashboard {client.dashboard_link}")
            _wait_for_first_worker(client, site, console)
            outcome = _run_chunks(client, spec, plan, todo, journal, run_dir, console,
                                  done_channels=nchan - sum(c.nchan for c in todo), total_channels=nchan)
        passes.lost += outcome.lost
        passes.failures += outcome.failures
        todo = outcome.out_of_memory
        if not todo:
            break
        twice = (2 * plan.worker_need_bytes - parse_bytes(site.worker_base)) / GIB  # the worker's need doubled
        try:
            plan = make_plan(spec, site, replace(estimate, task_peak_gib=twice), len(todo))
        except PlanRefused as refusal:
            passes.lost += todo
            passes.memory_note = f"; channels {_channel_ranges(todo)} ran out of memory and cannot have more: {refusal}"
            break
        passes.plans.append(plan)
        console.print(f"hpc_imager: {len(todo)} chunk(s) ran out of memory: imaging them again with twice the"
                      " memory per worker")
    return passes


@dataclass
class Outcome:
    lost: list[Chunk] = field(default_factory=list)  # failed every try
    out_of_memory: list[Chunk] = field(default_factory=list)  # killed for memory: worth more memory
    failures: list[dict] = field(default_factory=list)


# What the batch systems, distributed's nanny and Python say when memory ran out, in a task's error
# or in the run's worker and job logs (Slurm's slurmstepd writes its kill into the job's stderr).
MEMORY_SIGNS = ("MemoryError", "memory budget", "exceeded memory limit", "OUT_OF_MEMORY", "Out Of Memory")


def _ran_out_of_memory(error: Exception, run_dir: Path) -> bool:
    """A MemoryError in the task (SGE's h_vmem), or a worker that died under it (KilledWorker) with a
    memory kill recorded in the run's logs by the nanny or the batch system."""
    if isinstance(error, MemoryError) or "MemoryError" in str(error):
        return True
    if type(error).__name__ != "KilledWorker":
        return False
    logs = list((run_dir / "logs").glob("worker-*.log")) + list((run_dir / "logs" / "jobs").glob("*"))
    return any(sign in path.read_text(errors="replace") for path in logs if path.is_file() for sign in MEMORY_SIGNS)


def _run_chunks(client, spec: CubeSpec, plan: Plan, todo: list[Chunk], journal: Journal, run_dir: Path,
                console: Console, done_channels: int, total_channels: int) -> Outcome:
    """Keep at most max_in_flight chunks submitted; retry failures; say which chunks were given up on."""
    from distributed import as_completed

    params = chunk_tclean_params(spec)
    max_in_flight = spec.parallel.max_in_flight or plan.workers
    queue = deque(todo)
    tries: dict[int, int] = {}
    in_flight: dict[str, tuple[Chunk, int]] = {}
    outcome = Outcome()
    pending = as_completed()

    def submit(chunk: Chunk) -> None:
        attempt = journal.record(chunk.index).attempts + 1
        journal.submitted(chunk.index, attempt)
        tries[chunk.index] = tries.get(chunk.index, 0) + 1
        future = client.submit(image_chunk, params, chunk, str(run_dir), attempt,
                               key=f"{chunk.name}-attempt-{attempt}", pure=False)
        in_flight[future.key] = (chunk, attempt)
        pending.add(future)

    def refill() -> None:
        while queue and len(in_flight) < max_in_flight:
            submit(queue.popleft())

    started = time.time()
    with _progress(console) as progress:
        bar = progress.add_task("imaging", total=total_channels, completed=done_channels, rate="", failures=0,
                                workers="")
        refill()
        for future in pending:
            chunk, attempt = in_flight.pop(future.key)
            try:
                metrics = future.result()
            except Exception as error:  # any failure of the task or its worker: retry the chunk
                message = f"{type(error).__name__}: {error}"
                journal.failed(chunk.index, attempt, message)
                outcome.failures.append({"chunk": chunk.index, "attempt": attempt, "error": message})
                progress.console.print(f"hpc_imager: {chunk.name} (channels {_channel_ranges([chunk])}) failed"
                                       f" on attempt {attempt}: {message}")
                if _ran_out_of_memory(error, run_dir):
                    outcome.out_of_memory.append(chunk)  # the same memory would fail again
                elif tries[chunk.index] <= spec.parallel.retries:
                    queue.appendleft(chunk)
                else:
                    outcome.lost.append(chunk)
            else:
                journal.done(chunk.index, metrics)
                progress.advance(bar, chunk.nchan)
            future.release()
            done = progress.tasks[0].completed - done_channels
            counts = job_counts(client)
            jobs = f" jobs {counts['running']}+{counts['pending']} queued" if counts else ""
            progress.update(bar, failures=len(outcome.failures), rate=f"{done / max(time.time() - started, 1e-9):.2f}/s",
                            workers=f"workers {len(client.scheduler_info()['workers'])}{jobs}")
            refill()
    return outcome


def _write_report(run_dir: Path, report: dict) -> None:
    path = Path(run_dir) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
