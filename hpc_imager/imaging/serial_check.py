"""Measure a parallel cube against serial tclean on the whole cube, plane by plane.

With ``niter=0`` the two are identical. With ``niter>0`` CASA's cube iteration control couples the
channels (cycle thresholds and the iteration budget are set from all channels at once), so a chunk
cleaned on its own may stop at a different depth than in a serial run; this puts a number on that
for every plane instead of hiding it (see docs/correctness.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

COMPARED = ("image", "residual", "model", "psf", "pb")


def plane_differences(parallel: str, serial: str) -> list[float]:
    """max|parallel - serial| / max|serial| for each channel plane (0 where both are zero)."""
    from casatools import image

    ia = image()
    ia.open(serial)
    reference = ia.getchunk()
    ia.close()
    ia.open(parallel)
    candidate = ia.getchunk()
    ia.close()
    ia.done()
    if reference.shape != candidate.shape:
        raise ValueError(f"{parallel} has shape {candidate.shape}, serial {reference.shape}")
    axes = tuple(range(reference.ndim - 1))  # the spectral axis is last in tclean's cubes
    peak = np.abs(reference).max(axis=axes)
    diff = np.abs(candidate - reference).max(axis=axes)
    return [float(d / p) if p > 0 else float(d) for d, p in zip(diff, peak)]


# what a cleaned cube's run and serial's must agree on besides the pixels (tclean's return)
STOP_FIELDS = ("iterdone", "nmajordone", "stopcode")


def compare_with_serial(tclean_params: dict, run_dir: Path, returned: dict) -> tuple[dict, dict]:
    """Run serial tclean on the whole cube into ``run_dir/serial``; compare every product plane by
    plane, and serial's iterations, major cycles and stop with this run's ``returned``."""
    from casatasks import tclean

    serial_dir = Path(run_dir) / "serial"
    serial_dir.mkdir(parents=True, exist_ok=True)
    serial_name = str(serial_dir / "serial")
    with contextlib.chdir(serial_dir):
        serial_returned = tclean(**dict(tclean_params, imagename=serial_name)) or {}
    imagename = tclean_params["imagename"]
    result = {}
    for product in COMPARED:
        if Path(f"{imagename}.{product}").exists() and Path(f"{serial_name}.{product}").exists():
            per_plane = plane_differences(f"{imagename}.{product}", f"{serial_name}.{product}")
            result[product] = {"max": max(per_plane), "per_plane": per_plane}
    stop = {field: {"serial": _plain(serial_returned.get(field)), "this run": _plain(returned.get(field))}
            for field in STOP_FIELDS if field in serial_returned and field in returned}  # per-chunk: no one stopcode
    return result, stop


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def stop_line(stop: dict) -> str | None:
    """One line naming what differs from serial tclean's stop (None when nothing does)."""
    differing = [f"{field} {v['this run']} (serial {v['serial']})" for field, v in stop.items()
                 if v["this run"] != v["serial"]]
    return ", ".join(differing) or None
