"""The one interface every kind of site implements, and what all of them share.

dask's worker-memory thresholds are set for CASA on purpose (see docs/memory-policy.md): no
spilling (there is no managed data to spill), no pausing (CASA's memory is unmanaged; a paused
worker only stalls until its task ends), terminate at 95 % of the limit.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Iterator

import dask

from ..sizing.plan import TERMINATE_FRACTION

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security

    from ..inputs.cube_spec import CubeSpec
    from ..inputs.site_profile import SiteProfile
    from ..sizing.plan import Plan

WORKER_MEMORY_CONFIG = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": TERMINATE_FRACTION,
}

# Environment variables distributed's nanny sets before it starts a worker process, which hpc_imager
# leaves unset. MALLOC_TRIM_THRESHOLD_=65536 (dask's default, so freed memory goes back to the OS at
# once) also turns off glibc's adaptive mmap threshold: every image-sized buffer CASA allocates is then
# a fresh mmap, faulted in page by page and unmapped again. Measured on NGC5921 1024², 63 channels in
# 8 tasks, 2 workers (4 paired runs): system time 30.6 s → 21.0 s, the run 12 % faster, peak RSS +1 %.
# casa_imager.return_freed_heap gives freed memory back after each imaging step and task instead.
WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)


def worker_process_config() -> dict:
    """The dask configuration every worker's nanny runs with: the memory thresholds above, and the
    nanny's pre-spawn environment without WORKER_ENVIRON_UNSET (its other entries, one OpenMP thread
    per worker among them, stay)."""
    unset = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in WORKER_ENVIRON_UNSET}
    return {**WORKER_MEMORY_CONFIG, **unset}

# A task whose worker died under it twice is handed back to the driver, which retries it, or retries
# it with more memory when the logs say memory killed it, instead of dask trying it on and on.
# distributed's own reaping of lost jobs is off: it misses jobs of several workers and can close a
# replacement that reuses a lost job's name; the batch backends replace lost jobs themselves.
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": 1, "distributed.deploy.lost-worker-timeout": "3650 days"}

# What Python and distributed's nanny say when memory ran out, on any site.
MEMORY_SIGNS = ("MemoryError", "memory budget")


class Backend(ABC):
    """Where workers run and how they are asked for."""

    name: str
    memory_signs: tuple[str, ...] = MEMORY_SIGNS  # text in a task's error or the run's logs after a memory kill

    @contextlib.contextmanager
    def cluster(self, plan: "Plan", site: "SiteProfile", run_dir: Path) -> Iterator["Client"]:
        """Workers as the plan says and a client connected to them; all of it gone afterwards."""
        with dask.config.set(SCHEDULER_CONFIG), self._client(plan, site, run_dir) as client:
            yield client

    def check_site(self, site: "SiteProfile") -> None:
        """Refuse, as a one-line UserError, what about the site would keep its workers from ever
        connecting, before anything is submitted (a run is refused before its run directory is made)."""

    @abstractmethod
    def _client(self, plan: "Plan", site: "SiteProfile", run_dir: Path) -> ContextManager["Client"]:
        ...

    def certificates(self, site: "SiteProfile", run_dir: Path) -> ContextManager[tuple["Security | None", Path | None]]:
        """The run's TLS credentials and the owner-only directory the workers read them from, removed
        when the context ends; ``(None, None)`` where the site talks plain TCP (see backends/security.py)."""
        return contextlib.nullcontext((None, None))

    @abstractmethod
    def job_script(self, plan: "Plan", site: "SiteProfile", run_dir: Path | None = None) -> str:
        """The job script a worker job runs ('' where workers are not batch jobs)."""

    @abstractmethod
    def driver_script(self, spec: "CubeSpec", site: "SiteProfile", site_argument: str, cube_toml: Path) -> str:
        """A script that runs the driver itself as a job of this site."""

    def job_counts(self, client: "Client") -> dict[str, int] | None:
        """Jobs whose workers have connected (running) or not yet (pending); None without jobs."""
        return None
