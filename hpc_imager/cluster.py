"""*How* workers are started from a plan: a LocalCluster here, or dask-jobqueue batch jobs.

dask-jobqueue's cluster classes render and submit every job; the scheduler-specific directives
come from :mod:`hpc_imager.schedulers`. What every worker needs whatever the scheduler (offline
CASA, dask's memory thresholds for CASA) is exported by the job script's prologue for batch jobs
and set as dask config for local workers.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Iterator

import dask

from . import casa_setup
from .plan import DASK_MEMORY_CONFIG, Plan
from .schedulers import BATCH_SCHEDULERS
from .site_profile import SiteProfile


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


@contextlib.contextmanager
def start_cluster(plan: Plan, site: SiteProfile, run_dir: Path) -> Iterator["distributed.Client"]:
    """Workers as the plan says, and a client connected to them; all of it is gone afterwards."""
    if site.scheduler != "local":
        raise NotImplementedError(f"submitting to {site.scheduler} is not available yet")
    with local_cluster(plan) as client:
        yield client


@contextlib.contextmanager
def local_cluster(plan: Plan) -> Iterator["distributed.Client"]:
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
