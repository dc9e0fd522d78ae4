"""Which primary beams the mosaic gridder gives each plane of a chunk, against the whole cube's.

CASA's mosaic gridder (SimplePBConvFunc::findUsefulChannels and findConvFunction, read in casa6's
TransformMachines2) makes its primary beams at a few frequencies chosen from the frequencies of the
data channels the image covers:

* a grid of steps of 0.5 % of the spectral window's top frequency, counted down from that top
  frequency; the beams are the grid points inside the data's range but the highest, or, where there
  is one grid point inside, the one below the lowest data channel; an image with at most one more data
  channel than grid points gets one beam per channel;
* each data channel takes the first beam within half a step, else the nearest;
* only the highest beam is computed; the lower ones are that beam's image rescaled by the frequency
  ratio (nearest pixel), so a beam at the same frequency differs when the highest beam differs.

No keyword, image definition or cache moves a chunk onto the whole cube's beams: the frequencies
come from the data channels of the chunk's own image (tclean's ``cfcache`` is A-projection's only).
So a plane is imaged as serial tclean images it exactly when its chunk gives it the same beam and the
same highest beam. Measured (simulated 4-pointing VLA mosaic, 24 × 1 MHz from 1.400 GHz, 96², niter
0): chunks of 12 put planes 0-12 off serial (image up to 15 % of the plane peak, pb 21 %, psf 1.3 %)
and 13-23 bit-identical; chunks of 6 planes 0-17; both as predicted here plane for plane.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

STEP_FRACTION = 0.005  # of the spectral window's top frequency
# Chunk sizes tried above the chooser's: each try predicts every plane (7677 one-channel chunks: 0.75 s a
# try under load 20, so planning such a mosaic cube takes up to ~15 s more).
SEARCHED_SIZES = 32


def window(spw_frequencies: Sequence[float]) -> tuple[float, float]:
    """What the gridder takes from the spectral window: its top frequency and its channel width (Hz)."""
    return max(spw_frequencies), abs(spw_frequencies[1] - spw_frequencies[0])


def beams(spw: tuple[float, float], frequencies: Sequence[float]) -> tuple[list[float], list[int]]:
    """The beam frequencies the gridder makes for an image covering data channels at ``frequencies``
    (Hz, ascending) of the spectral window ``spw`` (:func:`window`), and each channel's beam index."""
    low, high = min(frequencies), max(frequencies)
    n = len(frequencies)
    spacing = (high - low) / (n - 1) if n > 1 else 1e12
    step = max(spw[0] * STEP_FRACTION, spacing / 2)
    top = spw[0]
    while top > high:
        top -= step
    if top < low:
        top += step
    bottom, inside = top, 0
    while bottom > low:
        inside += 1
        bottom -= step
    if inside > 1:
        inside -= 1
        bottom += step
    if inside > n:  # more grid points than data channels: one beam per data channel
        inside, step, bottom = n, spw[1], low
    if inside >= n - 1:
        return list(frequencies), list(range(n))
    if inside == 0 or n == 1:
        return [bottom], [0] * n
    grid = [bottom + k * step for k in range(inside)]
    chosen = []
    for f in frequencies:
        near = [k for k, g in enumerate(grid) if abs(f - g) <= step / 2]
        chosen.append(near[0] if near else min(range(inside), key=lambda k: abs(f - grid[k])))
    return grid, chosen


def plane_beams(spw: tuple[float, float], plane_channels: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """(beam, highest beam) of each plane of one image whose planes cover the data channels at
    ``plane_channels`` (Hz); a plane takes its middle data channel's beam."""
    frequencies = sorted({f for channels in plane_channels for f in channels})
    grid, chosen = beams(spw, frequencies)
    index = {f: i for i, f in enumerate(frequencies)}
    out = []
    for channels in plane_channels:
        middle = sorted(channels)[len(channels) // 2]
        out.append((grid[chosen[index[middle]]], grid[-1]))
    return out


def planes_off_serial(spw: tuple[float, float], plane_channels: Sequence[Sequence[float]],
                      chunks: Sequence[tuple[int, int]]) -> list[int]:
    """The planes whose chunk (``(first, nchan)`` each) gives them other beams than the whole cube."""
    serial = plane_beams(spw, plane_channels)
    off = []
    for first, nchan in chunks:
        mine = plane_beams(spw, plane_channels[first:first + nchan])
        off += [first + i for i, b in enumerate(mine) if b != serial[first + i]]
    return off


def equal_chunk_size(spw: tuple[float, float], plane_channels: Sequence[Sequence[float]],
                     channels_per_task: int) -> int | None:
    """The smallest chunk size of at least ``channels_per_task`` (and below it + SEARCHED_SIZES) whose
    chunks all get serial's beams, if one short of the whole cube exists (e.g. a cube inside one 0.5 %
    step needs chunks of 3)."""
    nchan = len(plane_channels)
    for size in range(max(1, channels_per_task), min(nchan, max(1, channels_per_task) + SEARCHED_SIZES)):
        chunks = [(first, min(size, nchan - first)) for first in range(0, nchan, size)]
        if not planes_off_serial(spw, plane_channels, chunks):
            return size
    return None


def plane_data_channels(spw_frequencies: Sequence[float], plane_frequencies: Sequence[float]) -> list[list[float]]:
    """The data channels (Hz) each output plane centred at ``plane_frequencies`` covers: those within
    half a plane's width of its centre, at least the nearest."""
    width = abs(plane_frequencies[1] - plane_frequencies[0]) if len(plane_frequencies) > 1 else 0.0
    data = sorted(spw_frequencies)
    out = []
    for centre in plane_frequencies:
        inside = data[bisect.bisect_left(data, centre - width / 2):bisect.bisect_left(data, centre + width / 2)]
        out.append(inside or [min(data, key=lambda f: abs(f - centre))])
    return out


def _whole_spw_frequencies(tclean_params: dict, data_frequencies: Sequence[float]) -> list[float] | None:
    """The selected data channels' frequencies (the cube's frame) when they are one whole spectral
    window of one measurement set, the case predicted here; else None (the step is anchored at the
    window's top channel, which a channel selection may leave out)."""
    from casatools import ms, msmetadata

    vis = tclean_params["vis"]
    vis = vis if isinstance(vis, list) else [vis]
    if len(vis) != 1 or len(data_frequencies) < 2:
        return None
    md = msmetadata()
    md.open(vis[0])
    try:
        spw = tclean_params.get("spw") or ""
        spw = spw[0] if isinstance(spw, list) and spw else spw
        spws = [int(i) for i in ms().msseltoindex(vis=vis[0], spw=str(spw))["spw"]] if spw else list(range(md.nspw()))
        whole = len(spws) == 1 and md.nchan(spws[0]) == len(data_frequencies)
    finally:
        md.close()
    return sorted(data_frequencies) if whole else None


def prediction(tclean_params: dict, grid, chunks) -> dict | None:
    """report.json's ``mosaic_beams``: every plane's beam and highest beam in its chunk and in serial's
    whole cube, and the planes where they differ; None where not predicted (not the mosaic gridder, one
    chunk, or not one whole spectral window)."""
    if "mosaic" not in tclean_params["gridder"] or len(chunks) < 2 or not grid.frequencies:
        return None
    spw = _whole_spw_frequencies(tclean_params, grid.data_frequencies)
    if spw is None:
        return None
    planes, spw = plane_data_channels(spw, grid.frequencies), window(spw)
    serial = plane_beams(spw, planes)
    mine = []
    for chunk in chunks:
        mine += plane_beams(spw, planes[chunk.first:chunk.first + chunk.nchan])
    return {
        "planes_off_serial": [i for i, (a, b) in enumerate(zip(mine, serial)) if a != b],
        "per_plane": [{"beam_hz": a[0], "highest_beam_hz": a[1], "serial_beam_hz": b[0], "serial_highest_beam_hz": b[1]}
                      for a, b in zip(mine, serial)],
    }


def mosaic_channels_per_task(tclean_params: dict, grid, channels_per_task: int, workers: int) -> int:
    """``channels_per_task`` for a mosaic cube whose size was left to us: the smallest size from it up
    whose chunks all get serial tclean's beams where one short of the whole cube exists, else the
    size up to one chunk per worker with the fewest planes off serial (24 × 1 MHz on 2 workers: 12,
    13 planes off as in mpicasa's 2 sub-cubes, where the chooser's 3 puts at least 18 off)."""
    if "mosaic" not in tclean_params["gridder"] or not grid.frequencies or channels_per_task >= grid.nchan:
        return channels_per_task
    spw = _whole_spw_frequencies(tclean_params, grid.data_frequencies)
    if spw is None:
        return channels_per_task
    planes, spw = plane_data_channels(spw, grid.frequencies), window(spw)
    equal = equal_chunk_size(spw, planes, channels_per_task)
    if equal is not None:
        return equal
    nchan = len(planes)
    widest = max(channels_per_task, -(-nchan // max(1, workers)))

    def off(size: int) -> int:
        return len(planes_off_serial(spw, planes, [(f, min(size, nchan - f)) for f in range(0, nchan, size)]))

    sizes = set(range(channels_per_task, min(widest, nchan - 1, channels_per_task + SEARCHED_SIZES) + 1))
    sizes.add(min(widest, nchan - 1))
    return min(sizes, key=lambda size: (off(size), size))
