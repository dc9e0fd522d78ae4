"""Batch jobs lost while the run goes on, and their replacement."""

from __future__ import annotations

import asyncio

from distributed.diagnostics.plugin import SchedulerPlugin

from .job_workers import has_worker, worker_names


class LostJobs(SchedulerPlugin):
    """Replace batch jobs whose workers have all gone (cancelled, node lost, retired at walltime).

    distributed replaces a lost job only when the job runs a single worker: with several workers per
    job their names carry suffixes and the job is never noticed. A periodic check on the cluster's
    event loop forgets such a job and lets the cluster submit a fresh one under the same name. A job
    counts as started when one of its workers connects (this plugin, on the scheduler), not when a
    check finds it: a job cancelled between two checks was otherwise never replaced (measured: with
    casatools-only workers a job's two workers had done three chunks 2 s after they connected, and
    the check runs every 5 s).
    """

    name = "hpc_imager-lost-jobs"

    def __init__(self, cluster):
        self.cluster = cluster
        self.started: set[str] = set()  # jobs whose workers have connected at some point

    def add_worker(self, scheduler, worker: str) -> None:
        connected = [str(scheduler.workers[worker].name)]
        self.started.update(str(job) for job in self.cluster.workers if has_worker(job, connected))

    def __call__(self) -> None:
        connected = worker_names(self.cluster.scheduler_info)
        for name in lost_jobs(list(self.cluster.workers), self.started, connected):
            self.started.discard(str(name))
            job = self.cluster.workers.pop(name)
            self.cluster._futures.add(asyncio.ensure_future(job.close()))  # make sure it is gone
            self.cluster._correct_state()  # submits a job for the spec that has none now


def lost_jobs(jobs: list, started: set[str], connected: list[str]) -> list:
    """The jobs whose workers connected once and are all gone now; a job still in the queue has none yet."""
    return [job for job in jobs if str(job) in started and not has_worker(job, connected)]
