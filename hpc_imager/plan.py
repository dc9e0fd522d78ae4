"""The plan: one task's estimate and a site profile → worker memory limits, job sizes, walltime.

``dedicated`` nodes are ours alone: dask's memory limit is off (``0``) and each job asks for its whole
node. ``shared`` nodes are not: each worker gets an explicit limit (its estimated need × headroom,
never ``'auto'``) and the job asks for exactly its workers' limits plus an overhead, so that dask's
nanny stops a runaway worker before the batch system kills the whole job.

dask's memory thresholds are set for CASA on purpose (see docs/memory-policy.md): no spilling
(there is no managed data to spill), no pausing (CASA's memory is unmanaged; a paused worker only
stalls until its task ends), terminate at 95 % of the limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dask.utils import format_bytes, parse_bytes

from .cube_spec import CubeSpec
from .estimate import GIB, TaskEstimate
from .site_profile import SiteProfile, format_walltime, walltime_seconds

# Worker memory limits are whole multiples of this, so that dask-jobqueue's rendering of
# ``--memory-limit`` (memory / processes, printed to two decimals) is exactly the planned number.
LIMIT_STEP = 256 * 2**20
TERMINATE_FRACTION = 0.95
WALLTIME_SAFETY = 1.5  # estimated task time × this, for slow nodes and busy file systems
WORKER_STARTUP_SECONDS = 300

# distributed's worker-memory settings for CASA workers, as dask config and as environment.
DASK_MEMORY_CONFIG = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": TERMINATE_FRACTION,
}


class PlanRefused(ValueError):
    """The cube cannot run on this site as asked; the message gives the numbers and what to change."""


@dataclass(frozen=True)
class Plan:
    site: str
    scheduler: str
    memory_policy: str
    task_peak_gib: float
    task_seconds: float | None
    worker_need_bytes: int
    worker_memory_limit_bytes: int  # 0: dask's memory management off
    job_memory_bytes: int
    processes_per_job: int
    threads_per_worker: int
    cores_per_job: int
    jobs: int
    workers: int
    walltime: str
    chunks: int
    estimate_model: str

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        limit = format_bytes(self.worker_memory_limit_bytes) if self.worker_memory_limit_bytes else "off (0)"
        return (f"site {self.site} ({self.scheduler}, {self.memory_policy}): {self.workers} workers in {self.jobs} "
                f"job(s) of {self.processes_per_job}; one task ≈ {self.task_peak_gib:.2f} GiB "
                f"({self.estimate_model} model); worker memory limit {limit}; job memory "
                f"{format_bytes(self.job_memory_bytes)}; walltime {self.walltime}")


def _round_up(n: float, step: int) -> int:
    return int(math.ceil(n / step) * step)


def make_plan(spec: CubeSpec, site: SiteProfile, estimate: TaskEstimate, chunks: int) -> Plan:
    """Size workers and jobs for ``chunks`` tasks of ``estimate`` on ``site``, or refuse with reasons."""
    if site.shared_directory and not spec.run_directory.resolve().is_relative_to(site.shared_directory):
        raise PlanRefused(f"the run directory {spec.run_directory} is not under {site.name}'s shared file system "
                          f"{site.shared_directory}, where workers can write: set [run] directory")
    node_memory = site.node_memory_bytes
    job_overhead = parse_bytes(site.job_memory_overhead)
    need = int(estimate.task_peak_gib * GIB) + parse_bytes(site.worker_base)
    usable = node_memory - job_overhead

    if site.memory_policy == "dedicated":
        limit = 0
        fits = usable // need
    else:
        limit = _round_up(need * site.memory_headroom, LIMIT_STEP)
        fits = usable // limit
    if fits < 1:
        per_worker = limit or need
        raise PlanRefused(
            f"one task needs {format_bytes(per_worker)} per worker ({estimate.task_peak_gib:.2f} GiB for "
            f"{estimate.channels_per_task} channels of {estimate.pixels} pixels, plus worker base"
            f"{' and headroom' if limit else ''}) but a {site.name} node offers {format_bytes(usable)}: "
            "use fewer channels_per_task, a smaller image, or another site")

    per_node = min(site.cores, fits)
    wanted = spec.parallel.workers or (site.cores if site.scheduler == "local" else per_node * site.max_jobs)
    wanted = max(1, min(wanted, chunks))
    if site.scheduler == "local":
        wanted = min(wanted, per_node)
    jobs = min(math.ceil(wanted / per_node), site.max_jobs)
    processes = math.ceil(min(wanted, jobs * per_node) / jobs)
    job_memory = node_memory if site.memory_policy == "dedicated" else processes * limit + job_overhead

    walltime = _walltime(site, estimate, chunks, jobs * processes)
    return Plan(
        site=site.name,
        scheduler=site.scheduler,
        memory_policy=site.memory_policy,
        task_peak_gib=estimate.task_peak_gib,
        task_seconds=estimate.task_seconds,
        worker_need_bytes=need,
        worker_memory_limit_bytes=limit,
        job_memory_bytes=job_memory,
        processes_per_job=processes,
        threads_per_worker=1,  # casatools is not thread-safe: one task per process
        cores_per_job=processes,
        jobs=jobs,
        workers=jobs * processes,
        walltime=walltime,
        chunks=chunks,
        estimate_model=estimate.model,
    )


def _walltime(site: SiteProfile, estimate: TaskEstimate, chunks: int, workers: int) -> str:
    maximum = walltime_seconds(site.walltime_max)
    if estimate.task_seconds is None:
        return site.walltime_default
    one_task = estimate.task_seconds * WALLTIME_SAFETY + WORKER_STARTUP_SECONDS
    if one_task > maximum:
        raise PlanRefused(
            f"one task is estimated at {estimate.task_seconds / 3600:.1f} h (× {WALLTIME_SAFETY} safety plus "
            f"start-up), over {site.name}'s walltime maximum {site.walltime_max}: use fewer channels_per_task "
            "or a smaller image")
    everything = math.ceil(chunks / workers) * estimate.task_seconds * WALLTIME_SAFETY + WORKER_STARTUP_SECONDS
    return format_walltime(min(everything, maximum))
