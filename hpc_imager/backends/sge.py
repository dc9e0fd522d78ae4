"""Grid Engine: a job takes N slots of a parallel environment; ``h_vmem`` and ``mem_free`` are per
slot. ``h_vmem`` becomes each process's address-space limit (``ulimit -v`` = slots × h_vmem), so it
is the plan's worker address space shared over the slots; a task over it gets a MemoryError inside
the task rather than a killed job."""

from __future__ import annotations

from .jobqueue import JobqueueBackend, mebibytes


class SGEBackend(JobqueueBackend):
    name = "sge"
    directive_prefix = "#$"
    driver_template = "sge.qsub"
    queue_directive = "-q {}"
    account_directive = "-P {}"

    def cluster_class(self):
        from dask_jobqueue import SGECluster

        return SGECluster

    def job_kwargs(self, plan, site) -> dict:
        h_vmem = mebibytes(plan.per_core(plan.worker_address_space_bytes))
        mem_free = mebibytes(plan.per_core(plan.job_memory_bytes))
        return {
            "project": site.account,
            "resource_spec": f"h_vmem={h_vmem}M,mem_free={mem_free}M",
            "job_extra_directives": [f"-pe {site.sge_parallel_environment} {plan.cores_per_job}"],
            # glibc gives every thread its own malloc arena of address space; few are needed here
            "job_script_prologue": ["export MALLOC_ARENA_MAX=2"],
        }


SGE = SGEBackend()
