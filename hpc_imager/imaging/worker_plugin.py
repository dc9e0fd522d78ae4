"""What every dask worker does once before its first chunk, wherever it runs (local or batch job).

It prepares offline CASA and sends the worker's own logging and everything written to its stderr
(CASA's C++ messages, distributed's task-failure reports) to ``logs/worker-<name>.log`` in the run
directory, so the driver's terminal shows progress and one line per failure, and nothing is lost.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from ..logs import send_dask_logs_to
from . import casa_setup


class PrepareWorker(WorkerPlugin):
    name = "hpc_imager-prepare-worker"

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def setup(self, worker) -> None:
        casa_setup.configure_offline()
        logs = Path(self.run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        name = str(worker.name).replace("/", "_")
        log = open(logs / f"worker-{name}.log", "a", buffering=1)
        sys.stderr.flush()
        os.dup2(log.fileno(), 2)
        send_dask_logs_to(log)

    def teardown(self, worker) -> None:
        """The worker's process ends next: as the driver does (cli.py, _exit_without_collecting), it
        leaves what it holds to the exit rather than to a last walk of the cyclic collector. Closing
        the local cluster after the last chunk took 0.05 s instead of 0.19-0.21 s (3 runs each)."""
        gc.freeze()
