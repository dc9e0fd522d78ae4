"""The bounded task loop: one task per chunk, at most ``max_in_flight`` submitted at once.

The window is refilled as each task finishes (``as_completed``), so CASA's memory per worker stays
bounded however large the cube. Several cubes on one set of workers share one window (``places``):
a cube takes a free place whenever it has one, and waits for one only when it has nothing in flight.
Every submission, success and failure goes to the journal first; a failed task is retried, sent
round again with more memory, or given up on, as :mod:`hpc_imager.run.decisions` says. Every imaging mode runs its tasks through this one loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..imaging.channel_grid import Chunk
from ..errors import RunFailed
from .decisions import Next, after_failure, ran_out_of_memory

if TYPE_CHECKING:
    from ..sizing.plan import Plan
    from .context import RunContext

log = logging.getLogger(__name__)


class Places:
    """Places in flight, shared by the cubes of a submission: a place freed goes first to a cube that
    waits with nothing in flight, so a cube holding places cannot keep them all while another (a
    whole-cube iteration's next step, say) starves; every cube keeps at least one task going."""

    def __init__(self, places: int):
        self._free = places
        self._waiting = 0
        self._changed = threading.Condition()

    def take(self, wait: bool) -> bool:
        """A place if one is free (``wait``: until one is); without ``wait``, none while others wait."""
        with self._changed:
            if not wait:
                if self._free and not self._waiting:
                    self._free -= 1
                    return True
                return False
            self._waiting += 1
            while not self._free:
                self._changed.wait()
            self._waiting -= 1
            self._free -= 1
            return True

    def give_back(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify()


class SubmissionEnding(RunFailed):
    """The shared workers are closing under a cube's tasks (Ctrl-C, SIGTERM): not its chunks' failure."""


def channel_ranges(chunks: list[Chunk]) -> str:
    return ", ".join(f"{c.first}-{c.channels[-1]}" if c.nchan > 1 else str(c.first) for c in chunks)


@dataclass
class Tasks:
    """A round of tasks, one per chunk: what runs, what each is given, and what happens to each answer.

    ``step`` names a step of whole-cube iteration (journalled with every submission and failure, so
    ``status`` tells a step's retry from a chunk's); None for a task that images a whole chunk."""

    function: Callable
    inputs: Callable[[Chunk], object]
    description: str  # the progress bar's
    on_done: Callable[[Chunk, int, dict], None]  # (chunk, attempt, the task's metrics)
    keywords: dict = field(default_factory=dict)
    step: str | None = None

    def key(self, chunk: Chunk, attempt: int) -> str:
        what = chunk.name if self.step is None else f"{chunk.name}-{self.step.replace(' ', '-')}"
        return f"{what}-attempt-{attempt}"


@dataclass
class Outcome:
    lost: list[Chunk] = field(default_factory=list)  # failed every try
    out_of_memory: list[Chunk] = field(default_factory=list)  # killed for memory: worth more memory
    failures: list[dict] = field(default_factory=list)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("ch {task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("failed {task.fields[failures]} {task.fields[workers]}"),
        console=console,
    )


def in_flight_bound(max_in_flight: int | None, plan: "Plan") -> int:
    """One task running and one waiting per worker: a worker never idles while the driver records a
    result or places a part (measured: ~0.1 s per task round trip on a loaded 2-core machine)."""
    return max_in_flight or 2 * plan.workers


def run_tasks(run: "RunContext", client, plan: "Plan", tasks: Tasks, todo: list[Chunk],
              places: Places | None = None) -> Outcome:
    """Run ``tasks`` for the chunks ``todo`` on ``client``; say which were given up on or ran out of memory.
    ``places``: the places in flight this run shares with other cubes on the same workers (default: its own)."""
    from distributed import as_completed

    journal = run.journal
    places = places or Places(in_flight_bound(run.spec.parallel.max_in_flight, plan))
    queue = deque(todo)
    tries: dict[int, int] = {}
    in_flight: dict[str, tuple[Chunk, int]] = {}
    outcome = Outcome()
    pending = as_completed(with_results=True, raise_errors=False)  # results gathered in the background
    total_channels = run.grid.nchan
    done_channels = total_channels - sum(c.nchan for c in todo)

    def submit(chunk: Chunk) -> None:
        attempt = journal.record(chunk.index).attempts + 1
        journal.submitted(chunk.index, attempt, step=tasks.step)
        tries[chunk.index] = tries.get(chunk.index, 0) + 1
        # cubes sharing the workers have chunks of the same names: dask would take one's task for the other's
        key = f"{run.label}:{tasks.key(chunk, attempt)}" if run.label else tasks.key(chunk, attempt)
        future = client.submit(tasks.function, tasks.inputs(chunk), chunk, str(run.run_dir), attempt=attempt,
                               **tasks.keywords, key=key, pure=False)
        in_flight[future.key] = (chunk, attempt)
        pending.add(future)

    def refill() -> None:
        while queue and places.take(wait=not in_flight):  # never return with nothing in flight
            submit(queue.popleft())

    started = time.time()
    shown = 0.0
    with progress_bar(run.console) as progress:
        bar = progress.add_task(f"{run.label}: {tasks.description}" if run.label else tasks.description,
                                total=total_channels, completed=done_channels, rate="", failures=0, workers="")
        try:
            refill()
            for future, metrics in pending:
                chunk, attempt = in_flight.pop(future.key)
                places.give_back()
                try:
                    if future.status != "finished":
                        future.result()  # raises the task's (or its worker's) error
                except Exception as error:  # any failure of the task or its worker: decide what next
                    if run.allocation and run.allocation.closing:  # cancelled as the submission ends
                        raise SubmissionEnding("the submission's workers closed") from None
                    message = f"{type(error).__name__}: {error}"
                    journal.failed(chunk.index, attempt, message, step=tasks.step)
                    outcome.failures.append({"chunk": chunk.index, "channels": channel_ranges([chunk]),
                                             "attempt": attempt, "step": tasks.step, "error": message})
                    step = f" of {tasks.step}" if tasks.step else ""
                    progress.console.print(f"hpc_imager: {chunk.name} (channels {channel_ranges([chunk])}) failed"
                                           f" on attempt {attempt}{step}: {message}")
                    out_of_memory = ran_out_of_memory(type(error).__name__, str(error), run.log_texts(),
                                                      run.backend.memory_signs)
                    decision = after_failure(out_of_memory=out_of_memory, tries=tries[chunk.index],
                                             retries=run.spec.parallel.retries)
                    log.info("%s attempt %d%s failed (%s): %s", chunk.name, attempt, step, message, decision.value)
                    if decision is Next.MORE_MEMORY:
                        outcome.out_of_memory.append(chunk)
                    elif decision is Next.RETRY:
                        queue.appendleft(chunk)
                    else:
                        outcome.lost.append(chunk)
                else:
                    tasks.on_done(chunk, attempt, metrics)
                    progress.advance(bar, chunk.nchan)
                future.release()
                refill()
                if time.time() - shown > 1.0 or not in_flight:  # asking the scheduler costs a round trip
                    shown = time.time()
                    done = progress.tasks[0].completed - done_channels
                    counts = run.backend.job_counts(client)
                    jobs = f" jobs {counts['running']}+{counts['pending']} queued" if counts else ""
                    progress.update(bar, failures=len(outcome.failures),
                                    rate=f"{done / max(time.time() - started, 1e-9):.2f}/s",
                                    workers=f"workers {len(client.scheduler_info()['workers'])}{jobs}")
                run.assembly.place_waiting(journal.placed)  # while the workers image the next chunks
        finally:  # a run that ends early (interrupted, a step given up) frees its places for the others
            for _ in in_flight:
                places.give_back()
    return outcome
