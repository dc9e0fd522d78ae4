"""The driver's single iteration controller for a whole cube, as serial tclean holds it.

Serial tclean (task_tclean.py with imager_base.PySynthesisImager) keeps one ``iterbotsink`` for the
cube and calls it in a fixed order: ``cleanComplete(lastcyclecheck=True)`` and ``endmajorcycle``
around every major cycle; ``resetminorcycleinfo`` + ``mergeinitrecord`` + ``cleanComplete`` in every
``hasConverged``; ``getminorcyclecontrols`` + ``resetminorcycleinfo`` before, ``mergeexecrecord``
after every minor cycle. :class:`CubeIteration` makes the same calls in the same order. What the
workers return per chunk is merged into the one record serial's deconvolver would have returned for
the whole cube (its C++ ``mergeReturnRecord`` over blocks of channels: iterations summed, peaks and
the largest per-plane iteration count maximised, the per-plane summary concatenated with channel
numbers offset), and merged into the iterbot once, so order-dependent fields (``nsigmathreshold``
is overwritten, not maximised, by ``mergeinitrecord``) come out as serial's.

Every record fed to the iterbot is also kept (:attr:`CubeIteration.events`): the journal stores
them, and :meth:`CubeIteration.replay` rebuilds the controller's exact state on ``--resume``.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from .casa_imager import tools_reproduce_tclean
from .channel_grid import ChannelGrid, Chunk
from .imager_records import imager_records

# The stop codes' meanings, as imager_base.PySynthesisImager.getStopDescription gives them.
STOP_REASONS = {
    1: "iteration limit",
    2: "threshold",
    3: "force stop",
    4: "no change in peak residual across two major cycles",
    5: "peak residual increased by more than 3 times from the previous major cycle",
    6: "peak residual increased by more than 3 times from the minimum reached",
    7: "zero mask",
    8: "any combination of n-sigma and other valid exit criterion",
    9: "reached nmajor",
}

# Rows of a minor-cycle summary (SIMinorCycleController): 0 the plane's iterations, 5 its channel,
# with fullsummary 7 iterations done when the cycle started, 8 when the plane started.
_ITERS_END, _CHANNEL, _CYCLE_START, _PLANE_START = 0, 5, 7, 8


def serial_block_size(nchan: int, imsize: list[int]) -> int:
    """Channels per block of serial tclean's cube minor cycle (SynthesisDeconvolver::numblockchans
    with one process): its per-plane iteration counts restart at each block."""
    nx, ny = (imsize * 2)[:2] if len(imsize) == 1 else imsize[:2]
    optimal = max(int(8e6 / nx / ny), 10)
    return optimal if nchan > optimal else nchan


def merge_init(records: list[dict]) -> dict:
    """The whole cube's initminorcycle record from its chunks' (one serial deconvolver's view)."""
    merged = dict(records[0])
    for key in ("peakresidual", "maxpsfsidelobe", "peakresidualnomask", "madrms"):
        merged[key] = max(r[key] for r in records)
    # nsigma * the largest per-channel robust rms: the largest over chunks (monotonic in the rms).
    merged["nsigmathreshold"] = max(r["nsigmathreshold"] for r in records)
    # -1 means "mask unchanged"; only a zero total stops cleaning (cleanComplete's stop code 7), so
    # report the cube's actual total whenever any chunk's mask changed.
    if all(r["masksum"] == -1.0 for r in records):
        merged["masksum"] = -1.0
    else:
        merged["masksum"] = float(sum(r["mask_total"] for r in records))
    merged.pop("mask_total", None)
    if "summaryminor" in records[0]:  # CASA 6.7's records carry it (empty before a minor cycle); 6.6.5's do not
        merged["summaryminor"] = np.zeros((len(records[0]["summaryminor"]), 0))
    return merged


def merge_exec(records: list[dict], chunks: list[Chunk], block: int) -> dict:
    """The whole cube's executeminorcycle record from its chunks', summary rows as serial's."""
    merged = {
        "iterdone": int(sum(r["iterdone"] for r in records)),
        "maxcycleiterdone": int(max(r["maxcycleiterdone"] for r in records)),
        "peakresidual": float(max(r["peakresidual"] for r in records)),
        "updatedmodelflag": any(r.get("updatedmodelflag", False) for r in records),
    }
    columns = []
    for record, chunk in zip(records, chunks):
        summary = np.asarray(record["summaryminor"], dtype=float)
        if summary.size:
            summary = summary.copy()
            summary[_CHANNEL] += chunk.first
            columns.append(summary)
    if not columns:
        merged["summaryminor"] = np.zeros((len(records[0]["summaryminor"]), 0))
        return merged
    summary = np.concatenate(columns, axis=1)
    summary = summary[:, np.argsort(summary[_CHANNEL], kind="stable")]
    if summary.shape[0] > _PLANE_START:
        # fullsummary: iterations done before each plane, which serial counts from zero at each of its
        # blocks of channels (a chunk counts from zero at its own first plane).
        blocks = (summary[_CHANNEL] // block).astype(int)
        for this_block in np.unique(blocks):
            planes = blocks == this_block
            summary[_PLANE_START, planes] = np.cumsum(summary[_ITERS_END, planes]) - summary[_ITERS_END, planes]
            summary[_CYCLE_START, planes] = 0.0
    merged["summaryminor"] = summary
    return merged


class CubeIteration:
    """One iterbotsink for the whole cube, fed the merged records of its chunks."""

    def __init__(self, iterpars: dict, chunks: list[Chunk], block: int):
        from casatools import iterbotsink

        self.iterpars = copy.deepcopy(iterpars)
        self.chunks = chunks
        self.block = block
        self.bot = iterbotsink()
        self.bot.setupiteration(iterpars=self.iterpars)
        self.major_done = 0  # imager_base's majorCnt: clean cycles' major cycles, for nmajor
        self.stopcode = 0
        self.peakresidual = 0.0
        self.events: list[dict] = []

    # --- the calls serial tclean makes, in its order -------------------------------------------

    def first_major_cycle(self) -> bool:
        """runMajorCycle(isCleanCycle=False) before the major cycle: its ``lastcycle`` flag."""
        return self.bot.cleanComplete(lastcyclecheck=True) > 0

    def started(self, results: list[dict]) -> bool:
        """After the chunks' first major cycle, hasConverged / updateMask / hasConverged."""
        self._record({"step": "started", "init": [[r["init"][0] for r in results], [r["init"][1] for r in results]]})
        self.bot.endmajorcycle()
        self._has_converged([r["init"][0] for r in results])
        return self._has_converged([r["init"][1] for r in results])

    def controls(self) -> dict:
        """runMinorCycleCore: the cube's controls for every chunk's minor cycle."""
        controls = self.bot.getminorcyclecontrols()
        self.bot.resetminorcycleinfo()
        return _plain(controls)

    def cycled(self, results: list[dict]) -> bool:
        """A minor cycle (and, if it cleaned anything, a major cycle) is done in every chunk."""
        self._record({"step": "cycled", "exec": [r["exec"] for r in results], "init": [r["init"] for r in results]})
        executed = merge_exec([r["exec"] for r in results], self.chunks, self.block)
        self.bot.mergeexecrecord(executed, 0)
        done_minor = executed["iterdone"] > 0
        if done_minor:
            self.bot.cleanComplete(lastcyclecheck=True)
            self.major_done += 1
            self.bot.endmajorcycle()
        converged = self._has_converged([r["init"] for r in results])
        return converged or not done_minor

    def _has_converged(self, init_records: list[dict]) -> bool:
        self.bot.resetminorcycleinfo()
        merged = merge_init(init_records)
        self.peakresidual = float(merged["peakresidual"])
        self.bot.mergeinitrecord(merged)
        nmajor = self.iterpars["nmajor"]
        self.stopcode = self.bot.cleanComplete(reachedMajorLimit=nmajor >= 0 and self.major_done >= nmajor)
        return self.stopcode > 0

    # --- state ---------------------------------------------------------------------------------

    def _record(self, event: dict) -> None:
        self.events.append(event)

    def replay(self, events: list[dict]) -> bool:
        """Feed journalled steps again, in the live order (on --resume); return whether converged.
        ``controls`` is called before each cycle as live, never after the last: it resets the
        iterbot's peak residual, so the next live call would compute a wrong cycle threshold."""
        converged = False
        self.first_major_cycle()
        for event in events:
            if event["step"] == "started":
                converged = self.started([{"init": pair} for pair in zip(*event["init"])])
            else:
                self.controls()
                converged = self.cycled([{"exec": e, "init": i} for e, i in zip(event["exec"], event["init"])])
        return converged

    def progress(self) -> dict:
        details = self.bot.getiterationdetails()
        return {"iterdone": int(details["iterdone"]), "majorcycles": int(details["nmajordone"]),
                "peakresidual": self.peakresidual, "stopcode": self.stopcode}

    def summary(self) -> dict:
        """What serial tclean returns when niter > 0 (imager_base getSummary)."""
        from casatasks.private.imagerhelpers.summary_minor import SummaryMinor

        summary = self.bot.getiterationsummary()
        if "stopcode" in summary:
            summary["stopDescription"] = STOP_REASONS.get(summary["stopcode"])
        if "summaryminor" in summary:
            summary["summaryminor"] = SummaryMinor.convertMatrix(summary["summaryminor"], self.iterpars["fullsummary"])
        return summary

    def close(self) -> None:
        self.bot.done()


def _plain(record: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
            for k, v in dict(record).items()}


# --- running the cycles ---------------------------------------------------------------------------


class IterationRefused(UserError):
    """Whole-cube iteration cannot reproduce serial tclean for this cube."""


def cube_iteration_refusal(tclean: dict, chunks: list[Chunk], grid: ChannelGrid | None = None) -> None:
    """Refuse, before imaging, what whole-cube iteration cannot make equal to serial tclean. A chunk
    with a guard channel (whose cleaning would join the cube's control) is made only on grids whose
    channels are not one data channel each (channel_grid), refused here first."""
    between = grid.channels_between_data_channels() if grid is not None and len(chunks) > 1 else []
    if between:
        step = abs(grid.data_frequencies[1] - grid.data_frequencies[0])
        nearest = grid.nearest_data_frequency(grid.frequencies[0])
        raise IterationRefused(
            f"output channels given by start={tclean['start']!r}, width={tclean['width']!r} are not one data"
            " channel each, and serial tclean's major cycle predicts each data channel from the model planes"
            " on both sides of it, which a chunk cannot see (measured: 6 % of the plane peak apart); give"
            f" start on a data channel (the nearest is {nearest!r}Hz) with width={step!r}Hz, or use"
            " [parallel] iteration = 'per-chunk' (not equal to serial) or channels_per_task >= nchan")
    if tclean["usemask"] == "auto-multithresh":
        automask_refusal(tclean, chunks)
    if not tools_reproduce_tclean(tclean):
        raise IterationRefused(
            f"gridder={tclean['gridder']!r} with psfphasecenter={tclean['psfphasecenter']!r}: serial tclean does"
            " more for it (A-projection's convolution-function cache, a mosaic's separate PSF phase centre)"
            " than the steps whole-cube iteration runs; use [parallel] iteration = 'per-chunk' (each chunk"
            " its own tclean, not equal to serial) or channels_per_task >= nchan")


def first_block_crossing(spans: list[tuple[int, int]], block: int) -> tuple[int, int] | None:
    """The first (first, last) channel span of ``spans`` ((first, nchan) each) that lies in two of
    serial's automask blocks of ``block`` channels, if any: such a chunk cannot be handed one block's beam."""
    for first, nchan in spans:
        if first // block != (first + nchan - 1) // block:
            return first, first + nchan - 1
    return None


def automask_refusal(tclean: dict, chunks: list[Chunk]) -> None:
    """Refuse the automasks a chunk cannot be handed its share of (cycle_tasks.AutomaskShare)."""
    block = serial_block_size(sum(c.nchan for c in chunks), list(np.atleast_1d(tclean["imsize"])))
    across = first_block_crossing([(c.first, c.nchan) for c in chunks], block)
    if across:
        first, last = across
        raise IterationRefused(
            f"usemask='auto-multithresh': serial tclean automasks blocks of {block} channels with one beam each,"
            f" and channels {first}-{last} span two of them; choose a"
            f" channels_per_task that divides {block}, or channels_per_task >= nchan")
    if tclean["minpercentchange"] >= 0 and tclean["nsigma"] > 0:
        raise IterationRefused(
            "usemask='auto-multithresh' with minpercentchange >= 0 and nsigma > 0: serial's deconvolver keeps the"
            " noise of a channel whose automasking stopped from before it stopped, and its nsigma threshold"
            " from that, which no chunk can be handed; use minpercentchange=-1, nsigma=0, [parallel] iteration ="
            " 'per-chunk' (not equal to serial) or channels_per_task >= nchan")


def automask_shares(tclean: dict, chunks: list[Chunk], block: int, starts: list[dict]) -> dict:
    """Each chunk's :class:`cycle_tasks.AutomaskShare`, from every chunk's start step: serial's
    deconvolver automasks with the PSF sidelobe level of the whole cube (the largest chunk's) and the
    common beam of each of its blocks of channels (from every channel's PSF beams)."""
    from .cycle_tasks import AutomaskShare

    levels = [float(start["init"][0]["maxpsfsidelobe"]) for start in starts]
    beams: dict[int, list[dict]] = {}
    for chunk, start in zip(chunks, starts):
        for offset, planes in enumerate(start["psf_beams"]):
            beams.setdefault((chunk.first + offset) // block, []).extend(planes)
    block_beams = {index: common_beam(planes) for index, planes in beams.items()}
    return {chunk.name: AutomaskShare(sidelobethreshold=tclean["sidelobethreshold"] * max(levels) / level,
                                      beam=block_beams[chunk.first // block])
            for chunk, level in zip(chunks, levels)}


def common_beam(beams: list[dict]) -> dict:
    """CASA's common beam of ``beams`` (the image tool's commonbeam, CasaImageBeamSet::getCommonBeam as
    the automask takes it), from a one-pixel image with a plane per beam."""
    from casatools import image

    planes = image()
    planes.fromshape("", [1, 1, 1, len(beams)])
    try:
        for channel, beam in enumerate(beams):
            planes.setrestoringbeam(major=beam["major"], minor=beam["minor"], pa=beam["pa"], channel=channel,
                                    polarization=0)
        return _plain(planes.commonbeam())
    finally:
        planes.done()


def weighting_refusal(tclean: dict, chunks: list[Chunk], iteration: str) -> None:
    """Refuse weightings decided over the whole cube where a chunk cannot be handed the cube's weights:
    they are handed to casatools' imager steps (cube_weights.py), not to a tclean call."""
    if tclean["weighting"] != "briggsbwtaper" or len(chunks) < 2:
        return
    why = ("weighting='briggsbwtaper' tapers by the whole cube's fractional bandwidth, and the cube's weights"
           " are handed only to the chunks' casatools steps")
    if iteration == "per-chunk" or not tools_reproduce_tclean(tclean):
        raise IterationRefused(
            f"{why}, not to a chunk's own tclean call ({'per-chunk iteration' if iteration == 'per-chunk' else 'gridder=' + repr(tclean['gridder'])});"
            " use iteration = 'cube', weighting='briggs', or channels_per_task >= nchan (one task)")
    if not tclean["perchanweightdensity"]:
        raise IterationRefused(
            f"{why}, made per channel (tclean's briggsbwtaper needs perchanweightdensity=True); set it,"
            " or use channels_per_task >= nchan (one task)")


def iteration_report(summary: dict) -> dict:
    """The scalars of tclean's return value (iterations, major cycles, stop code and reason)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in summary.items()
            if isinstance(v, (int, float, str, bool, np.generic))}


def clean_cube(tclean_params: dict, chunks: list[Chunk], nchan: int, run_dir: Path, journal, run_step: Callable,
               on_cycle: Callable[[dict], None] = lambda progress: None, cube_weights: str = "") -> dict:
    """Serial tclean's major/minor loop over the whole cube, each step run in every chunk at once.

    ``run_step(function, arguments, **keywords)`` runs ``function(*args, attempt=..., **keywords)``
    for each chunk's ``args`` (its records, the chunk, the run directory; in the order of ``chunks``)
    and returns the results in that order, or raises. Every finished step goes to the ``journal``
    (:meth:`Journal.iteration_step`) with what the controller merged, so a run killed at any point
    resumes after the last step every chunk finished (the controller is rebuilt by replaying them). Returns tclean's summary; the chunks'
    restored images are left in ``parts/<chunk>`` for assembly. ``cube_weights``: the whole cube's imaging
    weights every chunk's first step is handed (briggsbwtaper, cube_weights.py).
    """
    from . import cycle_tasks

    run_dir = Path(run_dir)
    done = [step for step in journal.iteration_steps if step["kind"] != "restored"]
    # the iteration parameters task_tclean hands its iterbotsink (with ImagerParameters' fixes)
    controller = CubeIteration(imager_records(tclean_params).iteration, chunks,
                               serial_block_size(nchan, list(np.atleast_1d(tclean_params["imsize"]))))
    arguments = [(imager_records(tclean_params, c, cube_weights), c, str(run_dir)) for c in chunks]
    try:
        if done:
            converged = controller.replay([step["records"] for step in done])
            cycle = done[-1]["cycle"]
            automask = {name: cycle_tasks.AutomaskShare(**share)
                        for name, share in (done[0].get("automask") or {}).items()}
            stopped = done[-1].get("automask_stopped") or {}
        else:
            lastcycle = controller.first_major_cycle()
            started = run_step(cycle_tasks.start_chunk, arguments, lastcycle=lastcycle)
            automask, stopped = {}, {}
            if "auto" in tclean_params["usemask"]:  # the start's setupmask, with what only the whole cube gives
                automask = automask_shares(tclean_params, chunks, controller.block, started)
                masked = run_step(cycle_tasks.mask_chunk, arguments, cycle=0, automask=automask)
                started = [{"init": [start["init"][0], mask["init"]]} for start, mask in zip(started, masked)]
                stopped = {chunk.name: mask["automask_stopped"] for chunk, mask in zip(chunks, masked)}
            converged = controller.started(started)
            cycle = 0
            journal.iteration_step({"kind": "start", "cycle": 0, "converged": converged,
                                    "records": controller.events[-1], "progress": controller.progress(),
                                    "automask": {name: asdict(share) for name, share in automask.items()},
                                    "automask_stopped": stopped})
        on_cycle(dict(controller.progress(), cycle=cycle))
        while not converged:
            controls = controller.controls()
            cycle += 1
            cycled = run_step(cycle_tasks.cycle_chunk, arguments, cycle=cycle, controls=controls, automask=automask,
                              stopped=stopped)
            converged = controller.cycled(cycled)
            stopped = {chunk.name: sorted({*stopped.get(chunk.name, ()), *result.get("automask_stopped", ())})
                       for chunk, result in zip(chunks, cycled)} if automask else {}
            journal.iteration_step({"kind": "cycle", "cycle": cycle, "converged": converged,
                                    "records": controller.events[-1], "progress": controller.progress(),
                                    "automask_stopped": stopped})
            for chunk in chunks:  # the step is journalled: the cycle before it is not needed to resume
                shutil.rmtree(cycle_tasks.cycle_dir(run_dir, chunk, cycle - 1), ignore_errors=True)
            on_cycle(dict(controller.progress(), cycle=cycle))
        summary = controller.summary()
    finally:
        controller.close()
    if not any(step["kind"] == "restored" for step in journal.iteration_steps):
        revert_mask = "auto" in tclean_params["usemask"] and controller.stopcode > 0
        run_step(cycle_tasks.restore_chunk, arguments, cycle=cycle, revert_mask=revert_mask)  # each into parts/
        journal.iteration_step({"kind": "restored", "cycle": cycle})
        shutil.rmtree(run_dir / "iteration", ignore_errors=True)
    return summary


def run_in_process(function: Callable, arguments: list[tuple], **keywords) -> list:
    """``run_step`` without workers: each chunk in turn, in this process (tests, one-worker runs)."""
    return [function(*args, attempt=1, **keywords) for args in arguments]
