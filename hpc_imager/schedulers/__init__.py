"""*How* a batch system is asked for workers: one thin module per scheduler.

Each module names its dask-jobqueue cluster class and turns a plan's memory numbers into that
scheduler's directives (Slurm ``--mem``, PBS ``mem=``, SGE ``h_vmem``/``mem_free`` per slot).
Everything common to all of them is in :mod:`hpc_imager.cluster`.
"""

from . import pbs, sge, slurm

BATCH_SCHEDULERS = {"slurm": slurm, "pbs": pbs, "sge": sge}


def mebibytes(n: float) -> int:
    """Whole MiB, rounded up: a memory request must never fall short of the plan."""
    return -(-int(n) // 2**20)
