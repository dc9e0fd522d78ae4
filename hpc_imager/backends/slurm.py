"""Slurm: ``--mem`` is the whole job's memory (Slurm turns it into RLIMIT_RSS, and distributed caps
a worker's limit to it, so the job asks for all its workers' limits plus overhead)."""

from __future__ import annotations

from .base import MEMORY_SIGNS
from .jobqueue import JobqueueBackend, mebibytes


class SlurmBackend(JobqueueBackend):
    name = "slurm"
    directive_prefix = "#SBATCH"
    driver_template = "slurm.sbatch"
    queue_directive = "--partition={}"
    account_directive = "--account={}"
    driver_log_name = "{run}.driver-%j.log"
    # slurmstepd writes its kill into the job's stderr; sacct's state where accounting runs
    memory_signs = MEMORY_SIGNS + ("exceeded memory limit", "OUT_OF_MEMORY", "Out Of Memory")

    def cluster_class(self):
        from dask_jobqueue import SLURMCluster

        return SLURMCluster

    def job_kwargs(self, plan, site) -> dict:
        directives = ["--exclusive"] if plan.memory_policy == "dedicated" else []
        return {"account": site.account, "job_mem": f"{mebibytes(plan.job_memory_bytes)}M",
                "job_extra_directives": directives}


SLURM = SlurmBackend()
