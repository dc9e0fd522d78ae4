"""A run's workers: the cluster made from the plan, kept across rounds of tasks, and replaced by one
with twice the memory per worker when tasks were killed for memory.

Every imaging mode asks this one session to run its tasks; the cluster, the dashboard line, the wait
for the first worker and the more-memory loop are written here once. Several cubes submitted together
(``submit a.toml b.toml``) share one :class:`SharedWorkers`: their sessions borrow its cluster and
its bound on tasks in flight for their first pass.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import RunFailed
from ..imaging.channel_grid import Chunk
from ..imaging.worker_plugin import PrepareWorker
from ..inputs.site_profile import walltime_seconds
from ..sizing.plan import Plan, PlanRefused
from ..backends.security import dashboard_hint
from .task_loop import Places, Tasks, channel_ranges, run_tasks

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..inputs.site_profile import SiteProfile
    from .context import RunContext

log = logging.getLogger(__name__)


class WorkersUnavailable(RunFailed):
    """No worker came up within the site's worker_wait."""


@dataclass
class Passes:
    """What the passes over the chunks came to: the first plan's, then each with more memory."""

    plans: list[Plan]
    lost: list[Chunk] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    memory_note: str = ""

    def add(self, other: "Passes") -> None:
        self.lost += other.lost
        self.failures = other.failures + self.failures


class ClusterSession:
    """Workers for one plan, started when first needed and closed with the session. A run that is one
    of several cubes of a submission borrows the submission's workers (and their plan) instead, until
    its chunks need more memory than they have: then it makes workers of its own."""

    def __init__(self, run: "RunContext", plan: Plan):
        self.run = run
        self.passes = Passes(plans=[run.allocation.plan if run.allocation else plan])
        self._clusters = contextlib.ExitStack()
        self._client = None

    @property
    def plan(self) -> Plan:
        return self.passes.plans[-1]

    @property
    def _shared(self) -> "SharedWorkers | None":
        return self.run.allocation if len(self.passes.plans) == 1 else None

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc) -> None:
        self._clusters.close()

    def _connected(self):
        if self._client is None:
            run = self.run
            self._client = (self._shared.client() if self._shared else
                            _start_cluster(self._clusters, self.plan, run.site, run.backend, run.run_dir, run.console))
        return self._client

    def run_tasks(self, tasks: Tasks, todo: list[Chunk]) -> list[Chunk]:
        """Run ``tasks`` for ``todo`` until every chunk is done or given up on; chunks killed for memory
        go round again on workers with twice the memory, until a node cannot hold one worker. Returns
        the chunks given up on (also in :attr:`passes`)."""
        lost: list[Chunk] = []
        while todo:
            outcome = run_tasks(self.run, self._connected(), self.plan, tasks, todo,
                                places=self._shared.places if self._shared else None)
            self.passes.failures += outcome.failures
            lost += outcome.lost
            todo = outcome.out_of_memory
            if not todo:
                break
            try:
                plan = self.plan.with_more_memory(chunks=len(todo))
            except PlanRefused as refusal:
                lost += todo
                self.passes.memory_note = (f"; channels {channel_ranges(todo)} ran out of memory and cannot have"
                                           f" more: {refusal}")
                break
            self.passes.plans.append(plan)
            again = "imaging them again" if tasks.step is None else "going on"  # a step's killed tasks: the step
            self.run.console.print(f"hpc_imager: {len(todo)} chunk(s) ran out of memory: {again} with twice the"
                                   " memory per worker")
            self._clusters.close()
            self._client = None
        self.passes.lost += lost
        return lost


class SharedWorkers:
    """One set of workers for every cube of a submission: one cluster (one queue wait), started when
    a cube first asks, and one bound on tasks in flight over all cubes, so chunks of every cube fill
    the workers and no cube's last chunks leave them idle while another cube has chunks waiting."""

    def __init__(self, plan: Plan, site: "SiteProfile", backend: "Backend", run_dir: Path, console: Console,
                 max_in_flight: int):
        self.plan, self.site, self.backend, self.run_dir, self.console = plan, site, backend, run_dir, console
        self.places = Places(max_in_flight)
        self._lock = threading.Lock()  # the cubes' threads ask at once
        self._clusters = contextlib.ExitStack()
        self._client = None
        self.closing = False  # set before the cluster closes: the tasks it cancels did not fail

    def __enter__(self) -> "SharedWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True
        self._clusters.close()

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = _start_cluster(self._clusters, self.plan, self.site, self.backend, self.run_dir,
                                              self.console)
            return self._client


def _start_cluster(clusters: contextlib.ExitStack, plan: Plan, site: "SiteProfile", backend: "Backend",
                   run_dir: Path, console: Console):
    """The plan's cluster (closed with ``clusters``), its workers prepared, once the first has started."""
    console.print(f"hpc_imager: {plan.summary()}")
    log.info("plan: %s", plan.as_dict())
    client = clusters.enter_context(backend.cluster(plan, site, run_dir))
    client.register_plugin(PrepareWorker(str(run_dir)))
    console.print(f"hpc_imager: {dashboard_hint(client.dashboard_link, site.dashboard_address)}")
    _wait_for_first_worker(site, backend, console, client)
    return client


def _wait_for_first_worker(site: "SiteProfile", backend: "Backend", console: Console, client) -> None:
    """Wait as long as the site allows, showing the batch queue; say why when giving up."""
    deadline = time.time() + walltime_seconds(site.worker_wait)
    with console.status("waiting for workers") as status:
        while not client.scheduler_info()["workers"]:
            counts = backend.job_counts(client)
            if time.time() > deadline:
                queued = f": {counts['pending']} job(s) still pending in the queue" if counts else ""
                raise WorkersUnavailable(f"no worker started within {site.name}'s worker_wait {site.worker_wait}{queued}; "
                                         "the jobs were cancelled; try again later or another site")
            if counts:
                status.update(f"waiting for workers: {counts['pending']} job(s) pending, {counts['running']} running")
            time.sleep(1)
