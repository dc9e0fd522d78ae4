"""What the driver does after a chunk fails: pure decisions, so a unit test can call them.

A chunk killed for memory goes round again only with more memory (the same memory would fail the
same way); any other failure is retried on the same plan until ``retries`` extra tries are spent.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable


class Next(Enum):
    RETRY = "retry"  # submit the chunk again as it was
    MORE_MEMORY = "more memory"  # image it in a later pass, with more memory per worker
    GIVE_UP = "give up"  # its channels are missing from this run; --resume may finish them


def after_failure(*, out_of_memory: bool, tries: int, retries: int) -> Next:
    """``tries``: how often this chunk has been submitted in this pass, the failed try included."""
    if out_of_memory:
        return Next.MORE_MEMORY
    return Next.RETRY if tries <= retries else Next.GIVE_UP


def ran_out_of_memory(error_type: str, message: str, logs: Iterable[str], signs: Iterable[str]) -> bool:
    """A MemoryError in the task (SGE's h_vmem), or a worker that died under it (KilledWorker) with a
    memory kill recorded in the run's logs (``signs``: what the nanny or the batch system writes).
    ``logs`` is read only when a worker died."""
    if error_type == "MemoryError" or "MemoryError" in message:
        return True
    if error_type != "KilledWorker":
        return False
    signs = tuple(signs)
    return any(sign in text for text in logs for sign in signs)
