"""PBS: one chunk of one node per job, ``-l select=1:ncpus=N:mem=M``; whole nodes by ``place=excl``."""

from __future__ import annotations


def cluster_class():
    from dask_jobqueue import PBSCluster

    return PBSCluster


def job_kwargs(plan, site) -> dict:
    """This scheduler's memory, exclusivity and accounting options for dask-jobqueue."""
    from . import mebibytes

    spec = f"select=1:ncpus={plan.cores_per_job}:mem={mebibytes(plan.job_memory_bytes)}mb"
    directives = ["-l place=excl"] if plan.memory_policy == "dedicated" else []
    return {"account": site.account, "resource_spec": spec, "job_extra_directives": directives}
