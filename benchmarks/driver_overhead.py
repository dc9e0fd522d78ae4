"""The driver's own cost per task: trivial tasks through the real driver loop.

``task_loop.run_tasks`` is the loop every mode's tasks go through (journal fsync per event, progress
bar, job counts, retries, refilling the window). It is given, as whole-chunk modes give it, tasks whose
function returns at once (1 % of tasks fail on their first attempt, to exercise the retry path), so the wall time per
task is what the driver and dask add to every task. On a shared machine the wall time also holds the
scheduler's and workers' waits for a core; the driver process's CPU time per task does not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def trivial_task(_, chunk, run_dir: str, attempt: int) -> dict:
    if chunk.index % 100 == 7 and attempt == 1:
        raise RuntimeError("injected failure")
    return {"chunk": chunk.index, "attempt": attempt, "worker": "w", "host": "h", "wall_seconds": 0.0,
            "peak_rss_bytes": 0, "rss_after_bytes": 0}


class NoParts:
    """Trivial tasks leave no parts to place; the assembly's bookkeeping is all that is left."""

    def arrived(self, chunk) -> None:
        pass

    def place_waiting(self, on_placed) -> None:
        pass


def measure(tasks: int, run_dir: str) -> dict:
    from distributed import Client, LocalCluster
    from rich.console import Console

    from hpc_imager.backends import backend_for
    from hpc_imager.imaging.channel_grid import ChannelGrid, Chunk
    from hpc_imager.inputs.cube_spec import parse_cube_spec
    from hpc_imager.inputs.site_profile import load_site
    from hpc_imager.run.context import RunContext
    from hpc_imager.run.journal import Journal
    from hpc_imager.run.task_loop import Tasks, run_tasks
    from hpc_imager.sizing.estimate import TaskEstimate
    from hpc_imager.sizing.plan import make_plan

    run_dir = Path(run_dir)
    spec = parse_cube_spec({"tclean": {"vis": "none.ms", "imagename": str(run_dir / "none"), "specmode": "cube"},
                            "parallel": {"channels_per_task": 1, "workers": 2, "retries": 2}}, run_dir.parent)
    chunks = [Chunk(i, i, 1, i, 1) for i in range(tasks)]
    journal = Journal.create(run_dir, {"fingerprint": "overhead", "imagename": "none", "nchan": tasks,
                                       "channels_per_task": 1})
    site = load_site("local")
    run = RunContext(spec, site, backend_for(site), run_dir, journal, Console(stderr=True),
                     ChannelGrid(tasks, "channel", 0, 1, "", "LSRK"), chunks, NoParts())
    # as a whole-chunk mode's tasks (modes/whole_chunks.py): each done chunk journalled and handed on
    trivial = Tasks(trivial_task, lambda chunk: None, "imaging",
                    lambda chunk, attempt, metrics: (journal.done(chunk.index, metrics), run.assembly.arrived(chunk)))

    plan = make_plan(spec, site, TaskEstimate(0.1, 0.01, 1, 1, "default", {}, 1.0), tasks)  # the local site's, 2 workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.submit(lambda: 0).result()  # workers up before the clock starts
        started, cpu = time.time(), time.process_time()
        outcome = run_tasks(run, client, plan, trivial, chunks)
        seconds, cpu = time.time() - started, time.process_time() - cpu
    assert not outcome.lost, outcome.lost
    return {"tasks": tasks, "failures_retried": len(outcome.failures), "seconds": round(seconds, 2),
            "ms_per_task": round(1000 * seconds / tasks, 2),
            # the driver process's own CPU (all its threads) per task: what load on the machine cannot inflate
            "driver_cpu_ms_per_task": round(1000 * cpu / tasks, 2), "load_average": os.getloadavg()[0]}
