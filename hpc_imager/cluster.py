"""*How* workers are started from a plan: a LocalCluster here, or dask-jobqueue batch jobs.

dask-jobqueue's cluster classes render and submit every job; the scheduler-specific directives
come from :mod:`hpc_imager.schedulers`. What every worker needs whatever the scheduler (offline
CASA, dask's memory thresholds for CASA) is exported by the job script's prologue for batch jobs
and set as dask config for local workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import dask
from tornado.ioloop import PeriodicCallback

from . import casa_setup
from .plan import DASK_MEMORY_CONFIG, Plan
from .schedulers import BATCH_SCHEDULERS
from .site_profile import SiteProfile, walltime_seconds

if TYPE_CHECKING:
    from distributed import Client


def _env_name(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def worker_prologue(site: SiteProfile) -> list[str]:
    """Shell lines before every batch worker: the site's, then offline CASA and dask's memory policy."""
    lines = list(site.prologue)
    if site.casa_data:
        lines.append(f"export {casa_setup.DATA_ENV}={shlex.quote(site.casa_data)}")
    lines += [f"export {_env_name(k)}={v}" for k, v in DASK_MEMORY_CONFIG.items()]
    return lines


def jobqueue_kwargs(plan: Plan, site: SiteProfile, run_dir: Path | None = None) -> dict:
    """Keyword arguments for the site's dask-jobqueue cluster class, from the plan."""
    scheduler = BATCH_SCHEDULERS[site.scheduler]
    specific = scheduler.job_kwargs(plan, site)
    kwargs = {
        "cores": plan.cores_per_job,
        "processes": plan.processes_per_job,
        "memory": f"{plan.processes_per_job * plan.worker_memory_limit_bytes}B",
        "walltime": plan.walltime,
        "queue": site.queue,
        "job_name": "hpc-imager",
        "python": site.python or sys.executable,
        "interface": site.interface,
        "local_directory": site.local_scratch,
        "log_directory": str(run_dir / "logs" / "jobs") if run_dir else None,
        "worker_extra_args": _lifetime_args(plan.walltime),
        **specific,
        "job_extra_directives": list(site.job_directives) + specific.get("job_extra_directives", []),
        "job_script_prologue": worker_prologue(site) + specific.get("job_script_prologue", []),
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def render_job_script(plan: Plan, site: SiteProfile, run_dir: Path | None = None) -> str:
    """The job script ``submit`` would give the batch system (the scheduler address is filled in then)."""
    if site.scheduler == "local":
        return ""
    cluster_class = BATCH_SCHEDULERS[site.scheduler].cluster_class()
    job = cluster_class.job_cls(scheduler="tcp://<scheduler-address>:<port>", name="hpc-imager-worker",
                                **jobqueue_kwargs(plan, site, run_dir))
    return job.job_script()


# A task whose worker died under it twice is handed back to the driver, which retries it, or retries
# it with more memory when the logs say memory killed it, instead of dask trying it on and on.
# distributed's own reaping of lost jobs is off: it misses jobs of several workers and can close a
# replacement that reuses a lost job's name; LostJobs below does it for every job.
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.deploy.lost-worker-timeout": "3650 days"}


@contextlib.contextmanager
def start_cluster(plan: Plan, site: SiteProfile, run_dir: Path) -> Iterator[Client]:
    """Workers as the plan says, and a client connected to them; all of it is gone afterwards."""
    with dask.config.set(SCHEDULER_CONFIG):
        clients = local_cluster(plan) if site.scheduler == "local" else batch_cluster(plan, site, run_dir)
        with clients as client:
            yield client


# Workers retire before their job's walltime (10 minutes, or a fifth of a short walltime), staggered
# so they do not all go at once, and the adaptive cluster submits replacements: a cube longer than
# one walltime finishes, and no chunk is cut off by the batch system's kill.
RETIRE_BEFORE_WALLTIME = 600
RETIRE_STAGGER = 300


def _lifetime_args(walltime: str) -> list[str]:
    seconds = walltime_seconds(walltime)
    margin = min(RETIRE_BEFORE_WALLTIME, seconds // 5)
    stagger = min(RETIRE_STAGGER, seconds // 10)
    return ["--lifetime", f"{seconds - margin}s", "--lifetime-stagger", f"{stagger}s"]


@contextlib.contextmanager
def batch_cluster(plan: Plan, site: SiteProfile, run_dir: Path) -> Iterator[Client]:
    """dask-jobqueue's cluster for the site, kept at the plan's number of jobs.

    ``adapt(minimum_jobs=maximum_jobs=jobs)`` submits a replacement whenever a job ends (cancelled,
    node lost, walltime), so the run keeps its width. Closing the cluster cancels every job.
    """
    from distributed import Client

    casa_setup.configure_offline()
    cluster_class = BATCH_SCHEDULERS[site.scheduler].cluster_class()
    # Importing dask_jobqueue makes SIGINT exit the process with status 0 (dask_jobqueue.runner sets
    # a handler at import); Ctrl-C must instead unwind through here so the jobs are cancelled.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cluster = cluster_class(scheduler_options={"dashboard_address": ":0", "interface": site.interface},
                            **jobqueue_kwargs(plan, site, run_dir))
    watchdog = PeriodicCallback(LostJobs(cluster), LOST_JOB_CHECK_SECONDS * 1000)
    try:
        cluster.adapt(minimum_jobs=plan.jobs, maximum_jobs=plan.jobs)
        cluster.loop.add_callback(watchdog.start)
        with Client(cluster) as client:
            yield client
    finally:
        cluster.loop.add_callback(watchdog.stop)
        previous = signal.signal(signal.SIGINT, lambda *_: _cancel_now_and_exit(cluster))
        try:
            cluster.close()  # cancels every job it submitted
        finally:
            signal.signal(signal.SIGINT, previous)


LOST_JOB_CHECK_SECONDS = 5


class LostJobs:
    """Replace batch jobs whose workers have all gone (cancelled, node lost, retired at walltime).

    distributed replaces a lost job only when the job runs a single worker: with several workers per
    job their names carry suffixes and the job is never noticed. This runs on the cluster's event
    loop, forgets such a job and lets the cluster submit a fresh one under the same name.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.seen: set[str] = set()  # jobs whose workers have connected at some point

    def __call__(self) -> None:
        connected = _worker_names(self.cluster.scheduler_info)
        for name in list(self.cluster.workers):
            if _has_worker(name, connected):
                self.seen.add(str(name))
            elif str(name) in self.seen:
                self.seen.discard(str(name))
                job = self.cluster.workers.pop(name)
                self.cluster._futures.add(asyncio.ensure_future(job.close()))  # make sure it is gone
                self.cluster._correct_state()  # submits a job for the spec that has none now


def _cancel_now_and_exit(cluster) -> None:
    """A second Ctrl-C while jobs are being cancelled: cancel them in one command and leave."""
    job_ids = [job.job_id for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
    if job_ids:
        subprocess.run(shlex.split(cluster.job_cls.cancel_command) + job_ids, capture_output=True, timeout=30)
    os._exit(130)


def job_counts(client) -> dict[str, int] | None:
    """Batch jobs whose workers have connected (running) or not yet (pending); None when local."""
    cluster = getattr(client, "cluster", None)
    if not hasattr(cluster, "job_cls"):
        return None
    connected = _worker_names(client.scheduler_info())
    jobs = list(cluster.workers)
    running = sum(_has_worker(job, connected) for job in jobs)
    return {"pending": len(jobs) - running, "running": running}


def _worker_names(scheduler_info: dict) -> list[str]:
    return [str(w["name"]) for w in scheduler_info.get("workers", {}).values()]


def _has_worker(job, connected: list[str]) -> bool:
    """A job's workers are named after it: the job's name, or ``name-0``, ``name-1``... with several."""
    return any(w == str(job) or w.startswith(f"{job}-") for w in connected)


@contextlib.contextmanager
def local_cluster(plan: Plan) -> Iterator[Client]:
    """A LocalCluster: one single-threaded worker process per planned worker, dashboard on loopback."""
    from distributed import Client, LocalCluster

    casa_setup.configure_offline()  # workers inherit CASASITECONFIG from this process
    with dask.config.set(DASK_MEMORY_CONFIG), LocalCluster(
        n_workers=plan.workers,
        threads_per_worker=plan.threads_per_worker,
        processes=True,
        memory_limit=plan.worker_memory_limit_bytes,
        dashboard_address="127.0.0.1:0",
        host="127.0.0.1",
    ) as cluster, Client(cluster) as client:
        yield client
