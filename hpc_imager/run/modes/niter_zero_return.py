"""Serial tclean's return value at niter 0, made as casatasks makes it but reading each product a block of
planes at a time.

casatasks' ``ImagingDict.fill_summary_minor`` opens the residual, the mask and the model once per plane and
reads one plane from tiles many channels deep (casacore's default tile for a 128² cube of 512 channels is
128 channels deep): 2.4 s of a 12.6 s run of that cube, all of it after the last chunk. Reading blocks
of planes gives the same numbers in 0.3 s (see BLOCK_BYTES for a cube of large planes). Which images
it reads (the user's mask, ``<imagename>.mask`` or none) stays casatasks' own choice, in each
release's ``construct_summary_minor``."""

from __future__ import annotations

import os

import numpy as np
from casatasks.private.imagerhelpers.imager_return_dict import ImagingDict

from ...imaging.imager_records import imager_parameters

# Planes read at once, per image (casatools hands them over as float64: twice this in memory). Larger
# blocks were slower, not faster (quiet machine, NGC5921 1024² × 63, tiles 7 planes deep): 1.7 s in
# 4 MiB blocks (one plane), 3.7-4.1 s in 28 MiB ones (a tile's depth), 5.7 s in 64 MiB ones, 14.8 s in
# 256 MiB ones (under load); casatasks' own reading took 2.5 s. 128² × 512 in 4 MiB blocks: 0.3 s.
BLOCK_BYTES = 4 * 2**20


def niter_zero_return(tclean_params: dict) -> dict:
    return _BlockReadImagingDict().construct_residual_dict(imager_parameters(tclean_params, tclean_params["imagename"]))


class _BlockReadImagingDict(ImagingDict):
    def __init__(self):
        super().__init__()
        self._blocks: dict[str, tuple[int, np.ndarray]] = {}  # image -> (first channel, planes)

    def fill_summary_minor(self, channo, stokes, stokes_axis, freq_axis, fullsummary):
        """casatasks' own arithmetic (6.6.5-6.7.5 alike), on planes from blocks."""
        data = self._plane(self.residname, channo, stokes, stokes_axis, freq_axis)
        mask = self._plane(self.maskname, channo, stokes, stokes_axis, freq_axis) if self.maskname else []
        model = self._plane(self.modelname, channo, stokes, stokes_axis, freq_axis)
        model_sum = 0 if model is None else np.sum(model)
        peak_resid = np.amax(data) if len(mask) == 0 else np.amax(data * mask)
        summary = {"iterDone": [0.0], "peakRes": [peak_resid], "modelFlux": [model_sum], "cycleThresh": [0.0]}
        if fullsummary:
            peak_resid_nm = np.amax(data)
            summary.update(cycleStartIters=[0.0], startIterDone=[0.0], startPeakRes=[peak_resid],
                           startModelFlux=[model_sum], startPeakResNM=[peak_resid_nm], peakResNM=[peak_resid_nm],
                           masksum=[np.sum(mask)], mpiServer=[0.0], stopCode=[3])
        return summary

    def _plane(self, path: str, channel: int, stokes: int, stokes_axis: int, freq_axis: int) -> np.ndarray | None:
        """One plane (x, y) of ``path``, None when the image does not exist (casatasks: model flux 0)."""
        from casatools import image

        if not os.path.exists(path):
            return None
        first, planes = self._blocks.get(path, (-1, None))
        if planes is None or not first <= channel < first + planes.shape[freq_axis]:
            ia = image()
            ia.open(path)
            try:
                shape = ia.shape()
                depth = max(1, BLOCK_BYTES // (4 * int(np.prod(shape)) // shape[freq_axis]))
                blc, trc = [0] * len(shape), [n - 1 for n in shape]
                blc[freq_axis], trc[freq_axis] = channel, min(channel + depth, shape[freq_axis]) - 1
                planes = ia.getchunk(blc, trc)
            finally:
                ia.close()
            first = channel
            self._blocks[path] = (first, planes)
        index = [slice(None)] * planes.ndim
        index[freq_axis], index[stokes_axis] = channel - first, stokes
        return planes[tuple(index)]
