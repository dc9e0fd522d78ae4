"""*How much* one imaging task needs: peak memory (and, once calibrated, wall time) of one chunk.

The default model is a sum of terms, each a measured constant times a quantity tclean's own code
allocates in proportion to (``benchmarks/memory_matrix.py`` measured them; docs/memory-policy.md
has the table). A task's peak is the largest of its moments (``memory_phases``), not the sum of all
terms: some of CASA's big buffers are freed before others are filled.

* ``gridding``: every task: the gridder's buffers and what the other moments keep.
* ``w_kernels`` (wproject, widefield): WPConvFunc computing the w-projection kernels with full-size
  work buffers, before the gridder's own are filled: ``base``, ``wproject_cf`` with its work buffers
  and ``w_kernels_cube``. Measured: wproject16-2048-4 peaked where std-2048-4 did (1.08 GiB);
  4 channels, Briggs and Clark (combo-wproject-1-briggs-clark-2048-4, 1.97 GiB) added 0.07 GiB to
  wproject-1-2048-1 (1 channel, natural, no minor cycle), and Briggs and Clark alone nothing
  (wproject-1-2048-4, 1.99 GiB), where 3 more channels alone added 0.46 GiB to a standard-gridder
  task (hogbom-2048-1 0.66 GiB, hogbom-2048-4 1.12).
* ``multiscale`` (multiscale, niter > 0): the minor cycle's scale images, once the gridder's
  buffers are gone: ``base``, ``weight_density``, ``minor_cycle``, ``multiscale_scale``,
  ``multiscale_cube`` and what the gridder keeps. Measured: 3 scales added 0.42 GiB to
  hogbom-2048-1 (one 2048² channel) and 0.16 to hogbom-2048-4, but 0.004 to hogbom-1024-4 and
  0.017 to hogbom-1024-16, whose gridding moment is the larger; multiscale3-2048-16 took what
  wproject-1-2048-16's gridding did (3.18 GiB).

* ``base``: the interpreter, casatools and dask in the worker.
* ``image_cube``: per pixel × Stokes plane × channel of the chunk: the gridder's complex grids,
  FFT work space and the image stores (residual, psf, model, pb, weight, sumwt) of every channel.
* ``weight_density``: per pixel × channel for any weighting but natural: the weight-density grid
  (one per channel, ``perchanweightdensity``).
* ``minor_cycle``: per pixel × Stokes plane when ``niter > 0``: the deconvolver works one channel at
  a time and keeps residual, psf, model and mask planes; ``multiscale_scale`` per scale (the
  smoothed residuals and scale-PSF cross terms, in the ``multiscale`` moment); ``automask``
  auto-multithresh's work planes, one channel's worth whatever the chunk's channels (measured: it
  added 0.15 GiB to std-1024-4, 0.14 to std-1024-16, 0.63 to std-2048-4).
* ``mem`` (deconvolver mem, niter > 0): per channel of the chunk, whatever the image: measured, it added
  0.09 GiB to hogbom-1024-4 (4 channels) and 0.02 to hogbom-2048-1 (one channel, 4 × the pixels);
  what it holds is not known.
* ``mosaic_screens``: once per task for the mosaic gridder: SimplePBConvFunc's primary-beam
  screens and work images. Measured here about the same (≈ 2.7 GiB over the standard gridder) for
  192²…1024² images and 1, 4 or 9 pointings: casacore keeps such an image in memory only when it
  fits in half the memory free on the node and moves it to disk (keeping a tile cache) otherwise,
  so this term follows the NODE's free memory as much as the image: the probe measures it.
  ``mosaic_plane`` per pixel × Stokes plane on top, one channel's worth: measured,
  mosaic-ngc-2048-1 (one channel) took 4.47 GiB against mosaic-ngc-1024-4's 3.26 (the same pixels
  × channels, so the same ``image_cube``), mosaic-ngc-4096-1 8.64.
* ``wproject_cf``: bytes WPConvFunc (CASA 6.7) allocates for the w-projection kernels, ``planes``
  of them (``wprojplanes`` or, for -1, 1.05 × max w (wavelengths) × sin(cell × nx / 2)). In both
  moments the kernels it keeps, trimmed to the support of the largest w: 8 B × (4 (support + 2) − 1)²
  × planes. While it computes them (``w_kernels``) also its work buffers, sized by the padded side
  cs (the even 2-3-5 composite above 1.2 nx): FFTPack's table and a first screen (16 B × cs²), a
  screen and an FFT work array per OpenMP thread (16 B × cs² each), and one chunk of at most 100
  planes of the untrimmed cube (2 B × cs² a plane), fewer when 100 would not fit in a quarter of the
  memory CASA sees on the node (HostInfo): that part grows with the NODE, not the task. Measured:
  205 planes at 2048² peaked at 1.90 GiB, where the whole untrimmed cube alone is 2.4 GiB.
* ``w_kernels_cube``: per pixel × Stokes plane × channel while WPConvFunc computes the kernels
  (what the chunk's channels hold by then). Measured: 3 more 2048² channels added 0.09…0.15 GiB
  at 64 and 205 planes.
* ``multiscale_cube``: the same in the multiscale moment. Measured: 3 more 2048² channels added
  0.20 GiB to multiscale3-2048-1 (1.08 → 1.28 GiB).

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
# on 66 rows (benchmarks/results/memory_matrix.json, docs/memory-policy.md) and lifted so that no
# row is under FIT_FLOOR (0.98) of its measure. ``wproject_cf`` counts bytes CASA allocates: its
# fit near 1 says that count is right.
MEMORY_TERMS: dict[str, float] = {
    "base": 0.3887 * GIB,
    "image_cube": 45.46,
    "weight_density": 12.44,
    "minor_cycle": 28.04,
    "multiscale_scale": 44.4,
    "mem": 0.02647 * GIB,
    "automask": 136.1,
    "mosaic_screens": 2.557 * GIB,
    "mosaic_plane": 355.0,
    "wproject_cf": 0.9665,
    "w_kernels_cube": 11.18,
    "multiscale_cube": 18.1,
}
# Each term's quantity, for the docs and the benchmark's table.
TERM_UNITS = {
    "base": "1",
    "image_cube": "pixel × Stokes × channel",
    "weight_density": "pixel × channel (weighting other than natural)",
    "minor_cycle": "pixel × Stokes (niter > 0)",
    "multiscale_scale": "pixel × Stokes × scale (multiscale, niter > 0; its own moment)",
    "mem": "channel (mem, niter > 0)",
    "automask": "pixel × Stokes (auto-multithresh, niter > 0)",
    "mosaic_screens": "1 (mosaic)",
    "mosaic_plane": "pixel × Stokes (mosaic)",
    "wproject_cf": "byte WPConvFunc holds: kernels kept, its work buffers while it computes them (wproject, widefield)",
    "w_kernels_cube": "pixel × Stokes × channel (while WPConvFunc computes the kernels)",
    "multiscale_cube": "pixel × Stokes × channel (in a multiscale minor cycle)",
}
WEIGHTINGS_WITH_DENSITY = ("briggs", "briggsabs", "briggsbwtaper", "uniform", "superuniform")
# How far the default model's figure may fall short of a task's real peak: ``Plan.sized_by_need``
# asks whether a need this much larger would change the plan (whether a probe is worth it). Inside
# what benchmarks/memory_matrix.py measured, the refit model is within 0.95…1.16 of every row left
# out of the fit in turn (docs/memory-policy.md). Outside it (widefield, and several Stokes planes
# with a minor cycle, both failing inside tclean 6.7; a task larger than any measured with its
# gridder) the first model's measured miss stays: it said 1.73 GiB for a 4096² mosaic that took
# 8.56 GiB (× 4.9).
REFIT_SHORTFALL = 1.25
UNMEASURED_SHORTFALL = 5.0
# The largest task (pixels × Stokes planes × channels) the matrix measured with each gridder:
# std-8192-1, wproject16-8192-1-omp1, mosaic-ngc-4096-1 and mosaic-ngc-2048-4.
MEASURED_TASK_SIZE = {"standard": 8192**2, "wproject": 8192**2, "mosaic": 4096**2}


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
    casa_memory_bytes: int = 0  # memory CASA sees on the node (w-projection's work chunk fits in 1/4 of it)
    omp_threads: int = 1  # OpenMP threads CASA runs (a dask worker's nanny sets OMP_NUM_THREADS=1)

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

    @property
    def w_projecting(self) -> bool:
        return self.gridder in ("wproject", "widefield") and self.w_planes > 1

    @property
    def w_padded_side(self) -> int:
        """WPConvFunc's screen side: the even 2-3-5 composite above 1.2 × the (facet's) side."""
        return next_even_composite(int(max(self.nx, self.ny) // self.facets * W_PADDING))

    @property
    def w_support(self) -> int:
        """Kernel support (uv cells) at the largest w: 2.5 × 1.05 max w × sin²(cell × side / 2) + 5, which
        follows the supports CASA logged for NGC5921 (15 at 1024², 41…49 at 2048², 167 at 4096²),
        and at most WPConvFunc's own limit cs / 8 − 1."""
        side = max(self.nx, self.ny) // self.facets
        w = 1.05 * self.ms.max_w_wavelengths * math.sin(self.cell_rad * side / 2) ** 2
        return min(int(2.5 * w) + 5, self.w_padded_side // 8 - 1)

    def w_kept_bytes(self) -> float:
        """The kernels WPConvFunc keeps for gridding: 8 B × (4 (support + 2) − 1)² × planes."""
        return 8.0 * (4 * (self.w_support + 2) - 1) ** 2 * self.w_planes

    def w_work_bytes(self) -> float:
        """WPConvFunc's work buffers while it computes the kernels: FFTPack's table and a screen,
        a screen and an FFT work array per thread, one chunk of the untrimmed cube: at most 100
        planes, and at most a quarter of the memory CASA sees (the smaller of the node's total and
        free memory, taken here as the node's total) or of 4000 MB, whichever is more."""
        side2 = float(self.w_padded_side) ** 2
        chunk = min(self.w_planes, W_PLANES_PER_CHUNK)
        if self.casa_memory_bytes:
            chunk = min(chunk, max(1, int(max(self.casa_memory_bytes, W_MIN_MEMORY) / 8 / side2)))
        return 16.0 * side2 * (1 + self.omp_threads) + 2.0 * side2 * chunk


W_PADDING = 1.2  # tclean's default padding
W_PLANES_PER_CHUNK = 100  # WPConvFunc computes at most this many untrimmed planes at a time
W_MIN_MEMORY = 4000 * 2**20  # WPConvFunc assumes at least 4000 MB when it sizes its chunks


def next_even_composite(n: int) -> int:
    """casacore's CompositeNumber::nextLargerEven: the first even number above n whose only prime
    factors are 2, 3 and 5."""
    value = n + 1 + (n + 1) % 2
    while True:
        rest = value
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return value
        value += 2


def memory_phases(shape: TaskShape) -> dict[str, dict[str, float]]:
    """Each moment's term quantities for ``shape`` (multiplied by MEMORY_TERMS and summed, the peak
    is the largest): ``gridding`` always, ``w_kernels`` when w-projection computes kernels,
    ``multiscale`` for a multiscale minor cycle."""
    cube = shape.pixels * shape.stokes_planes * shape.channels
    plane = shape.pixels * shape.stokes_planes
    deconvolving = shape.niter > 0
    shared = {  # held in the gridding and the multiscale moments alike
        "base": 1.0,
        "weight_density": shape.pixels * shape.channels if shape.weighting in WEIGHTINGS_WITH_DENSITY else 0.0,
        "minor_cycle": plane if deconvolving else 0.0,
        "mosaic_screens": 1.0 if "mosaic" in shape.gridder else 0.0,
        "mosaic_plane": plane if "mosaic" in shape.gridder else 0.0,
        "wproject_cf": shape.w_kept_bytes() if shape.w_projecting else 0.0,
    }
    none = dict.fromkeys(MEMORY_TERMS, 0.0)
    phases = {"gridding": none | shared | {
        "image_cube": cube,
        "mem": shape.channels if deconvolving and shape.deconvolver == "mem" else 0.0,
        "automask": plane if deconvolving and shape.usemask == "auto-multithresh" else 0.0,
    }}
    if shape.w_projecting:
        phases["w_kernels"] = none | {"base": 1.0, "w_kernels_cube": cube,
                                      "wproject_cf": shared["wproject_cf"] + shape.w_work_bytes()}
    if deconvolving and shape.deconvolver in ("multiscale", "mtmfs"):
        phases["multiscale"] = none | shared | {"multiscale_scale": plane * shape.scales, "multiscale_cube": cube}
    return phases


def phase_bytes(quantities: dict[str, float], terms: dict[str, float]) -> float:
    return sum(terms[name] * value for name, value in quantities.items())


def peak_phase(shape: TaskShape, terms: dict[str, float] = MEMORY_TERMS) -> tuple[str, dict[str, float]]:
    """The moment that sets ``shape``'s peak under ``terms``: its name and its term quantities."""
    return max(memory_phases(shape).items(), key=lambda phase: phase_bytes(phase[1], terms))


def model_shortfall(shape: TaskShape) -> float:
    """``REFIT_SHORTFALL`` for a task like the memory matrix's rows, ``UNMEASURED_SHORTFALL`` else."""
    size = shape.pixels * shape.stokes_planes * shape.channels
    measured = size <= MEASURED_TASK_SIZE.get(shape.gridder, 0) and (shape.stokes_planes == 1 or shape.niter == 0)
    return REFIT_SHORTFALL if measured else UNMEASURED_SHORTFALL


def task_peak_bytes(shape: TaskShape, terms: dict[str, float] = MEMORY_TERMS) -> float:
    return phase_bytes(peak_phase(shape, terms)[1], terms)


# --- from a cube.toml and a site ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEstimate:
    task_peak_gib: float
    task_seconds: float | None  # known only from a calibration or a probe
    pixels: int
    channels_per_task: int
    model: str  # "default", "calibration" or "probe"
    terms_gib: dict[str, float]  # each term's share of the peak (default model), else {}
    shortfall: float  # how far task_peak_gib may fall short: 1 where measured on the site's workers

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
        return TaskEstimate(peak, seconds, pixels, nchan, "calibration", {}, 1.0)
    shape = task_shape(spec, facts or MsFacts(), site.node_memory_bytes)
    shares = {name: MEMORY_TERMS[name] * value / GIB for name, value in peak_phase(shape)[1].items() if value}
    return TaskEstimate(sum(shares.values()), None, pixels, nchan, "default", shares, model_shortfall(shape))


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
    return TaskEstimate(peak, metrics["wall_seconds"], pixels, channels, "probe", {}, 1.0)


def memory_surprise(estimated_gib: float, measured_gib: float) -> str | None:
    """A one-line warning when a chunk's measured peak is far from its estimate, else None."""
    if measured_gib > estimated_gib * OVER_ESTIMATE_WARNING:
        return (f"took {measured_gib:.2f} GiB, {measured_gib / estimated_gib - 1:.0%} over its estimate "
                f"{estimated_gib:.2f} GiB")
    if measured_gib < estimated_gib * UNDER_ESTIMATE_WARNING:
        return f"took {measured_gib:.2f} GiB, under half its estimate {estimated_gib:.2f} GiB"
    return None
