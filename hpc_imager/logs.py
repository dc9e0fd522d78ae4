"""Where dask's, CASA's and hpc_imager's own log messages go: files in the run directory, not the
user's terminal.

The driver reports every failure itself in one line; the scheduler's and workers' messages (a task
marked failed, a worker restarted, a traceback) and what the driver decided (hpc_imager's module
loggers) are kept in ``<run>/logs/`` for whoever digs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import IO, Iterator


def send_dask_logs_to(stream: IO[str]) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # distributed gives each logger of its logging config a stderr handler of its own and stops it
    # propagating (distributed/config.py), so each is redirected by name. tornado.application logs a
    # connection closed under Ctrl-C or SIGTERM with its traceback (seen in the Slurm SIGTERM test).
    for name in ("distributed", "distributed.client", "distributed.gc", "dask", "dask_jobqueue", "bokeh",
                 "tornado", "tornado.application", "asyncio"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False


def send_module_logs_to(path: Path, by_thread: bool = False) -> None:
    """hpc_imager's module loggers (what the driver decided: plan, mode, retries) into ``path``;
    ``by_thread``: each line names its thread (several cubes in one driver: a thread per cube)."""
    logger = logging.getLogger("hpc_imager")
    for old in [h for h in logger.handlers if getattr(h, "hpc_imager_run_log", False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path)
    handler.hpc_imager_run_log = True
    thread = " %(threadName)s" if by_thread else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s{thread} %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def casa_messages_to(log: Path) -> Iterator[None]:
    """CASA's log and everything C and C++ code write to this process's stderr (fd 2) go to ``log``
    meanwhile; Python's own ``sys.stderr`` (hpc_imager's lines, the progress bar) stays on the terminal.

    casalog.showconsole(False) is not enough: casacore writes SEVERE messages to stderr itself
    (measured: casadata's out-of-date leap-second table prints three SEVERE lines on every
    importuvfits with the console off, and on a machine's first run they reached the terminal from
    the driver's own measures conversions). Local workers started meanwhile inherit the redirected
    fd 2 until their own setup (worker_plugin) points it at their log. Python exceptions still
    propagate, so real failures reach the caller, which names ``log`` in its one-line error.
    """
    from casatasks import casalog

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    previous_log = casalog.logfile()
    casalog.setlogfile(str(log))
    casalog.showconsole(False)
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    swapped = _writes_to_fd_2(python_stderr)
    if swapped:  # not when nested: the outer one has pointed sys.stderr at the terminal already
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
    with open(log, "a") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if swapped:
            sys.stderr.close()
            sys.stderr = python_stderr
        casalog.setlogfile(previous_log)


def _writes_to_fd_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return False
