"""report.json's "channels": one record per output channel of the finished cube, what an astronomer
looks at first (peak and rms of the residual, iterations, restoring beam, mask pixels, the chunk
that made it), read from the final products and tclean's return value, whatever the mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging.channel_grid import Chunk


def channel_records(imagename: str, chunks: list[Chunk], tclean_return: dict) -> list[dict]:
    nchan = sum(c.nchan for c in chunks)
    made_by = {ch: c.index for c in chunks for ch in c.channels}
    records = [{"channel": ch, "chunk": made_by.get(ch)} for ch in range(nchan)]
    residual = Path(f"{imagename}.residual")
    if residual.is_dir():
        stats = _plane_statistics(residual, nchan)
        frequencies = _frequencies(residual, nchan)
        for record, peak, rms, frequency in zip(records, stats["peak"], stats["rms"], frequencies):
            record.update(frequency_hz=frequency, peak_residual=peak, rms_residual=rms)
    mask = Path(f"{imagename}.mask")
    if mask.is_dir():
        for record, pixels in zip(records, _plane_statistics(mask, nchan)["sum"]):
            record["mask_pixels"] = int(round(pixels))
    image = Path(f"{imagename}.image")
    if image.is_dir():
        for record, beam in zip(records, _beams(image, nchan)):
            record["beam"] = beam
    iterations = _iterations(tclean_return.get("summaryminor") or {}, nchan)
    for record, done in zip(records, iterations):
        record["iterations"] = done
    return records


def _plane_statistics(path: Path, nchan: int) -> dict[str, list[float]]:
    """Per channel (the largest over Stokes planes): |peak|, rms and sum, in one pass of casacore's statistics."""
    from casatools import image

    ia = image()
    ia.open(str(path))
    try:
        stats = ia.statistics(axes=[0, 1], verbose=False, robust=False)
    finally:
        ia.done()
    per_plane = {k: np.asarray(stats[k], dtype=float).reshape(-1, nchan) if np.size(stats[k]) else
                 np.zeros((1, nchan)) for k in ("max", "min", "rms", "sum")}
    return {"peak": np.maximum(np.abs(per_plane["max"]), np.abs(per_plane["min"])).max(axis=0).tolist(),
            "rms": per_plane["rms"].max(axis=0).tolist(), "sum": per_plane["sum"].sum(axis=0).tolist()}


def _frequencies(path: Path, nchan: int) -> list[float]:
    from casatools import image

    ia = image()
    ia.open(str(path))
    try:
        axis = ia.coordsys().findcoordinate("spectral")["world"][0]
        pixels = np.zeros((len(ia.shape()), nchan))
        pixels[axis] = np.arange(nchan)
        return [float(f) for f in ia.coordsys().toworldmany(pixels)["numeric"][axis]]
    finally:
        ia.done()


def _beams(path: Path, nchan: int) -> list[dict | None]:
    """Each channel's restoring beam (first Stokes plane): major, minor in arcsec, position angle in deg."""
    from casatools import image, quanta

    qa = quanta()
    ia = image()
    ia.open(str(path))
    try:
        beam = ia.restoringbeam()
    finally:
        ia.done()

    def plain(b: dict) -> dict:
        return {"major_arcsec": qa.convert(b["major"], "arcsec")["value"],
                "minor_arcsec": qa.convert(b["minor"], "arcsec")["value"],
                "pa_deg": qa.convert(b["positionangle"], "deg")["value"]}

    if not beam:
        return [None] * nchan
    if "beams" not in beam:
        return [plain(beam)] * nchan
    return [plain(beam["beams"][f"*{ch}"]["*0"]) if f"*{ch}" in beam["beams"] else None for ch in range(nchan)]


def _iterations(summaryminor: dict, nchan: int) -> list[int]:
    """Iterations per channel from tclean's summaryminor ({field: {channel: {stokes: {"iterDone": per cycle}}}})."""
    done = [0] * nchan
    for field in summaryminor.values():
        for channel, stokes in field.items():
            if int(channel) < nchan:
                done[int(channel)] += int(sum(sum(s.get("iterDone", [])) for s in stokes.values()))
    return done
