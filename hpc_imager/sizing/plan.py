"""The plan: one task's estimate and a site profile → worker memory limits, job sizes, walltime.

The plan owns all memory arithmetic: the backends and the driver ask it for figures (a worker's
limit, a job's request, a worker's address space, "the same plan with more memory") and never
derive their own.

``dedicated`` nodes are ours alone: dask's memory limit is off (``0``) and each job asks for its whole
node. ``shared`` nodes are not: each worker gets an explicit limit (its estimated need × headroom,
never ``'auto'``) and the job asks for exactly its workers' limits plus an overhead, so that dask's
nanny stops a runaway worker before the batch system kills the whole job. dask's own memory
thresholds for CASA workers are set by the backends (see docs/memory-policy.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from dask.utils import format_bytes, parse_bytes

from ..errors import UserError
from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import SiteProfile, format_walltime, walltime_seconds
from .estimate import GIB, TaskEstimate

# distributed's nanny restarts a worker at this fraction of its memory limit (backends set it so).
TERMINATE_FRACTION = 0.95
# A need that was measured (a probe) rather than modelled needs no headroom for model error, only
# room for distributed's terminate threshold: the nanny restarts a worker at 95 % of its limit.
MEASURED_HEADROOM = 1 / TERMINATE_FRACTION
WALLTIME_SAFETY = 1.5  # estimated task time × this, for slow nodes and busy file systems
WORKER_STARTUP_SECONDS = 300


class PlanRefused(UserError):
    """The cube cannot run on this site as asked; the message gives the numbers and what to change."""


@dataclass(frozen=True)
class PlanBasis:
    """What a plan is sized from: kept so that a plan can be remade with more memory or fewer chunks."""

    site: SiteProfile
    task_peak_bytes: int
    task_seconds: float | None
    chunks: int
    workers_wanted: int | None
    channels_per_task: int
    pixels: int
    estimate_model: str
    model_shortfall: float  # TaskEstimate.shortfall


@dataclass(frozen=True)
class Plan:
    site: str
    scheduler: str
    memory_policy: str
    task_peak_gib: float
    task_seconds: float | None
    worker_need_bytes: int
    worker_memory_limit_bytes: int  # 0: dask's memory management off
    workers_memory_bytes: int  # one job's worker limits together (dask-jobqueue's ``memory``)
    worker_address_space_bytes: int  # a worker's resident need or limit plus what it maps beyond it
    job_memory_bytes: int
    processes_per_job: int
    threads_per_worker: int
    cores_per_job: int
    jobs: int
    workers: int
    walltime: str
    chunks: int
    estimate_model: str
    basis: PlanBasis

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "basis"}

    def with_more_memory(self, factor: float = 2.0, chunks: int | None = None) -> "Plan":
        """The same plan with ``factor`` × each worker's need (for ``chunks`` chunks), or PlanRefused."""
        task_peak = int(factor * self.worker_need_bytes) - _worker_base_in_need(self.basis)
        return _size(replace(self.basis, task_peak_bytes=task_peak, chunks=chunks or self.chunks))

    def sized_by_need(self) -> bool:
        """Whether a measured need could change this plan: a shared site's limits always follow the
        need; a dedicated site's (limit off, whole nodes) only when a need as far over the model's
        as the model may fall short (``TaskEstimate.shortfall``) would fit fewer workers on a node.
        Where it cannot, a probe is a chunk imaged alone for nothing (measured: 1/8 of NGC5921
        serially before the two workers start; the bench's wide mosaic 102.8 s against 55.9 s)."""
        if self.worker_memory_limit_bytes or _measured(self.basis):
            return True
        try:
            return self.with_more_memory(self.basis.model_shortfall).processes_per_job < self.processes_per_job
        except PlanRefused:
            return True

    def per_core(self, n: int) -> int:
        """``n`` bytes shared out over the job's cores, rounded up (SGE asks for memory per slot)."""
        return -(-n // self.cores_per_job)

    def summary(self) -> str:
        limit = format_bytes(self.worker_memory_limit_bytes) if self.worker_memory_limit_bytes else "off (0)"
        return (f"site {self.site} ({self.scheduler}, {self.memory_policy}): {self.workers} workers in {self.jobs} "
                f"job(s) of {self.processes_per_job}; {self.chunks} task(s) of {self.basis.channels_per_task} channel(s),"
                f" one ≈ {self.task_peak_gib:.2f} GiB "
                f"({self.estimate_model} model); worker memory limit {limit}; job memory "
                f"{format_bytes(self.job_memory_bytes)}; walltime {self.walltime}")


def shared_plan(plans: list[Plan]) -> Plan:
    """One set of workers for several cubes' tasks (``submit a.toml b.toml``): sized for the largest
    task of any of them (any worker may be handed any cube's chunk) and for all their chunks, with
    the longest task's time for the walltime."""
    largest = max(plans, key=lambda p: (p.worker_need_bytes, p.task_seconds or 0.0))
    seconds = [p.task_seconds for p in plans if p.task_seconds is not None]
    return _size(replace(largest.basis, chunks=sum(p.chunks for p in plans),
                         task_seconds=max(seconds) if seconds else None,
                         model_shortfall=max(p.basis.model_shortfall for p in plans)))


def renderable_limit(n: float) -> int:
    """The smallest memory limit ≥ ``n`` that dask-jobqueue renders exactly: it prints a worker's
    ``--memory-limit`` with dask's format_bytes (two decimals), so the limit is a hundredth of a GiB
    that survives that round trip (a coarser step, 256 MiB, cost small workers up to 25 %)."""
    hundredths = math.ceil(n / GIB * 100)
    while True:
        limit = parse_bytes(f"{hundredths / 100:.2f} GiB")
        if limit >= n and parse_bytes(format_bytes(limit)) == limit:
            return limit
        hundredths += 1


def _measured(basis: PlanBasis) -> bool:
    return basis.estimate_model == "probe"


def _worker_base_in_need(basis: PlanBasis) -> int:
    """A modelled task's need adds the worker's own memory; a probe measured the worker itself."""
    return 0 if _measured(basis) else parse_bytes(basis.site.worker_base)


def make_plan(spec: CubeSpec, site: SiteProfile, estimate: TaskEstimate, chunks: int) -> Plan:
    """Size workers and jobs for ``chunks`` tasks of ``estimate`` on ``site``, or refuse with reasons."""
    if site.shared_directory and not spec.run_directory.resolve().is_relative_to(site.shared_directory):
        raise PlanRefused(f"the run directory {spec.run_directory} is not under {site.name}'s shared file system "
                          f"{site.shared_directory}, where workers can write: set [run] directory")
    return _size(PlanBasis(site=site, task_peak_bytes=int(estimate.task_peak_gib * GIB),
                           task_seconds=estimate.task_seconds, chunks=chunks, workers_wanted=spec.parallel.workers,
                           channels_per_task=estimate.channels_per_task, pixels=estimate.pixels,
                           estimate_model=estimate.model, model_shortfall=estimate.shortfall))


def _size(basis: PlanBasis) -> Plan:
    site = basis.site
    node_memory = site.node_memory_bytes
    job_overhead = parse_bytes(site.job_memory_overhead)
    need = basis.task_peak_bytes + _worker_base_in_need(basis)
    # A nanny per worker beside it: inside a modelled need (worker_base), outside a measured one.
    nanny = parse_bytes(site.worker_base) if _measured(basis) else 0
    usable = node_memory - job_overhead

    if site.memory_policy == "dedicated":
        limit = 0
        fits = usable // (need + nanny)
    else:
        limit = renderable_limit(need * (MEASURED_HEADROOM if _measured(basis) else site.memory_headroom))
        fits = usable // (limit + nanny)
    if fits < 1:
        per_worker = limit or need
        raise PlanRefused(
            f"one task needs {format_bytes(per_worker)} per worker ({basis.task_peak_bytes / GIB:.2f} GiB for "
            f"{basis.channels_per_task} channels of {basis.pixels} pixels, plus worker base"
            f"{' and headroom' if limit else ''}) but a {site.name} node offers {format_bytes(usable)}: "
            "use fewer channels_per_task, a smaller image, or another site")

    per_node = min(site.cores, fits)
    most_jobs = site.max_jobs
    wanted = max(1, min(basis.workers_wanted or per_node * most_jobs, per_node * most_jobs, basis.chunks))
    jobs = math.ceil(wanted / per_node)
    processes = math.ceil(wanted / jobs)
    job_memory = node_memory if site.memory_policy == "dedicated" else processes * (limit + nanny) + job_overhead

    return Plan(
        site=site.name,
        scheduler=site.scheduler,
        memory_policy=site.memory_policy,
        task_peak_gib=basis.task_peak_bytes / GIB,
        task_seconds=basis.task_seconds,
        worker_need_bytes=need,
        worker_memory_limit_bytes=limit,
        workers_memory_bytes=processes * limit,
        worker_address_space_bytes=(limit or need) + parse_bytes(site.virtual_memory_overhead),
        job_memory_bytes=job_memory,
        processes_per_job=processes,
        threads_per_worker=1,  # casatools is not thread-safe: one task per process
        cores_per_job=processes,
        jobs=jobs,
        workers=jobs * processes,
        walltime=_walltime(basis, jobs * processes),
        chunks=basis.chunks,
        estimate_model=basis.estimate_model,
        basis=basis,
    )


def _walltime(basis: PlanBasis, workers: int) -> str:
    site = basis.site
    maximum = walltime_seconds(site.walltime_max)
    if basis.task_seconds is None:
        return site.walltime_default
    one_task = basis.task_seconds * WALLTIME_SAFETY + WORKER_STARTUP_SECONDS
    if one_task > maximum:
        raise PlanRefused(
            f"one task is estimated at {basis.task_seconds / 3600:.1f} h (× {WALLTIME_SAFETY} safety plus "
            f"start-up), over {site.name}'s walltime maximum {site.walltime_max}: use fewer channels_per_task "
            "or a smaller image")
    everything = math.ceil(basis.chunks / workers) * basis.task_seconds * WALLTIME_SAFETY + WORKER_STARTUP_SECONDS
    return format_walltime(min(everything, maximum))


# The final cube's assembly (run/concat.py). One driver thread places every part: measured here
# (benchmarks/scale_model.py measure, NGC5921 parts of 256² and 1024², docs/benchmarks.md) it places
# PLACING_BYTES_PER_SECOND of product per second of its time (its CPU and its waits for the disk). Workers produce product bytes at
# workers × (full-size products × 4 bytes × pixels × channels) / task seconds; where that comes near
# what the one thread places, placing becomes the run's critical path and the run assembles instead
# with CASA's virtual concatenation after the last chunk (seconds, whatever the workers).
PLACING_BYTES_PER_SECOND = 160e6  # the thread's wall rate, 1024² parts, load 3 (457 MB/s per CPU second)
# Switch once the workers would keep the placing thread busier than this: its rate fell to 46 MB/s
# at load 6-8 here (the driver shares its node), and the virtual assembly costs seconds.
PLACING_SHARE = 0.5
FULL_SIZE_PRODUCTS = 6  # image, residual, model, psf, pb, mask (sumwt is one pixel a plane); without a mask, overstated
# Where no calibration or probe gave a task's seconds: the fastest imaging measured here (NGC5921
# 1024², niter 0, 8 channels a task: 53.6 s of tasks for 63 × 1024² channel-pixels), so the
# workers' rate is overstated rather than missed.
FASTEST_SECONDS_PER_CHANNEL_PIXEL = 8.1e-7


@dataclass(frozen=True)
class AssemblyChoice:
    kind: str  # "placed" or "virtual"
    reason: str
    produced_bytes_per_second: float  # by all the workers together
    placing_bytes_per_second: float

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def choose_assembly(plan: Plan, asked: str = "auto", *, common_beam: bool = False,
                    tabular_axis: bool = False) -> AssemblyChoice:
    """How the final cube is assembled: ``asked`` (``[run] assembly`` or the site's), or with
    ``auto`` the placed assembly unless the plan's workers would produce product bytes faster than
    ``PLACING_SHARE`` of what one placing thread places. The virtual one cannot restore a common beam
    (tclean opens the whole cube's images as paged images); nor does it write serial's tabular axis
    into the cube as the placed one does (the parts' own axes are concatenated: not tried)."""
    basis = plan.basis
    seconds = basis.task_seconds or FASTEST_SECONDS_PER_CHANNEL_PIXEL * basis.pixels * basis.channels_per_task
    produced = plan.workers * FULL_SIZE_PRODUCTS * 4 * basis.pixels * basis.channels_per_task / seconds
    share = "over" if produced > PLACING_SHARE * PLACING_BYTES_PER_SECOND else "under"
    rate = (f"{plan.workers} workers produce {format_bytes(produced)}/s of product, {share} {PLACING_SHARE:.0%} of the"
            f" {format_bytes(PLACING_BYTES_PER_SECOND)}/s one placing thread places")
    cannot = "restoringbeam='common'" if common_beam else "a tabular spectral axis" if tabular_axis else None
    if asked == "virtual" and cannot:
        raise PlanRefused(f"assembly = 'virtual' cannot make a cube with {cannot}: use assembly = 'placed' or 'auto'")
    if asked != "auto":
        kind, why = asked, f"asked for ({rate})"
    elif cannot:
        kind, why = "placed", f"{cannot} needs the placed assembly ({rate})"
    elif produced > PLACING_SHARE * PLACING_BYTES_PER_SECOND:
        kind, why = "virtual", f"placing would be the critical path: {rate}"
    else:
        kind, why = "placed", f"placing keeps up: {rate}"
    return AssemblyChoice(kind, why, produced, PLACING_BYTES_PER_SECOND)
