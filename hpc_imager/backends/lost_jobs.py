"""Batch jobs lost while the run goes on, and their replacement."""

from __future__ import annotations

import asyncio
import sys
import time

from distributed.diagnostics.plugin import SchedulerPlugin

from .job_workers import has_worker

# How often the jobs are looked at, and how long a started job must have had no worker connected
# before it counts as lost. A nanny restarts a worker killed under it (memory) in 0.7 s (measured,
# SIGKILL to re-registration, on an idle machine); a job found without workers at a single check
# was replaced even then, cancelling a job that was about to work again.
LOST_JOB_CHECK_SECONDS = 1
RESTART_GRACE_SECONDS = 5


class LostJobs(SchedulerPlugin):
    """Replace batch jobs whose workers have all gone (cancelled, node lost, retired at walltime).

    distributed replaces a lost job only when the job runs a single worker: with several workers per
    job their names carry suffixes and the job is never noticed. A check every second on the
    cluster's event loop cancels a lost job and then has the cluster submit a fresh one under the
    same name (:meth:`_replace`). A job counts as started when one of its workers connects (this
    plugin, on the scheduler), not when a check finds it: a job cancelled between two checks was
    otherwise never replaced (measured: with casatools-only workers a job's two workers had done
    three chunks 2 s after they connected).
    """

    name = "hpc_imager-lost-jobs"

    def __init__(self, cluster):
        self.cluster = cluster
        self.started: set = set()  # jobs whose workers have connected at some point
        self.without_workers: dict = {}  # started jobs with no worker connected now: since when
        self.replacing: set = set()  # replacements under way

    def add_worker(self, scheduler, worker: str) -> None:
        connected = [str(scheduler.workers[worker].name)]
        self.started.update(job for job in self.cluster.workers if has_worker(job, connected))

    def __call__(self) -> None:
        now = time.monotonic()
        connected = [str(w.name) for w in self.cluster.scheduler.workers.values()]
        self.without_workers = without_workers(list(self.cluster.workers), self.started, connected,
                                               self.without_workers, now)
        for name in lost_jobs(self.without_workers, now, RESTART_GRACE_SECONDS):
            self.started.discard(name)  # not found lost again while it is being replaced
            del self.without_workers[name]
            job = self.cluster.workers[name]
            print(f"hpc_imager: batch job {job.job_id} has had no worker for {RESTART_GRACE_SECONDS} s;"
                  " submitting a replacement", file=sys.stderr, flush=True)
            replacing = asyncio.ensure_future(self._replace(name, job))
            self.replacing.add(replacing)  # kept until done: the event loop holds tasks only weakly
            replacing.add_done_callback(self.replacing.discard)

    async def _replace(self, name, job) -> None:
        """Cancel the lost job, and only then submit its replacement.

        On a node that is gone the cancelled job stays COMPLETING (its slurmd cannot confirm the kill)
        until Slurm marks the node down, and Slurm starts no job on a node with a completing one; a
        replacement submitted before the cancel reached slurmctld could be started on the lost node,
        where its launch fails and Slurm holds it ("launch failed requeued held"). dask-jobqueue runs
        scancel and sbatch as concurrent subprocesses, a race, so the order is kept here. On CI's
        namespaced nodes (tests/test_multihost.py), nodeA's processes SIGKILLed: its job completing
        there, the replacement started on nodeB in 4 of 4 runs. The replacement goes through
        SpecCluster's public ``workers`` and ``scale``: scaling to the jobs it has starts a job for the
        spec that has none now.
        """
        try:
            await job.close()
        finally:  # a cancel that failed must not keep the run a job short
            if self.cluster.workers.get(name) is job:
                del self.cluster.workers[name]
            self.cluster.scale(jobs=len(self.cluster.worker_spec))


def without_workers(jobs: list, started: set, connected: list[str], since: dict, now: float) -> dict:
    """Each started job with none of its workers connected, and since when (``now`` if first seen so;
    a job still in the queue has no workers yet and is not among them)."""
    return {job: since.get(job, now) for job in jobs if job in started and not has_worker(job, connected)}


def lost_jobs(without_workers: dict, now: float, grace: float) -> list:
    """The jobs that have had no worker for ``grace`` seconds: their workers will not come back."""
    return [job for job, since in without_workers.items() if now - since >= grace]
