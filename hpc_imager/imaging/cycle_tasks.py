"""Worker side of whole-cube iteration control: one chunk's share of each step of serial tclean.

Serial tclean on a cube holds one imager, one deconvolver and one iteration controller (imager_base
``PySynthesisImager`` driven by task_tclean). Its deconvolver already cleans a cube as independent
blocks of channels (C++ ``SynthesisDeconvolver::executeCubeMinorCycle`` hands every block the same
minor-cycle controls and merges the blocks' records), so a plane's cleaning depends on the rest of
the cube only through the controller. Here each chunk is such a block: a worker runs the chunk's
share of each step with fresh CASA tools and hands back the records the controller needs
(:mod:`hpc_imager.imaging.iteration` merges them, as serial does, in the driver). The tools are set up
from the records the driver made for the chunk (:mod:`imager_records`), so a worker needs casatools alone.

State lives on disk, in the chunk's images: ``<run>/iteration/<chunk>/cycle-<k>/part.*``. A step
copies the previous cycle's images to a scratch folder, works there and renames it into place, so a
retried or interrupted step never leaves a half-changed chunk behind and ``--resume`` continues from
the last cycle every chunk finished.

The deconvolver keeps only this between serial's steps, and it is rebuilt exactly by calling
``initminorcycle`` again on the same images: the robust statistics (recomputed from the residual,
as serial does whenever iterations were done), the mask sum (for the "mask changed" flag) and the
loaded mask (``setupmask`` re-reads the same mask).

``usemask='auto-multithresh'``: serial's deconvolver automasks every block of channels with the PSF
sidelobe level of the whole cube and the common beam of the block's PSF beams (C++
``SynthesisDeconvolver::executeCubeMinorCycle`` hands both to ``CubeMinorCycleAlgorithm``); a chunk's
own are of its channels alone. So after the start step the driver hands every chunk an
:class:`AutomaskShare` (:func:`hpc_imager.imaging.iteration.automask_shares`): ``sidelobethreshold``
rescaled by the cube's level over the chunk's (automask multiplies the two), and the block's beam,
put on the residual while ``setupmask`` runs (automask takes a residual's single beam before the
PSF's). Measured on NGC5921 (20 channels at 160², chunks of 4): without them 15 mask pixels and one
plane's model (12 % of its peak) differed from serial; with them none. What serial's deconvolver
keeps between cycles and a fresh one starts without: its positive-mask work image is already inside
the mask it is added to; its per-channel stop flags (set when a plane's mask came out empty or, with
``minpercentchange >= 0``, changed less than that) are read from each step's CASA log and handed to
the chunk's later steps, which put those planes' masks back after ``setupmask`` (:func:`_setupmask`);
its iteration count (the first automask does not grow the previous mask): see :func:`_count_iterations`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import casa_setup
from .casa_imager import ImagerTools
from .channel_grid import Chunk
from .cube_weights import WEIGHT_TABLES, handed_weights
from .imager_records import ImagerRecords
from .imaging_task import (_peak_rss_bytes, _release_casa, _reset_peak_rss, io_since, product_bytes, thread_io_chars,
                           where_it_ran)


def chunk_dir(run_dir: Path, chunk: Chunk) -> Path:
    return Path(run_dir) / "iteration" / chunk.name


def cycle_dir(run_dir: Path, chunk: Chunk, cycle: int) -> Path:
    return chunk_dir(run_dir, chunk) / f"cycle-{cycle:04d}"


def step_log(run_dir: Path, chunk: Chunk, cycle: int, attempt: int) -> Path:
    return Path(run_dir) / "logs" / f"{chunk.name}.cycle-{cycle}.attempt-{attempt}.casa.log"


@contextlib.contextmanager
def _step(run_dir: Path, chunk: Chunk, cycle: int, attempt: int, previous: int | None):
    """A scratch copy of the chunk's images of cycle ``previous`` (or nothing), renamed to cycle
    ``cycle`` when the step succeeds; the step's CASA log goes to the run's logs. Yields the scratch
    folder and a dict that holds the step's reads and writes (``read_chars``, ``write_chars``) after it."""
    casa_setup.configure_offline()
    casalog = casa_setup.casa_log()
    target = cycle_dir(run_dir, chunk, cycle)
    scratch = target.with_name(f"{target.name}.attempt-{attempt}")
    shutil.rmtree(scratch, ignore_errors=True)
    if previous is None:
        scratch.mkdir(parents=True)
    else:
        shutil.copytree(cycle_dir(run_dir, chunk, previous), scratch, symlinks=True)
    step_log(run_dir, chunk, cycle, attempt).parent.mkdir(exist_ok=True)
    casalog.setlogfile(str(step_log(run_dir, chunk, cycle, attempt)))
    casalog.showconsole(False)
    _reset_peak_rss()  # each step's peak, measured as image_chunk measures a whole chunk's
    io: dict[str, int] = {}
    io_before = thread_io_chars()
    try:
        with contextlib.chdir(scratch):  # CASA drops temporary tables in the working directory
            yield scratch, io
    finally:
        _release_casa()  # as after a whole-chunk tclean: the worker runs many steps
    io.update(io_since(io_before))
    if target.exists():  # an earlier attempt finished but the driver never heard of it
        shutil.rmtree(target)
    os.rename(scratch, target)


def _named(records: ImagerRecords, scratch: Path, first_step: bool = False) -> ImagerRecords:
    """The chunk's records for the step's images; ``startmodel`` only in the first step, where serial's
    deconvolver adds it to the model once (a later step finds it in the model image already)."""
    return records.named(str(scratch / "part"), startmodel=first_step)


def _plain(record) -> dict:
    """A CASA record as plain Python (numpy arrays to lists) so it pickles and goes into JSON."""
    import numpy as np

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        return value

    return plain(dict(record))


def _with_mask_total(record, scratch: Path) -> dict:
    """The init record plus the chunk's actual mask sum (the record says -1 when it is unchanged, and
    the cube's controller needs the total over all chunks when any chunk's mask changed)."""
    record = _plain(record)
    mask = scratch / "part.mask"
    total = 0.0
    if mask.is_dir():
        from casatools import image

        ia = image()
        ia.open(str(mask))
        try:
            total = float(ia.getchunk().sum(dtype="float64"))
        finally:
            ia.done()
    record["mask_total"] = total
    return record


# CASA's Briggs and uniform weighting per channel (BriggsCubeWeightor) writes the imaging weights it
# computes into a table IMAGING_WEIGHT_<rows>_<frequencies>_<weighting> in the working directory and
# reads them back from there while the table exists; the imager that made it deletes it when it
# closes. Serial tclean's one imager computes them once; each step's fresh imager would compute them
# again every cycle. So every step keeps a copy beside the chunk's images (after its major cycle,
# while the imager is open) and puts it back before the next step's imager opens; with briggsbwtaper
# over chunks the table kept is the one the start step was handed (cube_weights.py).
_KEPT_WEIGHTS = "kept-imaging-weights"


def _keep_imaging_weights(scratch: Path) -> None:
    for table in scratch.glob(WEIGHT_TABLES):
        if not (scratch / _KEPT_WEIGHTS / table.name).exists():
            shutil.copytree(table, scratch / _KEPT_WEIGHTS / table.name)


def _reuse_imaging_weights(scratch: Path) -> None:
    for table in (scratch / _KEPT_WEIGHTS).glob(WEIGHT_TABLES):
        if not (scratch / table.name).exists():
            shutil.copytree(table, scratch / table.name)


@dataclass(frozen=True)
class AutomaskShare:
    """What serial's automask uses for a chunk's channels that the chunk's own images do not hold."""

    sidelobethreshold: float  # tclean's, times the cube's PSF sidelobe level over the chunk's own
    beam: dict  # the common beam of the chunk's block of channels in serial's deconvolver (major, minor, pa)


def _shared(records: ImagerRecords, share: AutomaskShare | None) -> ImagerRecords:
    if share is None:
        return records
    return replace(records, deconvolution=dict(records.deconvolution, sidelobethreshold=share.sidelobethreshold))


def _setupmask(deconvolver, scratch: Path, share: AutomaskShare | None, stopped: frozenset[int] = frozenset(),
               log: Path | None = None) -> list[int]:
    """setupmask, automasking (if at all) with the block's beam on the residual, which serial's has not.
    ``stopped``: the chunk's channels whose automasking serial's deconvolver has stopped (its per-channel
    flag, :func:`stopped_masking`); their mask planes are put back as they were, as serial skips them.
    Returns the channels this automask stopped (from the step's CASA ``log``)."""
    if share is None:
        deconvolver.setupmask()
        return []
    from casatools import image

    kept = _mask_planes(scratch / "part.mask", stopped)
    residual = image()
    residual.open(str(scratch / "part.residual"))
    try:
        residual.setrestoringbeam(major=share.beam["major"], minor=share.beam["minor"], pa=share.beam["pa"])
        deconvolver.setupmask()
    finally:
        residual.setrestoringbeam(remove=True)
        residual.done()
    _put_mask_planes(scratch / "part.mask", kept)
    return sorted(stopped_masking(log) - stopped) if log is not None else []


def _mask_planes(mask: Path, channels: frozenset[int]) -> dict:
    from casatools import image

    if not channels:
        return {}
    tool = image()
    tool.open(str(mask))
    try:
        nx, ny, npol, _ = tool.shape()
        return {c: tool.getchunk(blc=[0, 0, 0, c], trc=[nx - 1, ny - 1, npol - 1, c]) for c in channels}
    finally:
        tool.done()


def _put_mask_planes(mask: Path, planes: dict) -> None:
    from casatools import image

    if not planes:
        return
    tool = image()
    tool.open(str(mask))
    try:
        for channel, pixels in planes.items():
            tool.putchunk(pixels, blc=[0, 0, 0, channel])
    finally:
        tool.done()


# What SDMaskHandler::skipChannels logs when it sets a channel's stop flag: the channel's mask came out
# empty, or (minpercentchange >= 0, the cycle threshold at the threshold) changed by less than that.
_STOPPED = re.compile(r"Stopping masking for chan=(\d+)")


def stopped_masking(log: Path) -> set[int]:
    """The channels (of the step's image) whose automasking a step's setupmask stopped, from its CASA log."""
    return {int(m) for m in _STOPPED.findall(log.read_text())} if log.exists() else set()


def _psf_beams(scratch: Path) -> list[list[dict]]:
    """The chunk's PSF beams, per channel and polarization, as (major, minor, pa) quantities."""
    from casatools import image

    psf = image()
    psf.open(str(scratch / "part.psf"))
    try:
        _, _, npol, nchan = psf.shape()
        planes = [[psf.restoringbeam(channel=c, polarization=p) for p in range(npol)] for c in range(nchan)]
    finally:
        psf.done()
    return [[{"major": b["major"], "minor": b["minor"], "pa": b["positionangle"]} for b in pols] for pols in planes]


def start_chunk(records: ImagerRecords, chunk: Chunk, run_dir: str, attempt: int, lastcycle: bool) -> dict:
    """PSF, PB and the first residual, then serial's two initminorcycle calls around setupmask. An
    automask needs the whole cube's PSFs (:class:`AutomaskShare`): then the first initminorcycle
    only, and the chunk's PSF beams; :func:`mask_chunk` does the rest."""
    started = time.time()
    automask = "auto" in records.usemask
    with _step(Path(run_dir), chunk, 0, attempt, None) as (scratch, io):
        tools = ImagerTools(_named(records, scratch, first_step=True))
        try:
            tools.open_imager()
            deconvolver = tools.open_deconvolver()
            with handed_weights(tools.records, Path.cwd()):  # briggsbwtaper over chunks: the cube's weights
                tools.make_psf_and_pb()
            tools.major_cycle(lastcycle)
            _keep_imaging_weights(scratch)
            init = [_with_mask_total(deconvolver.initminorcycle(), scratch)]
            if not automask:
                deconvolver.setupmask()
                init.append(_with_mask_total(deconvolver.initminorcycle(), scratch))
        finally:
            tools.close()
        beams = _psf_beams(scratch) if automask else None
    return {"init": init, "psf_beams": beams, "seconds": time.time() - started, "peak_rss_bytes": _peak_rss_bytes(),
            **where_it_ran(), **io}


def mask_chunk(records: ImagerRecords, chunk: Chunk, run_dir: str, attempt: int, cycle: int,
               automask: dict[str, AutomaskShare]) -> dict:
    """The start's setupmask and second initminorcycle, with the cube's share of the automask (``cycle``
    is 0: the step works on the start's images in place)."""
    started = time.time()
    share = automask[chunk.name]
    with _step(Path(run_dir), chunk, cycle, attempt, cycle) as (scratch, io):
        tools = ImagerTools(_shared(_named(records, scratch), share))
        try:
            deconvolver = tools.open_deconvolver()
            deconvolver.initminorcycle()
            stopped = _setupmask(deconvolver, scratch, share, log=step_log(Path(run_dir), chunk, cycle, attempt))
            init = _with_mask_total(deconvolver.initminorcycle(), scratch)
        finally:
            tools.close()
    return {"init": init, "automask_stopped": stopped, "seconds": time.time() - started,
            "peak_rss_bytes": _peak_rss_bytes(), **where_it_ran(), **io}


def cycle_chunk(records: ImagerRecords, chunk: Chunk, run_dir: str, attempt: int, cycle: int,
                controls: dict, automask: dict[str, AutomaskShare] | None = None,
                stopped: dict[str, list[int]] | None = None) -> dict:
    """One minor cycle with the cube's controls, the major cycle after it (when this chunk's model
    changed), setupmask (with the cube's share of an automask and the channels whose automasking
    stopped in earlier steps) and the next initminorcycle."""
    started = time.time()
    share = automask[chunk.name] if automask else None
    stopped_before = frozenset((stopped or {}).get(chunk.name, ()))
    with _step(Path(run_dir), chunk, cycle, attempt, cycle - 1) as (scratch, io):
        tools = ImagerTools(_shared(_named(records, scratch), share))
        try:
            deconvolver = tools.open_deconvolver()
            deconvolver.initminorcycle()  # loads the images and the statistics serial's deconvolver holds
            executed = deconvolver.executeminorcycle(iterbotrecord=dict(controls))
            if share is not None and executed["iterdone"] == 0:
                _count_iterations(deconvolver, scratch, controls)
            if "auto" in records.usemask:
                # runMinorCycleCore keeps the mask this cycle used; hasConverged reverts to it at the end
                _replace_tree(scratch / "part.mask", scratch / "part.prev.mask")
            if executed["iterdone"] > 0:
                # A plane whose model did not change gets the same residual from a major cycle; serial
                # re-grids it anyway, a chunk with no iterations is spared the work.
                _reuse_imaging_weights(scratch)
                tools.open_imager()
                # serial's lastcycle flag (known only once every chunk's record is merged) matters to
                # savemodel alone, which cube.toml requires to be 'none'
                tools.major_cycle(lastcycle=False)
                _keep_imaging_weights(scratch)
            newly_stopped = _setupmask(deconvolver, scratch, share, stopped_before,
                                       step_log(Path(run_dir), chunk, cycle, attempt))
            init = _with_mask_total(deconvolver.initminorcycle(), scratch)
        finally:
            tools.close()
    return {"exec": _plain(executed), "init": init, "automask_stopped": newly_stopped,
            "seconds": time.time() - started, "peak_rss_bytes": _peak_rss_bytes(), **where_it_ran(), **io}


def _count_iterations(deconvolver, scratch: Path, controls: dict) -> None:
    """Make the step's tool count iterations done, as serial's does at every cycle's setupmask (the
    controller starts the first minor cycle only where it cleans): an automask after iterations grows
    the previous mask, the first does not. A chunk that cleaned nothing this cycle cleans one iteration
    per plane, and its model and residual are put back as they were (a plane with an empty mask
    cannot clean, and an empty mask has nothing to grow)."""
    from casatools import image

    saved = {}
    for name in ("model", "residual"):
        pixels = image()
        pixels.open(str(scratch / f"part.{name}"))
        saved[name] = pixels.getchunk()
        pixels.done()
    deconvolver.executeminorcycle(iterbotrecord=dict(controls, cycleniter=1, cyclethreshold=0.0, nsigma=0.0))
    for name, values in saved.items():
        pixels = image()
        pixels.open(str(scratch / f"part.{name}"))
        pixels.putchunk(values)
        pixels.done()


def _replace_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def restore_chunk(records: ImagerRecords, chunk: Chunk, run_dir: str, attempt: int, cycle: int,
                  revert_mask: bool = False) -> dict:
    """Restore (and pb-correct) the last cycle's images into the chunk's part (parts/<chunk>), so that
    the driver places it into the cube while the other chunks restore. ``revert_mask``: cleaning
    stopped on a criterion, where serial's hasConverged puts back the automask the last minor cycle
    used (``.prev.mask``) in place of the one made after it."""
    started = time.time()
    with _step(Path(run_dir), chunk, cycle + 1, attempt, cycle) as (scratch, io):
        for table in [*scratch.glob(_KEPT_WEIGHTS), *scratch.glob(WEIGHT_TABLES)]:  # a part holds images only
            shutil.rmtree(table)
        if revert_mask and (scratch / "part.prev.mask").is_dir():
            shutil.rmtree(scratch / "part.mask")
            os.rename(scratch / "part.prev.mask", scratch / "part.mask")
        tools = ImagerTools(_named(records, scratch))
        try:
            deconvolver = tools.open_deconvolver()
            if records.restoration:
                deconvolver.restore()
                if records.pbcor:
                    deconvolver.pbcor()
        finally:
            tools.close()
    part = Path(run_dir) / "parts" / chunk.name
    part.parent.mkdir(exist_ok=True)
    shutil.rmtree(part, ignore_errors=True)  # an earlier attempt's, or a resumed run's: the same restore
    os.rename(cycle_dir(Path(run_dir), chunk, cycle + 1), part)
    return {"folder": str(part), "seconds": time.time() - started, "peak_rss_bytes": _peak_rss_bytes(),
            **where_it_ran(), **io, "part_bytes": product_bytes(part)}
