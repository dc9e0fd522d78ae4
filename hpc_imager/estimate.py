"""*How much* one imaging task needs: peak memory (and, once calibrated, wall time) of one chunk.

The model: a worker's peak RSS while tclean images a chunk is a base (the interpreter, dask,
casatools) plus a number of bytes per image pixel per channel of the chunk, scaled for the gridder
and the deconvolver. A site's calibration (``hpc_imager calibrate``), fitted on its own workers,
replaces the default constants for the gridder and deconvolver it was fitted for.

Default constants, measured on this project's machines (NGC5921, standard gridder, hogbom, peak
RSS of a dask worker process from /proc's VmHWM): 256²×4 ch → 0.35 GiB, 1024²×4 → 0.53 GiB,
1024²×16 → 1.04 GiB: 0.36 GiB + 44 B per pixel per channel. The gridder and deconvolver factors
are the seed heuristic's and have not been measured here: calibrate before trusting them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .cube_spec import CubeSpec
from .site_profile import SiteProfile

GIB = 2**30
DEFAULT_BASE_GIB = 0.36
DEFAULT_BYTES_PER_PIXEL_CHANNEL = 44.0

# Relative to the standard gridder (heuristics from the original estimator; not measured here).
GRIDDER_FACTOR = {"standard": 1.0, "wproject": 1.2, "widefield": 1.3, "mosaic": 2.0, "awproject": 2.5,
                  "awp2": 2.5, "awphpg": 2.5}
# Relative to hogbom: multiscale keeps an image per scale (heuristic, not measured here).
DECONVOLVER_FACTOR = {"hogbom": 1.0, "clark": 1.0, "clarkstokes": 1.0, "multiscale": 1.5, "asp": 1.5, "mem": 1.2}


@dataclass(frozen=True)
class TaskEstimate:
    task_peak_gib: float
    task_seconds: float | None  # known only from a calibration
    pixels: int
    channels_per_task: int
    model: str  # "calibration" or "default"
    base_gib: float
    bytes_per_pixel_channel: float
    factor: float

    def as_dict(self) -> dict:
        return asdict(self)


def image_pixels(imsize) -> int:
    nx, ny = (imsize, imsize) if isinstance(imsize, int) else (imsize[0], imsize[-1])
    return nx * ny


def stokes_planes(stokes: str) -> int:
    return 1 if stokes in ("I", "Q", "U", "V", "RR", "LL", "XX", "YY", "pseudoI") else len(stokes.replace("pseudo", ""))


def mosaic_fields(spec: CubeSpec) -> int:
    """Fields the mosaic gridder will grid (asks the MS; 1 for other gridders)."""
    if "mosaic" not in spec.tclean.gridder:
        return 1
    from casatools import ms

    tool = ms()
    vis = spec.tclean.vis if isinstance(spec.tclean.vis, str) else spec.tclean.vis[0]
    selected = tool.msseltoindex(vis=vis, field=spec.tclean.field if isinstance(spec.tclean.field, str) else ",".join(spec.tclean.field))
    tool.done()
    return max(1, len(selected["field"]))


def estimate_task(spec: CubeSpec, site: SiteProfile, fields: int = 1) -> TaskEstimate:
    """Peak memory of one task of ``channels_per_task`` channels on this site."""
    tclean = spec.tclean
    pixels = image_pixels(tclean.imsize) * stokes_planes(tclean.stokes)
    nchan = spec.parallel.channels_per_task
    calibration = site.calibration_for(tclean.gridder, tclean.deconvolver)
    if calibration:
        base, per_pixel, factor, model = calibration.base_gib, calibration.bytes_per_pixel_channel, 1.0, "calibration"
    else:
        factor = GRIDDER_FACTOR.get(tclean.gridder, 1.0) * DECONVOLVER_FACTOR.get(tclean.deconvolver, 1.0)
        if fields > 1:
            factor *= 1.0 + 0.1 * (math.sqrt(fields) - 1.0)  # mosaic convolution functions per field
        base, per_pixel, model = DEFAULT_BASE_GIB, DEFAULT_BYTES_PER_PIXEL_CHANNEL, "default"
    peak = base + per_pixel * factor * pixels * nchan / GIB
    seconds = None
    if calibration and calibration.seconds_per_megapixel_channel:
        seconds = calibration.seconds_base + calibration.seconds_per_megapixel_channel * pixels * nchan / 1e6
    return TaskEstimate(peak, seconds, pixels, nchan, model, base, per_pixel, factor)
