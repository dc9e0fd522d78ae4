"""The default channels_per_task: from what a task costs, the number of workers and memory.

A task of ``c`` channels takes about ``fixed + c × per_channel`` seconds: ``fixed`` is what every
tclean call pays whatever its channels (opening and selecting the MS, weighting, setting up the
imager, writing and closing images: the ``init`` and ``other`` steps in a chunk's tclean_steps),
``per_channel`` grows with the channels (gridding the PSF and the dirty image, minor cycles).
``W`` workers take the ``ceil(nchan / c)`` tasks in ``ceil(tasks / W)`` waves, so the run takes
about ``waves × (fixed + c × per_channel)``, which alone would always pick one wave of huge
tasks. But equal task times are a model: with niter > 0 the channels with emission clean longer, a
failed task is imaged again whole, and progress and ETA need tasks to count. So every worker gets
at least ``MIN_TASKS_PER_WORKER`` tasks (a judgement, not a measurement: a retry then costs at most
a quarter of a worker's share), each task fits a worker's memory, and among the sizes left we take
the smallest whose estimated run is within ``SLACK`` of the fastest.
"""

from __future__ import annotations

import math

SLACK = 0.05  # a run up to 5 % slower than the fastest split buys smaller tasks
MIN_TASKS_PER_WORKER = 4

# Measured on this project's 2-core machine (NGC5921, 1024², briggs 0.5, niter 0; tclean_steps of
# the chunks of runs with 1, 4 and 16 channels per task): see docs/benchmarks.md.
DEFAULT_FIXED_SECONDS = 1.5
DEFAULT_SECONDS_PER_MEGAPIXEL_CHANNEL = 0.45


def run_seconds(nchan: int, workers: int, channels_per_task: int, fixed: float, per_channel: float) -> float:
    """The estimated wall time of imaging ``nchan`` channels in tasks of ``channels_per_task``."""
    tasks = math.ceil(nchan / channels_per_task)
    waves = math.ceil(tasks / workers)
    return waves * (fixed + min(channels_per_task, nchan) * per_channel)


def choose_channels_per_task(nchan: int, workers: int, fixed: float, per_channel: float,
                             max_channels: int | None = None) -> int:
    """The smallest channels_per_task within SLACK of the fastest, no larger than ``max_channels``
    (what one worker's memory holds) nor than leaves each worker MIN_TASKS_PER_WORKER tasks."""
    if nchan < 1 or workers < 1:
        raise ValueError("nchan and workers must be at least 1")
    tasks_wanted = min(nchan, workers * MIN_TASKS_PER_WORKER)
    allowed = [c for c in range(1, min(max_channels or nchan, nchan) + 1) if math.ceil(nchan / c) >= tasks_wanted]
    times = {c: run_seconds(nchan, workers, c, fixed, per_channel) for c in allowed or [1]}
    best = min(times.values())
    return min(c for c, t in times.items() if t <= best * (1 + SLACK))


def max_channels_in_memory(memory_per_worker_bytes: float, base_bytes: float, bytes_per_channel: float) -> int:
    """The most channels one task may have so that its estimated peak fits a worker's share of a node."""
    if bytes_per_channel <= 0:
        return 1 << 30
    return max(1, int((memory_per_worker_bytes - base_bytes) // bytes_per_channel))
