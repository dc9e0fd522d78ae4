"""The worker tasks: image one chunk of channels, hand back its part and its metrics.

Runs in a dask worker process (or a batch job). Each attempt works in a scratch directory of its
own and only a finished part is moved, in one rename, to ``parts/<chunk>``: a part that exists is
complete. Afterwards CASA's resources are released so the next chunk starts from a small worker.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil

from ..inputs.preflight import casa_message
from . import casa_setup
from .casa_imager import ImagerTools, return_freed_heap, tools_reproduce_tclean
from .cube_weights import handed_weights
from .channel_grid import Chunk
from .imager_records import ImagerRecords, imager_records
from .task_timings import tclean_step_seconds, with_other

# Products tclean makes for every cube (others, such as .mask or .image.pbcor, only when asked).
REQUIRED_PRODUCTS = ("image", "residual", "model", "psf", "pb", "sumwt")

# The worker's environment that sets how fast CASA runs (its OpenMP threads; glibc's allocator, see
# backends/base.py WORKER_ENVIRON_UNSET), recorded with each chunk's timings.
SPEED_ENVIRON = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")

# Test hook: "3:1,5:always" makes chunk 3 fail on its first attempt and chunk 5 on every attempt.
FAULT_ENV = "HPC_IMAGER_FAIL_CHUNKS"


class ChunkFailed(RuntimeError):
    """Imaging a chunk failed; the message is CASA's own first line (the driver names the chunk and its channels)."""


def _first_severe(casa_log: Path) -> str:
    """CASA's first SEVERE message in a chunk's log: tclean reports some failures only there."""
    if not casa_log.is_file():
        return ""
    for line in casa_log.read_text(errors="replace").splitlines():
        if "\tSEVERE\t" in line:
            return line.rsplit("\t", 1)[-1].strip()
    return ""


def part_path(run_dir: Path, chunk: Chunk) -> Path:
    return Path(run_dir) / "parts" / chunk.name


def _injected_fault(chunk: Chunk, attempt: int) -> bool:
    for rule in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        index, _, when = rule.partition(":")
        if int(index) == chunk.index and (when == "always" or int(when) == attempt):
            return True
    return False


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def thread_io_chars() -> dict[str, int]:
    """What this thread has handed to read() and write() so far (Linux's per-thread I/O accounting,
    ``rchar`` and ``wchar``): CASA reads the MS and writes the images in the task's own thread, where
    the process's counters also take in the worker's network traffic and its reaped children's I/O."""
    with open("/proc/thread-self/io") as io:
        fields = dict(line.split(":") for line in io)
    return {"read_chars": int(fields["rchar"]), "write_chars": int(fields["wchar"])}


def io_since(before: dict[str, int]) -> dict[str, int]:
    return {name: count - before[name] for name, count in thread_io_chars().items()}


def product_bytes(folder: Path) -> dict[str, int]:
    """Each product's bytes on disk in a part or cycle folder (``part.image`` → ``image``)."""
    return {image.name.removeprefix("part."): sum(f.stat().st_size for f in image.rglob("*") if f.is_file())
            for image in sorted(Path(folder).glob("part.*"))}


def where_it_ran() -> dict:
    """The dask worker (and its host) running this task, for the journal, status and report.png."""
    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except ValueError:
        worker = f"{socket.gethostname()}:{os.getpid()}"
    return {"worker": worker, "host": socket.gethostname()}


def _release_casa() -> None:
    """Drop CASA's table locks and caches and give freed heap back to the OS (dask can't see it)."""
    from casatools import table

    tb = table()
    tb.clearlocks()
    tb.done()
    gc.collect()
    return_freed_heap()


def _trim_guard_channels(scratch: Path, nchan: int) -> None:
    """Keep the first ``nchan`` planes of every product (one small chunk's copy)."""
    from casatools import image, regionmanager

    for product in sorted(scratch.glob("part.*")):
        ia = image()
        ia.open(str(product))
        shape = ia.shape()
        trc = list(shape - 1)
        trc[-1] = nchan - 1
        region = regionmanager().box(blc=[0] * len(shape), trc=trc)
        trimmed = product.with_name(product.name + ".trimmed")
        ia.subimage(outfile=str(trimmed), region=region).done()
        ia.done()
        shutil.rmtree(product)
        os.rename(trimmed, product)


@contextlib.contextmanager
def _attempt(chunk: Chunk, run_dir: Path, attempt: int, what: str) -> Iterator[tuple[Path, dict]]:
    """One attempt at a chunk: a scratch directory of its own as the working directory, CASA's log in
    the run's logs, the peak memory measured; the finished part moved to parts/ in one rename. The
    caller fills in ``metrics["tclean_steps"]`` (seconds per step; the rest of the time is ``other``)."""
    casa_setup.configure_offline()
    casalog = casa_setup.casa_log()
    scratch = run_dir / "scratch" / f"{chunk.name}.attempt-{attempt}"
    shutil.rmtree(scratch, ignore_errors=True)  # a previous crash of this very attempt
    scratch.mkdir(parents=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    casa_log = run_dir / "logs" / f"{chunk.name}.attempt-{attempt}.casa.log"
    casalog.setlogfile(str(casa_log))
    casalog.showconsole(False)  # CASA's messages belong in the chunk's log, not the driver's terminal
    casalog.filter("INFO3")  # tclean logs its per-step timings at INFO3 (read back into the metrics)
    metrics: dict = {"tclean_steps": {}}

    _reset_peak_rss()
    started, io_before = time.time(), thread_io_chars()
    try:
        with contextlib.chdir(scratch):  # CASA drops temporary tables in the working directory
            if _injected_fault(chunk, attempt):
                raise ChunkFailed(f"{chunk.name}: fault injected by {FAULT_ENV} (attempt {attempt})")
            try:
                yield scratch, metrics
            except MemoryError:
                raise  # the driver retries it with more memory
            except Exception as error:  # CASA's exceptions carry its log prefix and several lines
                raise ChunkFailed(f"{what} failed: {casa_message(error)}") from None
    finally:
        _release_casa()
    wall, io = time.time() - started, io_since(io_before)
    peak = _peak_rss_bytes()
    metrics["tclean_steps"] = with_other(metrics["tclean_steps"], wall)

    missing = [p for p in REQUIRED_PRODUCTS if not (scratch / f"part.{p}").is_dir()]
    if missing:
        severe = _first_severe(casa_log)
        raise ChunkFailed(f"{what} left no {', '.join('.' + p for p in missing)}"
                          + (f": {severe}" if severe else f" (see {casa_log})"))
    finishing = time.time()
    if chunk.guard:
        _trim_guard_channels(scratch, chunk.nchan)
    target = part_path(run_dir, chunk)
    target.parent.mkdir(exist_ok=True)
    if target.exists():  # an earlier attempt finished but the driver never heard of it
        stale = target.with_name(f"{target.name}.stale-{os.getpid()}")
        os.rename(target, stale)
        shutil.rmtree(stale)
    os.rename(scratch, target)
    metrics.update({
        "chunk": chunk.index,
        "first_channel": chunk.first,
        "channels": chunk.nchan,
        "attempt": attempt,
        **where_it_ran(),
        "wall_seconds": wall,
        "finish_seconds": time.time() - finishing,  # trimming guard channels, moving the part into place
        "peak_rss_bytes": peak,
        **io,  # the MS read (see sizing/disk.py read_amplification) and the part's images written
        "part_bytes": product_bytes(target),
        "rss_after_bytes": psutil.Process().memory_info().rss,
        "worker_environ": {name: os.environ.get(name) for name in SPEED_ENVIRON},
        "casatasks_loaded": "casatasks" in sys.modules,
    })


def image_chunk(tclean_params: dict, chunk: Chunk, run_dir: str, attempt: int) -> dict:
    """Run tclean on ``chunk`` (its own iteration control: per-chunk cleaning) and move its products
    to the run's parts; return the metrics."""
    casa_setup.configure_offline()
    from casatasks import tclean  # before the attempt points the log at its file: casatasks makes its own sink

    with _attempt(chunk, Path(run_dir), attempt, "tclean") as (scratch, metrics):
        returned = tclean(**dict(tclean_params, imagename=str(scratch / "part"), **chunk.tclean_overrides()))
        # the chunk's own iteration summary (per-chunk cleaning): its scalars, and its iterations per
        # plane and cycle (summaryminor, the chunk's channels numbered from 0), for the cube's
        returned = returned or {}
        metrics["tclean_return"] = {k: v.item() if hasattr(v, "item") else v for k, v in returned.items()
                                    if isinstance(v, (int, float, str, bool)) or getattr(v, "ndim", None) == 0}
        metrics["summaryminor"] = {str(field): {str(chan): {str(stokes): {"iterDone": [float(n) for n in s["iterDone"]]}
                                                            for stokes, s in planes.items()}
                                                for chan, planes in channels.items()}
                                   for field, channels in returned.get("summaryminor", {}).items()}
        log = Path(casa_setup.casa_log().logfile()).read_text(errors="replace")
        metrics["tclean_steps"] = tclean_step_seconds(log)
    return metrics


def make_chunk_images(records: ImagerRecords) -> dict[str, float]:
    """tclean's sequence for ``niter=0`` on the chunk ``records`` name; its steps' seconds, named as
    :mod:`task_timings` names tclean's own."""
    steps: dict[str, float] = {}
    clock = time.time()

    def timed(step: str) -> None:
        nonlocal clock
        now = time.time()
        steps[step] = round(now - clock, 3)
        clock = now

    tools = ImagerTools(records)
    try:
        tools.open_imager()
        timed("init_imager_and_weighting")
        if records.restoration:
            tools.open_deconvolver()
        with handed_weights(records, Path.cwd()):  # briggsbwtaper over chunks: the cube's weights
            if records.cube_weights:
                timed("cube_weights")
            tools.make_psf_and_pb()
        timed("psf_and_pb")
        tools.major_cycle(lastcycle=True)  # no iteration controller at niter 0: the first cycle is the last
        timed("dirty_major_cycle")
        if records.restoration:
            tools.deconvolver.restore()
            timed("restore")
            if records.pbcor:
                tools.deconvolver.pbcor()
                timed("pbcor")
    finally:
        tools.close()
    return steps


def image_chunk_with_tools(records: ImagerRecords, chunk: Chunk, run_dir: str, attempt: int) -> dict:
    """tclean's own steps for ``niter=0`` on ``chunk`` (from the driver's records, with casatools
    alone: see imager_records) and its products moved to the run's parts; return the metrics."""
    with _attempt(chunk, Path(run_dir), attempt, "imaging") as (scratch, metrics):
        metrics["tclean_steps"] = make_chunk_images(records.named(str(scratch / "part")))
    return metrics


def whole_chunk_task(tclean_params: dict, cube_weights: str = "") -> tuple[Callable, Callable[[Chunk], object]]:
    """The task that images a whole chunk and what it is given for each chunk: at ``niter=0``
    tclean's own steps on casatools alone, from records the driver makes (the workers never load
    casatasks: 4.8 s of import for two workers at once on 2 cores, 0.9 s longer to exit, and
    0.12-0.14 GiB more at a task's peak, measured on NGC5921 512²×8); otherwise tclean itself, each
    chunk cleaned with its own iteration control (per-chunk). ``cube_weights``: the whole cube's imaging
    weights each chunk is handed (cube_weights.py). ``submit`` and ``calibrate`` both take it from here."""
    if tclean_params["niter"] == 0 and tools_reproduce_tclean(tclean_params):
        return image_chunk_with_tools, lambda chunk: imager_records(tclean_params, chunk, cube_weights)
    return image_chunk, lambda chunk: tclean_params
