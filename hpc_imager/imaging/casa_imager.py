"""casatools' imager, normalizer and deconvolver for one chunk, driven as serial tclean drives them.

task_tclean (with imager_base.PySynthesisImager) sets the tools up from its records and calls them in
a fixed order; :class:`ImagerTools` does the same from the :class:`ImagerRecords` the driver made, so
a worker needs casatools alone. :func:`imaging_task.make_chunk_images` is tclean's own sequence for a cube
with ``niter=0`` (PSF, PB, residual, restore, pbcor); whole-cube iteration's steps (cycle_tasks) use
the same tools. Measured on NGC5921 (8 channels at 1024², Briggs): the products are bit-identical to
tclean's, and the same CPU time (5.4-5.7 s against 5.1-5.6 s, three runs each in one process).
"""

from __future__ import annotations

import ctypes

from .imager_records import ImagerRecords


def tools_reproduce_tclean(tclean_params: dict) -> bool:
    """Whether :func:`imaging_task.make_chunk_images` is tclean's own sequence for these keywords: tclean does
    more for A-projection's convolution-function cache and for a mosaic's separate PSF phase centre."""
    gridder = tclean_params["gridder"]
    return not gridder.startswith("awp") and not (tclean_params["psfphasecenter"] and "mosaic" in gridder)


def chunking_caveats(tclean_params: dict, chunks: list, mosaic_beams: dict | None = None) -> list[str]:
    """Where imaging a cube in chunks is known to differ from serial tclean whatever the driver does.

    The mosaic gridder makes its primary beams from each image's own data channels
    (:mod:`mosaic_beams`, which predicts them plane by plane), so a chunk can get other beams than the
    whole cube, and no keyword moves it onto the whole cube's. Measured on the simulated 4-pointing
    mosaic of 24 × 1 MHz at 96², niter 0, against serial tclean: chunks of 12 put planes 0-12 off
    (image 15 % of the plane peak, pb 21 %, psf 1.3 %), as mpicasa's 2 sub-cubes of 12 do, to 6 digits;
    at niter 100 cleaning spreads it to every plane (image 31 %, mpicasa's 46 %; docs/correctness.md).
    Chunks of 6 put all 24 off, 6 more than predicted, so the prediction is a lower bound and the line
    says "at least"."""
    if "mosaic" not in tclean_params["gridder"] or len(chunks) < 2:
        return []
    if mosaic_beams is not None and not mosaic_beams["planes_off_serial"]:
        return []
    if mosaic_beams is None:
        which = "planes can get"
    else:
        from ..inputs.preflight import _ranges

        off = mosaic_beams["planes_off_serial"]
        which = f"planes {_ranges(off)} ({len(off)} of {len(mosaic_beams['per_plane'])}) at least get"
    return [f"the mosaic gridder picks primary beams from each chunk's own channels: {which} other beams than"
            " serial tclean (as in CASA's own parallel imaging; measured on a 4-pointing 24 × 1 MHz mosaic:"
            " image up to 15 % of the plane peak, pb 21 %, psf 1.3 %, as mpicasa's; cleaning spreads it to every"
            " plane, at niter 100 image 31 %, mpicasa's 46 %; --compare-serial measures it per plane);"
            " channels_per_task >= nchan images it as serial tclean does"]


def return_freed_heap() -> None:
    """Give the heap's freed pages back to the OS. Workers keep glibc's adaptive mmap threshold
    (backends/base.py: 12 % faster), so a step's freed image buffers of up to 32 MiB stay in the heap
    and a later step's peak may or may not include them. Called after each step, it made peaks
    lower and repeatable: on NGC5921, 8 tasks each in one worker (2 runs of 4), 512²×8 peaked at
    0.289-0.291 GiB against 0.290-0.314; 384²×16 0.323-0.325 against 0.325-0.352; 768²×4
    0.324-0.325 against 0.332-0.343. In 11 of 12 runs of four 512²×8 tasks on one worker all four
    peaked within 0.5 %; in one the last two 6 % higher (a buffer kept within a step, out of reach).
    Without it, 1 of 3 calibrations put 768²×4 6 % over its line (tests/test_calibrate.py). NGC5921
    1024² in chunks of 8 (buffers over 32 MiB, unmapped anyway): peaks and wall time unchanged, 3 pairs."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


class ImagerTools:
    """The casatools objects of one chunk, set up as PySynthesisImager sets them up; each step ends
    with the heap's freed pages returned (:func:`return_freed_heap`)."""

    def __init__(self, records: ImagerRecords):
        self.records = records
        self.imager = None
        self.normalizer = None
        self.deconvolver = None

    def open_imager(self):
        """initializeImagers, initializeNormalizers, setWeighting."""
        from casatools import synthesisimager, synthesisnormalizer

        r = self.records
        si = synthesisimager()
        self.imager = si
        for selection in r.selection:
            si.selectdata(selection)
        si.defineimage(r.image, r.grid)
        si.normalizerinfo(r.normalization)
        self.normalizer = synthesisnormalizer()
        self.normalizer.setupnormalizer(normpars=r.normalization)
        si.setweighting(**r.weighting)
        return_freed_heap()
        return si

    def open_deconvolver(self):
        from casatools import synthesisdeconvolver

        self.deconvolver = synthesisdeconvolver()
        self.deconvolver.setupdeconvolution(decpars=self.records.deconvolution)
        return self.deconvolver

    def make_psf_and_pb(self) -> None:
        """makePSF (a cube's PSF is normalised in C++) and its beam check, then makePB: the standard
        gridder makes a cube's PB with its PSF, the others make it now."""
        self.imager.makepsf()
        if self.deconvolver is not None:
            self.deconvolver.checkrestoringbeam()
        if not ("stand" in self.records.grid["gridder"] and "cube" in self.records.image["specmode"]):
            self.imager.makepb()
        self.normalizer.normalizeprimarybeam()
        return_freed_heap()

    def major_cycle(self, lastcycle: bool) -> None:
        """runMajorCycleCore: for cubes normalisation happens in C++."""
        self.imager.executemajorcycle(controls={"lastcycle": lastcycle, "usemask": self.records.usemask})
        return_freed_heap()

    def close(self) -> None:
        for tool in (self.deconvolver, self.normalizer, self.imager):
            if tool is not None:
                tool.done()
