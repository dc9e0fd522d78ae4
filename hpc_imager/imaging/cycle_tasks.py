"""Worker side of whole-cube iteration control: one chunk's share of each step of serial tclean.

Serial tclean on a cube holds one imager, one deconvolver and one iteration controller (imager_base
``PySynthesisImager`` driven by task_tclean). Its deconvolver already cleans a cube as independent
blocks of channels (C++ ``SynthesisDeconvolver::executeCubeMinorCycle`` hands every block the same
minor-cycle controls and merges the blocks' records), so a plane's cleaning depends on the rest of
the cube only through the controller. Here each chunk is such a block: a worker runs the chunk's
share of each step with fresh CASA tools and hands back the records the controller needs
(:mod:`hpc_imager.imaging.iteration` merges them, as serial does, in the driver).

State lives on disk, in the chunk's images: ``<run>/iteration/<chunk>/cycle-<k>/part.*``. A step
copies the previous cycle's images to a scratch folder, works there and renames it into place, so a
retried or interrupted step never leaves a half-changed chunk behind and ``--resume`` continues from
the last cycle every chunk finished.

The deconvolver keeps only this between serial's steps, and it is rebuilt exactly by calling
``initminorcycle`` again on the same images: the robust statistics (recomputed from the residual,
as serial does whenever iterations were done), the mask sum (for the "mask changed" flag) and the
loaded mask (``setupmask`` re-reads the same mask). Automasking keeps more (per-channel flags, its
running iteration count, the positive-mask work image); that is why cube iteration refuses
``usemask='auto-multithresh'`` (see :func:`hpc_imager.imaging.iteration.cube_iteration_refusal`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from . import casa_setup
from .channel_grid import IMAGER_PARAMETER_NAMES, Chunk
from .imaging_task import _peak_rss_bytes, _release_casa, _reset_peak_rss


def chunk_dir(run_dir: Path, chunk: Chunk) -> Path:
    return Path(run_dir) / "iteration" / chunk.name


def cycle_dir(run_dir: Path, chunk: Chunk, cycle: int) -> Path:
    return chunk_dir(run_dir, chunk) / f"cycle-{cycle:04d}"


def imager_parameters(tclean_params: dict, imagename: str):
    """ImagerParameters exactly as task_tclean builds them from its keywords."""
    from casatasks.private.imagerhelpers.input_parameters import ImagerParameters

    given = {IMAGER_PARAMETER_NAMES.get(k, k): v for k, v in tclean_params.items()}
    given["imagename"] = imagename
    given["chanchunks"] = 1
    names = ImagerParameters.__init__.__code__.co_varnames[1:]
    defaults = dict(zip(names, ImagerParameters.__init__.__defaults__))
    bparm = {k: given.get(k, default) for k, default in defaults.items()}
    if bparm["mosweight"] and bparm["gridder"] not in ("mosaic", "awp2"):
        bparm["mosweight"] = False
    return ImagerParameters(**bparm)


class _Tools:
    """The casatools objects of one chunk for one step, set up as PySynthesisImager does."""

    def __init__(self, params):
        self.params = params
        self.imager = None
        self.normalizer = None
        self.deconvolver = None

    def open_imager(self):
        from casatools import synthesisimager, synthesisnormalizer

        p = self.params
        si = synthesisimager()
        for ms in sorted(p.getSelPars()):
            si.selectdata(p.getSelPars()[ms])
        si.defineimage(p.getImagePars()["0"], p.getGridPars()["0"])
        si.normalizerinfo(p.getNormPars()["0"])
        self.imager = si
        self.normalizer = synthesisnormalizer()
        self.normalizer.setupnormalizer(normpars=p.getNormPars()["0"])
        si.setweighting(**p.getWeightPars())
        return si

    def open_deconvolver(self):
        from casatools import synthesisdeconvolver

        self.deconvolver = synthesisdeconvolver()
        self.deconvolver.setupdeconvolution(decpars=self.params.getDecPars()["0"])
        return self.deconvolver

    def major_cycle(self, lastcycle: bool) -> None:
        """runMajorCycleCore: for cubes normalisation happens in C++."""
        controls = {"lastcycle": lastcycle, "usemask": self.params.getDecPars()["0"]["usemask"]}
        self.imager.executemajorcycle(controls=controls)

    def close(self) -> None:
        for tool in (self.deconvolver, self.normalizer, self.imager):
            if tool is not None:
                tool.done()


@contextlib.contextmanager
def _step(run_dir: Path, chunk: Chunk, cycle: int, attempt: int, previous: int | None):
    """A scratch copy of the chunk's images of cycle ``previous`` (or nothing), renamed to cycle
    ``cycle`` when the step succeeds; the step's CASA log goes to the run's logs."""
    casa_setup.configure_offline()
    from casatasks import casalog

    target = cycle_dir(run_dir, chunk, cycle)
    scratch = target.with_name(f"{target.name}.attempt-{attempt}")
    shutil.rmtree(scratch, ignore_errors=True)
    if previous is None:
        scratch.mkdir(parents=True)
    else:
        shutil.copytree(cycle_dir(run_dir, chunk, previous), scratch, symlinks=True)
    logs = Path(run_dir) / "logs"
    logs.mkdir(exist_ok=True)
    casalog.setlogfile(str(logs / f"{chunk.name}.cycle-{cycle}.attempt-{attempt}.casa.log"))
    casalog.showconsole(False)
    _reset_peak_rss()  # each step's peak, measured as image_chunk measures a whole chunk's
    try:
        with contextlib.chdir(scratch):  # CASA drops temporary tables in the working directory
            yield scratch
    finally:
        _release_casa()  # as after a whole-chunk tclean: the worker runs many steps
    if target.exists():  # an earlier attempt finished but the driver never heard of it
        shutil.rmtree(target)
    os.rename(scratch, target)


def _params(tclean_params: dict, chunk: Chunk, scratch: Path, first_step: bool = False):
    """The chunk's parameters; ``startmodel`` only in the first step, where serial's deconvolver adds
    it to the model once (a later step finds it in the model image already)."""
    params = dict(tclean_params, **chunk.tclean_overrides())
    if not first_step:
        params["startmodel"] = ""
    return imager_parameters(params, str(scratch / "part"))


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


def start_chunk(tclean_params: dict, chunk: Chunk, run_dir: str, attempt: int, lastcycle: bool) -> dict:
    """PSF, PB and the first residual, then serial's two initminorcycle calls around setupmask."""
    started = time.time()
    with _step(Path(run_dir), chunk, 0, attempt, None) as scratch:
        tools = _Tools(_params(tclean_params, chunk, scratch, first_step=True))
        try:
            tools.open_imager()
            deconvolver = tools.open_deconvolver()
            tools.imager.makepsf()
            deconvolver.checkrestoringbeam()
            tools.normalizer.normalizeprimarybeam()
            tools.major_cycle(lastcycle)
            first = _with_mask_total(deconvolver.initminorcycle(), scratch)
            deconvolver.setupmask()
            second = _with_mask_total(deconvolver.initminorcycle(), scratch)
        finally:
            tools.close()
    return {"init": [first, second], "seconds": time.time() - started, "peak_rss_bytes": _peak_rss_bytes()}


def cycle_chunk(tclean_params: dict, chunk: Chunk, run_dir: str, attempt: int, cycle: int,
                controls: dict) -> dict:
    """One minor cycle with the cube's controls, the major cycle after it (when this chunk's model
    changed), setupmask and the next initminorcycle."""
    started = time.time()
    with _step(Path(run_dir), chunk, cycle, attempt, cycle - 1) as scratch:
        tools = _Tools(_params(tclean_params, chunk, scratch))
        try:
            deconvolver = tools.open_deconvolver()
            deconvolver.initminorcycle()  # loads the images and the statistics serial's deconvolver holds
            executed = deconvolver.executeminorcycle(iterbotrecord=dict(controls))
            if "auto" in tclean_params["usemask"]:
                # runMinorCycleCore keeps the mask this cycle used; hasConverged reverts to it at the end
                _replace_tree(scratch / "part.mask", scratch / "part.prev.mask")
            if executed["iterdone"] > 0:
                # A plane whose model did not change gets the same residual from a major cycle; serial
                # re-grids it anyway, a chunk with no iterations is spared the work.
                tools.open_imager()
                # serial's lastcycle flag (known only once every chunk's record is merged) matters to
                # savemodel alone, which cube.toml requires to be 'none'
                tools.major_cycle(lastcycle=False)
            deconvolver.setupmask()
            init = _with_mask_total(deconvolver.initminorcycle(), scratch)
        finally:
            tools.close()
    return {"exec": _plain(executed), "init": init, "seconds": time.time() - started,
            "peak_rss_bytes": _peak_rss_bytes()}


def _replace_tree(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def restore_chunk(tclean_params: dict, chunk: Chunk, run_dir: str, attempt: int, cycle: int,
                  revert_mask: bool = False) -> dict:
    """Restore (and pb-correct) the last cycle's images into the chunk's part (parts/<chunk>), so that
    the driver places it into the cube while the other chunks restore. ``revert_mask``: cleaning
    stopped on a criterion, where serial's hasConverged puts back the automask the last minor cycle
    used (``.prev.mask``) in place of the one made after it."""
    started = time.time()
    with _step(Path(run_dir), chunk, cycle + 1, attempt, cycle) as scratch:
        if revert_mask and (scratch / "part.prev.mask").is_dir():
            shutil.rmtree(scratch / "part.mask")
            os.rename(scratch / "part.prev.mask", scratch / "part.mask")
        tools = _Tools(_params(tclean_params, chunk, scratch))
        try:
            deconvolver = tools.open_deconvolver()
            if tclean_params.get("restoration", True):
                deconvolver.restore()
                if tclean_params.get("pbcor"):
                    deconvolver.pbcor()
        finally:
            tools.close()
    part = Path(run_dir) / "parts" / chunk.name
    part.parent.mkdir(exist_ok=True)
    shutil.rmtree(part, ignore_errors=True)  # an earlier attempt's, or a resumed run's: the same restore
    os.rename(cycle_dir(Path(run_dir), chunk, cycle + 1), part)
    return {"folder": str(part), "seconds": time.time() - started, "peak_rss_bytes": _peak_rss_bytes()}
