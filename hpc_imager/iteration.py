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
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .channel_grid import Chunk

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


def refusal(tclean: dict, chunks: list[Chunk]) -> str | None:
    """Why whole-cube iteration cannot reproduce serial tclean for this cube, or None."""
    if tclean["usemask"] == "auto-multithresh":
        return ("usemask='auto-multithresh' keeps per-channel state between cycles in serial tclean's"
                " deconvolver that a chunk's tools cannot be given; use [parallel] iteration = 'per-chunk'"
                " (each chunk automasked on its own) or channels_per_task >= nchan")
    if any(c.guard for c in chunks):
        return ("a one-channel chunk in frequency or velocity mode is imaged with a guard channel, whose"
                " cleaning would join the cube's iteration control; choose channels_per_task >= 2 so no"
                " chunk has one channel")
    return None


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
    merged["summaryminor"] = np.zeros((len(records[0]["summaryminor"]), 0))  # empty before a minor cycle
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
        self.bot.mergeinitrecord(merge_init(init_records))
        nmajor = self.iterpars["nmajor"]
        self.stopcode = self.bot.cleanComplete(reachedMajorLimit=nmajor >= 0 and self.major_done >= nmajor)
        return self.stopcode > 0

    # --- state ---------------------------------------------------------------------------------

    def _record(self, event: dict) -> None:
        self.events.append(event)

    def replay(self, events: list[dict]) -> tuple[bool, dict | None]:
        """Feed journalled steps again (on --resume); return (converged, the next controls)."""
        converged, controls = False, None
        self.first_major_cycle()
        for event in events:
            if event["step"] == "started":
                converged = self.started([{"init": pair} for pair in zip(*event["init"])])
            else:
                converged = self.cycled([{"exec": e, "init": i} for e, i in zip(event["exec"], event["init"])])
            controls = None if converged else self.controls()
        return converged, controls

    def progress(self) -> dict:
        details = self.bot.getiterationdetails()
        return {"iterdone": int(details["iterdone"]), "majorcycles": int(details["nmajordone"]),
                "stopcode": self.stopcode}

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

STATE_FILE = "state.json"


def _write_state(run_dir: Path, state: dict) -> None:
    path = Path(run_dir) / "iteration" / STATE_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "iteration" / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def iteration_parameters(tclean_params: dict) -> dict:
    """The iteration parameters task_tclean hands its iterbotsink (with ImagerParameters' fixes)."""
    from .cycle_tasks import imager_parameters

    return imager_parameters(tclean_params, tclean_params["imagename"]).getIterPars()


def clean_cube(tclean_params: dict, chunks: list[Chunk], nchan: int, run_dir: Path, run_step: Callable,
               on_cycle: Callable[[dict], None] = lambda progress: None) -> dict:
    """Serial tclean's major/minor loop over the whole cube, each step run in every chunk at once.

    ``run_step(function, arguments)`` runs ``function(*args, attempt)`` for each chunk's ``args``
    (in the order of ``chunks``) and returns their results in that order, or raises. Each finished
    step is written to ``iteration/state.json`` (the records merged so far), so a run killed at any
    point resumes from the last step every chunk finished. Returns tclean's summary; the chunks'
    restored images are left in ``parts/<chunk>`` for assembly.
    """
    from . import cycle_tasks

    run_dir = Path(run_dir)
    (run_dir / "iteration").mkdir(parents=True, exist_ok=True)
    controller = CubeIteration(iteration_parameters(tclean_params), chunks,
                               serial_block_size(nchan, list(np.atleast_1d(tclean_params["imsize"]))))
    try:
        state = read_state(run_dir) or {"cycle": -1, "events": [], "converged": False}
        if state["cycle"] < 0:
            lastcycle = controller.first_major_cycle()
            results = run_step(cycle_tasks.start_chunk, [(tclean_params, c, str(run_dir)) for c in chunks]
                               , lastcycle=lastcycle)
            converged = controller.started(results)
            state = {"cycle": 0, "events": controller.events, "converged": converged}
            _write_state(run_dir, state)
        else:
            converged, _ = controller.replay(state["events"])
            controller.events = state["events"]
        on_cycle(controller.progress())
        while not state["converged"]:
            controls = controller.controls()
            cycle = state["cycle"] + 1
            results = run_step(cycle_tasks.cycle_chunk,
                               [(tclean_params, c, str(run_dir)) for c in chunks], cycle=cycle, controls=controls)
            converged = controller.cycled(results)
            state = {"cycle": cycle, "events": controller.events, "converged": converged}
            _write_state(run_dir, state)
            for chunk in chunks:
                shutil.rmtree(cycle_tasks.cycle_dir(run_dir, chunk, cycle - 1), ignore_errors=True)
            on_cycle(controller.progress())
        summary = controller.summary()
    finally:
        controller.close()
    if state.get("restored") is None:
        folders = run_step(cycle_tasks.restore_chunk, [(tclean_params, c, str(run_dir)) for c in chunks],
                           cycle=state["cycle"])
        (run_dir / "parts").mkdir(exist_ok=True)
        for chunk, folder in zip(chunks, folders):
            target = run_dir / "parts" / chunk.name
            shutil.rmtree(target, ignore_errors=True)
            os.rename(folder, target)
        _write_state(run_dir, dict(state, restored=True))
    return summary


def run_in_process(function: Callable, arguments: list[tuple], **keywords) -> list:
    """``run_step`` without workers: each chunk in turn, in this process (tests, one-worker runs)."""
    return [function(*args, attempt=1, **keywords) for args in arguments]
