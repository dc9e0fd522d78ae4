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
a quarter of a worker's share) where its share of the work is long enough for that to matter, and
``MIN_TASKS_PER_SHORT_SHARE`` where it is not (``SHORT_SHARE_SECONDS``); each task fits a worker's
memory, and among the sizes left we take the smallest whose estimated run is within ``SLACK`` of
the fastest. Where a one-channel chunk
needs a guard channel (frequency or velocity channels that are not one data channel each: see
channel_grid), sizes that leave one are avoided when another is allowed: the guard is a second
channel's work for one. Whole-cube iteration with auto-multithresh takes only sizes whose chunks each
lie in one of serial's automask blocks (imaging/iteration.py refuses the others).

Every task reads the MS's rows whole, every channel, whatever it selects (measured on NGC5921: a
1-channel chunk read 75 × its share of the MS, a 9-channel one 18 ×; sizing/disk.py), so ``fixed``
includes reading the whole MS once at the site's ``ms_read_rate``: negligible for NGC5921's 36 MB, but
a 200 GB MS read at 500 MB/s costs every task 400 s, and its cube gets larger tasks.
"""

from __future__ import annotations

import math
from typing import Callable

SLACK = 0.05  # a run up to 5 % slower than the fastest split buys smaller tasks
MIN_TASKS_PER_WORKER = 4
# A worker's share under a minute: a retry costs seconds, and every task pays its fixed cost again
# (measured, one thread: 256 channels of the simulated 128² cube took 5.95-6.05 s as one task,
# 6.1-6.5 s as two, 6.6-7.5 s as four; through `submit` on 2 workers, 512 channels in tasks of 64
# took 10.35 / 10.44 s, of 128 9.16 / 9.12 / 8.74 s, of 256 8.97 / 9.36 / 8.80 s, pclean 9.0-9.7 s).
SHORT_SHARE_SECONDS = 60.0
MIN_TASKS_PER_SHORT_SHARE = 2

# Used when the site has no calibrated task time. From this project's unloaded 2-core measurements
# (docs/benchmarks.md, NGC5921 1024², two tasks at once): 4-channel tasks cost 40 % more per
# channel than serial's 0.89 s, 16-channel tasks 30 % more (contention), so a task pays about 0.4 s
# whatever its size, plus ~0.1 s of the driver's round trip, and 1.1 s per megapixel-channel.
# (Under load the per-step figures in report.json vary ×3 between runs; these are the quiet ones.)
DEFAULT_FIXED_SECONDS = 0.5
DEFAULT_SECONDS_PER_MEGAPIXEL_CHANNEL = 1.1


def run_seconds(nchan: int, workers: int, channels_per_task: int, fixed: float, per_channel: float) -> float:
    """The estimated wall time of imaging ``nchan`` channels in tasks of ``channels_per_task``."""
    tasks = math.ceil(nchan / channels_per_task)
    waves = math.ceil(tasks / workers)
    return waves * (fixed + min(channels_per_task, nchan) * per_channel)


def choose_channels_per_task(nchan: int, workers: int, fixed: float, per_channel: float,
                             max_channels: int | None = None, avoid_single_channel_chunks: bool = False,
                             mode_allows: Callable[[int], bool] | None = None) -> int:
    """The smallest channels_per_task within SLACK of the fastest, no larger than ``max_channels``
    (what one worker's memory holds) nor than leaves each worker MIN_TASKS_PER_WORKER tasks (of a
    share under SHORT_SHARE_SECONDS, MIN_TASKS_PER_SHORT_SHARE); with
    ``avoid_single_channel_chunks``, one that leaves no chunk of one channel where there is such a size;
    only sizes ``mode_allows`` (one channel a task where it allows none of the others)."""
    if nchan < 1 or workers < 1:
        raise ValueError("nchan and workers must be at least 1")
    short = nchan / workers * per_channel < SHORT_SHARE_SECONDS  # a worker's share of the channels' work
    tasks_wanted = min(nchan, workers * (MIN_TASKS_PER_SHORT_SHARE if short else MIN_TASKS_PER_WORKER))
    allowed = [c for c in range(1, min(max_channels or nchan, nchan) + 1) if math.ceil(nchan / c) >= tasks_wanted]
    if avoid_single_channel_chunks and nchan > 1:
        allowed = [c for c in allowed if c > 1 and nchan % c != 1] or allowed
    if mode_allows is not None:
        allowed = [c for c in allowed if mode_allows(c)] or [1]
    times = {c: run_seconds(nchan, workers, c, fixed, per_channel) for c in allowed or [1]}
    best = min(times.values())
    return min(c for c, t in times.items() if t <= best * (1 + SLACK))


def max_channels_in_memory(memory_per_worker_bytes: float, base_bytes: float, bytes_per_channel: float) -> int:
    """The most channels one task may have so that its estimated peak fits a worker's share of a node."""
    if bytes_per_channel <= 0:
        return 1 << 30
    return max(1, int((memory_per_worker_bytes - base_bytes) // bytes_per_channel))


def with_channels_per_task(spec, site, grid, facts=None, previous: int | None = None):
    """``spec`` with channels_per_task filled in when cube.toml left it out: ``previous`` (the value a
    run being resumed was started with, so its chunks stay the same), else the choice above for
    ``grid``'s channels from the site's calibrated task time (or this project's defaults), the plan's
    workers for one-channel tasks, and the channels a worker's share of a node (memory / cores) can hold;
    for the mosaic gridder, the size whose chunks get serial's primary beams (mosaic_beams)."""
    from dask.utils import parse_bytes

    from ..imaging.iteration import first_block_crossing, serial_block_size
    from .disk import ms_bytes
    from ..imaging.mosaic_beams import mosaic_channels_per_task
    from .estimate import GIB, estimate_task
    from .plan import make_plan

    if spec.parallel.channels_per_task is not None:
        return spec

    def choosing(channels: int):
        return spec.model_copy(update={"parallel": spec.parallel.model_copy(update={"channels_per_task": channels})})

    if previous is not None:
        return choosing(previous)
    one = estimate_task(choosing(1), site, facts)
    two = estimate_task(choosing(2), site, facts)  # the memory model's cost of one more channel
    per_channel_bytes = (two.task_peak_gib - one.task_peak_gib) * GIB
    base_bytes = one.task_peak_gib * GIB - per_channel_bytes
    nchan = grid.nchan
    workers = make_plan(choosing(1), site, one, nchan).workers
    share = (site.node_memory_bytes - parse_bytes(site.job_memory_overhead)) / site.cores - parse_bytes(site.worker_base)
    calibration = site.calibration_for(spec.tclean.gridder, spec.tclean.deconvolver)
    if calibration and calibration.seconds_per_megapixel_channel:
        fixed, per_megapixel = calibration.seconds_base, calibration.seconds_per_megapixel_channel
    else:
        fixed, per_megapixel = DEFAULT_FIXED_SECONDS, DEFAULT_SECONDS_PER_MEGAPIXEL_CHANNEL
    fixed += ms_bytes(spec.tclean.vis) / parse_bytes(site.ms_read_rate)
    mode_allows = None
    if spec.iteration == "cube" and spec.tclean.usemask == "auto-multithresh":
        imsize = spec.tclean.imsize
        block = serial_block_size(nchan, [imsize] if isinstance(imsize, int) else list(imsize))
        mode_allows = lambda c: not first_block_crossing([(first, min(c, nchan - first)) for first in range(0, nchan, c)], block)  # noqa: E731
    chosen = choose_channels_per_task(nchan, workers, fixed, per_megapixel * one.pixels / 1e6,
                                      max_channels_in_memory(share, base_bytes, per_channel_bytes),
                                      avoid_single_channel_chunks=grid.guards_single_channels,
                                      mode_allows=mode_allows)
    return choosing(mosaic_channels_per_task(spec.tclean.model_dump(), grid, chosen, workers))
