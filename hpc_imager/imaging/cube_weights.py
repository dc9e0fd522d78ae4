"""briggsbwtaper over chunks: the whole cube's imaging weights, made once and handed to every chunk.

briggsbwtaper tapers each channel's Briggs weights by the fractional bandwidth of the whole image
(C++ ``SynthesisImagerVi2::weight`` takes it from the image's first and last channel), so a chunk
would use its own (a one-channel chunk has none: "fractional bandwith is not a valid value, 0.0").
casatools' ``setweighting`` takes no fractional bandwidth, and ``getweightdensity`` /
``setweightdensity`` hand over the density of ``perchanweightdensity=False`` only (mpicasa's cube
controller hands its sub-cubes the weighting record, bandwidth included, inside C++). What a chunk
can be handed is CASA's own result: per-channel Briggs weighting (``BriggsCubeWeightor``) writes
every row's imaging weights to a table ``IMAGING_WEIGHT_<rows>_<first>_<last frequency>_<rmode>_
<robust>_interp_<n>`` in the working directory and reads them back, without computing anything, while
a table of that name with that many rows exists there.

So the driver makes the whole cube's table once (:func:`make_cube_weights`: the cube's PSF on
casatools, as serial tclean makes it, kept in ``<run>/cube-weights``), and every chunk's imager
finds, in its working directory, a table with the name its own image gives and the cube's weights
in its channels (:func:`hand_to_chunk`). Which of a row's data channels the chunk's imager reads is
CASA's choice (the channels its frequency selection picks around the chunk: on NGC5921 one below
and two above), so a probe learns it: the chunk's spectral axis on a 32² image with a cell so small
that every visibility lands in the grid, weighted 'briggs', makes the table of the chunk's own name
and layout, whose non-zero channels are the chunk's image channels. Per-channel Briggs weights do not
depend on the other channels (measured: a chunk's 'briggs' table is bit-identical to the cube's in
the chunk's channels), so the cube's weights in those channels are serial's. After the PSF the chunk
checks that CASA read the table unchanged and made no other (:func:`check_reused`).

Measured on NGC5921 (63 channels at 256², robust 0.5, niter=0, one-channel chunks on 2 workers of
this shared 2-core machine): the cube's table took 13-17 s in the driver (its PSF; serial tclean of
the whole cube 42 s), and the probe 1.5-2.5 s per chunk (median of two runs), more than the chunk's
PSF (1.0-1.6 s): it reads the chunk's data three times (CASA's source: the density, the weights, its
small PSF). The run imaged in 239 s against 118 s for the same chunks weighted 'briggs'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import UserError

WEIGHT_TABLES = "IMAGING_WEIGHT_*"
CUBE_WEIGHTS = "cube-weights"  # in the run directory
_LAYOUT = "layout.json"


class CubeWeightsUnavailable(UserError):
    """The whole cube's imaging weights could not be made in the form the chunks are handed."""


def wants_cube_weights(tclean_params: dict, chunks: list) -> bool:
    """briggsbwtaper's per-channel weighting (the only one it has in tclean) over several chunks."""
    return (tclean_params["weighting"] == "briggsbwtaper" and tclean_params["perchanweightdensity"]
            and len(chunks) > 1)


def _read_table(path: Path, *columns: str) -> list[np.ndarray]:
    from casatools import table

    tb = table()
    tb.open(str(path))
    try:
        return [tb.getcol(c) for c in columns]
    finally:
        tb.done()


def _mapped_channels(weights: np.ndarray) -> tuple[int, int]:
    """The first and the number of a table's data channels that carry weight in any row (the
    channels the imager maps to image channels)."""
    used = np.nonzero(weights.any(axis=1))[0]
    if not used.size or used[-1] - used[0] + 1 != used.size:
        raise RuntimeError(f"the imaging weights' channels {used.tolist()} are not one run of channels")
    return int(used[0]), int(used.size)


def make_cube_weights(tclean_params: dict, run_dir: Path) -> tuple[Path, float]:
    """The whole cube's imaging-weight table in ``<run>/cube-weights`` (made unless a previous run of
    this cube made it) and the seconds it took here."""
    from .casa_imager import ImagerTools
    from .imager_records import imager_records

    target = Path(run_dir) / CUBE_WEIGHTS
    if (target / _LAYOUT).is_file():
        return target, 0.0
    started = time.time()
    scratch = target.with_name(CUBE_WEIGHTS + ".scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    records = imager_records(tclean_params)
    with contextlib.chdir(scratch):  # CASA writes the table in the working directory
        tools = ImagerTools(records.named(str(scratch / "cube")))
        try:
            tools.open_imager()
            tools.imager.makepsf()
            tables = sorted(scratch.glob(WEIGHT_TABLES))
            if len(tables) != 1:  # CASA split the cube into sub-cubes to fit the driver's memory
                raise CubeWeightsUnavailable(
                    f"weighting='briggsbwtaper' over chunks: the whole cube's weighting made {len(tables)}"
                    " tables, not one (CASA split it to fit memory); use channels_per_task >= nchan (one task)")
            kept = scratch / "kept"
            shutil.copytree(tables[0], kept / tables[0].name)
        finally:
            tools.close()
    (weights,) = _read_table(kept / tables[0].name, "IMAGING_WEIGHT")
    try:
        first, count = _mapped_channels(weights)
    except RuntimeError:
        first, count = 0, -1
    nchan = records.image["nchan"] if records.image["nchan"] > 0 else count
    if count != nchan:  # a channel with no unflagged data makes the channels' layout ambiguous
        raise CubeWeightsUnavailable(
            f"weighting='briggsbwtaper' over chunks: the whole cube's weights do not cover its {nchan} channels"
            " as one run (a channel with no unflagged data?); use channels_per_task >= nchan (one task)")
    (kept / _LAYOUT).write_text(json.dumps({"table": tables[0].name, "first": first, "nchan": count}))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(kept, target)
    shutil.rmtree(scratch)
    return target, time.time() - started


def _row_keys(msid: np.ndarray, rowid: np.ndarray) -> np.ndarray:
    return msid.astype(np.int64) << 32 | rowid.astype(np.int64)


def _probe(records, workdir: Path) -> Path:
    """The chunk's own 'briggs' table (its name, rows and data channels), from a 32² image."""
    from .casa_imager import ImagerTools

    probe_dir = workdir / "weights-probe"
    probe_dir.mkdir()
    image = dict(records.image, imsize=[32, 32], cell=["0.001arcsec", "0.001arcsec"], startmodel="")
    probe = dataclasses.replace(records, image=image, weighting=dict(records.weighting, rmode="norm"),
                                cube_weights="").named(str(probe_dir / "probe"))
    tools = ImagerTools(probe)
    try:
        with contextlib.chdir(probe_dir):
            tools.open_imager()
            tools.imager.makepsf()
            (table,) = probe_dir.glob(WEIGHT_TABLES)
            kept = workdir / ("probe-" + table.name)
            shutil.copytree(table, kept)
    finally:
        tools.close()
        shutil.rmtree(probe_dir, ignore_errors=True)
    return kept


def hand_to_chunk(records, workdir: Path) -> tuple[Path, float]:
    """Put the cube's weights for this chunk in ``workdir`` under the name the chunk's imager will
    look for; return the table and its column's sum (for :func:`check_reused`)."""
    from casatools import table

    cube_dir = Path(records.cube_weights)
    layout = json.loads((cube_dir / _LAYOUT).read_text())
    probed = _probe(records, workdir)
    msid, rowid, own = _read_table(probed, "MSID", "ROWID", "IMAGING_WEIGHT")
    first, count = _mapped_channels(own)
    want = min(count, layout["nchan"] - records.first_channel)  # a guard channel past the cube keeps the probe's
    cube_msid, cube_rowid = _read_table(cube_dir / layout["table"], "MSID", "ROWID")
    cube_keys = _row_keys(cube_msid, cube_rowid)
    order = np.argsort(cube_keys)
    rows = order[np.searchsorted(cube_keys, _row_keys(msid, rowid), sorter=order)]
    tb = table()
    tb.open(str(cube_dir / layout["table"]))
    try:
        start = layout["first"] + records.first_channel
        cube = tb.getcolslice("IMAGING_WEIGHT", blc=[start], trc=[start + want - 1], incr=[1])
    finally:
        tb.done()
    own[first:first + want] = cube[:, rows]
    name = probed.name[len("probe-"):].replace("_norm_", "_" + records.weighting["rmode"] + "_")
    planted = workdir / name
    os.rename(probed, planted)
    tb = table()
    tb.open(str(planted), nomodify=False)
    try:
        tb.putcol("IMAGING_WEIGHT", own)
    finally:
        tb.done()
    return planted, float(own.sum(dtype=np.float64))


def check_reused(planted: Path, checksum: float) -> None:
    """CASA read the handed table as it is (a table of another name, or refilled rows, would be
    weights of the chunk's own bandwidth)."""
    tables = sorted(p.name for p in planted.parent.glob(WEIGHT_TABLES))
    if tables != [planted.name]:
        raise RuntimeError(f"the chunk's imager did not take the cube's imaging weights ({', '.join(tables)})")
    (weights,) = _read_table(planted, "IMAGING_WEIGHT")
    if float(weights.sum(dtype=np.float64)) != checksum:
        raise RuntimeError("the chunk's imager rewrote the cube's imaging weights")


@contextlib.contextmanager
def handed_weights(records, workdir: Path):
    """Around the chunk's PSF: the cube's weights handed to it before (``records.cube_weights``, else
    nothing), and after, the check that CASA used them as they are."""
    handed = hand_to_chunk(records, workdir) if records.cube_weights else None
    yield
    if handed:
        check_reused(*handed)
