"""Where dask's own log messages go: a file in the run directory, not the user's terminal.

The driver reports every failure itself in one line; the scheduler's and workers' messages (a task
marked failed, a worker restarted, a traceback) are kept in ``<run>/logs/`` for whoever digs.
"""

from __future__ import annotations

import logging
from typing import IO


def send_dask_logs_to(stream: IO[str]) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("distributed", "dask", "dask_jobqueue"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
