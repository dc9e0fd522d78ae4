"""PBS: one chunk of one node per job, ``-l select=1:ncpus=N:mem=M``; whole nodes by ``place=excl``."""

from __future__ import annotations

from .base import MEMORY_SIGNS
from .jobqueue import JobqueueBackend, mebibytes


class PBSBackend(JobqueueBackend):
    name = "pbs"
    directive_prefix = "#PBS"
    driver_template = "pbs.qsub"
    queue_directive = "-q {}"
    account_directive = "-A {}"
    memory_signs = MEMORY_SIGNS + ("exceeded memory limit", "job killed: mem")

    def cluster_class(self):
        from dask_jobqueue import PBSCluster

        return PBSCluster

    def job_kwargs(self, plan, site) -> dict:
        spec = f"select=1:ncpus={plan.cores_per_job}:mem={mebibytes(plan.job_memory_bytes)}mb"
        directives = ["-l place=excl"] if plan.memory_policy == "dedicated" else []
        return {"account": site.account, "resource_spec": spec, "job_extra_directives": directives}


PBS = PBSBackend()
