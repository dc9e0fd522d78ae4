"""Which of the scheduler's workers belong to which batch job (dask-jobqueue names them after it)."""

from __future__ import annotations


def worker_names(scheduler_info: dict) -> list[str]:
    return [str(w["name"]) for w in scheduler_info.get("workers", {}).values()]


def has_worker(job, connected: list[str]) -> bool:
    """A job's workers are named after it: the job's name, or ``name-0``, ``name-1``... with several."""
    return any(w == str(job) or w.startswith(f"{job}-") for w in connected)
