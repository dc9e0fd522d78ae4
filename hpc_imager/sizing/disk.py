"""Disk: what a run writes (refused up front when a file system cannot hold it), and what its chunks read.

Every product is a casacore image of float32 pixels (4 B per pixel per Stokes plane per channel),
tiled; ``image``, ``residual``, ``pb`` and ``image.pbcor`` add a pixel mask of one bit each. Measured
on NGC5921 256²×63: the pixel files are exactly those bytes (casacore's default tiles divide these
shapes; 250²×61 pads the channel axis to 65, +6.6 %, which this does not count), and the rest of an
image adds its table and log table (about 117 KB, see IMAGE_OVERHEAD) and, in ``image`` and ``psf``,
about 560 B per plane for the plane's beam.

Where the bytes are at the run's peak (run/concat.py, imaging/imaging_task.py, imaging/cycle_tasks.py):
every chunk's part stays in ``<run>/parts`` until the cube is in place, and the staged cube fills
``<run>/assembled`` beside them; moving it to ``imagename`` is a rename on the same file system and
a copy on another. Whole-cube iteration keeps each chunk's latest cycle images in ``<run>/iteration``
until the last chunk is restored (and, while a step runs, a copy of one cycle more). Measured peaks
of ``du`` on NGC5921 256²×63 in 8-channel chunks, against this model's: 171.9 MB at niter 0 (174.9),
209.2 MB cleaning per chunk (208.9), 291.9 MB in whole-cube iteration (298.3; 22883 iterations, its
``iteration`` folder at most 171.3 MB, two copies of the cycle images 178.7).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dask.utils import format_bytes, parse_bytes

from ..errors import UserError
from ..imaging.channel_grid import Chunk
from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import SiteProfile
from .estimate import image_pixels, stokes_planes

PIXEL_BYTES = 4  # float32
MASKED = ("image", "residual", "pb", "image.pbcor")  # products with a pixel mask (one bit per pixel)
BEAMS = ("image", "psf")  # products whose table keeps a beam per plane
# An image's table, log table and keywords, as ``du -sb`` counts them: measured 116.7-117.5 KB for a
# final product and for a part trimmed of its guard channel (a copy, with a longer log table); 51 KB
# for a part as its chunk made it (NGC5921 in 1-channel chunks without guards: parts 105.1 MB by du,
# 129.5 MB counted at 117 KB an image). A pixel mask's table adds 5.5 KB.
IMAGE_OVERHEAD = 117_000
PART_OVERHEAD = 51_000
MASK_OVERHEAD = 5_500
BEAM_BYTES = 560  # a plane's beam in the table's keywords (measured 557 B)
FITS_BLOCK = 2880
# A virtual product (run/concat.py's VirtualAssembly) is a folder with imageconcat.json naming its parts
# by absolute path: a few hundred bytes per part (generous: paths under a long run directory).
VIRTUAL_PRODUCT_BYTES, VIRTUAL_BYTES_PER_PART = 4_000, 400
# The products [run] fits = true also writes as FITS (run/concat.py's exportfits), beside the CASA images.
FITS_PRODUCTS = ("image", "image.pbcor")
MOSAIC_GRIDDERS = ("mosaic", "mosaicft", "awproject", "awp2", "awphpg")


class DiskRefused(UserError):
    """A file system the run writes to cannot hold what it will write; the message gives both figures."""


def products(spec: CubeSpec) -> list[str]:
    """The products tclean makes for this cube (run/concat.py assembles each of them)."""
    tclean = spec.tclean
    made = ["psf", "pb", "sumwt", "residual", "model", "image"]
    if tclean.niter > 0 or tclean.usemask != "user" or tclean.mask:
        made.append("mask")
    if tclean.gridder in MOSAIC_GRIDDERS:
        made.append("weight")
    if tclean.pbcor:
        made.append("image.pbcor")
    return made


def image_bytes(spec: CubeSpec, product: str, nchan: int, overhead: int = IMAGE_OVERHEAD) -> int:
    """One product of ``nchan`` channels on disk."""
    planes = stokes_planes(spec.tclean.stokes) * nchan
    pixels = planes if product == "sumwt" else image_pixels(spec.tclean.imsize) * planes  # sumwt: one per plane
    mask = -(-pixels // 8) + MASK_OVERHEAD if product in MASKED else 0
    beams = BEAM_BYTES * planes if product in BEAMS else 0
    return PIXEL_BYTES * pixels + mask + beams + overhead


@dataclass(frozen=True)
class DiskNeed:
    """Bytes the run writes, by where they are at its peak."""

    products_bytes: int  # the final products at imagename (and staged in <run>/assembled until moved there)
    parts_bytes: int  # every chunk's part in <run>/parts
    iteration_bytes: int  # whole-cube iteration: the chunks' cycle images in <run>/iteration
    assembly: str = "placed"  # virtual: no staged cube; the products name the parts, which stay

    @property
    def staged_bytes(self) -> int:
        return self.products_bytes if self.assembly == "placed" else 0

    @property
    def run_directory_bytes(self) -> int:
        """The run directory at its peak: the parts, the staged cube and the cycle images at once (when
        the last chunk is restored), or two copies of the cycle images in a step, whichever is more."""
        return max(self.parts_bytes + self.staged_bytes + self.iteration_bytes, 2 * self.iteration_bytes)

    def as_dict(self) -> dict:
        return asdict(self) | {"run_directory_bytes": self.run_directory_bytes}

    def summary(self) -> str:
        text = (f"disk: final products {format_bytes(self.products_bytes)}; run directory up to "
                f"{format_bytes(self.run_directory_bytes)} (parts {format_bytes(self.parts_bytes)}"
                + (f", staged cube {format_bytes(self.products_bytes)}" if self.assembly == "placed"
                   else ", kept: the virtual cube reads them"))
        if self.iteration_bytes:
            text += f", cycle images {format_bytes(self.iteration_bytes)}"
        return text + ")"


def disk_need(spec: CubeSpec, chunks: list[Chunk], assembly: str = "placed") -> DiskNeed:
    """What the run writes for ``chunks`` (guard channels are trimmed before a part is kept), its cube
    assembled by copying the parts into place or (``virtual``) as CASA's virtual concatenation."""
    made = products(spec)
    nchan = sum(c.nchan for c in chunks)
    if assembly == "virtual":
        final = len(made) * (VIRTUAL_PRODUCT_BYTES + VIRTUAL_BYTES_PER_PART * len(chunks))
    else:
        final = sum(image_bytes(spec, p, nchan) for p in made)
    if spec.run.fits:  # the same float32 pixels again, and a header of FITS's 2880-byte blocks
        pixels = image_pixels(spec.tclean.imsize) * stokes_planes(spec.tclean.stokes) * nchan
        final += sum(PIXEL_BYTES * pixels + 2 * FITS_BLOCK for p in made if p in FITS_PRODUCTS)
    parts = sum(image_bytes(spec, p, c.nchan, IMAGE_OVERHEAD if c.guard else PART_OVERHEAD)
                for c in chunks for p in made)
    # cycle images: every product but the restored ones, as a part of its chunk holds them
    cycling = [p for p in made if not p.startswith("image")]
    iteration = (sum(image_bytes(spec, p, c.nchan + c.guard) for c in chunks for p in cycling)
                 if spec.iteration == "cube" else 0)
    return DiskNeed(products_bytes=final, parts_bytes=parts, iteration_bytes=iteration, assembly=assembly)


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = _existing(path).resolve()
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def _bytes_under(path: Path) -> int:
    """What is already written there (a resumed run's parts, staged cube and cycle images)."""
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def check_disk(cubes: list[tuple[DiskNeed, CubeSpec]], site: SiteProfile) -> None:
    """Refuse (``DiskRefused``) when the run directory's or the products' file system has less room than
    the run will write there, less what it has written already; the site's ``disk_quota`` caps what
    a file system offers (a quota that its free space does not show). The cubes of one submission share
    the workers and interleave, so their peaks can coincide: what they need on one file system is summed."""
    quota = parse_bytes(site.disk_quota) if site.disk_quota else None
    wanted: dict[int, list] = {}  # device: [a path on it, bytes still to write there, the cubes' summaries]
    for need, spec in cubes:
        for device, (where, needed) in _cube_wants(need, spec).items():
            mine = wanted.setdefault(device, [where, 0, []])
            mine[1] += needed
            mine[2].append(f"{spec.run_directory}: {need.summary()}" if len(cubes) > 1 else need.summary())
    for where, needed, summaries in wanted.values():
        stats = os.statvfs(_existing(where))
        free = stats.f_bavail * stats.f_frsize
        offered = free if quota is None else min(free, quota)
        if needed > offered:
            capped = " (the site's disk_quota)" if offered < free else ""
            who = (f"{where} needs" if len(summaries) == 1
                   else f"the {len(summaries)} cubes of this submission writing there need")
            raise DiskRefused(
                f"the file system on {mount_point(where)} has {format_bytes(offered)} free{capped} but {who} "
                f"{format_bytes(needed)} ({'; '.join(summaries)}); free some space there or choose another "
                "[run] directory or imagename")


def _cube_wants(need: DiskNeed, spec: CubeSpec) -> dict[int, tuple[Path, int]]:
    """One cube's bytes still to write, by file system: its run directory's and its products' (on one
    file system the staged cube is renamed into place: the larger of the two), less what a resumed run
    has written already (its parts, staged cube and cycle images, its products)."""
    run_dir = spec.run_directory
    product_dir = Path(spec.tclean.imagename).absolute().parent
    wanted: dict[int, list] = {}
    for where, needed in ((run_dir, need.run_directory_bytes), (product_dir, need.products_bytes)):
        device = _existing(where).stat().st_dev
        if device in wanted:
            wanted[device][1] = max(wanted[device][1], needed)
        else:
            wanted[device] = [where, needed]
    written: dict[int, int] = {}
    for path in [run_dir, *(Path(f"{spec.tclean.imagename}.{p}") for p in products(spec))]:
        if path.exists():
            device = path.stat().st_dev
            written[device] = written.get(device, 0) + _bytes_under(path)
    return {device: (where, max(0, needed - written.get(device, 0))) for device, (where, needed) in wanted.items()}


# The run's reads, as a multiple of the MS's bytes, above which the summary says so.
READ_WARNING = 4.0
# ... and only where the reading costs time: NGC5921's 36.5 MB MS is read 18-75 times over by every run
# (each chunk reads the main table whole), from the page cache, which no user need be told about.
READ_WARNING_BYTES = 10 * 2**30


def ms_bytes(vis: str | list[str]) -> int:
    """The measurement sets' bytes on disk: what every chunk reads (see :func:`read_amplification`)."""
    return sum(_bytes_under(Path(path)) for path in ([vis] if isinstance(vis, str) else vis))


def read_amplification(chunk_metrics: list[dict], vis: str | list[str], nchan: int) -> dict:
    """What the chunks read (``read_chars``: the MS, and the images the task writes and reads back)
    against the MS: each chunk's figure over its share of the MS (its channels' fraction of the MS's
    bytes) added to its metrics, and the run's total over the MS's bytes. A chunk reads the MS's rows
    whole, every channel, whatever it selects: on NGC5921 (36.5 MB) strace counted 35.4 MB read from
    its main table by a 1-channel tclean and by a 9-channel one alike, beside 6 MB and 65 MB of its own
    images and temporary lattices. In a run's workers a 1-channel chunk read 43.6 MB (75 × its
    share), a 9-channel one 92.4 MB (18 ×); the whole run 2.74 GB against 0.65 GB."""
    ms = ms_bytes(vis)
    read = 0
    for metrics in chunk_metrics:
        if "read_chars" in metrics:
            share = ms * metrics["channels"] / nchan
            metrics["ms_share_bytes"] = round(share)
            metrics["read_amplification"] = round(metrics["read_chars"] / share, 2) if share else None
            read += metrics["read_chars"]
    return {"ms_bytes": ms, "read_bytes": read, "read_amplification": round(read / ms, 2) if ms else None}


def read_warning(reads: dict) -> str | None:
    """One line for the run's summary when the chunks read the MS many times over."""
    if (not reads["read_amplification"] or reads["read_amplification"] < READ_WARNING
            or reads["read_bytes"] < READ_WARNING_BYTES):
        return None
    return (f"the chunks read {format_bytes(reads['read_bytes'])}, {reads['read_amplification']:.0f} × the MS's "
            f"{format_bytes(reads['ms_bytes'])} (each chunk reads the MS's rows whole, every channel): "
            "more channels_per_task read less (per chunk in report.json)")
