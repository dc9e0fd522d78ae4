"""*How much* one imaging task needs: peak memory (and, once calibrated, wall time) of one chunk.

The default model is a sum of terms, each a measured constant times a quantity tclean's own code
allocates in proportion to (``benchmarks/memory_matrix.py`` measured them; docs/memory-policy.md
has the table):

* ``base``: the interpreter, casatools and dask in the worker.
* ``image_cube``: per pixel × Stokes plane × channel of the chunk: the gridder's complex grids,
  FFT work space and the image stores (residual, psf, model, pb, weight, sumwt) of every channel.
* ``weight_density``: per pixel × channel for any weighting but natural: the weight-density grid
  (one per channel, ``perchanweightdensity``).
* ``minor_cycle``: per pixel × Stokes plane when ``niter > 0``: the deconvolver works one channel at
  a time and keeps residual, psf, model and mask planes; ``multiscale_scale`` adds per scale
  (the smoothed residuals and scale-PSF cross terms); ``mem`` its own work planes; ``automask``
  auto-multithresh's work planes.
* ``mosaic_screens``: once per task for the mosaic gridder: SimplePBConvFunc's primary-beam
  screens and work images. Measured here about the same (≈ 2.7 GiB) for a 192², 512² and 1024²
  image: casacore keeps such an image in memory only when it fits in half the memory free on the
  node and moves it to disk (keeping a tile cache) otherwise, so this term follows the NODE's free
  memory more than the image: the probe measures it.
* ``wproject_cf``: w-projection's convolution function cube as WPConvFunc allocates it:
  8 B × (min(1.2 nx, cap) / 2)² × planes, where ``planes`` is ``wprojplanes`` or, for -1,
  1.05 × max w (wavelengths) × sin(cell × nx / 2), and CASA caps the cube at a quarter of the
  memory it sees on the node (HostInfo::memoryTotal): the term grows with the NODE, not the task.

A site's calibration (``hpc_imager calibrate``), fitted on its own workers, replaces the default
for the gridder and deconvolver it was fitted for; a probe (one real chunk measured first) replaces
both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import SiteProfile

GIB = 2**30
SPEED_OF_LIGHT = 299792458.0

# Measured constants (bytes per unit of each term's quantity), fitted by benchmarks/memory_matrix.py
# on 30 rows (benchmarks/results/memory_matrix.json, docs/memory-policy.md) and lifted so that no
# row is under 0.97 of its measure. ``mem`` was not measured (too slow here): its seed value is kept.
MEMORY_TERMS: dict[str, float] = {
    "base": 0.3959 * GIB,
    "image_cube": 48.08,
    "weight_density": 12.85,
    "minor_cycle": 37.45,
    "multiscale_scale": 27.27,
    "mem": 40.0,
    "automask": 34.37,
    "mosaic_screens": 2.901 * GIB,
    "wproject_cf": 0.6147,
}
# Each term's quantity, for the docs and the benchmark's table.
TERM_UNITS = {
    "base": "1",
    "image_cube": "pixel × Stokes × channel",
    "weight_density": "pixel × channel (weighting other than natural)",
    "minor_cycle": "pixel × Stokes (niter > 0)",
    "multiscale_scale": "pixel × Stokes × scale (multiscale, niter > 0)",
    "mem": "pixel × Stokes (mem, niter > 0)",
    "automask": "pixel × Stokes × channel (auto-multithresh, niter > 0)",
    "mosaic_screens": "1 (mosaic)",
    "wproject_cf": "byte of WPConvFunc's convolution-function cube (wproject, widefield)",
}
WEIGHTINGS_WITH_DENSITY = ("briggs", "briggsabs", "briggsbwtaper", "uniform", "superuniform")


@dataclass(frozen=True)
class MsFacts:
    """What the memory depends on that only the measurement set knows."""

    max_w_wavelengths: float = 0.0


@dataclass(frozen=True)
class TaskShape:
    """What decides one task's memory, from the cube's keywords, its chunk and its MS."""

    nx: int
    ny: int
    stokes_planes: int
    channels: int
    cell_rad: float = math.radians(15 / 3600)
    gridder: str = "standard"
    wprojplanes: int = 1
    facets: int = 1
    deconvolver: str = "hogbom"
    scales: int = 1
    niter: int = 0
    usemask: str = "user"
    weighting: str = "natural"
    ms: MsFacts = field(default_factory=MsFacts)
    casa_memory_bytes: int = 0  # memory CASA sees on the node (w-projection caps its cache at 1/4 of it)

    @property
    def pixels(self) -> int:
        return self.nx * self.ny

    @property
    def w_planes(self) -> int:
        """WPConvFunc's number of planes (its automatic rule for ``wprojplanes < 1``)."""
        if self.wprojplanes >= 1:
            return self.wprojplanes
        side = max(self.nx, self.ny) // self.facets
        return max(1, int(1.05 * self.ms.max_w_wavelengths * abs(math.sin(self.cell_rad * side / 2))))

    def w_cf_bytes(self) -> float:
        """WPConvFunc's convolution-function cube: 8 B × (min(1.2 n, cap) / 2)² × planes."""
        planes = self.w_planes
        if planes <= 1:
            return 0.0
        side = 1.2 * max(self.nx, self.ny) / self.facets
        if self.casa_memory_bytes:
            side = min(side, math.sqrt(self.casa_memory_bytes / 8 / planes))
        return 8.0 * (side / 2) ** 2 * planes



def memory_features(shape: TaskShape) -> dict[str, float]:
    """Each term's quantity for ``shape`` (multiplied by MEMORY_TERMS and summed)."""
    cube = shape.pixels * shape.stokes_planes * shape.channels
    plane = shape.pixels * shape.stokes_planes
    mosaic = "mosaic" in shape.gridder
    deconvolving = shape.niter > 0
    return {
        "base": 1.0,
        "image_cube": cube,
        "weight_density": shape.pixels * shape.channels if shape.weighting in WEIGHTINGS_WITH_DENSITY else 0.0,
        "minor_cycle": plane if deconvolving else 0.0,
        "multiscale_scale": plane * shape.scales if deconvolving and shape.deconvolver in ("multiscale", "mtmfs") else 0.0,
        "mem": plane if deconvolving and shape.deconvolver == "mem" else 0.0,
        "automask": cube if deconvolving and shape.usemask == "auto-multithresh" else 0.0,
        "mosaic_screens": 1.0 if mosaic else 0.0,
        "wproject_cf": shape.w_cf_bytes() if shape.gridder in ("wproject", "widefield") else 0.0,
    }


def task_peak_bytes(shape: TaskShape, terms: dict[str, float] = MEMORY_TERMS) -> float:
    return sum(terms[name] * value for name, value in memory_features(shape).items())


# --- from a cube.toml and a site ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEstimate:
    task_peak_gib: float
    task_seconds: float | None  # known only from a calibration or a probe
    pixels: int
    channels_per_task: int
    model: str  # "default", "calibration" or "probe"
    terms_gib: dict[str, float]  # each term's share of the peak (default model), else {}

    def as_dict(self) -> dict:
        return asdict(self)


def image_pixels(imsize) -> int:
    nx, ny = _sides(imsize)
    return nx * ny


def _sides(imsize) -> tuple[int, int]:
    if isinstance(imsize, int):
        return imsize, imsize
    return imsize[0], imsize[-1]


def stokes_planes(stokes: str) -> int:
    return 1 if stokes in ("I", "Q", "U", "V", "RR", "LL", "XX", "YY", "pseudoI") else len(stokes.replace("pseudo", ""))


def _cell_rad(cell) -> float:
    from casatools import quanta

    first = cell[0] if isinstance(cell, list) and cell else cell
    if isinstance(first, (int, float)):
        return math.radians(first / 3600)  # tclean: a number is arcsec
    if not first:
        return math.radians(1 / 3600)
    return quanta().convert(quanta().quantity(first), "rad")["value"]


def ms_facts(vis: str | list[str], gridder: str) -> MsFacts:
    """The largest |w| in wavelengths (w-projection's automatic planes), read from the MS with
    ms.range and its highest frequency: cheap, no data read."""
    from casatools import ms, table

    max_w = 0.0
    if gridder not in ("wproject", "widefield"):
        return MsFacts()
    tool, tb = ms(), table()
    for path in [vis] if isinstance(vis, str) else list(vis):
        tb.open(f"{path}/SPECTRAL_WINDOW")
        max_freq = max(float(tb.getcell("CHAN_FREQ", r).max()) for r in range(tb.nrows()))
        tb.close()
        tool.open(path)
        max_w = max(max_w, float(abs(tool.range(["w"])["w"]).max()) * max_freq / SPEED_OF_LIGHT)
        tool.close()
    return MsFacts(max_w_wavelengths=max_w)


def cube_facts(spec: CubeSpec) -> MsFacts:
    """:func:`ms_facts` for the cube's own MS and selection."""
    return ms_facts(spec.tclean.vis, spec.tclean.gridder)


def task_shape(spec: CubeSpec, facts: MsFacts, casa_memory_bytes: int = 0) -> TaskShape:
    tclean = spec.tclean
    nx, ny = _sides(tclean.imsize)
    return TaskShape(
        nx=nx, ny=ny, stokes_planes=stokes_planes(tclean.stokes), channels=spec.parallel.channels_per_task,
        cell_rad=_cell_rad(tclean.cell), gridder=tclean.gridder, wprojplanes=tclean.wprojplanes,
        facets=tclean.facets, deconvolver=tclean.deconvolver, scales=max(1, len(tclean.scales)),
        niter=tclean.niter, usemask=tclean.usemask, weighting=tclean.weighting, ms=facts,
        casa_memory_bytes=casa_memory_bytes)


def estimate_task(spec: CubeSpec, site: SiteProfile, facts: MsFacts | None = None) -> TaskEstimate:
    """Peak memory of one task of ``channels_per_task`` channels on this site.

    ``facts`` comes from :func:`ms_facts` (the caller reads the MS once); without it the model
    assumes one field and no w-term cache.
    """
    tclean = spec.tclean
    pixels = image_pixels(tclean.imsize) * stokes_planes(tclean.stokes)
    nchan = spec.parallel.channels_per_task
    calibration = site.calibration_for(tclean.gridder, tclean.deconvolver)
    if calibration:
        peak = calibration.base_gib + calibration.bytes_per_pixel_channel * pixels * nchan / GIB
        seconds = None
        if calibration.seconds_per_megapixel_channel:
            seconds = calibration.seconds_base + calibration.seconds_per_megapixel_channel * pixels * nchan / 1e6
        return TaskEstimate(peak, seconds, pixels, nchan, "calibration", {})
    shape = task_shape(spec, facts or MsFacts(), site.node_memory_bytes)
    shares = {name: MEMORY_TERMS[name] * value / GIB for name, value in memory_features(shape).items() if value}
    return TaskEstimate(sum(shares.values()), None, pixels, nchan, "default", shares)


# A probe measures one chunk of the real cube; the other chunks of the same size differ only in
# their data, which moves tclean's peak by a few per cent (minor cycles, masks): this margin covers
# it, and the plan's retry with more memory covers the rest.
PROBE_MARGIN = 1.05
# A chunk this much over its estimate, or under this fraction of it, is worth a warning.
OVER_ESTIMATE_WARNING = 1.20
UNDER_ESTIMATE_WARNING = 0.5


def probe_wanted(spec: CubeSpec, site: SiteProfile, plan) -> bool:
    """``[parallel] probe``: "auto" probes where the site has no calibration for the cube's gridder
    and deconvolver (the default model cannot know everything a cube may do: see the module
    docstring) and the measured need could change ``plan`` (``Plan.sized_by_need``)."""
    if spec.parallel.probe == "auto":
        return site.calibration_for(spec.tclean.gridder, spec.tclean.deconvolver) is None and plan.sized_by_need()
    return spec.parallel.probe


def probed_estimate(spec: CubeSpec, metrics: dict) -> TaskEstimate:
    """The estimate for the cube's chunks from one chunk measured on a worker (the probe)."""
    tclean = spec.tclean
    pixels = image_pixels(tclean.imsize) * stokes_planes(tclean.stokes)
    channels = spec.parallel.channels_per_task
    if metrics["channels"] != channels:
        raise ValueError(f"a probe must image a whole chunk of {channels} channels, not {metrics['channels']}")
    peak = metrics["peak_rss_bytes"] * PROBE_MARGIN / GIB
    return TaskEstimate(peak, metrics["wall_seconds"], pixels, channels, "probe", {})


def memory_surprise(estimated_gib: float, measured_gib: float) -> str | None:
    """A one-line warning when a chunk's measured peak is far from its estimate, else None."""
    if measured_gib > estimated_gib * OVER_ESTIMATE_WARNING:
        return (f"took {measured_gib:.2f} GiB, {measured_gib / estimated_gib - 1:.0%} over its estimate "
                f"{estimated_gib:.2f} GiB")
    if measured_gib < estimated_gib * UNDER_ESTIMATE_WARNING:
        return f"took {measured_gib:.2f} GiB, under half its estimate {estimated_gib:.2f} GiB"
    return None


# --- fitting the terms (benchmarks/memory_matrix.py) ---------------------------------------------


FIT_FLOOR = 0.97


def fit_memory_terms(samples: list[tuple[TaskShape, float]]) -> dict[str, float]:
    """Non-negative least squares of the terms on relative error (every row weighs the same),
    then scaled so the lowest estimate/measured ratio is FIT_FLOOR: the target is 0.95…1.20 for
    every row, and a shared site's limit adds ``memory_headroom`` (1.25) on top of the estimate."""
    import numpy as np
    from scipy.optimize import nnls

    names = list(MEMORY_TERMS)
    features = np.array([[memory_features(s)[n] for n in names] for s, _ in samples], dtype=float)
    peaks = np.array([p for _, p in samples], dtype=float)
    used = features.any(axis=0)
    scale = np.where(used, features.max(axis=0), 1.0)
    solution, _ = nnls(features[:, used] / scale[used] / peaks[:, None], np.ones(len(peaks)))
    constants = dict.fromkeys(names, 0.0)
    for name, value in zip([n for n, u in zip(names, used) if u], solution / scale[used]):
        constants[name] = float(value)
    ratios = np.array([task_peak_bytes(s, constants) for s, _ in samples]) / peaks
    lift = FIT_FLOOR / ratios.min()
    return {name: value * lift for name, value in constants.items()}


def leave_one_out(samples: list[tuple[TaskShape, float]]) -> list[float]:
    """estimate/measured for each sample under terms fitted on all the others."""
    ratios = []
    for index, (shape, peak) in enumerate(samples):
        constants = fit_memory_terms(samples[:index] + samples[index + 1:])
        ratios.append(task_peak_bytes(shape, constants) / peak)
    return ratios
