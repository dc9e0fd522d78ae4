"""Grid Engine: a job takes N slots of a parallel environment; ``h_vmem`` and ``mem_free`` are per
slot. ``h_vmem`` becomes each process's address-space limit (``ulimit -v`` = slots × h_vmem), so it
is sized from a worker's resident need plus the address space CASA and Python map beyond it; a task
over it gets a MemoryError inside the task rather than a killed job."""

from __future__ import annotations


def cluster_class():
    from dask_jobqueue import SGECluster

    return SGECluster


def job_kwargs(plan, site) -> dict:
    """This scheduler's memory, exclusivity and accounting options for dask-jobqueue."""
    from dask.utils import parse_bytes

    from . import mebibytes

    slots = plan.cores_per_job
    address_space = (plan.worker_memory_limit_bytes or plan.worker_need_bytes) + parse_bytes(site.virtual_memory_overhead)
    h_vmem = mebibytes(-(-address_space // slots))
    mem_free = mebibytes(-(-plan.job_memory_bytes // slots))
    return {
        "project": site.account,
        "resource_spec": f"h_vmem={h_vmem}M,mem_free={mem_free}M",
        "job_extra_directives": [f"-pe {site.sge_parallel_environment} {slots}"],
        # glibc gives every thread its own malloc arena of address space; few are needed here
        "job_script_prologue": ["export MALLOC_ARENA_MAX=2"],
    }
