"""Slurm: ``--mem`` is the whole job's memory (Slurm turns it into RLIMIT_RSS, and distributed caps
a worker's limit to it, so the job must ask for all its workers' limits plus overhead)."""

from __future__ import annotations


def cluster_class():
    from dask_jobqueue import SLURMCluster

    return SLURMCluster


def job_kwargs(plan, site) -> dict:
    """This scheduler's memory, exclusivity and accounting options for dask-jobqueue."""
    from . import mebibytes

    directives = ["--exclusive"] if plan.memory_policy == "dedicated" else []
    return {"account": site.account, "job_mem": f"{mebibytes(plan.job_memory_bytes)}M", "job_extra_directives": directives}
