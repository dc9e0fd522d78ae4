"""Where the workers come from. ``local``: a LocalCluster on this machine.

The dask memory limit is off (``0``) on a dedicated machine: CASA's image buffers are unmanaged
memory that dask cannot spill or free, so pausing a worker at 80 % only stalls it until its task
ends. Concurrency is bounded by the driver's in-flight limit instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from . import casa_setup


@contextlib.contextmanager
def local_cluster(workers: int | None) -> Iterator["distributed.Client"]:
    from distributed import Client, LocalCluster

    casa_setup.configure_offline()  # workers inherit CASASITECONFIG from this process
    n_workers = workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,  # casatools is not thread-safe: one task per process
        processes=True,
        memory_limit=0,
        dashboard_address="127.0.0.1:0",
        host="127.0.0.1",
    ) as cluster, Client(cluster) as client:
        yield client
